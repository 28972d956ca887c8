"""Sparse probing: how well single latents, and logistic probes on a few, tell each class apart.

For each class with enough rows (one class against the other labelled rows):
- every latent's AUROC on the training rows, from rank sums (Mann-Whitney U): one sparse product
  for all latents and classes at once, the zeros of a sparse column tied at one shared rank;
- the best single latent: the highest training AUROC; reported are its AUROC on the held-out rows
  and its F1 there at the threshold that maximised F1 on the training rows;
- for k in `probe_ks`: a logistic regression on the k latents with the highest training AUROC
  (scikit-learn's LogisticRegression objective: L2, C = 1, balanced class weights, standardised
  inputs; every class's regression solved at once by Newton's method), fit on the training rows and scored
  (F1, AUROC) on the held-out rows.
Signed coders (PCA, raw dimensions, k-means coefficients) are read in both directions: a latent's
score is max(AUROC, 1 - AUROC), and the best latent's direction is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

DENSE_BLOCK = 128  # columns ranked at once for dense codes: bounds the float64 rank block


def _one_hot(y: np.ndarray, n_classes: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(y)), (np.arange(len(y)), y)), shape=(len(y), n_classes))


def auroc_matrix(codes: sp.spmatrix | np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(width, n_classes): the AUROC of each latent's value as a score for "row is of class c",
    against every other row. Equal to scikit-learn's `roc_auc_score` column by column (ties averaged)."""
    n = len(y)
    one_hot = _one_hot(y, n_classes)
    n_pos = np.asarray(one_hot.sum(axis=0)).ravel()
    if sp.issparse(codes):
        rank_sums = _sparse_rank_sums(sp.csc_matrix(codes), one_hot)
    else:
        rank_sums = np.zeros((codes.shape[1], n_classes))
        for start in range(0, codes.shape[1], DENSE_BLOCK):
            ranks = rankdata(codes[:, start : start + DENSE_BLOCK], axis=0)
            rank_sums[start : start + DENSE_BLOCK] = (one_hot.T @ ranks).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rank_sums - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))


def _sparse_rank_sums(csc: sp.csc_matrix, one_hot: sp.csr_matrix) -> np.ndarray:
    """Per latent and class, the sum of the class's rows' ranks, without densifying: the stored
    values are ranked within their column (ties averaged, all columns in one sort); the implicit
    zeros of a column all share the rank between its negative and positive values."""
    csc.eliminate_zeros()
    csc.sort_indices()
    n, width = csc.shape
    column = np.repeat(np.arange(width), np.diff(csc.indptr))
    order = np.lexsort((csc.data, column))
    values, columns = csc.data[order], column[order]
    position = np.arange(csc.nnz) - csc.indptr[columns]  # 0-based rank among the column's stored values
    starts = np.flatnonzero(np.r_[True, (columns[1:] != columns[:-1]) | (values[1:] != values[:-1])])
    ends = np.r_[starts[1:], csc.nnz] - 1
    tie = np.repeat(np.arange(len(starts)), ends - starts + 1)
    ranks = np.empty(csc.nnz)
    ranks[order] = (position[starts] + position[ends])[tie] / 2 + 1
    n_zero = n - np.diff(csc.indptr)
    ranks[csc.data > 0] += n_zero[column[csc.data > 0]]
    zero_rank = np.bincount(column[csc.data < 0], minlength=width) + (n_zero + 1) / 2
    structure = sp.csc_matrix((np.ones(csc.nnz), csc.indices, csc.indptr), shape=csc.shape)
    nonzero_sums = (sp.csc_matrix((ranks, csc.indices, csc.indptr), shape=csc.shape).T @ one_hot).toarray()
    zeros_per_class = np.asarray(one_hot.sum(axis=0)).ravel() - (structure.T @ one_hot).toarray()
    return nonzero_sums + zeros_per_class * zero_rank[:, None]


def _dense(block) -> np.ndarray:
    return block.toarray() if sp.issparse(block) else np.asarray(block)


def auroc(truth: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of `scores` for the boolean `truth` (scikit-learn's roc_auc_score, ties averaged)."""
    return float(auroc_matrix(np.asarray(scores, np.float64)[:, None], truth.astype(np.int64), 2)[0, 1])


def f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the positive class (0 when there is nothing to score, as scikit-learn's f1_score)."""
    tp = np.count_nonzero(truth & predicted)
    wrong = np.count_nonzero(truth ^ predicted)
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold t (positive when score >= t) with the highest F1 on these rows."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    true_positives = np.cumsum(truth[order])
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # the last row of each distinct score
    f1s = 2 * true_positives[last] / (last + 1 + truth.sum())
    return float(ranked[last[int(np.argmax(f1s))]])


def _logistic_objective(inputs, sign, weight, beta, penalty) -> np.ndarray:
    margin = sign * np.einsum("pnk,pk->pn", inputs, beta)
    return (weight * np.logaddexp(0, -margin)).sum(axis=1) + 0.5 * (penalty * beta**2).sum(axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """L2 logistic regressions with balanced class weights, one per problem, fit together.

    x: (problems, n, k) standardised inputs, y: (problems, n) bool. Minimises, per problem,
    sum_i w_i log(1 + exp(-s_i (x_i . coef + intercept))) + |coef|^2 / 2 with s_i = +-1 and
    w_i = n / (2 n_class(i)): scikit-learn's LogisticRegression(class_weight="balanced") objective,
    by Newton's method with backtracking (all problems at once: k is small, the Hessians tiny).
    Returns (coef (problems, k), intercept (problems,)).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # tiny products: BLAS threads would only spin against the caller's
        return _newton(x, y, max_iter)


def _newton(x: np.ndarray, y: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    problems, n, k = x.shape
    inputs = np.concatenate([x, np.ones((problems, n, 1))], axis=2)
    n_pos = y.sum(axis=1, keepdims=True)
    weight = np.where(y, n / (2 * np.maximum(n_pos, 1)), n / (2 * np.maximum(n - n_pos, 1)))
    sign = np.where(y, 1.0, -1.0)
    penalty = np.r_[np.ones(k), 0.0]  # the intercept is not penalised
    beta = np.zeros((problems, k + 1))
    objective = _logistic_objective(inputs, sign, weight, beta, penalty)
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-np.einsum("pnk,pk->pn", inputs, beta)))
        gradient = np.einsum("pnk,pn->pk", inputs, weight * (p - y)) + penalty * beta
        hessian = (inputs * (weight * p * (1 - p))[..., None]).transpose(0, 2, 1) @ inputs + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        scale = np.ones(problems)
        for _halving in range(30):  # backtrack each problem until its objective does not rise
            trial = beta - scale[:, None] * step
            trial_objective = _logistic_objective(inputs, sign, weight, trial, penalty)
            worse = trial_objective > objective + 1e-12 * np.abs(objective)
            if not worse.any():
                break
            scale[worse] /= 2
        beta, objective = trial, trial_objective
        if np.abs(scale[:, None] * step).max() < 1e-10:
            break
    return beta[:, :k], beta[:, k]


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both scaled by the training rows' mean and standard deviation (per problem and column)."""
    mean = train.mean(axis=1, keepdims=True)
    std = train.std(axis=1, keepdims=True)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def probe_classes(
    codes,
    signed: bool,
    labels: np.ndarray,
    classes: list[str],
    train: np.ndarray,
    test: np.ndarray,
    probe_ks: tuple[int, ...],
    min_class_rows: int,
) -> dict[str, Any]:
    """Probing over the rows of `codes`: `labels` (-1: none) per row; `train`/`test` are boolean row masks."""
    train_rows = np.flatnonzero(train & (labels >= 0))
    test_rows = np.flatnonzero(test & (labels >= 0))
    train_y, test_y = labels[train_rows], labels[test_rows]
    n_train = np.bincount(train_y, minlength=len(classes))
    n_test = np.bincount(test_y, minlength=len(classes))
    chosen = [c for c in range(len(classes)) if n_train[c] >= min_class_rows and n_test[c] >= 2]
    if not chosen:
        return {
            "skipped": f"no class has {min_class_rows} labelled training rows and 2 held-out rows",
            "classes": [],
        }
    train_codes, test_codes = codes[train_rows], codes[test_rows]
    if sp.issparse(codes):  # column access below
        train_codes, test_codes = train_codes.tocsc(), test_codes.tocsc()
    aurocs = auroc_matrix(train_codes, train_y, len(classes))
    score = np.maximum(aurocs, 1 - aurocs) if signed else aurocs
    order = np.argsort(-np.nan_to_num(score[:, chosen], nan=0.5), axis=0, kind="stable").T  # (chosen, width)
    results = []
    for c, ranked in zip(chosen, order):
        best = int(ranked[0])
        direction = -1.0 if signed and aurocs[best, c] < 0.5 else 1.0
        train_scores = direction * _dense(train_codes[:, [best]]).ravel()
        test_scores = direction * _dense(test_codes[:, [best]]).ravel()
        threshold = best_threshold(train_scores, train_y == c)
        results.append(
            {
                "class": classes[c],
                "train_rows": int(n_train[c]),
                "test_rows": int(n_test[c]),
                "best_latent": best,
                "direction": int(direction),
                "best_latent_train_auroc": float(score[best, c]),
                "best_latent_auroc": auroc(test_y == c, test_scores),
                "best_latent_f1": f1(test_y == c, test_scores >= threshold),
                "probe": {},
            }
        )
    for k in probe_ks:
        top = [np.sort(ranked[:k]) for ranked in order]
        train_x = np.stack([_dense(train_codes[:, t]) for t in top]).astype(np.float64)
        test_x = np.stack([_dense(test_codes[:, t]) for t in top]).astype(np.float64)
        train_x, test_x = _standardise(train_x, test_x)
        truth_train = np.stack([train_y == c for c in chosen])
        coef, intercept = fit_logistic(train_x, truth_train)
        decision = np.einsum("pnk,pk->pn", test_x, coef) + intercept[:, None]
        for entry, c, scores in zip(results, chosen, decision):
            entry["probe"][str(k)] = {"f1": f1(test_y == c, scores > 0), "auroc": auroc(test_y == c, scores)}
    return {"classes": results, "mean": _means(results, probe_ks)}


def _means(results: list[dict[str, Any]], probe_ks: tuple[int, ...]) -> dict[str, Any]:
    def mean(values) -> float:
        return float(np.mean(list(values)))

    return {
        "classes": len(results),
        "best_latent_auroc": mean(r["best_latent_auroc"] for r in results),
        "best_latent_f1": mean(r["best_latent_f1"] for r in results),
        "probe_f1": {str(k): mean(r["probe"][str(k)]["f1"] for r in results) for k in probe_ks},
        "probe_auroc": {str(k): mean(r["probe"][str(k)]["auroc"] for r in results) for k in probe_ks},
    }
