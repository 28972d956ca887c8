"""`clipatlas import-sae` on files written by the peers' own code (tests/fixtures/peers, made by
make_fixtures.py there): the converted SAE's codes and reconstructions equal the peer's; an imported
SAE builds an atlas and steers; a width or normalisation it cannot honour is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clipatlas.atlas import Atlas, AtlasConfig, build_atlas
from clipatlas.cli import main as cli_main
from clipatlas.errors import UserError
from clipatlas.sae import SAE
from clipatlas.share.config import ImportConfig
from clipatlas.share.peers import import_sae, recognise
from clipatlas.steer import Recipe, parse_edit, run_recipe
from clipatlas.store import write_store

FIXTURES = Path(__file__).parent / "fixtures" / "peers"
D_IN = 8


def settings_of(name: str) -> ImportConfig:
    """What an overcomplete state dict leaves out, as a user gives it (--k, --threshold)."""
    path = FIXTURES / name / "settings.safetensors"
    if not path.is_file():
        return ImportConfig()
    given = load_file(str(path))
    threshold = float(given["running_threshold"]) if "running_threshold" in given else 0.0
    # BatchTopK's top_k counts the whole batch; at inference only its threshold matters (k: a per-row bound)
    return ImportConfig(k=min(int(given["top_k"]), 24), threshold=threshold)


def source_of(name: str) -> Path:
    folder = FIXTURES / name
    return folder / "sae.pt" if (folder / "sae.pt").is_file() else folder


CASES = [
    ("saelens-standard", "saelens", "relu"),
    ("saelens-topk", "saelens", "topk"),
    ("saelens-jumprelu", "saelens", "jumprelu"),
    ("saev", "saev", "relu"),
    ("overcomplete-topk", "overcomplete", "topk"),
    ("overcomplete-batchtopk", "overcomplete", "batchtopk"),
]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("peer-ws")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, D_IN)) * 2
    write_store(root, (centres[rng.integers(0, 5, 150)] + rng.normal(size=(150, D_IN)) * 0.3).astype(np.float32))
    return root


@pytest.mark.parametrize("name, fmt, arch", CASES)
def test_converted_codes_and_reconstructions_equal_the_peers(name, fmt, arch, tmp_path, store_root):
    assert recognise(source_of(name)) == fmt
    ws = shutil.copytree(store_root, tmp_path / "ws")
    folder = import_sae(source_of(name), ws, "imported", settings_of(name))
    sae = SAE.from_pretrained(folder)
    assert sae.cfg.arch == arch and sae.cfg.d_in == D_IN and sae.cfg.d_sae == 24
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    with torch.no_grad():
        codes = sae.encode(expected["x"])
        reconstruction = sae.decode(codes)
    assert (expected["codes"] != 0).sum() > 0 and torch.equal(codes != 0, expected["codes"] != 0)
    torch.testing.assert_close(codes, expected["codes"], atol=1e-5, rtol=0)
    torch.testing.assert_close(reconstruction, expected["reconstruction"], atol=1e-5, rtol=0)
    recorded = json.loads((folder / "cfg.json").read_text())["imported"]
    assert recorded["format"] == fmt and recorded["source"] == str(source_of(name))


@pytest.mark.parametrize("name", ["saelens-topk", "saev", "overcomplete-batchtopk"])
def test_an_imported_sae_builds_an_atlas_and_steers(name, tmp_path, store_root):
    ws = shutil.copytree(store_root, tmp_path / "ws")
    assert cli_main(["import-sae", str(source_of(name)), "-w", str(ws), "--name", "peer", *flags(name)]) == 0
    build_atlas(ws, "peer", config=AtlasConfig(top_k=6, map_method="pca", thumbnails=False))
    atlas = Atlas.open(ws, "peer")
    alive = [f for f in range(atlas.n_features) if atlas.feature(f).alive]
    assert alive and len(atlas.map_points()) == len(alive)
    feature = max(alive, key=lambda f: atlas.feature(f).max_activation)
    silent = next(i for i in range(150) if feature not in {a.feature for a in atlas.features_of_image(f"{i:08d}")})
    result = run_recipe(
        ws,
        Recipe(
            image=f"{silent:08d}",
            edits=(parse_edit(f"set:{feature}=5x"),),
        ),
        name="peer",
    )
    assert not np.allclose(result.before, result.after)
    assert result.before_ranking[0].image_id == f"{silent:08d}"  # unedited: the source image itself

    def activation(hits) -> float:  # of the edited feature, over the images shown
        codes = [{a.feature: a.activation for a in atlas.features_of_image(h.image_id)} for h in hits]
        return float(np.mean([code.get(feature, 0.0) for code in codes]))

    assert activation(result.after_ranking) > activation(result.before_ranking)  # the edit shows the feature


def flags(name: str) -> list[str]:
    given = settings_of(name)
    return [
        *(["--k", str(given.k)] if given.k else []),
        *(["--threshold", repr(given.threshold)] if given.threshold else []),
    ]


def test_mismatches_are_refused_in_one_line(tmp_path):
    wide = tmp_path / "wide"
    write_store(wide, np.zeros((4, 16), np.float32))
    with pytest.raises(UserError, match=r"reads 8-d inputs, but this store's .* embeddings are 16-d"):
        import_sae(FIXTURES / "saelens-standard", wide, "x")
    layer_norm = tmp_path / "ln"
    shutil.copytree(FIXTURES / "saelens-standard", layer_norm)
    cfg = json.loads((layer_norm / "cfg.json").read_text())
    (layer_norm / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(UserError, match="normalises each input at run time") as caught:
        import_sae(layer_norm, wide, "x")
    assert "\n" not in str(caught.value)
    (layer_norm / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(UserError, match="--input-scale"):
        import_sae(layer_norm, wide, "x")
    with pytest.raises(UserError, match="give it with --k"):
        import_sae(source_of("overcomplete-topk"), wide, "x")
    with pytest.raises(UserError, match="no SAE at"):
        import_sae(tmp_path / "missing.pt", wide, "x")


def test_input_scale_is_honoured(tmp_path):
    """A peer trained on inputs multiplied by s: our SAE takes raw inputs and answers in the raw scale."""
    root = tmp_path / "ws"
    write_store(root, np.zeros((4, D_IN), np.float32))
    folder = import_sae(source_of("saev"), root, "scaled", ImportConfig(input_scale=2.5))
    sae = SAE.from_pretrained(folder)
    expected = load_file(str(FIXTURES / "saev" / "expected.safetensors"))
    with torch.no_grad():
        codes = sae.encode(expected["x"] / 2.5)
        torch.testing.assert_close(codes, expected["codes"], atol=1e-5, rtol=0)
        torch.testing.assert_close(sae.decode(codes) * 2.5, expected["reconstruction"], atol=1e-5, rtol=0)
