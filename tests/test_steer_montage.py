"""Montage icons on constructed stores where the right icon is known: a tiny encoder (an image's mean colour)
and an SAE whose latents are the red, green and blue channels, so each collage's code can be worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipatlas.encoders import ENCODERS
from clipatlas.encoders.base import Encoder
from clipatlas.errors import UserError
from clipatlas.sae import ARCHITECTURES, ReLUConfig

RED, GREEN, BLUE = 0, 1, 2
FILLER = (0.0, 0.0, 0.3)  # images where red and green stay silent


class MeanColourEncoder(Encoder):
    """The embedding of an image is its mean colour in [0, 1]: a collage's is the mean of its tiles'."""

    id = "test-mean-colour"
    dim = 3
    device = torch.device("cpu")
    dtype = torch.float32

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(pixels.mean(axis=(0, 1))).view(3, 1, 1)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.mean(dim=(2, 3))


@pytest.fixture
def mean_colour_encoder(monkeypatch):
    monkeypatch.setitem(ENCODERS, MeanColourEncoder.id, lambda arg, options: MeanColourEncoder())


def colour_workspace(root, colours) -> tuple:
    """A store of flat 256 px images of `colours` (encoded by MeanColourEncoder), an SAE 'c' whose latent i is
    channel i, and its atlas; returns (root, rows of the first len(colours) images)."""
    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.store import write_store

    colours = [*colours, *[FILLER] * 4]
    meta = []
    for i, colour in enumerate(colours):
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (256, 256), tuple(round(255 * c) for c in colour)).save(path)
        meta.append({"image_id": f"img{i}", "uri": str(path), "source": "test"})
    embeddings = MeanColourEncoder().encode_images([Image.open(m["uri"]) for m in meta])
    write_store(root, embeddings, meta, encoder=MeanColourEncoder.id)
    sae = ARCHITECTURES["relu"](ReLUConfig(d_in=3, d_sae=3, input_scale=1.0))
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec):
            p.copy_(torch.eye(3))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.save_pretrained(root / "saes" / "c")
    build_atlas(root, "c", config=AtlasConfig(top_k=8, map_method="pca", thumbnails=False))
    return root


def plan_of(root) -> dict[int, list[int]]:
    manifest = json.loads((root / "saes" / "c" / "icons" / "icons.json").read_text())
    return dict(zip(manifest["features"], manifest["rows"]))


def rank_of(report, feature) -> int:
    return next(c["after_rank"] for c in report["checks"] if c["feature"] == feature)


def test_a_collage_wins_where_its_tiles_share_only_the_feature(mean_colour_encoder, tmp_path):
    from clipatlas.steer.config import IconConfig
    from clipatlas.steer.icons import make_icons, verify_icons

    # Red's strongest images are each greener or bluer than red: alone, red ranks second in every one.
    root = colour_workspace(tmp_path, [(0.8, 1, 0), (0.75, 0, 1), (0.7, 1, 0), (0.65, 0, 1)])
    single = IconConfig(features=str(RED), decoder="montage", settings=(("max_grid", 1),))
    make_icons(root, "c", single)
    assert plan_of(root)[RED] == [0] and rank_of(verify_icons(root, "c", str(RED)), RED) == 1
    run = make_icons(root, "c", IconConfig(features=str(RED), decoder="montage"))
    # The 2x2 grid of the four: mean colour (0.725, 0.5, 0.5), red first.
    assert run.made == [RED] and plan_of(root)[RED] == [0, 1, 2, 3]
    report = verify_icons(root, "c", str(RED))
    check = report["checks"][0]
    assert check["after_rank"] == 0 and check["after_activation"] == pytest.approx(0.725, abs=0.01)
    assert report["top1_share"] == 1.0 and report["top1_ceiling"] is None  # no store-image cap on a collage
    with Image.open(root / "saes" / "c" / "icons" / f"{RED}.png") as icon:
        assert icon.size == (224, 224)  # 2 tiles of 112 pixels


def test_a_collage_loses_where_its_other_tiles_carry_a_stronger_feature(mean_colour_encoder, tmp_path):
    from clipatlas.steer.config import IconConfig
    from clipatlas.steer.icons import make_icons, verify_icons

    # Red's strongest image is almost pure red; the next three are greener than red.
    root = colour_workspace(tmp_path, [(1, 0.2, 0), (0.5, 1, 0), (0.45, 1, 0), (0.4, 1, 0)])
    make_icons(root, "c", IconConfig(features=f"{RED},{GREEN}", decoder="montage"))
    # The 2x2 grid: mean colour (0.59, 0.8, 0), green first. The single image wins.
    plan = plan_of(root)
    assert plan[RED] == [0]
    report = verify_icons(root, "c", f"{RED},{GREEN}")
    assert rank_of(report, RED) == 0 and report["distinct_share"] == 1.0


def test_the_image_the_feature_dominates_wins_over_its_strongest(mean_colour_encoder, tmp_path):
    from clipatlas.steer.config import IconConfig
    from clipatlas.steer.icons import make_icons, verify_icons

    # Red fires most in the three greenish images, but is the strongest latent only in the weak fourth one.
    root = colour_workspace(tmp_path, [(0.9, 1, 0), (0.85, 1, 0), (0.8, 1, 0), (0.5, 0.1, 0)])
    make_icons(root, "c", IconConfig(features=str(RED), decoder="montage"))
    # Strongest single: green first; either 2x2 of the four: (0.76, 0.78, 0), green first; the dominant single wins.
    assert plan_of(root)[RED] == [3]
    check = verify_icons(root, "c", str(RED))["checks"][0]
    assert check["after_rank"] == 0 and check["after_activation"] == pytest.approx(0.5, abs=0.01)


def test_the_feature_page_says_the_icon_is_a_collage(mean_colour_encoder, tmp_path):
    from fastapi.testclient import TestClient

    from clipatlas.steer.config import IconConfig
    from clipatlas.steer.icons import make_icons, verify_icons
    from clipatlas.web.app import create_app

    root = colour_workspace(tmp_path, [(0.8, 1, 0), (0.75, 0, 1), (0.7, 1, 0), (0.65, 0, 1)])
    make_icons(root, "c", IconConfig(features=str(RED), decoder="montage"))
    verify_icons(root, "c", str(RED))
    with TestClient(base_url="http://127.0.0.1", app=create_app(root, "c"), client=("127.0.0.1", 5000)) as client:
        page = client.get(f"/features/{RED}").text
    assert "a collage of its top store images, montage decoder" in page and "<strong>#1</strong>" in page
    assert "max activation), re-embedded" not in page  # no edit strength to show


def test_verify_re_encodes_the_icon_file_itself(mean_colour_encoder, tmp_path):
    from clipatlas.steer.config import IconConfig
    from clipatlas.steer.icons import ICON_KEY, _save_icon, make_icons, verify_icons

    root = colour_workspace(tmp_path, [(1, 0.2, 0), (0.9, 0.1, 0)])
    make_icons(root, "c", IconConfig(features=str(RED), decoder="montage"))
    assert rank_of(verify_icons(root, "c", str(RED)), RED) == 0
    path = root / "saes" / "c" / "icons" / f"{RED}.png"
    with Image.open(path) as icon:
        key = icon.text[ICON_KEY]
    _save_icon(path, Image.new("RGB", (224, 224), (0, 255, 0)), key)  # a green picture under the same key
    report = verify_icons(root, "c", str(RED))
    assert rank_of(report, RED) == 3 and report["checks"][0]["after_activation"] == 0  # red silent in the file


def test_montage_icons_resume_from_the_saved_choices(mean_colour_encoder, tmp_path, monkeypatch):
    from clipatlas.steer import montage
    from clipatlas.steer.config import IconConfig
    from clipatlas.steer.icons import make_icons

    root = colour_workspace(tmp_path, [(1, 0.2, 0), (0.2, 1, 0)])
    calls = []
    real = montage.draw_montage

    def draw_then_fail(store, rows, size):
        calls.append(rows)
        if len(calls) > 3:  # the second feature's second candidate (each has two): the run is killed
            raise KeyboardInterrupt
        return real(store, rows, size)

    monkeypatch.setattr(montage, "draw_montage", draw_then_fail)
    config = IconConfig(features=f"{RED},{GREEN}", decoder="montage", batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        make_icons(root, "c", config)
    assert set(plan_of(root)) == {RED}  # the first feature's choice was saved
    calls.clear()
    run = make_icons(root, "c", config)
    assert run.made == [RED, GREEN] and len(calls) == 2  # only the second feature's candidates drawn again


def test_montage_needs_the_stores_encoder(tmp_path, capsys):
    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.cli import main
    from clipatlas.steer.icons import store_image_icons
    from clipatlas.store import write_store

    root = tmp_path
    write_store(root, np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32))  # encoder "synthetic"
    ARCHITECTURES["relu"](ReLUConfig(d_in=3, d_sae=3, input_scale=1.0)).save_pretrained(root / "saes" / "c")
    build_atlas(root, "c", config=AtlasConfig(top_k=8, map_method="pca", thumbnails=False))
    capsys.readouterr()
    assert main(["icons", "-w", str(root), "--decoder", "montage"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "store's encoder 'synthetic', which cannot be loaded" in err and "use --decoder retrieval" in err
    with pytest.raises(UserError, match="takes no path"):
        store_image_icons("montage:/x")


def test_the_demo_can_make_montage_icons(mean_colour_encoder, tmp_path):
    from clipatlas.atlas import Atlas
    from clipatlas.steer.demo import write_demo_steering

    root = colour_workspace(tmp_path, [(0.8, 1, 0), (0.75, 0, 1), (0.7, 1, 0), (0.65, 0, 1)])
    assert write_demo_steering(root, "c", icons="montage").is_file()
    alive = Atlas.open(root, "c").map_points().feature.tolist()
    assert sorted(plan_of(root)) == sorted(alive) and plan_of(root)[RED] == [0, 1, 2, 3]
    assert all((root / "saes" / "c" / "icons" / f"{f}.png").is_file() for f in alive)
