"""The atlas pass and relations against brute-force computations on random activations.

The "SAE" here is the identity followed by ReLU, so the activation matrix is known exactly:
z = relu(X) for the stored X.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipatlas.atlas import relations, stream
from clipatlas.store import write_store

N, F, TOP_K, CHUNK, CAP = 700, 48, 8, 64, 6


def relu_sparse(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """encode_sparse of the identity-then-ReLU "SAE": every active entry, strongest first, padded."""
    z = x.clamp_min(0)
    m = max(int((z > 0).sum(dim=1).max()), 1)
    values, indices = z.topk(m, dim=1)
    return indices.masked_fill(values == 0, -1), values


@pytest.fixture(scope="module")
def activations(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, F)).astype(np.float32) * rng.uniform(0.01, 50, size=F).astype(np.float32)
    x -= 1.2 * np.abs(x).mean(axis=0)  # most entries negative: a sparse code
    x[:, 5] = -1.0  # a dead feature
    x[:, 7] = -1.0
    x[N - 3 :, 7] = [0.5, 2.0, 1.0]  # a feature firing on only 3 images (< top_k)
    store = write_store(tmp_path_factory.mktemp("ws"), x)
    return store, np.maximum(x, 0)


def run(store, work_dir, checkpoint_seconds=0.0):
    return stream.run_stream(
        store,
        relu_sparse,
        F,
        work_dir=work_dir,
        top_k=TOP_K,
        codes_per_image=CAP,
        chunk_size=CHUNK,
        device=torch.device("cpu"),
        checkpoint_seconds=checkpoint_seconds,
    )


def brute_top(z: np.ndarray, k: int):
    rows = np.full((z.shape[1], k), -1)
    values = np.zeros((z.shape[1], k), dtype=np.float32)
    for f in range(z.shape[1]):
        order = np.argsort(-z[:, f], kind="stable")
        order = order[z[order, f] > 0][:k]
        rows[f, : len(order)] = order
        values[f, : len(order)] = z[order, f]
    return rows, values


def test_pass_equals_brute_force(activations, tmp_path):
    store, z = activations
    state = run(store, tmp_path)
    np.testing.assert_array_equal(state.count.numpy(), (z > 0).sum(axis=0))
    np.testing.assert_allclose(state.total.numpy(), z.astype(np.float64).sum(axis=0), rtol=1e-10)
    np.testing.assert_array_equal(state.max.numpy(), z.max(axis=0))
    expected_rows, expected_values = brute_top(z, TOP_K)
    np.testing.assert_array_equal(state.top_rows.numpy(), expected_rows)
    np.testing.assert_array_equal(state.top_values.numpy(), expected_values)
    assert state.count[5] == 0 and (state.top_rows[5] == -1).all()
    assert (state.top_rows[7] >= 0).sum() == 3


def test_pass_of_codes_without_padding_equals_brute_force(tmp_path):
    """Every code active (as a TopK SAE's usually are): the fold's path without boolean indexing."""
    rng = np.random.default_rng(5)
    x = np.abs(rng.standard_normal((300, 12))).astype(np.float32) + 0.01
    x[:, 3] = np.round(x[:, 3]) + 1  # ties within a feature across chunks
    state = run(write_store(tmp_path / "ws", x), tmp_path / "work")
    expected_rows, expected_values = brute_top(x, TOP_K)
    np.testing.assert_array_equal(state.top_rows.numpy()[:12], expected_rows)
    np.testing.assert_array_equal(state.top_values.numpy()[:12], expected_values)
    np.testing.assert_array_equal(state.count.numpy()[:12], np.full(12, 300))
    np.testing.assert_array_equal(state.max.numpy()[:12], x.max(axis=0))


def test_histogram_equals_numpy(activations, tmp_path):
    store, z = activations
    state = run(store, tmp_path)
    edges = stream.HIST_EDGES
    for f in range(F):
        values = z[z[:, f] > 0, f]
        clipped = np.clip(values, edges[0], np.nextafter(edges[-1], 0))  # out-of-range values go to the end bins
        expected, _ = np.histogram(clipped, bins=edges)
        np.testing.assert_array_equal(state.hist[f].numpy(), expected, err_msg=f"feature {f}")
    assert state.hist.sum() == (z > 0).sum()


def test_histogram_clamps_extremes():
    bins = stream.hist_bin(torch.tensor([1e-9, 1e-5, 0.99e5, 1e9]))
    assert bins.tolist() == [0, 0, stream.N_BINS - 1, stream.N_BINS - 1]


def test_image_codes_equal_brute_force(activations, tmp_path):
    store, z = activations
    run(store, tmp_path)
    indptr, features, values = stream.load_codes(tmp_path, N, CHUNK)
    for row in range(N):
        active = np.flatnonzero(z[row] > 0)
        expected = active[np.argsort(-z[row, active], kind="stable")][:CAP]
        got = features[indptr[row] : indptr[row + 1]]
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(values[indptr[row] : indptr[row + 1]], z[row, expected])


class KilledStore:
    """A store whose reads fail after `chunks` reads: a process killed mid-pass."""

    def __init__(self, store, chunks):
        self.store, self.left = store, chunks

    def __len__(self):
        return len(self.store)

    def rows(self, index):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.store.rows(index)


def test_killed_pass_resumes_to_identical_state(activations, tmp_path):
    store, _ = activations
    reference = run(store, tmp_path / "straight", checkpoint_seconds=1e9)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        run(KilledStore(store, 4), resumed_dir)
    partial = stream.StreamState.load(resumed_dir / stream.STATE_FILE, torch.device("cpu"))
    assert partial.next_row == 4 * CHUNK
    resumed = run(KilledStore(store, 10_000), resumed_dir)
    for name in ("count", "total", "max", "hist", "top_values", "top_rows"):
        assert torch.equal(getattr(resumed, name), getattr(reference, name)), name
    for a, b in zip(stream.load_codes(tmp_path / "straight", N, CHUNK), stream.load_codes(resumed_dir, N, CHUNK)):
        np.testing.assert_array_equal(a, b)


def test_failed_code_write_is_raised_and_never_checkpointed(activations, tmp_path, monkeypatch):
    """Codes are written by a background thread: its failure stops the pass, and the last checkpoint
    counts only rows whose codes are on disk, so a re-run completes the pass."""
    store, _ = activations
    save_codes = stream.save_codes

    def disk_full_at_chunk_3(work_dir, start, codes):
        if start == 3 * CHUNK:
            raise OSError("disk full")
        save_codes(work_dir, start, codes)

    monkeypatch.setattr(stream, "save_codes", disk_full_at_chunk_3)
    with pytest.raises(OSError, match="disk full"):
        run(store, tmp_path)
    assert stream.StreamState.load(tmp_path / stream.STATE_FILE, torch.device("cpu")).next_row <= 3 * CHUNK
    monkeypatch.setattr(stream, "save_codes", save_codes)
    resumed = run(store, tmp_path)
    reference = run(store, tmp_path / "straight")
    assert torch.equal(resumed.top_rows, reference.top_rows) and torch.equal(resumed.hist, reference.hist)
    for a, b in zip(stream.load_codes(tmp_path / "straight", N, CHUNK), stream.load_codes(tmp_path, N, CHUNK)):
        np.testing.assert_array_equal(a, b)


def csr_of(z: np.ndarray):
    indptr, features, values = [0], [], []
    for row in z:
        active = np.flatnonzero(row > 0)
        active = active[np.argsort(-row[active], kind="stable")]
        features += active.tolist()
        values += row[active].tolist()
        indptr.append(len(features))
    return np.array(indptr), np.array(features, dtype=np.int32), np.array(values, dtype=np.float32)


def test_quantile_samples_cover_each_decile(activations):
    _, z = activations
    indptr, features, values = csr_of(z)
    max_act = z.max(axis=0).astype(np.float64)
    q_feature, q_decile, q_row, q_value = relations.quantile_samples(indptr, features, values, max_act, per_decile=2)
    np.testing.assert_array_equal(q_value, z[q_row, q_feature])
    for f in range(F):
        for decile in range(relations.N_DECILES):
            lo, hi = decile / 10 * max_act[f], (decile + 1) / 10 * max_act[f]
            in_decile = (z[:, f] > 0) & (z[:, f] >= lo) & ((z[:, f] < hi) if decile < 9 else True)
            chosen = q_row[(q_feature == f) & (q_decile == decile)]
            assert len(chosen) == min(2, in_decile.sum()), (f, decile)
            assert in_decile[chosen].all()
    again = relations.quantile_samples(indptr, features, values, max_act, per_decile=2)
    np.testing.assert_array_equal(again[2], q_row)


def test_coactivation_equals_dense_jaccard(activations):
    _, z = activations
    fires = (z > 0).astype(np.int64)
    both = fires.T @ fires
    n = fires.sum(axis=0)
    feature, rank, other, count, jaccard = relations.coactivation(
        *csr_of(z)[:2], n_features=F, limit=5, cells_per_block=16 * F
    )
    for f in range(F):
        with np.errstate(invalid="ignore"):
            scores = both[f] / (n[f] + n - both[f])
        candidates = [j for j in range(F) if j != f and both[f, j] > 0]
        expected = sorted(candidates, key=lambda j: (-scores[j], j))[:5]
        mine = feature == f
        assert other[mine].tolist() == expected
        assert rank[mine].tolist() == list(range(len(expected)))
        np.testing.assert_array_equal(count[mine], both[f, expected])
        np.testing.assert_allclose(jaccard[mine], scores[expected])


def test_cosine_neighbours_equal_brute_force():
    rng = np.random.default_rng(1)
    directions = rng.standard_normal((30, 8)).astype(np.float32)
    candidates = np.array([0, 2, 3, 5, 8, 13, 21, 29])
    others, cosines = relations.cosine_neighbours(torch.from_numpy(directions), candidates, limit=4, block=7)
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    for f in range(30):
        keys = [c for c in candidates if c != f]
        sims = unit[keys] @ unit[f]
        expected = np.array(keys)[np.argsort(-sims)[:4]]
        np.testing.assert_array_equal(others[f], expected)
        np.testing.assert_allclose(cosines[f], np.sort(sims)[::-1][:4], atol=1e-6)


def test_cosine_neighbours_with_too_few_candidates():
    others, cosines = relations.cosine_neighbours(torch.ones(3, 2), np.array([1]), limit=4)
    assert others.shape == (3, 0) and cosines.shape == (3, 0)


def test_ties_keep_the_earlier_row(tmp_path):
    """Quantised activations tie everywhere; the pass must still equal the stable brute force."""
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, size=(300, 12)).astype(np.float32)
    store = write_store(tmp_path / "ws", x)
    state = run(store, tmp_path / "work")
    expected_rows, expected_values = brute_top(np.maximum(x, 0), TOP_K)
    np.testing.assert_array_equal(state.top_rows.numpy()[:12], expected_rows)
    np.testing.assert_array_equal(state.top_values.numpy()[:12], expected_values)


@pytest.mark.parametrize("quantised", [False, True])
def test_partial_passes_merge_in_any_grouping_to_the_single_pass(activations, tmp_path, quantised):
    """Ranges folded apart (as Ray tasks fold them) and merged in any grouping or order give the one
    pass's state; quantised activations tie everywhere, so the top-k order is tested too."""
    store, _ = activations
    if quantised:
        x = np.random.default_rng(4).integers(-3, 4, size=(N, F)).astype(np.float32)
        store = write_store(tmp_path / "quantised", x)
    whole = run(store, tmp_path / "whole")

    def fold(start: int, stop: int) -> stream.StreamState:
        state = stream.StreamState.empty(F, TOP_K, torch.device("cpu"))
        for first in range(start, stop, CHUNK):
            stream.fold_chunk(store, relu_sparse, state, first, min(first + CHUNK, stop), CAP)
        return state

    bounds = [0, 3 * CHUNK, 4 * CHUNK, 9 * CHUNK, N]
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 0, 3, 1]):
        merged = stream.StreamState.empty(F, TOP_K, torch.device("cpu"))
        for i in order:
            merged.merge(fold(bounds[i], bounds[i + 1]))
        for name in ("count", "max", "hist", "top_values", "top_rows"):
            np.testing.assert_array_equal(getattr(merged, name).numpy(), getattr(whole, name).numpy(), err_msg=name)
        np.testing.assert_allclose(merged.total.numpy(), whole.total.numpy(), rtol=1e-12)
        assert merged.next_row == N
    # A grouping of groupings: (A + B) + (C + D) equals A + B + C + D.
    left, right = fold(bounds[0], bounds[1]), fold(bounds[2], bounds[3])
    left.merge(fold(bounds[1], bounds[2]))
    right.merge(fold(bounds[3], bounds[4]))
    left.merge(right)
    np.testing.assert_array_equal(left.top_rows.numpy(), whole.top_rows.numpy())
    np.testing.assert_array_equal(left.hist.numpy(), whole.hist.numpy())
