"""The web app's routes against a synthetic atlas: data shown equals the Atlas API's, and every
security rule (token, loopback, origin, upload caps, ids not paths, escaping) holds."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from conftest import add_guess_and_coin_flip
from fastapi.testclient import TestClient
from PIL import Image

from clipatlas.atlas import Atlas, Label
from clipatlas.atlas.annotations import add_labels, set_icon
from clipatlas.atlas.query import NO_LABEL_BEATS_BASELINE
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas
from clipatlas.errors import UserError
from clipatlas.web.app import create_app
from clipatlas.web.config import UploadLimits, WebConfig

LOOPBACK = ("127.0.0.1", 50000)
HTML = {"accept": "text/html"}
EVIL_LABEL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, scored_label):
    ws = write_synthetic_atlas(tmp_path_factory.mktemp("web-atlas"), SyntheticAtlasConfig(n_features=300, n_images=120))
    atlas = Atlas.open(ws)
    evil_feature = int(atlas.map_points().feature[0])
    scored_label(atlas, evil_feature, EVIL_LABEL)  # labels may come from an LLM
    add_guess_and_coin_flip(atlas)
    return ws


@pytest.fixture(scope="module")
def atlas(workspace):
    return Atlas.open(workspace)


@pytest.fixture(scope="module")
def client(workspace):
    with TestClient(base_url="http://127.0.0.1", app=create_app(workspace.root), client=LOOPBACK) as test_client:
        yield test_client


def alive_feature(atlas, index=1):
    return int(atlas.map_points().feature[index])


def png_upload(size=(32, 32), colour=(200, 30, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return {"file": ("x.png", buffer.getvalue(), "image/png")}


# ---- pages and JSON show the atlas's data -------------------------------------------------------
def test_index_shows_summary_and_search(client, atlas):
    page = client.get("/", headers=HTML)
    assert page.status_code == 200
    summary = atlas.summary()
    assert f"<td>{summary['n_alive']}</td>" in page.text and 'action="/search"' in page.text
    assert f"<td>{summary['dead_over_store']:.1%}</td>" in page.text and "dead over the store" in page.text
    assert not re.search(r"\d\.\d{5,}", page.text)  # numbers are rounded for reading
    assert client.get("/api/summary").json()["n_features"] == summary["n_features"]


def test_feature_json_equals_atlas(client, atlas):
    fid = alive_feature(atlas)
    body = client.get(f"/api/features/{fid}").json()
    info = atlas.feature(fid)
    assert body["max_activation"] == pytest.approx(info.max_activation)
    assert [e["image_id"] for e in body["top_images"]] == [e.image_id for e in atlas.top_images(fid)]
    assert [e["activation"] for e in body["top_images"]] == sorted(
        (e["activation"] for e in body["top_images"]), reverse=True
    )
    assert [n["feature"] for n in body["coactivating"]] == [n.feature for n in atlas.coactivating(fid)]
    assert [n["feature"] for n in body["similar_decoder"]] == [n.feature for n in atlas.similar(fid, by="decoder")]
    assert [n["feature"] for n in body["similar_encoder"]] == [n.feature for n in atlas.similar(fid, by="encoder")]
    assert all(n["label"] == (atlas.feature(n["feature"]).label or "") for n in body["coactivating"])
    assert sum(bar["count"] for bar in body["histogram_bars"]) == sum(info.hist_counts)
    assert "icon" not in body  # server paths never leave the server


def test_feature_page_lists_examples_and_links(client, atlas):
    fid = alive_feature(atlas)
    page = client.get(f"/features/{fid}", headers=HTML).text
    for example in atlas.top_images(fid) + atlas.quantile_samples(fid):
        assert f'src="/thumbs/{example.image_id}"' in page
    for neighbour in atlas.coactivating(fid):
        assert f'href="/features/{neighbour.feature}"' in page
    assert f'href="/playground?feature={fid}"' in page
    assert page.count("<rect ") == len(atlas.feature(fid).hist_counts)


@pytest.mark.parametrize("url", ["/features/100000", "/features/-1", "/api/features/300"])
def test_unknown_feature_is_404_with_help(client, url):
    response = client.get(url, headers=HTML)
    assert response.status_code == 404
    assert "features 0..299" in response.text


def test_non_integer_feature_is_422(client):
    assert client.get("/api/features/abc").status_code == 422


def test_map_has_every_alive_feature(client, atlas):
    body = client.get("/api/map").json()
    points = atlas.map_points()
    assert body["feature"] == points.feature.tolist()
    np.testing.assert_allclose(body["x"], points.x, atol=1e-4)
    assert body["label"] == points.label
    names = atlas.headlines()
    assert body["label"] == [names[f].text if f in names else "" for f in points.feature.tolist()]
    assert body["top_image"] == [atlas.top_images(f)[0].image_id for f in points.feature.tolist()]
    assert client.get("/map", headers=HTML).status_code == 200


def test_map_clusters_are_named_from_their_members_headline_labels(client, atlas):
    body = client.get("/api/map").json()
    names = atlas.headlines()
    assert body["clusters"]
    for cluster in body["clusters"]:
        members = [f for f, c in zip(body["feature"], body["cluster"]) if c == cluster["cluster"]]
        words = [w for f in members if f in names for w in dict.fromkeys(names[f].text.split(", "))]
        top = max(words.count(w) for w in words)
        first = cluster["name"].split(", ")[0]
        assert words.count(first) == top and cluster["size"] == len(members)


def test_features_sorted_and_filtered_by_score(client, atlas):
    body = client.get("/api/features", params={"sort": "score", "limit": 1000}).json()
    scores = [f["score"] for f in body["features"]]
    assert body["total"] == len(atlas.labels_by_feature()) == len(scores)
    tiers = [0 if f["label"] else 1 if f["best_guess"] else 2 for f in body["features"]]
    assert tiers == sorted(tiers) and tiers[0] == 0  # named first, then best guesses, then the rest
    for tier in set(tiers):
        within = [s for s, t in zip(scores, tiers) if t == tier]
        assert within == sorted(within, reverse=True)
    strong = client.get("/api/features", params={"min_score": 0.8, "named": True, "limit": 1000}).json()["features"]
    assert strong and all(f["score"] >= 0.8 and f["label"] for f in strong)
    assert {f["feature"] for f in strong} == {f for f, label in atlas.headlines().items() if label.score().value >= 0.8}
    by_id = client.get("/api/features", params={"sort": "feature", "limit": 5, "offset": 5}).json()["features"]
    assert [f["feature"] for f in by_id] == sorted(atlas.labels_by_feature())[5:10]
    nonsense = client.get("/api/features", params={"sort": "nonsense"})
    assert nonsense.status_code == 422 and "sort" in nonsense.json()["detail"]
    page = client.get("/features", params={"min_score": "", "named": "true"}, headers=HTML).text
    assert page.count('class="hit"') == min(100, len(atlas.headlines())) and "page=2" in page
    second = client.get("/features", params={"named": "true", "page": 2}, headers=HTML).text
    assert second.count('class="hit"') == len(atlas.headlines()) - 100


def test_feature_page_shows_the_icon_causal_check(workspace):
    from clipatlas._io import atomic_write_json

    atlas = Atlas.open(workspace)
    fid = alive_feature(atlas, 2)
    check = {"feature": fid, "before_activation": 0.0, "after_activation": 4.5, "before_rank": 300, "after_rank": 0}
    report = {"decoder": "retrieval", "strength": 7.5, "checks": [check]}
    atomic_write_json(atlas.files.icon_verify_report, report)
    with TestClient(
        base_url="http://127.0.0.1", app=create_app(workspace.root), client=LOOPBACK
    ) as fresh:  # read once per app
        assert fresh.get(f"/api/features/{fid}").json()["icon_check"] == {
            **check,
            "decoder": "retrieval",
            "strength": 7.5,
        }
        page = fresh.get(f"/features/{fid}", headers=HTML).text
        assert "ranks <strong>#1</strong> among all features (before the edit: #301)" in page
        assert fresh.get(f"/api/features/{alive_feature(atlas, 3)}").json()["icon_check"] is None


def test_unscored_labels_never_name_a_feature(client, workspace):
    atlas = Atlas.open(workspace)
    unnamed = next(int(f) for f in atlas.map_points().feature if int(f) not in atlas.headlines())
    add_labels(atlas, [Label(unnamed, "captions", "unscored words", model="other")])
    page = client.get(f"/features/{unnamed}", headers=HTML).text
    assert "unscored words" in page  # in the labels table...
    assert '<span class="label unnamed" title="' in page and "unscored words</span></h1>" not in page  # not the name
    assert client.get(f"/api/features/{unnamed}/brief").json()["label"] == ""


def labelled(atlas, text: str) -> int:
    return next(f for f, labels in atlas.labels_by_feature().items() if any(label.text == text for label in labels))


def test_an_unnamed_feature_shows_its_best_guess_apart_from_its_name(client, atlas):
    guessed, coin = labelled(atlas, "dark birds"), labelled(atlas, "coin flip")
    body = client.get(f"/api/features/{guessed}").json()
    assert (body["label"], body["label_note"], body["headline_id"]) == ("", NO_LABEL_BEATS_BASELINE, None)
    guess_id = next(label.id for label in atlas.labels(guessed) if label.text == "dark birds")
    guess = {
        "label_id": guess_id,
        "text": "dark birds",
        "source": "vlm",
        "judge": "captions",
        "metric": "auroc",
        "value": 0.95,
        "baseline": 0.62,
        "evidence_p": 0.061,
        "naming_p": 0.05,
        "n": 16,
    }
    assert body["best_guess"] == guess
    assert client.get(f"/api/features/{guessed}/brief").json()["best_guess"] == guess
    (hit,) = [r for r in client.get("/api/search", params={"q": "dark birds"}).json()["results"]]
    assert (hit["feature"], hit["label"], hit["best_guess"], hit["names_feature"]) == (guessed, "", guess, False)
    assert hit["beats_baseline"] is True
    listed = client.get("/api/features", params={"limit": 1000}).json()["features"]
    assert next(r for r in listed if r["feature"] == guessed)["matched"] == "dark birds"  # the guess's own score
    named_only = client.get("/api/features", params={"named": True, "limit": 1000}).json()["features"]
    assert guessed not in {r["feature"] for r in named_only} and all(r["best_guess"] is None for r in named_only)
    page = client.get(f"/features/{guessed}", headers=HTML).text
    heading = page[page.index("<h1>") : page.index("</h1>")]
    assert "unnamed" in heading and "dark birds" not in heading  # never the name...
    assert (  # ...but shown apart, with where its score came from
        '<p class="name-guess"><span class="best-guess">best guess “<span class="guess-text">dark birds</span>” '
        '<span class="guess-score muted">(AUROC 0.95 vs 0.62 baseline, p 0.061 &gt; 0.05, 16 images, captions judge)'
        in page
    )
    assert '<span class="badge guess">best guess</span>' in page and '<span class="badge">name</span>' not in page
    # below chance, though above its shuffled baseline: no name, no guess, and the table says it does not beat it
    coin_body = client.get(f"/api/features/{coin}").json()
    assert (coin_body["label"], coin_body["best_guess"]) == ("", None)
    coin_score = next(label for label in coin_body["labels"] if label["text"] == "coin flip")["scores"][0]
    assert (coin_score["value"], coin_score["baseline"], coin_score["beats_baseline"]) == (0.45, 0.4, False)
    assert 'class="name-guess"' not in client.get(f"/features/{coin}", headers=HTML).text
    named = alive_feature(atlas, 0)
    assert client.get(f"/api/features/{named}").json()["best_guess"] is None


def test_map_served_gzipped_or_plain(client):
    zipped = client.get("/api/map", headers={"accept-encoding": "gzip"})
    plain = client.get("/api/map", headers={"accept-encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert zipped.json() == plain.json()


def test_api_index_lists_json_routes(client):
    page = client.get("/api", headers=HTML).text
    for path in ("/api/features/{feature_id}", "/api/map", "/api/search", "/api/generate", "/api/jobs/{job_id}"):
        assert f"<code>{path}</code>" in page
    assert "/api/features/{feature_id}" in client.get("/api/openapi.json").json()["paths"]


def test_image_page_bars_follow_atlas(client, atlas):
    image_id = atlas.top_images(alive_feature(atlas))[0].image_id
    body = client.get(f"/api/images/{image_id}").json()
    expected = sorted(atlas.features_of_image(image_id), key=lambda a: -a.activation)
    assert [f["feature"] for f in body["features"]] == [a.feature for a in expected]
    assert body["features"][0]["width"] == 100.0
    page = client.get(f"/images/{image_id}", headers=HTML).text
    assert page.index(f'href="/features/{expected[0].feature}"') < page.index(
        f'href="/features/{expected[-1].feature}"'
    )


def test_unknown_image_is_404(client):
    assert client.get("/api/images/img999999").status_code == 404
    assert client.get("/images/no-such-image", headers=HTML).status_code == 404


def test_search_by_label_and_by_id(client, atlas):
    body = client.get("/api/search", params={"q": "cat"}).json()
    assert body["results"] and all("cat" in r["matched"].lower() for r in body["results"])
    assert {r["feature"] for r in body["results"]} == {label.feature for label in atlas.search_labels("cat")}
    # best first: labels that beat their baseline, by score, then the rest
    ranks = [(not r["beats_baseline"], -r["score"]) for r in body["results"]]
    assert ranks == sorted(ranks) and not ranks[0][0] and ranks[-1][0]
    names = atlas.headlines()
    for r in body["results"]:
        assert r["label"] == (names[r["feature"]].text if r["feature"] in names else "")
        assert r["label"] or r["label_note"] == NO_LABEL_BEATS_BASELINE
    assert client.get("/api/search", params={"q": "#12"}).json()["exact_feature"] == 12
    redirect = client.get("/search", params={"q": "12"}, follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"] == "/features/12"
    assert "No feature label matches" in client.get("/search", params={"q": "zzzz"}, headers=HTML).text


def test_playground_page_offers_store_images(client, atlas):
    page = client.get("/playground", headers=HTML).text
    samples = client.get("/api/samples").json()["images"]
    assert samples and all(f'data-image="{image_id}"' in page for image_id in samples)
    assert 'data-decoder="retrieval"' in page


# ---- labels are escaped everywhere --------------------------------------------------------------
def test_labels_are_escaped(client, atlas):
    evil = int(atlas.map_points().feature[0])
    pages = [
        client.get(f"/features/{evil}", headers=HTML).text,
        client.get("/search", params={"q": "script"}, headers=HTML).text,
    ]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert atlas.feature(evil).label == EVIL_LABEL  # it is the feature's name (scored, beat its baseline)
    assert client.get("/api/map").json()["label"][0] == EVIL_LABEL  # JSON carries it as data


# ---- files are served by id only ----------------------------------------------------------------
def test_thumbnail_by_id(client, workspace, atlas):
    image_id = atlas.top_images(alive_feature(atlas))[0].image_id
    response = client.get(f"/thumbs/{image_id}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    assert response.content == atlas.thumbnail_path(image_id).read_bytes()


@pytest.mark.parametrize(
    "attempt",
    ["..%2F..%2Fcfg.json", "%2Fetc%2Fpasswd", "img000001%00", "thumbs%2Fimg000001.webp", "%2E%2E", "no-such-image"],
)
def test_thumbnail_paths_are_refused(client, attempt):
    assert client.get(f"/thumbs/{attempt}").status_code == 404


def test_icons_by_feature_id(client, atlas, tmp_path):
    fid = alive_feature(atlas, 2)
    assert client.get(f"/icons/{fid}").status_code == 404
    icon = tmp_path / "icon.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(icon)
    set_icon(atlas, fid, icon)
    response = client.get(f"/icons/{fid}")
    assert response.status_code == 200 and response.content == icon.read_bytes()
    assert client.get("/icons/99999").status_code == 404


def test_unknown_upload_and_job_ids_are_404(client):
    assert client.get("/uploads/../../etc/passwd").status_code == 404
    assert client.get("/uploads/" + "0" * 32).status_code == 404
    assert client.get("/api/uploads/" + "0" * 32).status_code == 404
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.get("/api/jobs/nope/images/0.png").status_code == 404


# ---- who may compute or upload ------------------------------------------------------------------
COMPUTE = [("post", "/api/uploads"), ("post", "/search/image"), ("post", "/api/generate")]


@pytest.mark.parametrize("method,url", COMPUTE)
def test_token_required_when_configured(workspace, method, url):
    with TestClient(
        base_url="http://127.0.0.1", app=create_app(workspace.root, token="s3cret"), client=("10.0.0.7", 1234)
    ) as remote:
        assert getattr(remote, method)(url).status_code == 401
        assert getattr(remote, method)(url, headers={"x-clipatlas-token": "wrong"}).status_code == 401
        # Past the gate the request fails on its (empty) body, not on the token.
        assert getattr(remote, method)(url, headers={"x-clipatlas-token": "s3cret"}).status_code in (400, 422)
        assert remote.get("/api/summary").status_code == 200  # reading needs no token


def test_token_url_sets_cookie_used_by_scripts(workspace):
    with TestClient(
        base_url="http://127.0.0.1", app=create_app(workspace.root, token="s3cret"), client=("10.0.0.7", 1234)
    ) as remote:
        page = remote.get("/?token=s3cret", headers=HTML)
        assert page.status_code == 200 and "httponly" in page.headers["set-cookie"].lower()
        assert remote.post("/api/generate", content=b"[]").status_code == 422  # cookie accepted, body refused
        remote.cookies.clear()
        assert remote.post("/api/generate", content=b"[]").status_code == 401


@pytest.mark.parametrize("method,url", COMPUTE)
def test_without_token_only_loopback_clients_compute(workspace, method, url):
    with TestClient(
        base_url="http://127.0.0.1", app=create_app(workspace.root), client=("192.168.1.20", 1234)
    ) as remote:
        response = getattr(remote, method)(url)
        assert response.status_code == 403 and "token" in response.json()["detail"]
        assert remote.get("/features/1").status_code in (200, 404)


def test_cross_origin_compute_is_refused(client):
    response = client.post("/api/generate", content=b"[]", headers={"origin": "http://evil.example"})
    assert response.status_code == 403
    same = client.post("/api/generate", content=b"[]", headers={"origin": "http://127.0.0.1"})
    assert same.status_code == 422
    # The scheme is part of the origin: an https page is another origin than this http server.
    other_scheme = client.post("/api/generate", content=b"[]", headers={"origin": "https://127.0.0.1"})
    assert other_scheme.status_code == 403


# ---- upload caps --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def capped(workspace):
    limits = UploadLimits(max_bytes=4096, max_pixels=64 * 64)
    with TestClient(
        base_url="http://127.0.0.1", app=create_app(workspace.root, config=WebConfig(limits=limits)), client=LOOPBACK
    ) as test_client:
        yield test_client


def test_upload_over_byte_cap_is_413(capped):
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 4096
    response = capped.post("/api/uploads", files={"file": ("n.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413 and "MiB" in response.json()["detail"]


def test_upload_over_pixel_cap_is_413_before_decoding(capped):
    response = capped.post("/api/uploads", files=png_upload(size=(65, 64)))
    assert response.status_code == 413 and "65x64" in response.json()["detail"]


def test_uploads_are_decoded_like_embedded_images():
    """Transparency lands on white and EXIF rotation is applied, as `clipatlas embed` does: the
    same picture uploaded or embedded gives the same features."""
    from clipatlas.web.security import decode_upload

    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    buffer = io.BytesIO()
    transparent.save(buffer, format="PNG")
    decoded = decode_upload(buffer.getvalue(), UploadLimits())
    assert decoded.mode == "RGB" and decoded.getpixel((3, 3)) == (255, 255, 255)

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 0, 255)).save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_upload(buffer.getvalue(), UploadLimits()).size == (20, 40)


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"", "empty"),
        (b"GIF89a not really", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a readable image"),
    ],
)
def test_bad_uploads_are_400(capped, payload, reason):
    response = capped.post("/api/uploads", files={"file": ("x.png", payload, "image/png")})
    assert response.status_code == 400 and reason in response.json()["detail"]


def test_upload_to_workspace_without_image_encoder_explains(capped):
    response = capped.post("/api/uploads", files=png_upload())
    assert response.status_code == 409 and "choose an image from the store" in response.json()["detail"]


# ---- recipes are validated ----------------------------------------------------------------------
@pytest.mark.parametrize("content_type", [None, "application/json"])
@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[1, 2]", b'"text"'])
def test_malformed_recipe_bodies(client, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/api/generate", content=body, headers=headers)
    assert response.status_code == 422
    assert re.search(r"invalid request: body.*(JSON|valid dictionary)", response.json()["detail"])


def test_security_headers(client):
    response = client.get("/features/1", headers=HTML)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src" not in response.headers["content-security-policy"]  # falls back to default-src 'self'
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert "<script>" not in response.text.replace("<script src=", "")  # no inline scripts to allow


def test_unknown_route_gets_html_error_page(client):
    response = client.get("/no/such/page", headers=HTML)
    assert response.status_code == 404 and "Back to the atlas" in response.text
    assert client.get("/api/nothing").json() == {"detail": "Not Found"}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries no pixel data (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height", [(100, 100), (30_000, 30_000)])  # over our cap; over PIL's bomb limit
def test_pixel_bombs_are_refused_without_decoding(capped, width, height):
    response = capped.post("/api/uploads", files={"file": ("bomb.png", png_header_only(width, height), "image/png")})
    assert response.status_code == 413 and "pixels" in response.json()["detail"]


def test_oversized_bodies_refused_before_reading(capped):
    huge = capped.post(
        "/api/uploads",
        content=b"x" * (4096 + 64 * 1024 + 1),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert huge.status_code == 413

    def chunks():
        yield b"--b\r\n"

    chunked = capped.post("/api/uploads", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 411


@pytest.mark.parametrize(
    "recipe,reason",
    [
        ({"image": "/etc/passwd", "edits": []}, "not a store image id nor an image uploaded"),
        ({"image": "img000001", "edits": [{"op": "transfer", "image": "..\\\\secret.png"}]}, "not a store image"),
        ({"image": "img000001", "edits": [{"op": "difference", "image": "img000002", "other": "x"}]}, "'x' is not"),
        ({"image": "upload:" + "ab" * 16, "edits": []}, "upload the image again"),
        ({"image": "upload:../../x", "edits": []}, "upload the image again"),
    ],
)
def test_recipes_may_not_name_server_paths(client, recipe, reason):
    response = client.post("/api/generate", json=recipe)
    assert response.status_code == 422 and reason in response.json()["detail"]


@pytest.mark.parametrize(
    "edits,reason",
    [
        ([{"op": "boost", "feature": 1}], "op: Input should be 'set'"),
        ([{"op": "set", "feature": 300, "value": 1.0}], "0..299"),
        ([{"op": "transfer", "image": "img000002", "features": [3, 300]}], "0..299"),
        ([{"op": "set", "feature": 1, "value": "lots"}], "value: Input should be a valid number"),
        ([{"op": "set", "feature": 1, "value": 1.0, "colour": "red"}], "colour: Extra inputs are not permitted"),
        ([{"op": "ban", "feature": 1}] * 1025, "at most 1024"),
        # Out of range or not read by the op: refused, never silently ignored (issue 15, problem 3).
        ([{"op": "set", "feature": 1, "value": 1e6}], "value: Input should be less than or equal to 10000"),
        ([{"op": "set", "feature": -1, "value": 1.0}], "feature: Input should be greater than or equal to 0"),
        ([{"op": "ban", "feature": 1, "value": 3.0}], "takes no ['value']"),
        ([{"op": "set", "feature": 1, "value": 1.0, "image": "img000002"}], "takes no ['image']"),
        ([{"op": "scale", "feature": 1, "value": 2.0, "unit": "max"}], "applies to set and add"),
        (["set:1=nan"], "bad strength"),
    ],
)
def test_invalid_edits_are_422(client, edits, reason):
    response = client.post("/api/generate", json={"image": "img000001", "edits": edits, "seed": 1})
    assert response.status_code == 422 and reason in response.json()["detail"]


def test_negative_seed_is_422(client):
    response = client.post("/api/generate", json={"image": "img000001", "edits": [], "seed": -3})
    assert response.status_code == 422 and "seed" in response.json()["detail"]


def test_server_chooses_decoder_settings_and_sae(client):
    from clipatlas.steer import Recipe

    sent = {
        "image": "img000001",
        "edits": [{"op": "ban", "feature": 3}],
        "seed": 7,
        "decoder": "kandinsky",
        "settings": {"steps": 100000},
        "sae": "other",
    }
    job = client.post("/api/generate", json=sent).json()
    expected = Recipe.from_dict({**sent, "decoder": "retrieval", "settings": {}, "sae": None})
    assert job["id"] == expected.hash


# ---- generation through the queue ---------------------------------------------------------------
def wait_for_job(client, job_id, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout} s"
        time.sleep(0.05)


def test_generation_equals_steer_and_is_cached(client, workspace, atlas):
    from clipatlas.steer import Recipe, run_recipe

    image_id = atlas.top_images(alive_feature(atlas))[0].image_id
    strongest = atlas.features_of_image(image_id)[0].feature
    sent = {
        "image": image_id,
        "edits": [{"op": "ban", "feature": strongest}, {"op": "set", "feature": 5, "value": 3.0}],
        "seed": 3,
    }
    submitted = client.post("/api/generate", json=sent).json()
    assert submitted["cached"] is False and submitted["status"] in ("queued", "running", "done")
    job = wait_for_job(client, submitted["id"])
    assert job["status"] == "done", job["error"]
    reference = run_recipe(workspace, Recipe.from_dict({**sent, "decoder": "retrieval"}))
    assert client.get(job["result"]["before_url"]).content == reference.before_png
    assert client.get(job["result"]["after_url"]).content == reference.after_png
    shown = job["result"]["after_ranking"]
    assert [h["image_id"] for h in shown] == [h.image_id for h in reference.after_ranking]
    assert image_id not in [h["image_id"] for h in shown]  # an edit never shows the unedited image
    # Each shown image carries the edited features' activations: feature 5 raised first.
    table = atlas.feature_table()
    for sent_hit, hit in zip(shown, reference.after_ranking):
        assert sent_hit["score"] == pytest.approx(hit.score) and sent_hit["cosine"] == pytest.approx(hit.cosine)
        assert [(t["feature"], t["raised"]) for t in sent_hit["targets"]] == [
            (t.feature, t.raised) for t in hit.targets
        ]
        assert (sent_hit["targets"][0]["feature"], sent_hit["targets"][0]["raised"]) == (5, True)
        for sent_target, target in zip(sent_hit["targets"], hit.targets):
            assert sent_target["activation"] == pytest.approx(target.activation)
            assert sent_target["rank"] == (target.rank if target.activation > 0 else None)
            assert sent_target["max_activation"] == pytest.approx(table.max_activation[target.feature])
    assert job["result"]["decoder"] == "retrieval" and job["progress"] == 1.0
    again = client.post("/api/generate", json=sent).json()
    assert again["cached"] is True and again["id"] == submitted["id"] and again["status"] == "done"


def test_unknown_image_refused_before_queueing(client):
    response = client.post("/api/generate", json={"image": "no-such-image", "edits": [], "seed": 1})
    assert response.status_code == 422 and "no-such-image" in response.json()["detail"]


def test_edit_that_overflows_the_embedding_fails_its_job(client, atlas):
    """Each strength is within bounds, but ten stacked scales overflow float32: the job fails with one line
    (before: it was stored as done with a NaN embedding and every poll answered 500)."""
    feature = alive_feature(atlas)
    edits = [{"op": "set", "feature": feature, "value": 1e4}] + [{"op": "scale", "feature": feature, "value": 1e4}] * 10
    submitted = client.post("/api/generate", json={"image": "img000001", "edits": edits, "seed": 1})
    assert submitted.status_code == 200
    job = wait_for_job(client, submitted.json()["id"])
    assert job["status"] == "failed" and "NaN or infinite" in job["error"] and "smaller" in job["error"]
    assert client.get(f"/api/jobs/{job['id']}").status_code == 200
    assert client.get(f"/api/jobs/{job['id']}/images/0.png").status_code == 404


def test_decoder_follows_workspace_encoder(tmp_path):
    kandinsky_ws = write_synthetic_atlas(
        tmp_path / "k", SyntheticAtlasConfig(n_features=32, n_images=40, encoder="kandinsky-clip")
    )
    with TestClient(base_url="http://127.0.0.1", app=create_app(kandinsky_ws.root), client=LOOPBACK) as kandinsky:
        assert 'data-decoder="kandinsky"' in kandinsky.get("/playground", headers=HTML).text
    with TestClient(
        base_url="http://127.0.0.1",
        app=create_app(kandinsky_ws.root, config=WebConfig(decoder="retrieval")),
        client=LOOPBACK,
    ) as chosen:
        assert 'data-decoder="retrieval"' in chosen.get("/playground", headers=HTML).text


def test_unknown_decoder_fails_at_start(workspace):
    with pytest.raises(UserError, match="unknown decoder"):
        create_app(workspace.root, config=WebConfig(decoder="dall-e"))


@pytest.mark.parametrize("fields", [{"n_images": 20}, {"n_features": 10}])
def test_synthetic_atlas_refuses_sizes_it_cannot_fill(fields):
    with pytest.raises(UserError, match="synthetic atlas needs"):
        SyntheticAtlasConfig(**fields)


def test_playground_default_strength_says_where_it_came_from(tmp_path):
    from clipatlas._io import atomic_write_json
    from clipatlas.steer.success import StrengthPoint, SuccessCurve

    ws = write_synthetic_atlas(tmp_path / "s", SyntheticAtlasConfig(n_features=32, n_images=40))
    with TestClient(base_url="http://127.0.0.1", app=create_app(ws.root), client=LOOPBACK) as unmeasured:
        page = unmeasured.get("/playground", headers=HTML).text
        assert 'data-default-strength="7.5"' in page and "has not been measured" in page
    atlas = Atlas.open(ws)
    points = [
        StrengthPoint(s, 30, success, 1.0, success, 0.2, 0.8, 0.4, 0.1) for s, success in ((1.0, 0.5), (2.0, 0.9))
    ]
    curve = SuccessCurve(atlas.name, atlas.build_id, "retrieval", {}, {"target": 0.8, "top": 5}, 10, points)
    atomic_write_json(atlas.files.steering_success("retrieval"), curve.to_dict())
    with TestClient(base_url="http://127.0.0.1", app=create_app(ws.root), client=LOOPBACK) as measured:
        page = measured.get("/playground", headers=HTML).text
        assert 'data-default-strength="2.0"' in page
        assert "2x: 90% of 30 single set edits on 10 features showed the feature" in page


def test_number_writes_what_the_template_macro_it_replaced_wrote():
    from jinja2 import Environment

    from clipatlas.web.fragments import number

    macro = Environment(autoescape=True).from_string(  # the macro of templates/macros.html before it
        "{% macro number(value, digits=3) -%}{%- if value is none -%}–{%- elif value is number -%}"
        '{{ ("%." ~ digits ~ "g") | format(value) }}{%- else -%}{{ value }}{%- endif -%}{%- endmacro %}'
        "{{ number(value, digits) }}"
    )
    values = [None, 0, 7, -3, 0.5, 1 / 3, 123456.789, 1e-9, float("inf"), True, np.float32(2.5), np.int64(12)]
    for value in [*values, "n/a", "<b>"]:
        for digits in (3, 4):
            assert Environment(autoescape=True).from_string("{{ number(value, digits) }}").render(
                number=number, value=value, digits=digits
            ) == macro.render(value=value, digits=digits), (value, digits)


def test_plain_gives_what_its_slower_form_gave(atlas):
    """`plain` checks the common scalars first; the same values as the order it replaced (kept here)."""
    import dataclasses
    import math
    from collections.abc import Mapping

    from clipatlas.web.views import plain

    def reference(obj):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            names = [f.name for f in dataclasses.fields(obj)] + list(getattr(obj, "derived", ()))
            return {name: reference(getattr(obj, name)) for name in names}
        if isinstance(obj, Mapping):
            return {str(k): reference(v) for k, v in obj.items()}
        if isinstance(obj, np.ndarray):
            return reference(obj.tolist())
        if isinstance(obj, (list, tuple)):
            return [reference(v) for v in obj]
        if isinstance(obj, np.generic):
            return reference(obj.item())
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        return obj

    features = atlas.map_points().feature[:20].tolist()
    records = [atlas.feature(f) for f in features] + [atlas.top_images(f) for f in features]
    odd = {1: [np.float32("nan"), float("inf"), -0.0, True, None, "x", np.int64(3)], "t": (np.arange(3), 2.5)}
    for record in [*records, odd]:
        got, expected = plain(record), reference(record)
        assert got == expected and json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_a_p_value_just_over_the_naming_threshold_never_reads_as_on_it(client):
    """Three significant digits: p 0.0503 beside "not clearly" must not read "p 0.05"."""
    macros = client.app.state.context.templates.env.get_template("macros.html").module
    item = {"score": 0.9, "baseline": 0.6, "evidence_p": 0.0503, "judge": "captions"}
    cell = str(macros.score_cell({**item, "names_feature": False, "beats_baseline": True}))
    assert "p 0.0503 · captions judge · not clearly" in cell
    assert "p 0.0123 · captions judge</span>" in str(
        macros.score_cell({**item, "evidence_p": 0.01234, "names_feature": True, "beats_baseline": True})
    )
