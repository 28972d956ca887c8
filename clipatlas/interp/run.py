"""`label` and `score`: the interp stage's Python API (the commands are thin layers over these).

label: atlas + store -> split every feature -> a labeller names each from its labelling half
(and, for the validation score, from part of it) -> labels in the atlas.
score: the atlas's labels -> the same split -> a scorer asks a judge about the held-out images
-> scores, with their shuffled baselines, in the atlas; optionally a report.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from clipatlas.atlas.annotations import add_labels, add_scores
from clipatlas.atlas.query import Atlas
from clipatlas.atlas.types import Label, Score
from clipatlas.errors import UserError
from clipatlas.interp.config import LabelConfig, ScoreConfig, SplitConfig, VLMConfig
from clipatlas.interp.data import StoreData
from clipatlas.interp.labellers import make_labeller
from clipatlas.interp.scorers import VALIDATION_TEXT, ScoringTask, make_scorer
from clipatlas.interp.split import split_digest
from clipatlas.interp.types import LABELLING, VALIDATION, FeatureSplit
from clipatlas.workspace import Workspace

log = logging.getLogger(__name__)
SPLIT_KEY, SEED_KEY = "split", "split_seed"  # evidence keys: the held-out rows' digest and the seed


@dataclass
class LabelRun:
    labeller: str
    labelled: int = 0
    failed: int = 0
    too_few_images: int = 0

    def format(self) -> str:
        parts = [f"{self.labelled} features labelled by {self.labeller}"]
        if self.failed:
            parts.append(f"{self.failed} without a label (re-run to retry)")
        if self.too_few_images:
            parts.append(f"{self.too_few_images} skipped: too few activating images to label and score")
        return "; ".join(parts)


def open_data(workspace, name: str | None, split: SplitConfig) -> tuple[Atlas, StoreData]:
    atlas = Atlas.open(workspace, name)
    return atlas, StoreData(atlas, split.seed, split.max_positives, split.validation_negatives)


def feature_splits(data: StoreData, split: SplitConfig) -> tuple[dict[int, FeatureSplit], int]:
    """The splits of the features `split` selects, and how many of them had too few images."""
    wanted = split.feature_ids(data.atlas.n_features)
    eligible = data.eligible_features(split.min_activating, wanted)
    splits = {f: s for f in eligible if (s := data.splitter(f)) is not None}
    considered = len(wanted) if wanted is not None else len(eligible)
    return splits, considered - len(splits)


def label(
    workspace: str | Path | Workspace,
    name: str | None = None,
    config: LabelConfig = LabelConfig(),
    split: SplitConfig = SplitConfig(),
    vlm: VLMConfig = VLMConfig(),
) -> LabelRun:
    """Label every selected feature with `config.labeller` and store the labels in the atlas."""
    atlas, data = open_data(workspace, name, split)
    labeller = make_labeller(config.labeller, data, config, vlm)
    splits, too_few = feature_splits(data, split)
    run = LabelRun(config.labeller, too_few_images=too_few)
    phases = [LABELLING, VALIDATION] if config.validation else [LABELLING]
    # a labelling half of a single image group leaves nothing to make a validation label from
    views = [data.view(s, phase) for s in splits.values() for phase in phases if len(s.shown(phase))]
    drafts = labeller.label_all(views)
    if drafts is None:  # a dry run
        return run
    by_feature: dict[int, dict[str, object]] = defaultdict(dict)
    for view, draft in zip(views, drafts):
        by_feature[view.feature][view.phase] = draft
    labels = []
    for feature, drafts_of in by_feature.items():
        draft = drafts_of.get(LABELLING)
        if draft is None or not draft.text:
            run.failed += 1
            continue
        validation = drafts_of.get(VALIDATION)
        evidence = {**draft.evidence, SPLIT_KEY: split_digest(splits[feature]), SEED_KEY: split.seed}
        if validation is not None and validation.text:
            evidence[VALIDATION_TEXT] = validation.text
        labels.append(
            Label(
                feature=feature,
                source=labeller.name,
                text=draft.text,
                model=labeller.model,
                prompt_version=labeller.prompt_version,
                description=draft.description,
                evidence=evidence,
            )
        )
    run.labelled = len(add_labels(atlas, labels))
    return run


@dataclass
class ScoreRun:
    scorer: str
    judge: str
    scores: list[Score] = field(default_factory=list)
    stale: int = 0
    report: Path | None = None
    label_sources: dict[int, str] = field(default_factory=dict)
    found: dict = field(default_factory=dict)  # what the report summarised (with --report)

    def summary_lines(self) -> list[str]:
        """Per labeller: median score against the median baseline and the share beating it and chance."""
        groups: dict[str, list[Score]] = defaultdict(list)
        for s in self.scores:
            groups[self.label_sources.get(s.label_id, "features")].append(s)
        from clipatlas.interp.report import stats

        lines = []
        for source, scores in sorted(groups.items()):
            st = stats(scores)
            lines.append(
                f"  {source}: median {scores[0].metric} {st['median']:.3f} against {st['median_baseline']:.3f} "
                f"(baseline), {st['share_beating']:.0%} of {st['n']} beat it and chance"
            )
        return lines

    def format(self) -> str:
        text = f"{len(self.scores)} {self.scorer} scores from the {self.judge} judge"
        if self.stale:
            text += (
                f"; {self.stale} labels skipped: made on another split (other --seed or atlas); "
                "label them again with the same settings"
            )
        return text


def score(
    workspace: str | Path | Workspace,
    name: str | None = None,
    config: ScoreConfig = ScoreConfig(),
    split: SplitConfig = SplitConfig(),
    vlm: VLMConfig = VLMConfig(),
) -> ScoreRun:
    """Score the atlas's labels (detection) or its features (intruder) and store the scores."""
    from clipatlas.interp.judges import make_judge
    from clipatlas.interp.vlm import DryRun

    atlas, data = open_data(workspace, name, split)
    scorer = make_scorer(config.scorer)
    splits, _ = feature_splits(data, split)
    run = ScoreRun(config.scorer, config.judge)
    tasks = []
    if config.scorer == "intruder":
        tasks.append([])
    else:
        groups, run.stale = labels_to_score(atlas, splits, split.seed, config.labeller_names())
        if not groups:
            raise UserError(
                f"no labels to score in {atlas.db_path}; make some first with: "
                f"clipatlas label -w {atlas.workspace.root} --labeller captions"
            )
        tasks += groups
        run.label_sources = {label.id: label.source for group in groups for label in group}
    judge = make_judge(config.judge, data, vlm)
    for labels in tasks:
        task_splits = splits if not labels else {label.feature: splits[label.feature] for label in labels}
        task = ScoringTask(
            labels, task_splits, judge, split.seed, config.intruder_k, config.intruder_trials, config.shuffled_labels
        )
        try:
            run.scores += scorer(task)
        except DryRun:
            return run
    add_scores(atlas, run.scores)
    if config.report:
        from clipatlas.interp.report import write_report

        run.report, run.found = write_report(atlas, data, config.report_min_activating)
    return run


def labels_to_score(
    atlas: Atlas, splits: dict[int, FeatureSplit], seed: int, sources: list[str] | None
) -> tuple[list[list[Label]], int]:
    """The atlas's labels of the split features, grouped by what made them (source, model, prompt),
    and how many were made on another split (skipped: their held-out rows may have been seen)."""
    groups: dict[tuple[str, str, str], list[Label]] = defaultdict(list)
    stale = 0
    labelled = atlas.labels_by_feature()
    for feature, split in splits.items():
        for label in labelled.get(feature, []):
            if sources is not None and label.source not in sources:
                continue
            if label.evidence.get(SPLIT_KEY) != split_digest(split) or label.evidence.get(SEED_KEY) != seed:
                stale += 1
                continue
            groups[(label.source, label.model, label.prompt_version)].append(label)
    return [sorted(g, key=lambda label: label.feature) for g in groups.values()], stale
