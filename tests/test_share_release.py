"""`clipatlas release`: the folder loads back bit-exactly (from the folder and through the hub's
snapshot_download), the model card's numbers are metrics.json's, and --push calls the hub API."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from clipatlas._io import read_json
from clipatlas.cli import main as cli_main
from clipatlas.errors import UserError
from clipatlas.sae import SAE, TopKConfig, TrainConfig, evaluate, train
from clipatlas.share.config import ReleaseConfig
from clipatlas.share.release import hub_model_id, push, release
from clipatlas.store import write_store
from clipatlas.workspace import SAEFiles, Workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("release-ws")
    rng = np.random.default_rng(0)
    write_store(root, (rng.normal(size=(400, 16)) + 2).astype(np.float32), encoder="hf:org/clip-tiny@abc123")
    train(root, TrainConfig(name="s", sae=TopKConfig(k=4), expansion=2, steps=30, batch_size=64))
    evaluate(root, "s")
    return root


def test_release_round_trips_bit_exactly_and_the_card_shows_metrics(trained, tmp_path):
    out = tmp_path / "rel"
    made = release(trained, "s", out, ReleaseConfig(dataset="org/images"))
    assert {"cfg.json", "sae.safetensors", "metrics.json", "README.md"} <= set(made.files)
    source = SAEFiles(Workspace(trained).saes_dir / "s")
    assert (out / "sae.safetensors").read_bytes() == source.weights.read_bytes()
    released_cfg, trained_cfg = read_json(out / "cfg.json"), read_json(source.config)
    assert trained_cfg["store"] == str(Workspace(trained).store_dir) and released_cfg["store"] is None
    assert released_cfg == {**trained_cfg, "store": None}  # no local path is published, nothing else changes
    original, loaded = SAE.from_pretrained(source.dir), SAE.from_pretrained(out)
    for key, tensor in original.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key
    x = torch.randn(8, 16) + 2
    assert torch.equal(original.encode(x), loaded.encode(x)) and torch.equal(original(x), loaded(x))

    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "apache-2.0" and header["library_name"] == "clipatlas"
    assert header["base_model"] == "org/clip-tiny" and header["datasets"] == ["org/images"]
    assert "sparse-autoencoder" in header["tags"]
    metrics = read_json(source.metrics)
    table = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", card, flags=re.M))
    assert float(table["FVU (fraction of variance unexplained)"]) == metrics["fvu"]
    assert float(table["explained variance"]) == metrics["explained_variance"]
    assert float(table["L0 (mean active latents per image)"]) == metrics["l0"]
    assert float(table["silent fraction (latents active on no held-out image)"]) == metrics["silent_fraction"]
    assert float(table["cosine of embedding and reconstruction"]) == metrics["cosine"]
    assert int(table["held-out images"]) == metrics["n_samples"]
    assert not any(key.startswith("dead fraction") for key in table)  # no atlas: no dead fraction over the store


def test_card_shows_the_atlas_dead_fraction_and_the_release_carries_the_atlas(trained, tmp_path):
    import shutil

    from clipatlas.atlas import Atlas, AtlasConfig, build_atlas

    trained = shutil.copytree(trained, tmp_path / "ws")  # the module's workspace stays without an atlas
    build_atlas(trained, "s", config=AtlasConfig(top_k=4, map_method="pca", thumbnails=False))
    summary = Atlas.open(trained, "s").summary()
    out = release(trained, "s", tmp_path / "rel", ReleaseConfig(with_atlas=True)).dir
    table = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", (out / "README.md").read_text(), flags=re.M))
    assert float(table["dead fraction over all 400 store images (atlas)"]) == summary["dead_over_store"]
    assert (out / "atlas" / "atlas.sqlite").read_bytes() == SAEFiles(
        Workspace(trained).saes_dir / "s"
    ).atlas_db.read_bytes()


def test_from_pretrained_hub_id_goes_through_snapshot_download(trained, tmp_path, monkeypatch):
    import huggingface_hub

    out = release(trained, "s", tmp_path / "rel").dir
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append((repo_id, kwargs))
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = SAE.from_pretrained("someone/clip-sae")
    assert asked == [("someone/clip-sae", {"allow_patterns": ["cfg.json", "sae.safetensors"]})]
    expected = load_file(str(out / "sae.safetensors"))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


def test_push_creates_the_repo_and_uploads_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return type("Commit", (), {"commit_url": "https://hub/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert push(tmp_path, "me/sae") == "https://hub/commit/1"
    assert calls == [
        ("create_repo", "me/sae", {"repo_type": "model", "private": False, "exist_ok": True}),
        (
            "upload_folder",
            {
                "folder_path": str(tmp_path),
                "repo_id": "me/sae",
                "repo_type": "model",
                "commit_message": "clipatlas release",
            },
        ),
    ]

    class Offline(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(UserError, match="huggingface-cli login"):
        push(tmp_path, "me/sae")


def test_cli_release_and_its_errors(trained, tmp_path, capsys):
    assert cli_main(["release", "-w", str(trained), "--name", "s", "-o", str(tmp_path / "r"), "--with-atlas"]) == 0
    assert "huggingface-cli upload" in capsys.readouterr().out
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    assert cli_main(["release", "-w", str(trained), "--name", "s", "-o", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err
    untested = Workspace(trained).saes_dir / "copy"
    untested.mkdir()
    for name in ("cfg.json", "sae.safetensors"):
        (untested / name).write_bytes((Workspace(trained).saes_dir / "s" / name).read_bytes())
    with pytest.raises(UserError, match="clipatlas eval"):
        release(trained, "copy", tmp_path / "r2")


@pytest.mark.parametrize(
    "encoder, repo",
    [
        ("kandinsky-clip:kandinsky-community/kandinsky-2-2-prior", "kandinsky-community/kandinsky-2-2-prior"),
        ("hf:org/m@rev", "org/m"),
        ("efficientnet-lite0", ""),
        ("hf:/abs/path", ""),
    ],
)
def test_hub_model_id(encoder, repo):
    assert hub_model_id(encoder) == repo
