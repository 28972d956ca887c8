"""Scorers: one small class each, `__call__(task) -> list[Score]`, registered by name.

* `detection`: the judge sees a label and the feature's held-out, balanced sample (activating
  images spread over the activation range, as many silent ones) and rates each image; AUROC and
  balanced accuracy of those ratings. The baseline is the same feature scored with the label
  another feature got from the same labeller (a fixed derangement): what a label that says
  nothing about this feature scores. The labelling-half (validation) score rides along, with the
  labeller's median of it over the features scored together (what ranks labellers for the name).
* `intruder`: k activating images and one silent one, no label; the judge picks the odd one.
  Accuracy over a few trials against chance, 1/(k+1). It scores the feature, not a label.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from clipatlas.atlas.types import LABELLER_VALIDATION, Label, Score
from clipatlas.interp.judges import Judge
from clipatlas.interp.metrics import auroc, balanced_accuracy, derangement, top_half_predictions
from clipatlas.interp.types import FeatureSplit

VALIDATION_TEXT = "validation_text"  # the evidence key of the label made from part of the labelling half


@dataclass(frozen=True)
class ScoringTask:
    """Labels of one labeller run (same source, model and prompt) or bare features, with their splits."""

    labels: list[Label]
    splits: dict[int, FeatureSplit]
    judge: Judge
    seed: int = 0
    intruder_k: int = 4
    intruder_trials: int = 5


class Scorer(ABC):
    name: ClassVar[str]

    @abstractmethod
    def __call__(self, task: ScoringTask) -> list[Score]: ...


SCORERS: dict[str, type] = {}


def register(cls):
    SCORERS[cls.name] = cls
    return cls


@register
class DetectionScorer(Scorer):
    name = "detection"

    def __call__(self, task: ScoringTask) -> list[Score]:
        labels = task.labels
        if len(labels) < 2:
            return []  # no other feature's label to make a baseline from
        other = derangement(len(labels), np.random.default_rng([task.seed, 12345]))
        items, validation_items = [], []
        for i, label in enumerate(labels):
            split = task.splits[label.feature]
            rows = np.concatenate([split.positives, split.negatives])
            items += [(label.text, rows), (labels[other[i]].text, rows)]
            validation_text = label.evidence.get(VALIDATION_TEXT)
            if validation_text and len(split.validation_positives) and len(split.validation_negatives):
                validation_items.append((i, validation_text, split))
        judged = task.judge(items)
        validation = task.judge(
            [
                (text, np.concatenate([s.validation_positives, s.validation_negatives]))
                for _, text, s in validation_items
            ]
        )
        validation_of = {
            i: auroc(*_sides(fit, len(s.validation_positives))) for (i, _, s), fit in zip(validation_items, validation)
        }
        labeller_validation = (
            {LABELLER_VALIDATION: float(np.median(list(validation_of.values())))} if validation_of else {}
        )
        scores = []
        for i, label in enumerate(labels):
            split = task.splits[label.feature]
            n_pos = len(split.positives)
            own, shuffled = judged[2 * i], judged[2 * i + 1]
            value, baseline = auroc(*_sides(own, n_pos)), auroc(*_sides(shuffled, n_pos))
            truth = np.arange(len(own)) < n_pos
            scores.append(
                Score(
                    feature=label.feature,
                    label_id=label.id,
                    scorer=self.name,
                    judge=task.judge.name,
                    judge_model=task.judge.model,
                    metric="auroc",
                    value=value,
                    baseline=baseline,
                    n=len(own),
                    beats_baseline=value > baseline,
                    validation=validation_of.get(i),
                    details={
                        "balanced_accuracy": balanced_accuracy(truth, top_half_predictions(own, n_pos)),
                        "baseline_balanced_accuracy": balanced_accuracy(truth, top_half_predictions(shuffled, n_pos)),
                        "positives": n_pos,
                        "negatives": len(split.negatives),
                        "baseline_label_of": labels[other[i]].feature,
                        **labeller_validation,
                    },
                )
            )
        return scores


def _sides(fit: np.ndarray, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    return fit[:n_pos], fit[n_pos:]


@register
class IntruderScorer(Scorer):
    name = "intruder"

    def __call__(self, task: ScoringTask) -> list[Score]:
        trials, answers, features = [], [], sorted(task.splits)
        for feature in features:
            split = task.splits[feature]
            rng = np.random.default_rng([task.seed, feature, 7])
            k = min(task.intruder_k, len(split.positives))
            for _ in range(task.intruder_trials):
                rows = np.append(rng.choice(split.positives, k, replace=False), rng.choice(split.negatives))
                order = rng.permutation(k + 1)
                trials.append(rows[order])
                answers.append(int(np.flatnonzero(order == k)[0]))
        picks = task.judge.odd_one_out(trials)
        scores, per = [], task.intruder_trials
        for j, feature in enumerate(features):
            correct = [p == a for p, a in zip(picks[j * per : (j + 1) * per], answers[j * per : (j + 1) * per])]
            k = len(trials[j * per]) - 1
            accuracy, chance = float(np.mean(correct)), 1.0 / (k + 1)
            scores.append(
                Score(
                    feature=feature,
                    label_id=None,
                    scorer=self.name,
                    judge=task.judge.name,
                    judge_model=task.judge.model,
                    metric="accuracy",
                    value=accuracy,
                    baseline=chance,
                    n=per,
                    beats_baseline=accuracy > chance,
                    details={"k": k, "trials": per},
                )
            )
        return scores


def make_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        from clipatlas.errors import UserError

        raise UserError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
    return SCORERS[name]()
