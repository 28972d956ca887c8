"""`--engine ray` on a local Ray cluster started once for the module: the store and the atlas it
builds equal the local engine's."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from test_atlas import make_workspace
from test_embed import N_GOOD, SKIPPED, embed_cli, make_corpus, tiny_clip  # noqa: F401 (a fixture)

from clipatlas.atlas import AtlasConfig, build_atlas
from clipatlas.atlas.db import ARRAYS_PREFIX
from clipatlas.store import Store

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def manifest_without_hashes(store: Store) -> dict:
    """The manifest minus the shard hashes (embeddings may differ in the last float16 bit)."""
    manifest = {k: v for k, v in store.manifest.items() if k not in ("created", "updated")}
    manifest["shards"] = [{k: v for k, v in shard.items() if k != "emb_sha256"} for shard in manifest["shards"]]
    return manifest


def test_ray_embedding_writes_the_local_store_and_resumes(tmp_path, tiny_clip, ray_cluster):  # noqa: F811
    corpus = make_corpus(tmp_path / "corpus")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    args = ("--batch-size", "4", "--shard-size", "8")
    # Each engine: a partial run first, then a re-run that resumes after it and embeds the rest.
    for workspace, engine in ((local, ("--workers", "0")), (on_ray, ("--engine", "ray"))):
        assert embed_cli([corpus], workspace, f"hf:{tiny_clip}", *args, *engine, "--limit", "10") == 0
        assert Store.open(workspace).manifest["consumed"] == 10
        assert embed_cli([corpus], workspace, f"hf:{tiny_clip}", *args, *engine) == 0

    expected, got = Store.open(local), Store.open(on_ray)
    assert got.manifest["complete"] and len(got) == len(expected) == N_GOOD + 3
    assert {e["reason"] for e in got.manifest["skipped"]} == set(SKIPPED.values())
    assert got.manifest["skipped"] == expected.manifest["skipped"]
    assert manifest_without_hashes(got) == manifest_without_hashes(expected)
    assert got.metadata.to_pylist() == expected.metadata.to_pylist()  # same rows, same ids, same order
    a, b = expected.to_array(), got.to_array()
    assert np.abs(a - b).max() <= np.abs(a).max() * 2**-10  # float16 rounding
    assert json.loads((on_ray / "store" / "manifest.json").read_text())["encoder"] == f"hf:{tiny_clip}"


def tables(db_path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db_path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {name: conn.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall() for name in names}
    finally:
        conn.close()


def test_ray_atlas_pass_equals_the_local_build_and_resumes(tmp_path, ray_cluster):
    from clipatlas.atlas.ray_pass import PARTIAL_PREFIX, run_stream_on_ray

    local, on_ray = tmp_path / "local", tmp_path / "ray"
    make_workspace(local, n=1000, images=False)
    shutil.copytree(local, on_ray)
    fast = dict(top_k=8, chunk_size=64, map_method="pca", thumbnails=False, n_similar=5, n_coactivating=5)
    expected = build_atlas(local, "t", config=AtlasConfig(**fast))
    config = AtlasConfig(**fast, engine="ray", chunks_per_task=3)  # 6 ranges, the last one short
    got = build_atlas(on_ray, "t", config=config)

    assert got.build_id == expected.build_id
    a, b = tables(expected.files.atlas_db), tables(got.files.atlas_db)
    assert a.keys() == b.keys() and a["features"]
    for name in a:
        if name == "features":  # the mean activation sums the same values grouped otherwise: float64 rounding
            mean = [c[1] for c in sqlite3.connect(got.files.atlas_db).execute("PRAGMA table_info(features)")].index(
                "mean_activation"
            )
            drop = [tuple(v for i, v in enumerate(row) if i != mean) for row in a[name]]
            assert drop == [tuple(v for i, v in enumerate(row) if i != mean) for row in b[name]]
            np.testing.assert_allclose([r[mean] for r in b[name]], [r[mean] for r in a[name]], rtol=1e-12)
        else:
            assert a[name] == b[name], name
    arrays = sorted((expected.files.atlas_dir).glob(f"{ARRAYS_PREFIX}*/*.npy"))
    assert arrays
    for path in arrays:  # the per-image codes and the histograms, bit for bit
        np.testing.assert_array_equal(np.load(path), np.load(got.files.atlas_dir / path.parent.name / path.name))

    # Resume: with one range's partial gone (a build killed before it finished), only that range is redone.
    work = tmp_path / "work"
    work.mkdir()
    sae, store = got.sae, got.store
    first = run_stream_on_ray(store, sae, work_dir=work, config=config, device=torch.device("cpu"))
    partials = sorted(work.glob(f"{PARTIAL_PREFIX}*"))
    assert len(partials) == 6
    stamps = {p.name: p.stat().st_mtime_ns for p in partials}
    partials[2].unlink()
    again = run_stream_on_ray(store, sae, work_dir=work, config=config, device=torch.device("cpu"))
    assert {p.name: p.stat().st_mtime_ns for p in work.glob(f"{PARTIAL_PREFIX}*")}.items() - stamps.items() == {
        (partials[2].name, partials[2].stat().st_mtime_ns)
    }
    # Cut otherwise (the default: 4 tasks per CPU of this 2-CPU Ray), the old ranges' partials are dropped.
    regrouped = run_stream_on_ray(
        store, sae, work_dir=work, config=AtlasConfig(**fast, engine="ray"), device=torch.device("cpu")
    )
    assert len(list(work.glob(f"{PARTIAL_PREFIX}*"))) == 8  # 16 chunks of 64 rows, 2 per task
    for state in (again, regrouped):
        for name in ("count", "hist", "top_rows", "top_values", "max"):
            assert torch.equal(getattr(first, name), getattr(state, name)), name
        torch.testing.assert_close(state.total, first.total, rtol=1e-12, atol=0)


def test_preprocessor_ships_without_the_weights(tiny_clip):  # noqa: F811
    """What Ray sends to decode tasks: the encoder's preprocessing, small and equal to `preprocess`."""
    import pickle

    from PIL import Image

    from clipatlas.encoders import load_encoder

    encoder = load_encoder(f"hf:{tiny_clip}", device="cpu")
    image = Image.new("RGB", (50, 40), (10, 200, 30))
    shipped = pickle.loads(pickle.dumps(encoder.preprocessor()))
    assert torch.equal(shipped(image), encoder.preprocess(image))
    weights = sum(p.numel() * p.element_size() for p in encoder.model.parameters())
    assert len(pickle.dumps(encoder.preprocessor())) < weights / 4 < len(pickle.dumps(encoder))
