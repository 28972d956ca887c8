"""The approximate retrieval index (FAISS) against exact cosine search: recall, exact re-scoring, the
saved index reused until the store changes, and the edit-aware ranking on top of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipatlas.atlas.types import ImageCodes
from clipatlas.cli import main
from clipatlas.sae import make_config
from clipatlas.sae.model import ARCHITECTURES
from clipatlas.steer.config import IndexConfig, RetrievalConfig
from clipatlas.steer.ranking import CosineIndex, EditRanker, Guide
from clipatlas.store import Store, write_store
from clipatlas.workspace import Workspace

faiss = pytest.importorskip("faiss")
from clipatlas.steer.ann import ApproximateIndex, ensure_index, recall_at, retrieval_index  # noqa: E402

N, D, CLUSTERS = 3000, 32, 40
IVF = IndexConfig(kind="ivf", nlist=24, nprobe=6, shortlist=64, train_rows=2000)


def clustered(n: int, seed: int) -> np.ndarray:
    """Rows around CLUSTERS centres, as image embeddings group by content."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, D)).astype(np.float32) * 3
    return centres[rng.integers(CLUSTERS, size=n)] + rng.standard_normal((n, D)).astype(np.float32)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ann")
    write_store(root, clustered(N, 0))
    return root


def brute_cosines(store: Store, queries: np.ndarray) -> np.ndarray:
    rows = store.to_array()
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        rows / np.linalg.norm(rows, axis=1, keepdims=True)
    ).T


def test_search_finds_the_exact_neighbours_and_scores_them_exactly(workspace):
    store = Store.open(workspace)
    build = ensure_index(workspace, store, IVF, progress=False)
    index = ApproximateIndex(store, faiss.read_index(str(build.path)), IVF)
    assert len(index) == N and build.nlist == 24 and not index.exact
    queries = store.rows(np.arange(0, N, 50)) + np.random.default_rng(1).normal(size=(60, D)).astype(np.float32)
    assert recall_at(index, CosineIndex(store), queries, 16) >= 0.95
    rows, cosines = index.search(queries, 16)
    expected = brute_cosines(store, queries)
    np.testing.assert_allclose(cosines, np.take_along_axis(expected, rows, 1), rtol=1e-5, atol=1e-6)
    assert (np.diff(cosines, axis=1) <= 0).all()
    # Every cell probed and a long shortlist: the exact answer, row for row.
    every_cell = ApproximateIndex(store, faiss.read_index(str(build.path)), IndexConfig(nprobe=24, shortlist=400))
    np.testing.assert_array_equal(every_cell.search(queries, 16)[0], CosineIndex(store).search(queries, 16)[0])


def test_the_index_is_saved_once_and_rebuilt_when_the_store_changes(tmp_path, capsys):
    write_store(tmp_path, clustered(800, 2))
    store = Store.open(tmp_path)
    small = IndexConfig(kind="ivf", nlist=8, train_rows=400)
    first = ensure_index(tmp_path, store, small, progress=False)
    stamp = first.path.stat().st_mtime_ns
    assert first.built and first.path == Workspace(tmp_path).retrieval_index and first.file_bytes > 800 * D
    again = ensure_index(tmp_path, store, small, progress=False)
    assert not again.built and first.path.stat().st_mtime_ns == stamp
    assert main(["index", "-w", str(tmp_path), "--nlist", "8", "--train-rows", "400", "--check", "50"]) == 0
    out = capsys.readouterr().out
    assert "800 rows, 8 cells" in out and "up to date" in out and "recall@16 against exact search on 50" in out
    assert ensure_index(tmp_path, store, IndexConfig(kind="ivf", nlist=16, train_rows=400), progress=False).built
    default_cells = IndexConfig(kind="ivf", train_rows=400)  # sqrt(800) cells, worked out at build time
    assert ensure_index(tmp_path, store, default_cells, progress=False).nlist == 28
    assert not ensure_index(tmp_path, store, default_cells, progress=False).built

    changed = tmp_path / "changed"
    write_store(changed, clustered(800, 3))
    assert ensure_index(changed, Store.open(changed), small, progress=False).built


def test_small_stores_keep_exact_search(workspace):
    store = Store.open(workspace)
    assert isinstance(retrieval_index(store, IndexConfig()), CosineIndex)  # 3,000 rows < min_rows
    assert isinstance(retrieval_index(store, IndexConfig(kind="exact", min_rows=1)), CosineIndex)
    assert isinstance(retrieval_index(store, IndexConfig(min_rows=N, nlist=24, train_rows=2000)), ApproximateIndex)


def test_edit_aware_ranking_on_the_approximate_index_matches_the_exact_one(workspace):
    """Raised features (default weights and a soft rank_weight) and removals rank the same top 16."""
    store = Store.open(workspace)
    torch.manual_seed(0)
    sae = ARCHITECTURES["topk"](make_config("topk", d_in=D, d_sae=96, k=6))
    with torch.no_grad():
        indices, values = sae.encode_sparse(torch.from_numpy(store.to_array()))
    active = values > 0
    codes = ImageCodes(
        np.concatenate([[0], np.cumsum(active.sum(1).numpy())]).astype(np.int64),
        indices[active].numpy().astype(np.int32),
        values[active].numpy().astype(np.float32),
    )
    max_activation = np.zeros(96, np.float32)
    np.maximum.at(max_activation, codes.features, codes.values)
    build = ensure_index(workspace, store, IVF, progress=False)
    approximate = EditRanker(ApproximateIndex(store, faiss.read_index(str(build.path)), IVF), codes, max_activation)
    exact = EditRanker(CosineIndex(store), codes, max_activation)
    rng = np.random.default_rng(5)
    overlaps = []
    for i in range(30):
        source = store[int(rng.integers(N))].astype(np.float32)
        f = int(rng.choice(np.flatnonzero(max_activation > 0)))
        y = source + rng.normal(size=D).astype(np.float32)
        guide = Guide(raised=(f,), source=source) if i % 2 else Guide(removed=(f,), source=source)
        cfg = RetrievalConfig(rank_weight=1.0 if i % 4 == 1 else 0.05)
        got, want = approximate.rank(y, guide, cfg, 16), exact.rank(y, guide, cfg, 16)
        overlaps.append(len(set(got.rows) & set(want.rows)) / 16)
        got_scores, want_scores = dict(zip(got.rows, got.scores)), dict(zip(want.rows, want.scores))
        common = sorted(set(got_scores) & set(want_scores))  # the rows both return score the same
        np.testing.assert_allclose([got_scores[r] for r in common], [want_scores[r] for r in common], rtol=1e-3)
    assert np.mean(overlaps) >= 0.95


@pytest.mark.parametrize("decode_limit", [10_000, 100])
def test_a_search_among_given_rows_returns_only_those_and_finds_their_nearest(workspace, monkeypatch, decode_limit):
    """The edit-aware ranking's search among a posting list: its codes decoded by id, or (a long list)
    a scan of every cell that scores those rows only."""
    from clipatlas.steer import ann

    monkeypatch.setattr(ann, "DECODE_LIMIT", decode_limit)
    store = Store.open(workspace)
    build = ensure_index(workspace, store, IVF, progress=False)
    index = ApproximateIndex(store, faiss.read_index(str(build.path)), IndexConfig(shortlist=16))
    rng = np.random.default_rng(7)
    among = np.sort(rng.choice(N, 300, replace=False))
    queries = rng.normal(size=(20, D)).astype(np.float32) * 3
    found = index.candidates(index.units(queries), among=among)
    assert found.shape == (20, 16) and np.isin(found, among).all()
    cosines = brute_cosines(store, queries)[:, among]
    exact = among[np.argsort(-cosines, axis=1)[:, :16]]
    assert np.mean([len(set(f) & set(e)) / 16 for f, e in zip(found, exact)]) >= 0.9
