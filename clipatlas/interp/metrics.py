"""The scorers' arithmetic, on plain arrays (tested against scikit-learn)."""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu, rankdata


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve of scores for activating vs silent images: the Mann-Whitney U
    statistic from mid-ranks (ties count half) over n_pos * n_neg. 0.5 when either side is empty.
    (scipy's mannwhitneyu gives the same U but computes an exact p-value too: 2.7 ms a call.)"""
    return float(aurocs(np.concatenate([positives, negatives]), len(positives))[0])


def aurocs(fits: np.ndarray, n_pos: int) -> np.ndarray:
    """`auroc` of each row of `fits` (labels x images; the first `n_pos` images activating), at once."""
    fits = np.atleast_2d(fits)
    n_neg = fits.shape[1] - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full(len(fits), 0.5)
    ranks = rankdata(fits, axis=1)
    return (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def p_above_chance(positives: np.ndarray, negatives: np.ndarray) -> float:
    """One-sided Mann-Whitney p-value that activating images are rated above silent ones: how often
    ratings that know nothing of the feature would separate them at least this well (1.0 when a side is empty)."""
    if len(positives) == 0 or len(negatives) == 0:
        return 1.0
    return float(mannwhitneyu(positives, negatives, alternative="greater").pvalue)


def p_against_shuffled(own: float, shuffled: np.ndarray) -> float:
    """Permutation p-value of a label's AUROC among other features' labels on the same images:
    (1 + those at least as good) / (1 + how many were judged)."""
    return float((1 + np.sum(np.asarray(shuffled) >= own)) / (1 + len(shuffled)))


def shuffled_partners(n: int, per_item: int, rng: np.random.Generator) -> np.ndarray:
    """(n, min(per_item, n - 1)) indices: for each item, distinct other items (never itself)."""
    if n < 2:
        raise ValueError("shuffled partners need at least two items")
    width = min(per_item, n - 1)
    picks = np.stack([rng.choice(n - 1, width, replace=False) for _ in range(n)])
    return picks + (picks >= np.arange(n)[:, None])


def top_half_predictions(scores: np.ndarray, n_predicted: int) -> np.ndarray:
    """Call the `n_predicted` best-scoring images activating (ties broken by position): on a
    balanced sample this needs no threshold fitted to the labels."""
    predicted = np.zeros(len(scores), bool)
    predicted[np.argsort(-scores, kind="stable")[:n_predicted]] = True
    return predicted


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean of the recall on activating and on silent images."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    return float((predicted[truth].mean() + (~predicted[~truth]).mean()) / 2)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation with no fixed point (n >= 2), by rejection: each element goes to another."""
    if n < 2:
        raise ValueError("a derangement needs at least two elements")
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm
