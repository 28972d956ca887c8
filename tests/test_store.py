import json

import numpy as np
import pytest

from clipatlas.store import Store, StoreError, StoreWriter, write_store


def _rows(n, offset=0):
    return [
        {"image_id": f"img{offset + i}", "uri": f"/x/{offset + i}.png", "source": "t", "width": 4, "height": 5}
        for i in range(n)
    ]


def test_round_trip_across_shards(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 8)).astype(np.float32)
    store = write_store(tmp_path, x, _rows(23), shard_size=5)
    assert len(store) == 23 and store.d == 8
    assert len(store.manifest["shards"]) == 5
    np.testing.assert_array_equal(store.to_array(), x)
    np.testing.assert_array_equal(store.rows(slice(3, 17)), x[3:17])
    idx = np.array([22, 0, 7, 7, 13])
    np.testing.assert_array_equal(store.rows(idx), x[idx])
    np.testing.assert_array_equal(store[11], x[11])
    batches = list(store.iter_batches(7))
    assert [b[0] for b in batches] == [0, 7, 14, 21]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), x)
    assert store.row_of("img12") == 12
    assert store.meta(12)["uri"] == "/x/12.png" and store.meta(12)["width"] == 4
    assert store.verify() == []


def test_float16_store_and_checksum_detects_tampering(tmp_path):
    x = np.linspace(-2, 2, 40, dtype=np.float32).reshape(10, 4)
    store = write_store(tmp_path, x, dtype="float16", shard_size=4)
    np.testing.assert_allclose(store.to_array(), x.astype(np.float16).astype(np.float32))
    shard = tmp_path / "store/img_emb/img_emb_00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert Store.open(tmp_path).verify() == ["img_emb/img_emb_00001.npy does not match its checksum"]


def test_nan_embedding_is_an_error_not_a_row(tmp_path):
    writer = StoreWriter(tmp_path / "store", encoder="e", d=3, dtype="float32", shard_size=10)
    bad = np.array([[0.0, np.nan, 1.0]], dtype=np.float32)
    with pytest.raises(StoreError, match="NaN"):
        writer.add(bad, _rows(1))
    overflow = np.array([[1e6, 0, 0]], dtype=np.float32)
    writer16 = StoreWriter(tmp_path / "s16", encoder="e", d=3, dtype="float16", shard_size=10)
    with pytest.raises(StoreError, match="float16"):
        writer16.add(overflow, _rows(1))


def test_wrong_dimension_is_rejected(tmp_path):
    writer = StoreWriter(tmp_path / "store", encoder="e", d=3, shard_size=10)
    with pytest.raises(StoreError, match=r"\(n, 3\)"):
        writer.add(np.zeros((2, 4)), _rows(2))


def test_unflushed_rows_are_lost_but_committed_shards_resume(tmp_path):
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    writer = StoreWriter(tmp_path / "store", encoder="e", d=3, dtype="float32", shard_size=4, sources=["a"])
    writer.add(x[:6], _rows(6))
    writer.skip("/bad.png", "truncated")
    # the process dies here: 4 rows were committed, 2 rows + 1 skip were pending
    resumed = StoreWriter(tmp_path / "store", encoder="e", d=3, dtype="float32", shard_size=4, sources=["a"])
    assert resumed.consumed == 4 and resumed.has("img3") and not resumed.has("img4")
    resumed.add(x[4:6], _rows(2, offset=4))
    resumed.skip("/bad.png", "truncated")
    resumed.add(x[6:], _rows(4, offset=6))
    resumed.close()

    straight = StoreWriter(tmp_path / "ref", encoder="e", d=3, dtype="float32", shard_size=4, sources=["a"])
    straight.add(x[:6], _rows(6))
    straight.skip("/bad.png", "truncated")
    straight.add(x[6:], _rows(4, offset=6))
    straight.close()
    for name in ["img_emb/img_emb_00000.npy", "img_emb/img_emb_00002.npy", "metadata/metadata_00001.parquet"]:
        assert (tmp_path / "store" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    a = json.loads((tmp_path / "store/manifest.json").read_text())
    b = json.loads((tmp_path / "ref/manifest.json").read_text())
    assert a == b and a["count"] == 10 and a["skipped"] == [{"uri": "/bad.png", "reason": "truncated"}]
    assert a["schema_version"] == 1 and a["complete"] is True


def test_incompatible_resume_is_refused(tmp_path):
    StoreWriter(tmp_path / "store", encoder="e", d=3, shard_size=4, sources=["a"]).close()
    with pytest.raises(StoreError, match="encoder"):
        StoreWriter(tmp_path / "store", encoder="other", d=3, shard_size=4, sources=["a"])
    with pytest.raises(StoreError, match="built from"):
        StoreWriter(tmp_path / "store", encoder="e", d=3, shard_size=4, sources=["b"])


def test_missing_store_says_how_to_make_one(tmp_path):
    with pytest.raises(StoreError, match="clipatlas embed"):
        Store.open(tmp_path)


def test_stores_from_before_the_label_column_still_open_and_take_labels_later(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.arange(18, dtype=np.float32).reshape(6, 3)
    write_store(tmp_path, x, _rows(6), shard_size=4)
    # what an older clipatlas wrote: metadata shards without the label column (one with an extra one)
    for index in (0, 1):
        path = tmp_path / f"store/metadata/metadata_0000{index}.parquet"
        table = pq.read_table(path).drop(["label"])
        if index == 1:
            table = table.append_column("similarity", pa.array([0.5, 0.25]))  # LAION-style extra metadata
        pq.write_table(table, path)
    store = Store.open(tmp_path)
    assert "label" not in store.metadata.column_names and len(store.metadata) == 6
    assert store.metadata.column("similarity").to_pylist() == [None] * 4 + [0.5, 0.25]

    writer = StoreWriter(tmp_path / "store", encoder="synthetic", d=3, dtype="float32", shard_size=4, sources=["array"])
    assert writer.set_labels({"img1": "cat", "img5": "dog", "unknown": "x"}) == 2
    relabelled = Store.open(tmp_path)
    assert relabelled.metadata.column("label").to_pylist() == [None, "cat", None, None, None, "dog"]
    assert relabelled.metadata.column("similarity").to_pylist()[4:] == [0.5, 0.25]  # other columns kept
    assert relabelled.verify() == []  # the manifest's checksums follow the rewritten shards
    assert writer.set_labels({"img1": "cat"}) == 0  # nothing changes, nothing is erased
    assert Store.open(tmp_path).metadata.column("label").to_pylist()[1] == "cat"


def test_open_npy_maps_arrays_and_refuses_pickled_ones(tmp_path):
    from clipatlas._io import open_npy

    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "values.npy", values)
    mapped = open_npy(tmp_path / "values.npy")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, values)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        open_npy(tmp_path / "objects.npy")
    with pytest.raises(ValueError, match="allow_pickle"):
        open_npy(tmp_path / "objects.npy", mmap_mode=None)


@pytest.mark.parametrize("shared", [True, False])
def test_open_npy_takes_turns_only_where_the_interpreter_shares_ast_state(tmp_path, monkeypatch, shared):
    """On CPython 3.11.0-3.11.7 / 3.12.0-3.12.1 two threads parsing .npy headers at once can raise
    SystemError (python/cpython#106905): there a second reader waits for the lock; elsewhere it does not."""
    import threading

    from clipatlas import _io

    monkeypatch.setattr(_io, "AST_BUILD_IS_SHARED", shared)
    monkeypatch.setattr(_io, "AST_LOCK", threading.RLock())  # not the one conftest's ast.parse takes
    np.save(tmp_path / "values.npy", np.ones(5))
    found = []
    reader = threading.Thread(target=lambda: found.append(_io.open_npy(tmp_path / "values.npy").sum()))
    with _io.AST_LOCK:  # another thread is mid-parse
        reader.start()
        reader.join(timeout=0.5 if shared else 60)
        assert reader.is_alive() is shared
    reader.join(timeout=60)
    assert found == [5.0]
