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


NOT_IN_CODE = np.iinfo(np.int32).max  # the rank of a feature that is not in an image's stored code


@dataclass(frozen=True)
class FeatureTable:
    """Per-feature statistics of the whole atlas as parallel arrays, indexed by feature id."""

    alive: np.ndarray  # bool
    count: np.ndarray  # int64: images the feature fires on
    max_activation: np.ndarray  # float32


@dataclass(frozen=True)
class ImageCodes:
    """Every store image's sparse SAE code in CSR form: row r's active features are
    `features[indptr[r]:indptr[r + 1]]`, strongest first, with their activations in `values`
    (at most the atlas's `codes_per_image` of them, so ranks below that are exact)."""

    indptr: np.ndarray  # int64 (n_images + 1,)
    features: np.ndarray  # int32
    values: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def strongest(self) -> np.ndarray:
        """Each row's strongest feature, -1 where no feature fires."""
        lengths = np.diff(self.indptr)
        out = np.full(len(self), -1, dtype=np.int64)
        out[lengths > 0] = self.features[self.indptr[:-1][lengths > 0]]
        return out

    def stats(self, rows: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(activations, ranks), each (len(rows), len(features)): feature j's activation in row i and its
        rank in that row's code (0 = strongest); activation 0 and rank NOT_IN_CODE where it is absent."""
        rows = np.asarray(rows, dtype=np.int64)
        features = np.asarray(features, dtype=np.int64)
        acts = np.zeros((len(rows), len(features)), dtype=np.float32)
        ranks = np.full((len(rows), len(features)), NOT_IN_CODE, dtype=np.int64)
        starts, lengths = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        owner = np.repeat(np.arange(len(rows)), lengths)
        position = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        entry = np.repeat(starts, lengths) + position
        hit_entry, hit_feature = np.nonzero(self.features[entry][:, None] == features[None, :])
        acts[owner[hit_entry], hit_feature] = self.values[entry[hit_entry]]
        ranks[owner[hit_entry], hit_feature] = position[hit_entry]
        return acts, ranks

    def rows_of(self, feature: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, activations, ranks) of every image whose code holds `feature` (one scan of the codes)."""
        entries = np.flatnonzero(self.features == feature)
        rows = np.searchsorted(self.indptr, entries, side="right") - 1
        return rows, self.values[entries].astype(np.float32), entries - self.indptr[rows]
