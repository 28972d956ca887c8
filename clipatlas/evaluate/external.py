"""The sections that read what other stages measured, where they have run (the SAE only: baselines
have no atlas, labels or icons).

- interpretability: the interp stage's scores stored with the atlas's labels (`Label.scores`),
  summarised per labeller and per scorer/judge, and over each feature's headline label.
- steering: the icon causal check (`SAEFiles.icon_verify_report`, written by `clipatlas icons --verify`)
  and the steering success curve of `clipatlas.steer.success` (read, or measured when missing).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from clipatlas._io import read_json
from clipatlas.interp.config import ScoreConfig
from clipatlas.workspace import SAEFiles, Workspace

HEADLINE_MIN_ACTIVATING = ScoreConfig.report_min_activating

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


def _summary(scores: list) -> dict[str, Any]:
    values = [s.value for s in scores]
    return {
        "labels": len(scores),
        "median": float(np.median(values)),
        "median_baseline": float(np.median([s.baseline for s in scores])),
        "beats_baseline": float(np.mean([s.beats_baseline for s in scores])),
    }


def interpretability(ws: Workspace, files: SAEFiles) -> dict[str, Any]:
    """The interp stage's scores, from the atlas: per labeller and per judge, every scorer's median
    (detection AUROC, intruder accuracy), its shuffled baseline's median and the share of labels that
    beat their own baseline and chance (`Score.beats_baseline`); the same for each feature's headline
    label (its name)."""
    from clipatlas.atlas import Atlas

    if not files.atlas_db.is_file():
        return {"skipped": f"no atlas; build it with: clipatlas atlas -w {ws.root} --name {files.name}"}
    atlas = Atlas.open(ws, files.name)
    by_source: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for labels in atlas.labels_by_feature().values():
        for label in labels:
            for score in label.scores:
                by_source[label.source][f"{score.scorer}/{score.judge}"].append(score)
    if not by_source:
        return {
            "features_labelled": len(atlas.labels_by_feature()),
            "skipped": f"no label is scored yet; label and score them: clipatlas label -w {ws.root}, clipatlas score",
        }
    return {
        "features_labelled": len(atlas.labels_by_feature()),
        "features_named": len(atlas.headlines()),
        "by_source": {
            src: {key: _summary(v) for key, v in sorted(keys.items())} for src, keys in sorted(by_source.items())
        },
        "headline_min_activating": HEADLINE_MIN_ACTIVATING,
        "headline": {key: _summary(scores) for key, scores in sorted(_headline_scores(atlas).items())},
    }


def _headline_scores(atlas) -> dict[str, list]:
    """Per judge, the detection score of each feature's preferred label (`types.preferred`: ranked on
    the labelling half), over features active on at least HEADLINE_MIN_ACTIVATING images: the interp
    report's headline row. Not the displayed names (`Atlas.headlines`): those are only labels that beat
    their baseline, so summarising them would report 100% beating by construction."""
    from clipatlas.atlas.types import preferred_by_judge

    counts = atlas.feature_table().count
    headline: dict[str, list] = defaultdict(list)
    for feature, labels in atlas.labels_by_feature().items():
        if counts[feature] >= HEADLINE_MIN_ACTIVATING:
            for judge, best in preferred_by_judge(labels).items():
                headline[f"detection/{judge}"].append(best)
    return headline


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
