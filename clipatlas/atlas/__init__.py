"""The feature encyclopedia: `build_atlas` makes it in one streaming pass, `Atlas` reads it,
`annotations` adds icons and labels to it.

Return types of `Atlas` (all frozen dataclasses, see `clipatlas.atlas.types`):
`feature(i) -> FeatureInfo`, `top_images(i)` / `quantile_samples(i) -> list[Example]`,
`coactivating(i)` / `similar(i, by) -> list[Neighbour]`, `features_of_image(image_id)` /
`features_of_embedding(x) -> list[Activation]`, `search_labels(text)` / `labels(i) -> list[Label]`
(each with its `Score`s), `headlines()` / `best_guesses() -> {feature: Label}`,
`map_points() -> MapPoints`, `summary() -> dict`, `thumbnail_path(id)` / `icon_path(i) -> Path | None`,
`image_codes() -> ImageCodes` (every image's sparse code), `feature_table() -> FeatureTable` (per-feature arrays).
"""

from clipatlas.atlas.config import AtlasConfig
from clipatlas.atlas.types import (
    Activation,
    AtlasError,
    Example,
    FeatureInfo,
    FeatureTable,
    ImageCodes,
    Label,
    MapPoints,
    Neighbour,
    Score,
)

__all__ = [
    "Activation",
    "Atlas",
    "AtlasConfig",
    "AtlasError",
    "Example",
    "FeatureInfo",
    "FeatureTable",
    "ImageCodes",
    "Label",
    "MapPoints",
    "Neighbour",
    "Score",
    "build_atlas",
]


def __getattr__(name: str):
    # The reader and the build load numpy, torch and SQLite; the command line only needs the config.
    if name == "Atlas":
        from clipatlas.atlas.query import Atlas

        return Atlas
    if name == "build_atlas":
        from clipatlas.atlas.build import build_atlas

        return build_atlas
    raise AttributeError(name)
