"""`clipatlas demo`: every stage runs on the real demo images, ends by serving, and re-runs cheaply."""

import json

import pytest

from clipatlas.cli import main
from clipatlas.sources import available_demo_sets
from clipatlas.web.config import ServeConfig

pytestmark = pytest.mark.skipif(not available_demo_sets(), reason="no demo images installed")

LIMIT = 80


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, monkeypatch_module):
    import clipatlas.web.server

    served = []
    monkeypatch_module.setattr(clipatlas.web.server, "serve", lambda *args: served.append(args))
    workspace = tmp_path_factory.mktemp("demo") / "atlas"
    assert main(["demo", "-w", str(workspace), "--limit", str(LIMIT), "--port", "8123"]) == 0
    return workspace, served


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_demo_runs_every_stage_then_serves(demo_run):
    from clipatlas.atlas import Atlas
    from clipatlas.store import Store

    workspace, served = demo_run
    store = Store.open(workspace)
    assert len(store) == LIMIT and store.encoder == "efficientnet-lite0" and store.complete
    metrics = json.loads((workspace / "saes" / "demo" / "metrics.json").read_text())
    assert 0 < metrics["explained_variance"] <= 1 and metrics["l0"] == pytest.approx(16)
    atlas = Atlas.open(workspace, "demo")
    assert atlas.summary()["n_alive"] > 0
    alive = [int(f) for f in atlas.map_points().feature]
    sources = {lab.source for labels in atlas.labels_by_feature().values() for lab in labels}
    assert sources == {"captions", "classifier"}  # the offline labellers, each label scored
    assert all(lab.score(judge="captions") for labels in atlas.labels_by_feature().values() for lab in labels)
    assert (workspace / "saes" / "demo" / "interp" / "report.md").is_file()
    icons = list((workspace / "saes" / "demo" / "icons").glob("*.png"))
    assert len(icons) == len(alive)
    report = json.loads((workspace / "saes" / "demo" / "eval" / "report.json").read_text())
    assert list(report["coders"]) == ["sae", "pca", "pca-width", "kmeans", "random", "raw"]
    assert report["labels"]["column"] == "label" and report["labels"]["labelled_rows"] > 0
    assert report["sections"]["stability"]["partner"] == ".demo-seed1"  # trained by the demo for stability, hidden
    assert report["sections"]["fidelity"]["coders"]["sae"]["imagenet_top1_agreement"] > 0
    recipe = json.loads((workspace / "recipes" / "example.json").read_text())
    assert recipe["edits"] and (workspace / "recipes" / "example.png").stat().st_size > 0
    assert served == [(workspace.resolve(), "demo", ServeConfig(host="127.0.0.1", port=8123))]


def test_demo_again_reuses_finished_work(demo_run, capsys):
    workspace, _ = demo_run
    before = (workspace / "saes" / "demo" / "sae.safetensors").read_bytes()
    assert main(["demo", "-w", str(workspace), "--limit", str(LIMIT), "--no-serve"]) == 0
    out = capsys.readouterr().out
    assert "embedded 0 images this run" in out and f"resumed after {LIMIT} inputs" in out
    assert "already labelled by captions" in out and "labels already scored" in out
    # 80 images are too few for a feature active on 10: the line says so instead of a median
    assert "captions judge" in out and "interp/report.md" in out
    assert "clipatlas serve -w" in out and "| FVU (held-out) |" in out  # the evaluation table, again
    assert (workspace / "saes" / "demo" / "sae.safetensors").read_bytes() == before
    assert main(["info", "-w", str(workspace), "--verify"]) == 0
    info = capsys.readouterr().out
    assert f"store: {LIMIT} embeddings of dimension 1280" in info and "all shards intact" in info
    assert "sae demo: explained variance 0." in info and "silent on all 8 held-out rows" in info
    assert "too few rows to tell" in info  # 8 rows x L0 16 cannot reach 2,560 latents
    assert "atlas built" in info and "dead over the store (80 images)" in info
    assert "features labelled" in info and "scored" in info
