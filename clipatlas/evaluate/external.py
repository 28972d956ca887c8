"""The sections that read what other stages measured, where they have run (the SAE only: baselines
have no atlas, labels or icons).

- interpretability: the scores stored with the atlas's labels (`Atlas.labels(i)[*].score`). Every
  numeric score whose key names a scorer's measure (`auroc`, `accuracy`, `baseline`, e.g. the
  interp stage's `detection_auroc`) is summarised per label source: how many labels carry it, its
  median and mean, and the same over each feature's headline (first) label.
- steering: the icon causal check (`SAEFiles.icon_verify_report`, written by `clipatlas icons --verify`)
  and the steering success curve of `clipatlas.steer.success` (read, or measured when missing).
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from typing import Any

import numpy as np

from clipatlas._io import read_json
from clipatlas.workspace import SAEFiles, Workspace

SCORE_MARKERS = ("auroc", "accuracy", "baseline")
VERIFY_KEYS = (
    "decoder",
    "strength",
    "n_icons",
    "top1_share",
    "top1_ceiling",
    "top5_share",
    "normalised_top1_share",
    "distinct_share",
)


def _scores(score: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in score.items()
        if isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and any(marker in key.lower() for marker in SCORE_MARKERS)
    }


def _summary(values: list[float]) -> dict[str, Any]:
    return {"labels": len(values), "median": float(np.median(values)), "mean": float(np.mean(values))}


def interpretability(ws: Workspace, files: SAEFiles) -> dict[str, Any]:
    """Label scores by source, from the atlas."""
    from clipatlas.atlas import Atlas

    if not files.atlas_db.is_file():
        return {"skipped": f"no atlas; build it with: clipatlas atlas -w {ws.root} --name {files.name}"}
    atlas = Atlas.open(ws, files.name)
    by_source: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    headline: dict[str, list[float]] = defaultdict(list)
    labelled = 0
    for feature in range(atlas.n_features):
        labels = atlas.labels(feature)
        labelled += bool(labels)
        for position, label in enumerate(labels):
            for key, value in _scores(label.score).items():
                by_source[label.source][key].append(value)
                if position == 0:
                    headline[key].append(value)
    if not by_source:
        return {
            "features_labelled": labelled,
            "skipped": "no label carries a score yet; score labels with the interp stage (clipatlas score)",
        }
    return {
        "features_labelled": labelled,
        "by_source": {src: {key: _summary(v) for key, v in keys.items()} for src, keys in sorted(by_source.items())},
        "headline": {key: _summary(values) for key, values in headline.items()},
    }


def steering(ws: Workspace, files: SAEFiles, measure: bool = True) -> dict[str, Any]:
    """The icon causal check (where `clipatlas icons --verify` ran) and the steering success curve of
    the retrieval decoder (read when measured for this atlas build, else measured now: `measure_success`)."""
    from clipatlas.atlas import Atlas
    from clipatlas.steer.success import TooFewImages, measure_success, read_curve

    result: dict[str, Any] = {}
    if files.icon_verify_report.is_file():
        verify = read_json(files.icon_verify_report)
        result["icons"] = {key: verify[key] for key in VERIFY_KEYS if key in verify}
    if not files.atlas_db.is_file():
        result["skipped"] = f"no atlas; build it with: clipatlas atlas -w {ws.root} --name {files.name}"
        return result
    curve = read_curve(Atlas.open(ws, files.name), "retrieval")
    if curve is None and measure:
        try:
            curve = measure_success(ws, files.name)
        except TooFewImages as exc:
            result["skipped"] = str(exc)
    if curve is not None:
        default = curve.default_strength
        at = curve.point(default) if default is not None else curve.points[-1]
        result["success"] = {
            "success_rate": at.success,
            "strength": at.strength,
            "criterion": (
                f"the result is not the source and the edited feature is among its {curve.config['top']} strongest "
                f"latents; single set edits on {curve.n_features} features, {curve.decoder} decoder"
            ),
            "decoder": curve.decoder,
            "default_strength": default,
            "n_edits": at.n,
            "curve": [{"strength": p.strength, "success_rate": p.success} for p in curve.points],
        }
    return result
