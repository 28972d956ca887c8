"""The feature encyclopedia: `build_atlas` makes it in one streaming pass, `Atlas` reads it.

Return types of `Atlas` (all frozen dataclasses, see `clipatlas.atlas.query`):
`feature(i) -> FeatureInfo`, `top_images(i)` / `quantile_samples(i) -> list[Example]`,
`coactivating(i)` / `similar(i, by) -> list[Neighbour]`, `features_of_image(image_id)` /
`features_of_embedding(x) -> list[Activation]`, `search_labels(text)` / `labels(i) -> list[Label]`,
`map_points() -> MapPoints`, `summary() -> dict`, `thumbnail_path(id)` / `icon_path(i) -> Path | None`.
"""

from clipatlas.atlas.build import AtlasConfig, build_atlas
from clipatlas.atlas.query import Activation, Atlas, AtlasError, Example, FeatureInfo, Label, MapPoints, Neighbour

__all__ = [
    "Activation",
    "Atlas",
    "AtlasConfig",
    "AtlasError",
    "Example",
    "FeatureInfo",
    "Label",
    "MapPoints",
    "Neighbour",
    "build_atlas",
]
