"""What labellers and judges read, and the guard that keeps scoring images from labellers.

`StoreData` holds one atlas's shared inputs (captions, groups, activations, and lazily the
encoder, class probabilities and caption term counts). A labeller sees a feature only through a
`FeatureView`, which refuses every held-out row (`LeakError`): the split is enforced where the
data is read, not by each labeller's good behaviour.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from clipatlas.atlas.query import Atlas
from clipatlas.errors import UserError
from clipatlas.interp.split import Splitter, feature_columns, image_groups
from clipatlas.interp.text import TermCounts
from clipatlas.interp.types import LABELLING, FeatureSplit, LeakError

log = logging.getLogger(__name__)
NO_ENCODER = "synthetic"  # the encoder id of stores made from arrays (write_store's default)
ALL_PROBABILITIES_MAX = 50_000_000  # 200 MB of float32 class probabilities kept in memory


class StoreData:
    """The inputs of one atlas that every feature's labelling and judging share."""

    def __init__(self, atlas: Atlas, seed: int = 0, max_positives: int = 100, validation_negatives: int = 50):
        self.atlas = atlas
        self.store = atlas.store
        metadata = self.store.metadata
        names = set(metadata.column_names)
        self.captions: list[str | None] = metadata.column("caption").to_pylist() if "caption" in names else []
        if not self.captions:
            self.captions = [None] * len(self.store)
        self.image_ids: list[str] = metadata.column("image_id").to_pylist()
        sha256 = metadata.column("sha256").to_pylist() if "sha256" in names else [None] * len(self.store)
        self.has_captions = any(c and c.strip() for c in self.captions)
        self.judgeable = (
            np.array([bool(c and c.strip()) for c in self.captions])
            if self.has_captions
            else np.ones(len(self.store), bool)
        )
        self.groups = image_groups(self.captions, sha256)
        codes = atlas.image_codes()
        self.columns = feature_columns(codes.indptr, codes.features, codes.values, atlas.n_features)
        self.counts = np.diff(self.columns.indptr)
        self.splitter = Splitter(self.columns, self.groups, self.judgeable, seed, max_positives, validation_negatives)

    # -- lazily built, shared --------------------------------------------------------------------
    @functools.cached_property
    def terms(self) -> TermCounts:
        if not self.has_captions:
            raise UserError(
                "the store has no captions: the captions labeller and judge need them "
                "(LAION-style parquet, WebDataset .txt, or the demo sets); use --labeller classifier, clip-text or vlm"
            )
        return TermCounts(self.captions, self.groups)

    @functools.cached_property
    def encoder(self):
        from clipatlas.encoders import load_encoder

        if self.store.encoder == NO_ENCODER:
            raise UserError(
                "the store was written from arrays (encoder 'synthetic'): no encoder to label or judge with"
            )
        return load_encoder(self.store.encoder)

    @functools.cached_property
    def class_head(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(weight (classes, d), bias, class names) of the encoder's classifier head."""
        if not hasattr(self.encoder, "imagenet_head"):
            raise UserError(
                f"encoder {self.store.encoder} has no class head; the classifier labeller and classes judge need one "
                "(efficientnet-lite0 has ImageNet's)"
            )
        weight, bias, names = self.encoder.imagenet_head()
        return _numpy(weight), _numpy(bias), list(names)

    def _probabilities_of(self, rows: np.ndarray) -> np.ndarray:
        weight, bias, _ = self.class_head
        logits = self.store.rows(np.asarray(rows)) @ weight.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    @functools.cached_property
    def _probability_table(self) -> np.ndarray | None:
        """Every image's class probabilities, kept when they fit in ALL_PROBABILITIES_MAX floats."""
        if len(self.store) * len(self.class_head[2]) > ALL_PROBABILITIES_MAX:
            return None
        return self._probabilities_of(np.arange(len(self.store))).astype(np.float32)

    def class_probabilities(self, rows: np.ndarray) -> np.ndarray:
        table = self._probability_table
        return table[np.asarray(rows)] if table is not None else self._probabilities_of(rows)

    @functools.cached_property
    def class_probability_sum(self) -> np.ndarray:
        """Sum over every stored image of its class probabilities (for base rates)."""
        total = 0.0
        for start in range(0, len(self.store), 8192):
            total = total + self.class_probabilities(np.arange(start, min(start + 8192, len(self.store)))).sum(0)
        return np.asarray(total, dtype=np.float64)

    def unit_embeddings(self, rows: np.ndarray) -> np.ndarray:
        x = self.store.rows(np.asarray(rows))
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def eligible_features(self, min_activating: int, wanted: list[int] | None) -> list[int]:
        features = np.flatnonzero(self.counts >= min_activating)
        if wanted is not None:
            features = np.intersect1d(features, wanted)
        return features.tolist()

    def view(self, split: FeatureSplit, phase: str = LABELLING) -> FeatureView:
        return FeatureView(self, split, phase)


class FeatureView:
    """One feature as a labeller may see it: its shown images and the store outside the held-out rows."""

    def __init__(self, data: StoreData, split: FeatureSplit, phase: str):
        self.data, self.split, self.phase = data, split, phase
        self.feature = split.feature
        self.rows = split.shown(phase)  # strongest first
        self.hidden = split.hidden(phase)
        self._rng = np.random.default_rng([data.splitter.seed, self.feature, 1 if phase == LABELLING else 2])

    def check(self, rows) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        leaked = np.intersect1d(rows, self.hidden)
        if len(leaked):
            raise LeakError(f"feature {self.feature}: rows {leaked[:5].tolist()} are held out to score its label")
        return rows

    def activations(self, rows) -> np.ndarray:
        rows = self.check(rows)
        return self.data.columns[:, self.feature].toarray().ravel()[rows]

    def captions(self, rows) -> list[str]:
        return [self.data.captions[r] or "" for r in self.check(rows)]

    def image_ids(self, rows) -> list[str]:
        return [self.data.image_ids[r] for r in self.check(rows)]

    def open_image(self, row: int):
        return self.data.store.open_image(int(self.check(row)[0]))

    def unit_embeddings(self, rows) -> np.ndarray:
        return self.data.unit_embeddings(self.check(rows))

    def class_probabilities(self, rows) -> np.ndarray:
        return self.data.class_probabilities(self.check(rows))

    def background(self, n: int) -> np.ndarray:
        """Up to n random images where the feature is silent, none of them held out."""
        act = self.data.columns[:, self.feature].toarray().ravel()
        pool = np.setdiff1d(np.flatnonzero(act == 0), self.hidden)
        return np.sort(self._rng.choice(pool, size=min(n, len(pool)), replace=False))

    def term_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts over the shown images' caption groups, counts over every other group that is not
        held out): the two corpora the captions labeller compares."""
        terms = self.data.terms
        shown = np.unique(self.data.groups[self.rows])
        held = np.setdiff1d(np.unique(self.data.groups[self.hidden]), shown)
        inside = terms.counts(shown)
        return inside, terms.total - inside - terms.counts(held)

    def class_base_rate(self) -> np.ndarray:
        """Mean class probabilities over the store without the held-out images."""
        held = self.data.class_probabilities(self.hidden).sum(0) if len(self.hidden) else 0.0
        return (self.data.class_probability_sum - held) / (len(self.data.store) - len(self.hidden))


def _numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().float().numpy()
    return np.asarray(array, dtype=np.float32)
