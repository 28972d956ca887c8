"""SAE metrics against brute-force formulas and scikit-learn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import explained_variance_score, r2_score

from clipatlas.errors import UserError
from clipatlas.sae import compute_metrics
from clipatlas.sae.metrics import Metrics, MetricsAccumulator, pareto_front


def _accumulate(x, x_hat, active, chunk=None):
    acc = MetricsAccumulator(x.shape[1], active.shape[1])
    step = chunk or len(x)
    for i in range(0, len(x), step):
        acc.add(x[i : i + step], x_hat[i : i + step], active[i : i + step])
    return acc.result()


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.arange(1, 7) + 3
    return rng, x, np.zeros((200, 10), dtype=bool)


def test_mean_predictor_explains_nothing_and_a_perfect_one_everything(data):
    _, x, active = data
    mean = _accumulate(x, np.tile(x.mean(0), (len(x), 1)), active)
    assert mean.explained_variance == pytest.approx(0.0, abs=1e-12) and mean.fvu == pytest.approx(1.0)
    perfect = _accumulate(x, x.copy(), active)
    assert perfect.explained_variance == pytest.approx(1.0) and perfect.fvu == pytest.approx(0.0, abs=1e-12)


def test_explained_variance_agrees_with_scikit_learn_over_any_batching(data):
    rng, x, active = data
    x_hat = x + 0.4 + rng.normal(size=x.shape) * np.array([0.1, 3, 0.5, 1, 2, 0.2])
    # A biased reconstruction: ours counts the bias as error, like r2_score ...
    for chunk in (None, 7, 64):
        ours = _accumulate(x, x_hat, active, chunk).explained_variance
        assert ours == pytest.approx(r2_score(x, x_hat, multioutput="variance_weighted"), rel=1e-10)
    # ... and equals explained_variance_score (which forgives a constant bias) once errors are centred.
    x_hat -= (x_hat - x).mean(0)
    expected = explained_variance_score(x, x_hat, multioutput="variance_weighted")
    assert _accumulate(x, x_hat, active, 13).explained_variance == pytest.approx(expected, rel=1e-10)


def test_fvu_is_a_ratio_of_sums_not_a_mean_of_per_sample_ratios(data):
    _, x, active = data
    x_hat = x.copy()
    x_hat[0] += 5.0
    metrics = _accumulate(x, x_hat, active)
    brute = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert metrics.fvu == pytest.approx(brute, rel=1e-12)


def test_sparsity_counts_and_cosine_match_brute_force(data):
    rng, x, _ = data
    active = rng.random((200, 10)) < np.linspace(0, 0.5, 10)
    active[:, 0] = False  # dead
    active[:, 9] = rng.random(200) < 0.9  # dense
    x_hat = x * 0.9 + rng.normal(size=x.shape)
    m = _accumulate(x, x_hat, active, chunk=33)
    freq = active.mean(0)
    assert m.l0 == pytest.approx(active.sum(1).mean())
    assert m.silent_fraction == pytest.approx((active.sum(0) == 0).mean())
    assert m.dense_fraction == pytest.approx((freq > 0.1).mean())
    cos = (x * x_hat).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(x_hat, axis=1)
    assert m.cosine == pytest.approx(cos.mean())
    assert m.n_samples == 200


def test_compute_metrics_runs_the_sae_on_raw_inputs():
    from clipatlas.sae import ARCHITECTURES, make_config

    sae = ARCHITECTURES["topk"](make_config("topk", d_in=6, d_sae=24, k=3, input_scale=0.3))
    x = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32)
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x))
        x_hat = sae.decode(z).numpy()
    m = compute_metrics(sae, [x[:20], x[20:]])
    assert m.l0 == pytest.approx(float((z != 0).sum(1).float().mean()))
    assert m.fvu == pytest.approx(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-5)


def test_nan_reconstructions_are_refused(data):
    _, x, active = data
    x_hat = x.copy()
    x_hat[3, 2] = np.nan
    with pytest.raises(UserError, match="NaN"):
        _accumulate(x, x_hat, active)


def test_metrics_check_their_own_consistency():
    with pytest.raises(ValueError, match="inconsistent"):
        Metrics(
            n_samples=1, fvu=0.2, explained_variance=0.7, l0=1, silent_fraction=0, dense_fraction=0, cosine=1, d_sae=4
        )


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(3)
    points = [(float(a), float(b)) for a, b in rng.random((30, 2))]
    front = set(pareto_front(points))
    for i, (l0, fvu) in enumerate(points):
        dominated = any((a <= l0 and b < fvu) or (a < l0 and b <= fvu) for a, b in points)
        assert (i in front) == (not dominated)
    assert [points[i][0] for i in pareto_front(points)] == sorted(points[i][0] for i in front)
    assert list(itertools.chain(pareto_front([]))) == []
