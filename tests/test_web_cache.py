"""Rendered pages are cached per atlas version: ETags, 304 answers, gzip, no stale page after a
rebuild or an annotation, and `serve --workers N` through an app factory."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
import uvicorn
from fastapi import Request
from fastapi.testclient import TestClient

from clipatlas.atlas import Atlas, Label
from clipatlas.atlas.annotations import add_labels
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas
from clipatlas.cli import main
from clipatlas.errors import UserError
from clipatlas.web import schemas, server
from clipatlas.web.app import SECURITY_HEADERS, create_app
from clipatlas.web.cache import CachedPage, PageCache, etag_matches, page_cache_of
from clipatlas.web.config import ServeConfig, UploadLimits, WebConfig

LOOPBACK = ("127.0.0.1", 50000)
HTML = {"accept": "text/html"}
CONFIG = SyntheticAtlasConfig(n_features=120, n_images=48)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_synthetic_atlas(tmp_path_factory.mktemp("cache"), CONFIG)


@pytest.fixture
def own_workspace(tmp_path):
    """For tests that write to the atlas."""
    return write_synthetic_atlas(tmp_path / "ws", CONFIG)


def alive(workspace, index=0) -> int:
    return int(Atlas.open(workspace).map_points().feature[index])


def counting(app, method: str) -> list:
    """Count calls of one AtlasViews method of `app` (a render calls it, a cached page does not)."""
    views = app.state.context.views
    calls, original = [], getattr(views, method)

    def wrapped(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    setattr(views, method, wrapped)
    return calls


def test_pages_are_rendered_once_and_revalidated_with_304(workspace):
    app = create_app(workspace.root)
    renders = counting(app, "feature_page")
    fid = alive(workspace)
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as client:
        first = client.get(f"/features/{fid}", headers=HTML)
        second = client.get(f"/features/{fid}", headers=HTML)
        etag = first.headers["etag"]
        assert first.status_code == second.status_code == 200 and first.text == second.text
        assert second.headers["etag"] == etag and first.headers["cache-control"] == "no-cache"
        assert len(renders) == 1  # the second answer came from the cache
        for held in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            not_modified = client.get(f"/features/{fid}", headers={**HTML, "if-none-match": held})
            assert not_modified.status_code == 304 and not_modified.content == b""
            assert not_modified.headers["etag"] == etag
        assert client.get(f"/features/{fid}", headers={**HTML, "if-none-match": '"other"'}).status_code == 200
        other = client.get(f"/features/{alive(workspace, 1)}", headers=HTML)
        assert other.headers["etag"] != etag and len(renders) == 2
        for url in ("/", "/map", "/features?sort=score", "/images/img000000", "/playground"):
            page = client.get(url, headers=HTML)
            assert page.status_code == 200 and "etag" in page.headers, url
            assert client.get(url, headers={**HTML, "if-none-match": page.headers["etag"]}).status_code == 304, url


def test_cached_pages_are_answered_before_routing_with_every_header(workspace):
    app = create_app(workspace.root)
    routed = []

    async def counted(request: Request):  # the cached routes' dependency: runs only when a request reaches a route
        routed.append(str(request.url))
        return request.app.state.page_cache

    app.dependency_overrides[page_cache_of] = counted
    url = f"/features/{alive(workspace)}"
    zipped = {**HTML, "accept-encoding": "gzip"}
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as client:
        first, again = client.get(url, headers=zipped), client.get(url, headers=zipped)
        held = client.get(url, headers={**zipped, "if-none-match": first.headers["etag"]})
        plain = client.get(url, headers={**HTML, "accept-encoding": "identity"})
        assert len(routed) == 1  # rendered once; the other three never reached a route
        assert again.status_code == plain.status_code == 200 and again.text == plain.text == first.text
        for name in ("etag", "content-type", "content-encoding", "cache-control", "vary"):
            assert again.headers[name] == first.headers[name], name
        assert "content-encoding" not in plain.headers and plain.headers["etag"] == first.headers["etag"]
        assert held.status_code == 304 and held.content == b"" and held.headers["etag"] == first.headers["etag"]
        for answer in (again, held, plain):  # the security headers and Server-Timing, as on a rendered page
            assert all(answer.headers[name] == value for name, value in SECURITY_HEADERS.items())
            assert answer.headers["server-timing"].startswith("app;dur=")
        assert client.get(url, headers={**HTML, "host": "evil.example"}).status_code == 400  # the guard comes first
        assert client.get(f"{url}?from=map", headers=HTML).status_code == 200 and len(routed) == 2  # another URL
        assert client.post(url, headers=HTML).status_code == 405  # only GETs are answered early


def test_a_deleted_atlas_is_named_not_answered_from_the_cache(own_workspace):
    app = create_app(own_workspace.root)
    url = f"/api/features/{alive(own_workspace)}"
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as client:
        assert client.get(url).status_code == 200
        own_workspace.sae().atlas_db.unlink()
        gone = client.get(url)
        assert gone.status_code == 503 and "atlas" in gone.json()["detail"]


def test_json_of_the_atlas_is_cached_and_equals_the_validated_model(workspace):
    app = create_app(workspace.root)
    views = app.state.context.views
    image_id = Atlas.open(workspace).top_images(alive(workspace))[0].image_id
    routes = (  # (url, the AtlasViews method that makes it, its wire model, what it is called with)
        (f"/api/features/{alive(workspace)}", "feature_page", schemas.FeaturePage, alive(workspace)),
        (f"/api/images/{image_id}", "image_page", schemas.ImagePage, image_id),
        ("/api/search?q=cat", "search", schemas.SearchResult, "cat"),
    )
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as client:
        for url, method, model, argument in routes:
            expected = model.model_validate(getattr(views, method)(argument)).model_dump(mode="json")
            renders = counting(app, method)
            zipped = client.get(url, headers={"accept-encoding": "gzip"})
            plain = client.get(url, headers={"accept-encoding": "identity"})
            assert zipped.status_code == plain.status_code == 200 and zipped.json() == plain.json() == expected, url
            assert zipped.headers["content-type"] == "application/json"
            assert len(renders) == 1, url  # the second answer came from the cache
            assert client.get(url, headers={"if-none-match": plain.headers["etag"]}).status_code == 304, url
        brief = client.get(f"/api/features/{alive(workspace)}/brief").json()
        assert brief == client.get(f"/api/features/{alive(workspace)}/brief").json()
        assert brief["max_activation"] == pytest.approx(Atlas.open(workspace).feature(alive(workspace)).max_activation)
        assert client.get(f"/api/features/{CONFIG.n_features}").status_code == 404  # errors: not cached, not 500


def test_thumbnails_are_kept_in_memory_with_an_etag_and_sent_as_stored(workspace):
    app = create_app(workspace.root)
    image_id = Atlas.open(workspace).top_images(alive(workspace))[0].image_id
    stored = Atlas.open(workspace).thumbnail_path(image_id).read_bytes()
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as client:
        first = client.get(f"/thumbs/{image_id}", headers={"accept-encoding": "gzip"})
        assert first.status_code == 200 and first.content == stored and "content-encoding" not in first.headers
        assert first.headers["content-type"] == "image/webp" and "max-age" in first.headers["cache-control"]
        assert len(app.state.page_cache) == 1
        held = client.get(f"/thumbs/{image_id}", headers={"if-none-match": first.headers["etag"]})
        assert held.status_code == 304


def test_pages_are_gzipped_and_errors_are_not_cached(workspace):
    app = create_app(workspace.root)
    renders = counting(app, "feature_page")
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as client:
        fid = alive(workspace)
        zipped = client.get(f"/features/{fid}", headers={**HTML, "accept-encoding": "gzip"})
        plain = client.get(f"/features/{fid}", headers={**HTML, "accept-encoding": "identity"})
        assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
        assert zipped.text == plain.text and len(gzip.compress(plain.content)) < len(plain.content)
        for _ in range(2):
            assert client.get(f"/features/{CONFIG.n_features + 5}", headers=HTML).status_code == 404
        assert len(renders) == 3  # one page render, then each 404 rendered anew
        assert len(app.state.page_cache) == 1


def test_labels_added_while_serving_show_at_once(own_workspace):
    workspace = own_workspace
    app = create_app(workspace.root)
    fid = alive(workspace)
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as client:
        before = client.get(f"/features/{fid}", headers=HTML)
        add_labels(Atlas.open(workspace), [Label(fid, "captions", "freshly written words", model="other")])
        after = client.get(f"/features/{fid}", headers={**HTML, "if-none-match": before.headers["etag"]})
        assert after.status_code == 200 and "freshly written words" in after.text
        assert "freshly written words" not in before.text and after.headers["etag"] != before.headers["etag"]


def test_a_rebuilt_atlas_is_never_answered_from_the_old_cache_or_etag(own_workspace, tmp_path):
    workspace, fid = own_workspace, alive(own_workspace)
    old_build = Atlas.open(workspace).build_id
    other = write_synthetic_atlas(tmp_path / "other", SyntheticAtlasConfig(n_features=120, n_images=48, seed=7))
    app = create_app(workspace.root)
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as client:
        old = client.get(f"/features/{fid}", headers=HTML)
        # Rebuild as `clipatlas atlas` does: the arrays, then the database renamed into place.
        target = workspace.sae().atlas_dir
        shutil.copytree(
            other.sae().atlas_dir,
            target,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(workspace.sae().atlas_db.name),
        )
        shutil.copy(other.sae().atlas_db, target / "rebuilt.tmp")
        os.replace(target / "rebuilt.tmp", workspace.sae().atlas_db)
        again = client.get(f"/features/{fid}", headers={**HTML, "if-none-match": old.headers["etag"]})
        assert again.status_code == 200 and again.headers["etag"] != old.headers["etag"]
    assert Atlas.open(workspace).build_id != old_build
    with TestClient(
        create_app(workspace.root), base_url="http://127.0.0.1", client=LOOPBACK
    ) as client:  # the server restarted on the new build
        new = client.get(f"/features/{fid}", headers={**HTML, "if-none-match": old.headers["etag"]})
        assert new.status_code == 200 and new.headers["etag"] != old.headers["etag"] and new.text != old.text


def test_page_cache_keeps_the_most_recent_pages():
    cache = PageCache(max_pages=2)
    for name in "abc":
        cache.put(("v", name), CachedPage(name.encode(), "text/html", f'"{name}"'))
    assert cache.get(("v", "a")) is None and cache.get(("v", "c")).body == b"c" and len(cache) == 2
    assert not etag_matches(None, '"a"') and not etag_matches('"ab"', '"a"') and etag_matches('W/"a"', '"a"')


def test_serve_with_workers_runs_an_app_factory_with_the_same_settings(workspace, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.setattr(server, "check_port_free", lambda host, port: None)
    monkeypatch.delenv(server.APP_SETTINGS_ENV, raising=False)
    web = WebConfig(limits=UploadLimits(max_bytes=1234), max_uploads_kept=3)
    server.serve(
        workspace.root, config=ServeConfig(host="0.0.0.0", port=8125, workers=3, allow_host="atlas.example"), web=web
    )
    target, kwargs = calls[0]
    assert kwargs["workers"] == 3 and kwargs["factory"] is True and kwargs["host"] == "0.0.0.0"
    assert target == "clipatlas.web.server:app_from_environment"
    token = capsys.readouterr().out.split("?token=")[1].split()[0]
    frozen = []
    monkeypatch.setattr(server.gc, "freeze", lambda: frozen.append(True))  # not this test process's objects
    app = server.app_from_environment()  # what each worker process runs
    assert not app.state.warmup.is_alive() and frozen  # it returns warm: a worker takes no request before
    assert f"{server.WORKER_READY} {os.getpid()}" in capsys.readouterr().out
    assert app.state.context.config == web and app.state.context.token == token
    with TestClient(app, base_url="http://127.0.0.1", client=LOOPBACK) as client:
        assert client.get(f"/features/{alive(workspace)}", headers=HTML).status_code == 200
    with TestClient(app, base_url="http://atlas.example", client=LOOPBACK) as client:  # --allow-host reaches workers
        assert client.get("/api/summary").status_code == 200
        assert client.get("/api/summary", headers={"host": "evil.example"}).status_code == 400
    with pytest.raises(UserError, match="--workers"):
        ServeConfig(workers=0)
    assert main(["serve", "-w", str(workspace.root), "--workers", "2", "--port", "8126"]) == 0
    assert calls[-1][1]["workers"] == 2
