"""The labelling / scoring split of every feature (see `FeatureSplit`), deterministic per seed.

Both `clipatlas label` and `clipatlas score` draw it from the same inputs (the atlas's image
codes, the store's captions and file hashes, the seed), so they agree without storing it; a
label records a digest of its held-out rows and the scorer refuses a label whose split changed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp

from clipatlas.interp.types import LABELLING, FeatureSplit


def image_groups(captions: list[str | None], sha256: list[str | None]) -> np.ndarray:
    """A group id per image: identical (normalised) captions share one, else identical files do."""
    keys: dict[str, int] = {}
    groups = np.empty(len(captions), np.int64)
    for row, (caption, digest) in enumerate(zip(captions, sha256)):
        text = " ".join(caption.lower().split()) if caption else ""
        key = f"c:{text}" if text else f"s:{digest}" if digest else f"r:{row}"
        groups[row] = keys.setdefault(key, len(keys))
    return groups


def feature_columns(indptr: np.ndarray, features: np.ndarray, values: np.ndarray, n_features: int) -> sp.csc_matrix:
    """The atlas's per-image codes (CSR) as an images x features matrix with fast column access."""
    n_images = len(indptr) - 1
    keep = features >= 0
    rows = np.repeat(np.arange(n_images), np.diff(indptr))[keep]
    matrix = sp.csr_matrix((np.asarray(values)[keep], (rows, np.asarray(features)[keep])), shape=(n_images, n_features))
    matrix.eliminate_zeros()
    return matrix.tocsc()


def interleave(units: np.ndarray, strength: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Units ranked by strength (strongest first) go in consecutive pairs, one at random to each
    side; an odd last one goes to a random side. Both sides span the whole range."""
    order = units[np.argsort(-strength, kind="stable")]
    first, second = [], []
    for start in range(0, len(order), 2):
        pair = list(order[start : start + 2])
        rng.shuffle(pair)
        if len(pair) == 1:
            (first if rng.random() < 0.5 else second).append(pair[0])
        else:
            first.append(pair[0])
            second.append(pair[1])
    return np.array(first, np.int64), np.array(second, np.int64)


def spread(rows: np.ndarray, activation: np.ndarray, cap: int) -> np.ndarray:
    """`rows` strongest first; at most `cap` of them, evenly spaced in activation rank."""
    rows = rows[np.argsort(-activation[rows], kind="stable")]
    if len(rows) <= cap:
        return rows
    return rows[np.round(np.linspace(0, len(rows) - 1, cap)).astype(int)]


class Splitter:
    """Splits features of one atlas. `judgeable`: images a judge can read (captioned ones, when
    the store has captions); only they are drawn into the judged samples."""

    def __init__(
        self,
        columns: sp.csc_matrix,
        groups: np.ndarray,
        judgeable: np.ndarray,
        seed: int,
        max_positives: int = 100,
        validation_negatives: int = 50,
    ):
        self.columns, self.groups, self.judgeable = columns, groups, judgeable
        self.seed, self.max_positives, self.validation_negatives = seed, max_positives, validation_negatives
        self.n_images = columns.shape[0]

    def activation(self, feature: int) -> np.ndarray:
        """Dense activations of one feature over all images."""
        return self.columns[:, feature].toarray().ravel()

    def __call__(self, feature: int) -> FeatureSplit | None:
        """The split of `feature`, or None when it has too few activating groups to label and score."""
        rng = np.random.default_rng([self.seed, int(feature)])
        act = self.activation(feature)
        on = np.flatnonzero(act > 0)
        units, unit_of = np.unique(self.groups[on], return_inverse=True)
        strength = np.zeros(len(units))
        np.maximum.at(strength, unit_of, act[on])
        labelling_units, scoring_units = interleave(units, strength, rng)
        rank = {u: s for u, s in zip(units.tolist(), strength.tolist())}
        part_1, part_2 = interleave(labelling_units, np.array([rank[u] for u in labelling_units]), rng)

        def member(chosen: np.ndarray) -> np.ndarray:
            return on[np.isin(self.groups[on], chosen)]

        labelling, scoring = member(labelling_units), member(scoring_units)
        off = np.flatnonzero((act == 0) & self.judgeable)
        # balanced: as many silent images as activating ones (fewer activating ones for very dense features)
        positives = spread(scoring[self.judgeable[scoring]], act, min(self.max_positives, len(off)))
        if len(labelling) < 2 or len(positives) < 2:
            return None
        drawn = rng.permutation(off)
        negatives = drawn[: len(positives)]
        validation_negatives = drawn[len(positives) : len(positives) + self.validation_negatives]
        validation_positives = member(part_2)
        return FeatureSplit(
            feature=int(feature),
            labelling=labelling[np.argsort(-act[labelling], kind="stable")],
            labelling_1=member(part_1)[np.argsort(-act[member(part_1)], kind="stable")],
            validation_positives=spread(
                validation_positives[self.judgeable[validation_positives]], act, self.max_positives
            ),
            scoring=np.sort(scoring),
            positives=positives,
            negatives=np.sort(negatives),
            validation_negatives=np.sort(validation_negatives),
        )


def split_digest(split: FeatureSplit) -> str:
    """A short digest of the rows a labeller had to avoid: a label records it, the scorer checks it."""
    return hashlib.sha256(split.hidden(LABELLING).tobytes()).hexdigest()[:16]
