"""The sections that read what other stages measured, where they have run (the SAE only: baselines
have no atlas, labels or icons).

- interpretability: the scores stored with the atlas's labels (`Atlas.labels(i)[*].score`). Every
  numeric score whose key names a scorer's measure (`auroc`, `accuracy`, `baseline`, e.g. the
  interp stage's `detection_auroc`) is summarised per label source: how many labels carry it, its
  median and mean, and the same over each feature's headline (first) label.
- steering: the icon causal check (`icons/verify.json`, written by `clipatlas icons --verify`) and
  the steering success report (`SAEFiles.steer_success`, see `read_steer_success` for its format).
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from typing import Any

import numpy as np

from clipatlas._io import read_json
from clipatlas.errors import UserError
from clipatlas.workspace import SAEFiles, Workspace

SCORE_MARKERS = ("auroc", "accuracy", "baseline")
VERIFY_KEYS = ("decoder", "strength", "n_icons", "top1_share", "top10_share", "median_rank_before", "median_rank_after")


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


def read_steer_success(path) -> dict[str, Any]:
    """The steering success report that `clipatlas.steer` writes at `SAEFiles.steer_success`:

    ```
    {"schema_version": 1,
     "success_rate": 0.83,            # required: share of edits that succeeded
     "criterion": "...",              # what success means, in words
     "decoder": "retrieval", "strength": 2.0, "n_edits": 200,
     "curve": [{"strength": 0.5, "success_rate": 0.1}, ...]}   # optional: success against edit strength
    ```
    """
    report = read_json(path)
    rate = report.get("success_rate")
    if not isinstance(rate, numbers.Real) or not 0 <= rate <= 1:
        raise UserError(f"{path} has no success_rate between 0 and 1; re-run the steering check that wrote it")
    curve = [
        {"strength": float(point["strength"]), "success_rate": float(point["success_rate"])}
        for point in report.get("curve", [])
    ]
    keys = ("criterion", "decoder", "strength", "n_edits")
    return {"success_rate": float(rate), **{k: report[k] for k in keys if k in report}, "curve": curve}


def steering(ws: Workspace, files: SAEFiles) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if files.icons_verify.is_file():
        verify = read_json(files.icons_verify)
        result["icons"] = {key: verify[key] for key in VERIFY_KEYS if key in verify}
    if files.steer_success.is_file():
        result["success"] = read_steer_success(files.steer_success)
    if not result:
        result["skipped"] = (
            f"no steering measured yet; run: clipatlas icons -w {ws.root} --name {files.name} --verify "
            f"(the icon causal check), and the steering success check that writes {files.steer_success}"
        )
    return result
