"""Scorers: one small class each, `__call__(task) -> list[Score]`, registered by name.

* `detection`: the judge sees a label and the feature's held-out, balanced sample (activating
  images spread over the activation range, as many silent ones) and rates each image; AUROC and
  balanced accuracy of those ratings. The baseline is the same images rated with labels other
  features got from the same labeller (the judge's `shuffled_labels` of them, fixed by the seed):
  what a label that says nothing about this feature scores, their median. Two p-values say how
  sure the comparison is (`atlas.types.Score.evidence_p`): against chance (Mann-Whitney) and,
  with enough shuffled labels, against them (a permutation test); a feature is named only by a
  label that clears both. The labelling-half (validation) score rides along, with the labeller's
  median of it over the features scored together (what ranks labellers for the name).
* `intruder`: k activating images and one silent one, no label; the judge picks the odd one.
  Accuracy over a few trials against chance, 1/(k+1). It scores the feature, not a label.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from clipatlas.atlas.types import LABELLER_VALIDATION, NAMING_P, P_AGAINST_CHANCE, P_AGAINST_SHUFFLED, Label, Score
from clipatlas.interp.judges import Judge
from clipatlas.interp.metrics import (
    auroc,
    aurocs,
    balanced_accuracy,
    p_above_chance,
    p_against_shuffled,
    shuffled_partners,
    top_half_predictions,
)
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
    shuffled_labels: int | None = None  # None: the judge's own default (Judge.shuffled_labels)


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
        per_label = task.shuffled_labels or task.judge.shuffled_labels
        partners = shuffled_partners(len(labels), per_label, np.random.default_rng([task.seed, 12345]))
        rows_of = [_judged_rows(task.splits[label.feature]) for label in labels]
        rated = task.judge.rate(
            [([label.text, *(labels[j].text for j in partners[i])], rows_of[i]) for i, label in enumerate(labels)]
        )
        validation_of = self._validation(labels, task)
        labeller_validation = (
            {LABELLER_VALIDATION: float(np.median(list(validation_of.values())))} if validation_of else {}
        )
        scores = []
        for i, label in enumerate(labels):
            split = task.splits[label.feature]
            n_pos = len(split.positives)
            fits = rated[i]
            values = aurocs(fits, n_pos)
            value, shuffled = float(values[0]), values[1:]
            baseline = float(np.median(shuffled))
            truth = np.arange(fits.shape[1]) < n_pos
            p_values = {P_AGAINST_CHANCE: p_above_chance(*_sides(fits[0], n_pos))}
            if len(shuffled) >= MIN_SHUFFLED_FOR_P:
                p_values[P_AGAINST_SHUFFLED] = p_against_shuffled(value, shuffled)
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
                    n=fits.shape[1],
                    validation=validation_of.get(i),
                    details={
                        "balanced_accuracy": balanced_accuracy(truth, top_half_predictions(fits[0], n_pos)),
                        "baseline_balanced_accuracy": float(
                            np.median([balanced_accuracy(truth, top_half_predictions(f, n_pos)) for f in fits[1:]])
                        ),
                        "positives": n_pos,
                        "negatives": len(split.negatives),
                        "baseline_labels_of": [labels[j].feature for j in partners[i]],
                        **p_values,
                        **labeller_validation,
                    },
                )
            )
        return scores

    @staticmethod
    def _validation(labels: list[Label], task: ScoringTask) -> dict[int, float]:
        """{label index: AUROC of its validation label on the other part of the labelling half}."""
        items = []
        for i, label in enumerate(labels):
            split, text = task.splits[label.feature], label.evidence.get(VALIDATION_TEXT)
            if text and len(split.validation_positives) and len(split.validation_negatives):
                items.append((i, text, split))
        fits = task.judge(
            [(text, np.concatenate([s.validation_positives, s.validation_negatives])) for _, text, s in items]
        )
        return {i: auroc(*_sides(fit, len(s.validation_positives))) for (i, _, s), fit in zip(items, fits)}


# Below this many shuffled labels a permutation p-value, at best 1 / (1 + S), cannot reach NAMING_P: none is reported.
MIN_SHUFFLED_FOR_P = round(1 / NAMING_P) - 1


def _judged_rows(split) -> np.ndarray:
    return np.concatenate([split.positives, split.negatives])


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
                    details={"k": k, "trials": per},
                )
            )
        return scores


def make_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        from clipatlas.errors import UserError

        raise UserError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
    return SCORERS[name]()
