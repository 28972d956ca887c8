"""The atlas's record types: what `Atlas` answers and what the build and the labellers write.

Kept apart from the reader (`query.Atlas`) and the writers (`build`, `annotations`), so every
module that handles atlas records imports them from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clipatlas.errors import UserError

# Which label a feature shows first: any labeller's own label beats the lens labels.
LENS_SOURCES = ("imagenet", "clip-text", "captions")


class AtlasError(UserError):
    """The atlas is missing, outdated, or asked about something it does not hold."""


@dataclass(frozen=True)
class Example:
    """An image that activates a feature. `decile` is set for quantile samples only."""

    row: int
    image_id: str
    activation: float
    rank: int
    decile: int | None = None


@dataclass(frozen=True)
class Neighbour:
    """A related feature: `score` is the Jaccard index (coactivating) or the cosine (similar)."""

    feature: int
    score: float
    count: int | None = None


@dataclass(frozen=True)
class Activation:
    feature: int
    activation: float


@dataclass(frozen=True)
class Label:
    feature: int
    source: str
    text: str
    score: dict[str, Any]


@dataclass(frozen=True)
class FeatureInfo:
    """Everything on a feature page except its examples and neighbours (separate calls)."""

    feature: int
    alive: bool
    count: int
    frequency: float
    max_activation: float
    mean_activation: float
    hist_edges: list[float]  # len(hist_counts) + 1 edges, trimmed to the non-empty bins
    hist_counts: list[int]
    x: float | None
    y: float | None
    cluster: int | None
    labels: list[Label]
    icon: str | None

    @property
    def label(self) -> str | None:
        return self.labels[0].text if self.labels else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


@dataclass(frozen=True)
class MapPoints:
    """The alive features' 2-D map, as parallel arrays (one entry per alive feature)."""

    feature: np.ndarray  # int32
    x: np.ndarray  # float32
    y: np.ndarray  # float32
    cluster: np.ndarray  # int32
    label: list[str]  # "" where a feature has no label

    def __len__(self) -> int:
        return len(self.feature)
