"""`--engine ray` on a local Ray cluster started once for the module: the store and the atlas it
builds equal the local engine's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_embed import N_GOOD, SKIPPED, embed_cli, make_corpus, tiny_clip  # noqa: F401 (a fixture)

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
