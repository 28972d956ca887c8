"""Each metric of the evaluation suite against a brute-force reference on small data:
scikit-learn for AUROC, F1, logistic probes and PCA, scipy for the matching, numpy for the rest."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clipatlas.evaluate.coders import (
    BASELINE_FITS,
    FitData,
    KMeansCoder,
    PCACoder,
    fit_random,
    principal_components,
)
from clipatlas.evaluate.config import BASELINES
from clipatlas.evaluate.fidelity import ImageNetAgreement, ZeroShot
from clipatlas.evaluate.probing import auroc_matrix, best_threshold, f1, fit_logistic, probe_classes
from clipatlas.evaluate.purity import purity
from clipatlas.evaluate.stability import match_directions

CPU = torch.device("cpu")


def sparse_codes(rng, n, width, density=0.2, signed=False):
    values = rng.standard_normal((n, width))
    values = values if signed else np.abs(values)
    codes = values * (rng.random((n, width)) < density)
    codes[:, 1] = np.round(codes[:, 1], 1)  # ties
    codes[:, 2] = 0  # a dead latent
    return codes


# -- AUROC, F1, thresholds -------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [False, True])
def test_auroc_of_every_latent_and_class_matches_scikit_learn(signed):
    rng = np.random.default_rng(0)
    codes = sparse_codes(rng, 300, 24, signed=signed)
    y = rng.integers(0, 4, 300)
    expected = np.array([[roc_auc_score(y == c, codes[:, j]) for c in range(4)] for j in range(24)])
    np.testing.assert_allclose(auroc_matrix(sp.csr_matrix(codes), y, 4), expected, atol=1e-12)
    np.testing.assert_allclose(auroc_matrix(codes.astype(np.float32), y, 4), expected, atol=1e-6)


def test_best_threshold_reaches_the_best_f1_of_the_precision_recall_curve():
    rng = np.random.default_rng(1)
    for _ in range(5):
        scores = np.round(rng.standard_normal(200), 1)
        truth = rng.random(200) < 0.3
        precision, recall, _ = precision_recall_curve(truth, scores)
        with np.errstate(invalid="ignore"):
            best = np.nanmax(2 * precision * recall / (precision + recall))
        threshold = best_threshold(scores, truth)
        assert f1(truth, scores >= threshold) == pytest.approx(best)
        assert f1(truth, scores >= threshold) == pytest.approx(f1_score(truth, scores >= threshold))
    assert f1(np.zeros(4, bool), np.zeros(4, bool)) == 0.0


def test_batched_logistic_regression_equals_scikit_learn():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 300, 4))
    y = x[..., 0] + 0.7 * rng.standard_normal((3, 300)) > 0.8
    x[2, :, 1] = np.where(y[2], 2.0, -1.0)  # separable: only the penalty bounds the weights
    coef, intercept = fit_logistic(x, y)
    for p in range(3):
        ref = LogisticRegression(class_weight="balanced", tol=1e-12, max_iter=10_000).fit(x[p], y[p])
        np.testing.assert_allclose(coef[p], ref.coef_[0], atol=1e-6)
        assert intercept[p] == pytest.approx(ref.intercept_[0], abs=1e-6)


def test_probing_matches_a_brute_force_scikit_learn_run():
    """Best latent by training AUROC, its held-out AUROC and F1 (threshold from the training rows),
    and top-k logistic probes, each recomputed with scikit-learn one class at a time."""
    rng = np.random.default_rng(3)
    n, width, n_classes = 400, 30, 3
    y = rng.integers(0, n_classes, n)
    codes = sparse_codes(rng, n, width, density=0.3)
    for c in range(n_classes):  # latents 5c..5c+2 fire more on class c
        codes[:, 5 * c : 5 * c + 3] += (y == c)[:, None] * rng.random((n, 3)) * (rng.random((n, 3)) < 0.6)
    labels = np.where(rng.random(n) < 0.1, -1, y)  # some rows unlabelled
    test = rng.random(n) < 0.3
    ks = (1, 3)
    result = probe_classes(sp.csr_matrix(codes), False, labels, ["a", "b", "c"], ~test, test, ks, 5)
    train_rows, test_rows = np.flatnonzero(~test & (labels >= 0)), np.flatnonzero(test & (labels >= 0))
    for c, entry in enumerate(result["classes"]):
        truth_train, truth_test = labels[train_rows] == c, labels[test_rows] == c
        train_auroc = [roc_auc_score(truth_train, codes[train_rows, j]) for j in range(width)]
        best = int(np.argmax(train_auroc))
        assert entry["best_latent"] == best
        assert entry["best_latent_auroc"] == pytest.approx(roc_auc_score(truth_test, codes[test_rows, best]))
        candidates = np.unique(codes[train_rows, best])
        train_f1 = [f1_score(truth_train, codes[train_rows, best] >= t) for t in candidates]
        threshold = candidates[int(np.argmax(train_f1))]
        assert entry["best_latent_f1"] == pytest.approx(f1_score(truth_test, codes[test_rows, best] >= threshold))
        for k in ks:
            top = np.sort(np.argsort(-np.array(train_auroc), kind="stable")[:k])
            model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", tol=1e-10))
            model.fit(codes[np.ix_(train_rows, top)], truth_train)
            test_x = codes[np.ix_(test_rows, top)]
            assert entry["probe"][str(k)]["f1"] == pytest.approx(f1_score(truth_test, model.predict(test_x)))
            expected_auroc = roc_auc_score(truth_test, model.decision_function(test_x))
            assert entry["probe"][str(k)]["auroc"] == pytest.approx(expected_auroc, abs=1e-6)
    assert result["mean"]["probe_f1"]["3"] == pytest.approx(np.mean([e["probe"]["3"]["f1"] for e in result["classes"]]))
    assert result["mean"]["best_latent_auroc"] > 0.7  # the planted latents are found


def test_signed_codes_are_read_in_both_directions():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    codes = rng.standard_normal((300, 5))
    codes[:, 3] -= 2.0 * y  # class 1 pushes latent 3 down
    test = rng.random(300) < 0.3
    result = probe_classes(codes, True, y, ["zero", "one"], ~test, test, (1,), 5)
    one = result["classes"][1]
    assert one["best_latent"] == 3 and one["direction"] == -1
    assert one["best_latent_auroc"] == pytest.approx(roc_auc_score(y[test] == 1, -codes[test, 3]))
    assert one["best_latent_auroc"] > 0.8


def test_probing_skips_classes_without_rows_and_says_why():
    y = np.array([0] * 20 + [1] * 3)
    codes = np.random.default_rng(0).random((23, 4))
    test = np.arange(23) % 2 == 0
    result = probe_classes(codes, False, y, ["big", "tiny"], ~test, test, (1,), 5)
    assert [e["class"] for e in result["classes"]] == ["big"]
    none = probe_classes(codes, False, y, ["big", "tiny"], ~test, test, (1,), 50)
    assert none["classes"] == [] and "50 labelled training rows" in none["skipped"]


# -- purity ---------------------------------------------------------------------------------------
def brute_purity(codes, labels, k, dense):
    """Sparse codes: the latent's top-k among the rows where it fires; dense (signed) codes: among
    all rows, in both directions."""
    shares = []
    for j in range(codes.shape[1]):
        for column in (codes[:, j], -codes[:, j]) if dense else (codes[:, j],):
            candidates = np.arange(len(codes)) if dense else np.flatnonzero(column > 0)
            if len(candidates) >= k:
                top = candidates[np.argsort(-column[candidates], kind="stable")[:k]]
                shares.append(np.bincount(labels[top]).max() / k)
    return np.array(shares)


@pytest.mark.parametrize("dense", [False, True])
def test_purity_matches_brute_force(dense):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 200)
    codes = np.abs(rng.standard_normal((200, 12))) * (rng.random((200, 12)) < 0.3)
    codes[:, 0] = (labels == 1) * rng.random(200)  # a pure latent
    if dense:
        codes = rng.standard_normal((200, 12))
        codes[:, 0] = np.where(labels == 2, 5.0, 0.0) + rng.random(200)
    result = purity(codes if dense else sp.csr_matrix(codes), dense, labels, 3, 8)
    expected = brute_purity(codes, labels, 8, dense)
    assert result["latents"] == len(expected)
    assert result["mean"] == pytest.approx(expected.mean()) and result["median"] == pytest.approx(np.median(expected))
    assert result["share_pure"] == pytest.approx((expected == 1).mean()) and result["share_pure"] > 0
    assert sum(result["hist"]) == len(expected)
    assert 0.34 < result["chance"] < 0.7  # 3 balanced classes, 8 draws


def test_purity_ignores_unlabelled_rows():
    labels = np.array([0] * 10 + [-1] * 10)
    codes = np.zeros((20, 1))
    codes[:, 0] = np.r_[np.ones(10), 5 * np.ones(10)]  # strongest on the unlabelled rows
    result = purity(sp.csr_matrix(codes), False, labels, 1, 4)
    assert result["latents"] == 1 and result["mean"] == 1.0


# -- stability ----------------------------------------------------------------------------------------
def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_matching_finds_the_best_permutation_like_exhaustive_search():
    rng = np.random.default_rng(6)
    a, b = unit(rng.standard_normal((6, 5))), unit(rng.standard_normal((6, 5)))
    cosine = a @ b.T
    best = max(itertools.permutations(range(6)), key=lambda p: cosine[np.arange(6), list(p)].sum())
    matched = match_directions(a, b)
    assert matched.sum() == pytest.approx(cosine[np.arange(6), list(best)].sum(), abs=1e-6)


def test_matching_recovers_a_planted_permutation_and_sign_free_ignores_flips():
    rng = np.random.default_rng(7)
    a = unit(rng.standard_normal((50, 20)))
    permutation = rng.permutation(50)
    b = a[permutation] * np.where(rng.random(50) < 0.5, -1, 1)[:, None]
    assert match_directions(a, b, sign_free=True) == pytest.approx(np.ones(50), abs=1e-6)
    assert match_directions(a, a[permutation]) == pytest.approx(np.ones(50), abs=1e-6)
    assert match_directions(a, b).mean() < 0.9  # flipped rows cannot match themselves with signs


# -- baselines ----------------------------------------------------------------------------------------
def dense_codes(coder, x: np.ndarray) -> np.ndarray:
    """A coder's codes of x as a dense (n, width) array, whichever form it returns them in."""
    codes = coder.encode(torch.from_numpy(x))
    if coder.dense:
        return codes.numpy()
    indices, values = (t.numpy() for t in codes)
    dense = np.zeros((len(x), coder.width), np.float32)
    rows = np.broadcast_to(np.arange(len(x))[:, None], indices.shape)
    dense[rows[indices >= 0], indices[indices >= 0]] = values[indices >= 0]
    return dense


def fit_data(x, k=3, width=24, seed=0):
    return FitData(x.astype(np.float32), k, width, 1.0, seed, 5, CPU)


def clustered(rng, n=300, d=8):
    centres = rng.standard_normal((6, d)) * 4
    return (centres[rng.integers(0, 6, n)] + rng.standard_normal((n, d))).astype(np.float32)


def test_principal_components_match_scikit_learn():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((500, 6)) * np.arange(1, 7) @ rng.standard_normal((6, 6))).astype(np.float32)
    mean, components = principal_components(x, 4, block=64)
    reference = PCA(4).fit(x)
    np.testing.assert_allclose(mean, reference.mean_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.abs(components @ reference.components_.T), np.eye(4), atol=1e-4)
    coder = BASELINE_FITS["pca"](fit_data(x, k=4))
    assert coder.dense and coder.width == 4
    x_hat = coder.decode(coder.encode(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(x_hat, reference.inverse_transform(reference.transform(x)), atol=1e-3)


def test_pca_width_keeps_each_rows_largest_coefficients():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    coder = BASELINE_FITS["pca-width"](fit_data(x, k=2, width=100))
    assert isinstance(coder, PCACoder) and coder.width == 6 and not coder.dense  # capped at d
    z = dense_codes(coder, x)
    full = (x - coder.mean.numpy()) @ coder.components.numpy().T
    expected = np.zeros_like(full)
    top = np.argsort(-np.abs(full), axis=1)[:, :2]
    np.put_along_axis(expected, top, np.take_along_axis(full, top, axis=1), axis=1)
    np.testing.assert_allclose(z, expected, atol=1e-5)
    x_hat = coder.decode(coder.encode(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(x_hat, z @ coder.components.numpy() + coder.mean.numpy(), atol=1e-4)


def test_kmeans_codes_are_the_k_nearest_centroids_with_least_squares_coefficients():
    rng = np.random.default_rng(10)
    x = clustered(rng)
    coder = BASELINE_FITS["kmeans"](fit_data(x, k=3, width=12))
    assert isinstance(coder, KMeansCoder) and coder.width == 12
    z = dense_codes(coder, x[:40])
    centroids, mean = coder.centroids.numpy(), coder.mean.numpy()
    for row, code in zip(x[:40], z):
        nearest = np.argsort(((centroids - row) ** 2).sum(axis=1))[:3]
        assert set(np.flatnonzero(code)) <= set(nearest)
        atoms = centroids[nearest] - mean
        coefficients, *_ = np.linalg.lstsq(atoms.T, row - mean, rcond=None)
        np.testing.assert_allclose(code[nearest], coefficients, atol=1e-3)
    x_hat = coder.decode(coder.encode(torch.from_numpy(x[:40]))).numpy()
    np.testing.assert_allclose(x_hat, z @ (centroids - mean) + mean, atol=1e-4)
    assert ((x_hat - x[:40]) ** 2).sum() < ((x[:40] - mean) ** 2).sum()


def test_random_dictionary_is_an_untrained_topk_sae_at_the_mean():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((100, 8)).astype(np.float32) + 3
    coder = fit_random(fit_data(x, k=3, width=20, seed=4))
    sae = coder.sae
    np.testing.assert_allclose(sae.W_enc.detach().numpy(), sae.W_dec.detach().numpy().T)
    np.testing.assert_allclose(np.linalg.norm(coder.directions(), axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(sae.b_dec.detach().numpy(), x.mean(0), atol=1e-5)
    assert ((dense_codes(coder, x) != 0).sum(axis=1) <= 3).all()
    again = fit_random(fit_data(x, k=3, width=20, seed=4))
    np.testing.assert_array_equal(again.directions(), coder.directions())  # seeded
    assert not np.array_equal(fit_random(fit_data(x, k=3, width=20, seed=5)).directions(), coder.directions())


def test_every_configurable_baseline_has_a_fit():
    assert tuple(BASELINE_FITS) == BASELINES


# -- fidelity ------------------------------------------------------------------------------------------
def test_imagenet_agreement_and_kl_match_numpy():
    rng = np.random.default_rng(12)
    weight, bias = rng.standard_normal((7, 5)), rng.standard_normal(7)
    x, x_hat = rng.standard_normal((40, 5)), rng.standard_normal((40, 5))
    mean = x.mean(0)
    sink = ImageNetAgreement(torch.tensor(weight), torch.tensor(bias), mean)
    for part in (slice(0, 13), slice(13, 40)):
        sink.add(torch.tensor(x[part]), torch.tensor(x_hat[part]), np.arange(40)[part])

    def log_softmax(logits):
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    p, q, m = (log_softmax(v @ weight.T + bias) for v in (x, x_hat, np.tile(mean, (40, 1))))
    kl, kl_mean = (np.exp(p) * (p - q)).sum(1).mean(), (np.exp(p) * (p - m)).sum(1).mean()
    result = sink.result()
    assert result["imagenet_top1_agreement"] == pytest.approx((p.argmax(1) == q.argmax(1)).mean())
    assert result["imagenet_kl"] == pytest.approx(kl, rel=1e-5)
    assert result["imagenet_kl_recovered"] == pytest.approx(1 - kl / kl_mean, rel=1e-5)


def test_zero_shot_counts_labelled_rows_only():
    text = np.eye(3, 4)
    labels = np.array([0, 1, 2, -1, 1])
    x = np.array([[5, 0, 0, 1], [0, 3, 0, 0], [1, 0, 0, 0], [0, 0, 9, 0], [0, 0, 2, 0]], dtype=np.float32)
    x_hat = x.copy()
    x_hat[1] = [4, 0, 0, 0]
    sink = ZeroShot(text, labels)
    sink.add(torch.from_numpy(x), torch.from_numpy(x_hat), np.arange(5))
    result = sink.result()
    # original predictions 0, 1, 0, (unlabelled), 2 -> 2 of 4 right; rebuilt 0, 0, 0, 2 -> 1 of 4
    assert result["zero_shot_images"] == 4
    assert result["zero_shot_accuracy_original"] == 0.5 and result["zero_shot_accuracy"] == 0.25
    assert result["zero_shot_agreement"] == 0.75
