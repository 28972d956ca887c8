"""Relations computed after the pass: quantile samples, coactivation, cosine neighbours.

Quantile samples and coactivation read the per-image codes (each image's strongest
`codes_per_image` features), not the store; neighbours read only the SAE weights.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

N_DECILES = 10


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed pseudo-random priority, so sampling needs no RNG state."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _first_per_group(
    group: np.ndarray, order_keys: tuple[np.ndarray, ...], limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, rank in group) of the first `limit` items of each group under `order_keys`, group-sorted."""
    order = np.lexsort((*order_keys[::-1], group))
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order[rank < limit], rank[rank < limit]


def code_triplets(indptr: np.ndarray) -> np.ndarray:
    """The row of every stored (feature, value) entry of a CSR code matrix."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def quantile_samples(indptr, features, values, max_activation: np.ndarray, per_decile: int):
    """Up to `per_decile` pseudo-random images per tenth of [0, max] for each feature.

    Returns parallel arrays (feature, decile, row, value), sorted by feature, decile, priority.
    """
    rows = code_triplets(indptr)
    n_features = len(max_activation)
    scale = np.where(max_activation > 0, max_activation, 1.0)[features]
    decile = np.minimum((values / scale * N_DECILES).astype(np.int64), N_DECILES - 1)
    priority = _mix64(rows.astype(np.uint64) * np.uint64(n_features) + features.astype(np.uint64))
    group = features.astype(np.int64) * N_DECILES + decile
    keep, _ = _first_per_group(group, (priority,), per_decile)
    return features[keep].astype(np.int64), decile[keep], rows[keep], values[keep]


def coactivation(indptr, features, n_features: int, limit: int, cells_per_block: int = 1 << 24):
    """Top `limit` co-firing features of each feature by Jaccard index over the image codes.

    Returns parallel arrays (feature, rank, other, count, jaccard); ties go to the lower id.
    Co-occurrence counts come block by block of features (a sparse product); a dense
    (block x F) Jaccard matrix gives each row's `limit`-th score, and only the pairs at or
    above it are sorted exactly.
    """
    n_rows = len(indptr) - 1
    ones = np.ones(len(features), dtype=np.int64)
    codes = sp.csr_matrix((ones, features, indptr), shape=(n_rows, n_features))
    fires = np.asarray(codes.sum(axis=0)).ravel()
    codes_t = codes.T.tocsr()
    block = max(1, min(n_features, cells_per_block // n_features))
    parts = []
    for lo in range(0, n_features, block):
        counts = (codes_t[lo : lo + block] @ codes).tocoo()
        feat, other, both = counts.row.astype(np.int64) + lo, counts.col.astype(np.int64), counts.data
        keep = feat != other
        feat, other, both = feat[keep], other[keep], both[keep]
        jaccard = both / (fires[feat] + fires[other] - both)
        dense = torch.zeros(min(block, n_features - lo), n_features, dtype=torch.float64)
        dense[torch.from_numpy(feat - lo), torch.from_numpy(other)] = torch.from_numpy(jaccard)
        threshold = torch.topk(dense, min(limit, n_features), dim=1).values[:, -1].numpy()
        near = jaccard >= threshold[feat - lo]
        feat, other, both, jaccard = feat[near], other[near], both[near], jaccard[near]
        chosen, rank = _first_per_group(feat, (-jaccard, other), limit)
        parts.append((feat[chosen], rank, other[chosen], both[chosen], jaccard[chosen]))
    if not parts:
        return tuple(np.zeros(0) for _ in range(5))
    return tuple(np.concatenate(columns) for columns in zip(*parts))


def cosine_neighbours(directions: torch.Tensor, candidates: np.ndarray, limit: int, block: int = 4096):
    """For every direction (F, d), the `limit` most cosine-similar rows among `candidates` (not itself).

    Returns (others (F, m) int64, cosines (F, m) float32), m = min(limit, len(candidates) - 1) >= 0.
    """
    n_features = directions.shape[0]
    limit = max(0, min(limit, len(candidates) - 1))
    unit = torch.nn.functional.normalize(directions.float(), dim=1)
    keys = unit[torch.from_numpy(candidates).to(unit.device)]
    candidate_ids = torch.from_numpy(candidates).to(unit.device)
    others = np.zeros((n_features, limit), dtype=np.int64)
    cosines = np.zeros((n_features, limit), dtype=np.float32)
    if limit == 0:
        return others, cosines
    for lo in range(0, n_features, block):
        query_ids = torch.arange(lo, min(lo + block, n_features), device=unit.device)
        sims = unit[query_ids] @ keys.T
        sims[query_ids[:, None] == candidate_ids[None, :]] = -torch.inf
        values, index = torch.topk(sims, limit, dim=1)
        others[lo : lo + len(query_ids)] = candidate_ids[index].cpu().numpy()
        cosines[lo : lo + len(query_ids)] = values.cpu().numpy()
    return others, cosines
