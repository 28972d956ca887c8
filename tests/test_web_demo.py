"""The app on the demo-like atlas (real EfficientNet embeddings): uploads are embedded by the
workspace's encoder and their features equal the SAE's on that embedding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipatlas.atlas import Atlas
from clipatlas.web.app import create_app

LOOPBACK = ("127.0.0.1", 50000)


@pytest.fixture(scope="module")
def demo(demo_workspace):
    with TestClient(base_url="http://127.0.0.1", app=create_app(demo_workspace, "demo"), client=LOOPBACK) as client:
        yield client, Atlas.open(demo_workspace, "demo")


def chelsea() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_features_equal_sae_on_its_embedding(demo):
    from clipatlas.encoders import load_encoder

    client, atlas = demo
    image = chelsea()
    response = client.post("/api/uploads", files={"file": ("cat.png", png(image), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    embedding = load_encoder(atlas.summary()["encoder"]).encode_images([image])[0]
    expected = atlas.features_of_embedding(embedding)
    assert [f["feature"] for f in body["features"]] == [a.feature for a in expected][: len(body["features"])]
    np.testing.assert_allclose(
        [f["activation"] for f in body["features"]],
        [a.activation for a in expected][: len(body["features"])],
        rtol=1e-4,
    )
    assert client.get(f"/api/uploads/{body['upload_id']}").json()["features"] == body["features"]
    shown = client.get(body["url"])
    assert shown.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(shown.content)).size == (451, 300)  # 451x300 fits in 512: kept


def test_same_upload_twice_has_one_id(demo):
    client, _ = demo
    data = png(chelsea().resize((64, 43)))
    first = client.post("/api/uploads", files={"file": ("a.png", data, "image/png")}).json()
    second = client.post("/api/uploads", files={"file": ("b.png", data, "image/png")}).json()
    assert first["upload_id"] == second["upload_id"] and first["features"] == second["features"]


def test_demo_pages_render(demo):
    client, atlas = demo
    feature = next(iter(atlas.headlines()))  # named by the fixture's captions labels and their scores
    page = client.get(f"/features/{feature}", headers={"accept": "text/html"})
    assert page.status_code == 200 and f'<span class="label">{atlas.feature(feature).label}</span>' in page.text
    top = atlas.top_images(feature)[0].image_id
    assert client.get(f"/thumbs/{top}").status_code == 200
