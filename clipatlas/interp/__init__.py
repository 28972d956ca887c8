"""Labels for an atlas's features, each scored on held-out images against a shuffled baseline.

`label(workspace, name, LabelConfig, SplitConfig, VLMConfig)` names features with one labeller
(`captions`, `classifier`, `clip-text`, `vlm`); `score(workspace, name, ScoreConfig, SplitConfig,
VLMConfig)` scores the labels (`detection`) or the features (`intruder`) with a judge (`captions`,
`clip-text`, `classes`, `vlm`). Both write into the atlas (`clipatlas.atlas.annotations`); the web
app names each feature by its best label that beat its baseline (`clipatlas.atlas.types.headline`).
"""

from clipatlas.interp.config import LabelConfig, ScoreConfig, SplitConfig, VLMConfig

__all__ = ["LabelConfig", "ScoreConfig", "SplitConfig", "VLMConfig", "label", "score"]


def __getattr__(name: str):
    # The stage loads numpy, scipy and the store; the command line only needs the configs.
    if name in ("label", "score"):
        from clipatlas.interp import run

        return getattr(run, name)
    raise AttributeError(name)
