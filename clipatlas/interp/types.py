"""The interp stage's records: a feature's split, what a labeller may see, what it returns.

Kept apart from the code that builds them (`split`, `data`) and uses them (`labellers`,
`judges`, `scorers`). The atlas's own records (`Label`, `Score`) live in `clipatlas.atlas.types`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LABELLING, VALIDATION = "labelling", "validation"


class LeakError(AssertionError):
    """A labeller asked for an image that is held out to score its label: a bug, never bad input."""


@dataclass(frozen=True)
class FeatureSplit:
    """One feature's images, split so that no image scores a label its labeller saw.

    Activating images are grouped (identical captions or identical files form one group, e.g. a
    stamp and its mirror image); groups ranked by activation go in pairs, one at random to each
    half, so both halves span every activation level. The labelling half is split again the same
    way into `labelling_1` (labelled) and `validation_positives` (judged): the validation score.
    All row arrays are store rows; `positives` and `validation_positives` strongest first.
    """

    feature: int
    labelling: np.ndarray  # the labelling half, strongest first
    labelling_1: np.ndarray  # the part of it a validation label is made from
    validation_positives: np.ndarray  # the other part: judged for the validation score
    scoring: np.ndarray  # the scoring half: every activating image no labeller may see
    positives: np.ndarray  # judged: at most max_positives of `scoring`, spread over its activations
    negatives: np.ndarray  # judged: as many random non-activating images
    validation_negatives: np.ndarray  # random non-activating images for the validation score

    def hidden(self, phase: str) -> np.ndarray:
        """Sorted rows a labeller must not see in `phase` (LABELLING: the final label; VALIDATION)."""
        parts = [self.scoring, self.positives, self.negatives]
        if phase == VALIDATION:
            parts += [self.validation_positives, self.validation_negatives]
        return np.unique(np.concatenate(parts)).astype(np.int64)

    def shown(self, phase: str) -> np.ndarray:
        return self.labelling if phase == LABELLING else self.labelling_1


@dataclass(frozen=True)
class Draft:
    """A labeller's answer for one feature: the label, an optional sentence, and its evidence."""

    text: str
    description: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
