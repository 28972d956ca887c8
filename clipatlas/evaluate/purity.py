"""Purity@k (saev): for each latent, the share of its top-k images that belong to its majority class.

Computed over the labelled analysis rows (training sample and held-out rows: purity fits nothing
to the labels, so every labelled row may count). A latent is scored when it is active on at least
k of them (for dense codes every row counts as active); signed coders contribute each latent in
both directions. `chance` is the mean purity of k labelled rows drawn at random.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

HIST_BINS = 20
CHANCE_DRAWS = 2000
DENSE_BLOCK = 256


def majority_share(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(m, k) class indices -> (m,) share of each row's most frequent class."""
    counts = np.zeros((len(labels), n_classes), dtype=np.int32)
    np.add.at(counts, (np.repeat(np.arange(len(labels)), labels.shape[1]), labels.ravel()), 1)
    return counts.max(axis=1) / labels.shape[1]


def top_rows(codes, k: int, signed: bool) -> np.ndarray:
    """(latents scored, k) row indices of the k strongest activations of every latent (and, for
    signed codes, of its negation) that is active on at least k rows."""
    found = []
    directions = (1.0, -1.0) if signed else (1.0,)
    if sp.issparse(codes):
        csc = sp.csc_matrix(codes)
        csc.eliminate_zeros()
        for j in range(csc.shape[1]):
            rows = csc.indices[csc.indptr[j] : csc.indptr[j + 1]]
            values = csc.data[csc.indptr[j] : csc.indptr[j + 1]]
            for direction in directions:
                active = direction * values > 0
                if active.sum() >= k:
                    strength = direction * values[active]
                    found.append(rows[active][np.argpartition(-strength, k - 1)[:k]])
    elif len(codes) >= k:
        for start in range(0, codes.shape[1], DENSE_BLOCK):
            block = np.asarray(codes[:, start : start + DENSE_BLOCK])
            for direction in directions:
                found.extend(np.argpartition(-direction * block, k - 1, axis=0)[:k].T)
    return np.array(found, dtype=np.int64).reshape(-1, k)


def purity(codes, signed: bool, labels: np.ndarray, n_classes: int, k: int, seed: int = 0) -> dict[str, Any]:
    """Purity@k over the rows of `codes` whose label is known (`labels` >= 0)."""
    labelled = np.flatnonzero(labels >= 0)
    if len(labelled) < k:
        return {"skipped": f"fewer than {k} labelled rows", "latents": 0}
    y = labels[labelled]
    top = top_rows(codes[labelled], k, signed)
    rng = np.random.default_rng(seed)
    chance = float(majority_share(y[rng.integers(0, len(y), (CHANCE_DRAWS, k))], n_classes).mean())
    if not len(top):
        return {"skipped": f"no latent is active on {k} labelled rows", "latents": 0, "chance": chance}
    shares = majority_share(y[top], n_classes)
    counts, _ = np.histogram(shares, bins=HIST_BINS, range=(0, 1))
    return {
        "k": k,
        "latents": len(shares),
        "mean": float(shares.mean()),
        "median": float(np.median(shares)),
        "q25": float(np.quantile(shares, 0.25)),
        "q75": float(np.quantile(shares, 0.75)),
        "share_pure": float((shares == 1).mean()),
        "chance": chance,
        "hist": counts.tolist(),
    }
