"""`clipatlas export-site`: the files it writes, resuming, and the demo atlas's site in headless Chromium
served by a plain static file server (python's http.server), with the browser's network log checked."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from clipatlas.atlas import Atlas
from clipatlas.atlas.query import search_rank
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas
from clipatlas.cli import main as cli_main
from clipatlas.errors import UserError
from clipatlas.share.config import SiteConfig
from clipatlas.share.site import SiteLinks, export_site, fnv1a, read_gzip_json

MAX_IMAGES = 12


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, scored_label):
    ws = write_synthetic_atlas(
        tmp_path_factory.mktemp("site-atlas"), SyntheticAtlasConfig(n_features=200, n_images=60, top_k=8, deciles=6)
    )
    return ws.root, Atlas.open(ws)


def test_fnv1a_is_the_published_hash():
    # FNV-1a 32-bit test vectors (draft-eastlake-fnv): site.js finds an image's chunk with the same hash
    assert fnv1a("") == 0x811C9DC5 and fnv1a("a") == 0xE40C292C and fnv1a("foobar") == 0xBF9CF968


def test_feature_selection(synthetic):
    _, synthetic = synthetic
    table = synthetic.feature_table()
    assert synthetic.select_features("all").tolist() == list(range(200))
    assert synthetic.select_features("alive").tolist() == np.flatnonzero(table.alive).tolist()
    top = synthetic.select_features("top:5")
    alive_counts = np.sort(table.count[table.alive])[::-1]
    assert len(top) == 5 and sorted(table.count[top].tolist(), reverse=True) == alive_counts[:5].tolist()
    assert synthetic.select_features("3, 7-9,3").tolist() == [3, 7, 8, 9]
    with pytest.raises(UserError, match="feature 500 does not exist"):
        synthetic.select_features("1,500")
    for wrong in ("most", "-", "top:0", "top:-3", "1,,2", "3-"):
        with pytest.raises(UserError, match="--features takes"):
            SiteConfig(features=wrong)
        with pytest.raises(UserError, match="--features takes"):
            synthetic.select_features(wrong)


def test_export_writes_chunks_sheets_map_and_index(synthetic, tmp_path):
    root, synthetic = synthetic
    out = tmp_path / "site"
    features = synthetic.select_features("alive")
    export = export_site(root, None, out, SiteConfig(max_images=10, chunk_size=16))
    links = SiteLinks(16, 1)
    assert export.n_features == len(features)
    assert export.bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    feature = int(features[3])
    chunk = read_gzip_json(out / links.feature_chunk(feature // 16))
    assert set(chunk["features"]) == {str(f) for f in features if f // 16 == feature // 16}
    html = chunk["features"][str(feature)]
    examples = (synthetic.top_images(feature) + synthetic.quantile_samples(feature))[:10]
    for example in examples:  # every shown image links to its page and is a tile of the feature's sheet
        assert f'href="image.html?id={example.image_id}"' in html
    assert html.count(f'src="{links.sheet(feature)}"') == len(examples)
    from PIL import Image

    with Image.open(out / links.sheet(feature)) as sheet:  # 8 tiles a row, 10 images: 2 rows
        assert sheet.size == (8 * SiteConfig.tile_size, 2 * SiteConfig.tile_size) and sheet.format == "WEBP"
    points = synthetic.map_points()
    map_data = json.loads(gzip.decompress((out / links.map_data()).read_bytes()))
    assert map_data["feature"] == points.feature.tolist()
    entries = [e for part in sorted((out / "data/search").glob("*.json.gz")) for e in read_gzip_json(part)["labels"]]
    labels = [label for f in features.tolist() for label in synthetic.labels(f)]
    labels.sort(key=lambda label: (search_rank(label), label.feature))  # the order the server's search uses
    assert [(e[0], e[1]) for e in entries] == [(label.feature, label.text) for label in labels]
    assert len(entries) == export.n_labels > 0
    assert all(f'data-feature="{e[0]}"' in e[2] and "vs " in e[2] for e in entries)  # the hit, with its score
    image_id = examples[0].image_id
    image_chunk = read_gzip_json(out / links.image_chunk(fnv1a(image_id) % json_attr(out, "data-image-chunks")))
    assert 'ol class="bars"' in image_chunk["images"][image_id]


def json_attr(out: Path, name: str) -> int:
    html = (out / "image.html").read_text()
    return int(html.split(f'{name}="', 1)[1].split('"', 1)[0])


def test_rerun_keeps_finished_chunks_and_rewrites_a_missing_one(synthetic, tmp_path):
    root, _ = synthetic
    out, config = tmp_path / "site", SiteConfig(max_images=4, chunk_size=32)
    export_site(root, None, out, config)
    chunks = sorted((out / "data/features").glob("*.json.gz"))
    kept, lost = chunks[0], chunks[1]
    stamp, content = kept.stat().st_mtime_ns, lost.read_bytes()
    lost.unlink()  # as if killed while writing it
    export_site(root, None, out, config)
    assert kept.stat().st_mtime_ns == stamp and lost.read_bytes() == content
    export_site(root, None, out, SiteConfig(max_images=2, chunk_size=32))  # other settings: all rewritten
    assert kept.stat().st_mtime_ns != stamp
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_site(root, None, tmp_path / "other", config)


def site_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_worker_processes_write_the_same_files_and_resume(synthetic, tmp_path):
    root, _ = synthetic
    config = SiteConfig(max_images=6, chunk_size=16)
    export_site(root, None, tmp_path / "one", config)
    two = export_site(root, None, tmp_path / "two", dataclasses.replace(config, jobs=2))
    expected = site_files(tmp_path / "one")
    assert site_files(tmp_path / "two") == expected and len(expected) > two.n_features
    chunks = sorted((tmp_path / "two" / "data/features").glob("*.json.gz"))
    kept, lost = chunks[0], chunks[-1]
    stamp = kept.stat().st_mtime_ns
    lost.unlink()  # killed while writing it: a re-run with 2 workers writes only that one again
    export_site(root, None, tmp_path / "two", dataclasses.replace(config, jobs=2))
    assert kept.stat().st_mtime_ns == stamp and site_files(tmp_path / "two") == expected
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        SiteConfig(jobs=0)


def test_cli_prints_the_size(synthetic, tmp_path, capsys):
    root, _ = synthetic
    assert cli_main(["export-site", "-w", str(root), "-o", str(tmp_path / "s"), "--features", "top:10"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("exported 10 features") and " MB" in line


# ---- the demo atlas's site in a browser ----------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def demo_site(demo_workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-site") / "site"
    export_site(demo_workspace, "demo", out, SiteConfig(max_images=MAX_IMAGES))
    handler = functools.partial(QuietHandler, directory=str(out))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", out, Atlas.open(demo_workspace, "demo")
    server.shutdown()
    thread.join()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def page(demo_site):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, out, _ = demo_site
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        opened = browser.new_page(viewport={"width": 1280, "height": 860})
        requests, errors, failed = [], [], []
        opened.on("request", lambda r: requests.append(r.url))
        opened.on("pageerror", lambda exc: errors.append(str(exc)))
        opened.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
        yield opened
        browser.close()
    assert not errors, f"the page raised JavaScript errors: {errors}"
    assert not failed, f"requests failed: {failed}"
    for request in requests:  # nothing but the site's own files
        parts = urlsplit(request)
        assert request.startswith(url + "/"), f"a request left the static site: {request}"
        assert (out / unquote(parts.path).lstrip("/")).is_file() or parts.path == "/", request


def sprite_widths(page) -> list[int]:
    return page.locator(".sprite img").evaluate_all(
        "imgs => Promise.all(imgs.map(i => i.decode().then(() => i.naturalWidth, () => 0)))"
    )


def test_demo_site_home_feature_image_pages(page, demo_site):
    url, out, atlas = demo_site
    page.goto(url + "/")
    assert page.locator("table").first.inner_text().count("features") >= 1
    assert page.locator("a[href='map.html']").count() >= 1 and page.locator("a[href*=playground]").count() == 0
    named = sorted(atlas.headlines())[0]
    page.goto(f"{url}/feature.html?id={named}")
    page.wait_for_selector("article.feature")
    assert page.locator("h1 .label").inner_text() == atlas.feature(named).label
    shown = (atlas.top_images(named) + atlas.quantile_samples(named))[:MAX_IMAGES]
    assert page.locator(".tiles .sprite img").count() == len(shown)
    assert all(width > 0 for width in sprite_widths(page))  # every image of the page, loaded
    assert page.title() == f"feature {named} · clipatlas"
    page.locator(".top-images a").first.click()
    page.wait_for_selector("ol.bars")
    assert page.locator("ol.bars li").count() == min(48, len(atlas.features_of_image(shown[0].image_id)))
    assert all(width > 0 for width in sprite_widths(page))
    page.goto(f"{url}/feature.html?id={atlas.n_features + 5}")
    assert "no feature" in page.locator("#site-page").inner_text()


def test_demo_site_map_draws_every_point(page, demo_site):
    url, _, atlas = demo_site
    points = atlas.map_points()
    page.goto(f"{url}/map.html")
    page.wait_for_selector("body[data-map-ready]")
    assert page.evaluate("window.clipatlasMap.count") == len(points)
    box = page.locator("#map").bounding_box()
    x, y = page.evaluate("window.clipatlasMap.screenOf(0)")
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.locator("#map-tip").wait_for(state="visible")
    hovered = int(page.locator("#map-tip .tip-label").inner_text().split()[0].lstrip("#"))
    if atlas.top_images(hovered):  # the tip shows the first tile of the feature's sheet: its top image
        assert all(width > 0 for width in sprite_widths(page))
    page.mouse.down()
    page.mouse.up()
    page.wait_for_url(f"**/feature.html?id={hovered}")


def test_demo_site_label_search(page, demo_site):
    url, _, atlas = demo_site
    alive = set(np.flatnonzero(atlas.feature_table().alive).tolist())
    word = atlas.headlines()[sorted(atlas.headlines())[0]].text.split()[0]
    expected = [
        f for f in dict.fromkeys(label.feature for label in atlas.search_labels(word, limit=10**6)) if f in alive
    ]
    page.goto(url + "/")
    page.fill("header input[name=q]", word)
    page.press("header input[name=q]", "Enter")
    page.wait_for_selector("ol.results li.hit")
    hits = page.locator("ol.results li.hit").evaluate_all("items => items.map(i => Number(i.dataset.feature))")
    assert hits == expected[: len(hits)] and len(hits) == min(len(expected), 50)
    assert page.locator("h1").inner_text() == f"Search results for “{word}”"
    page.fill("header input[name=q]", "#3")
    page.press("header input[name=q]", "Enter")
    page.wait_for_url("**/feature.html?id=3")


def test_warm_briefs_equal_the_ones_made_one_by_one(synthetic):
    from clipatlas.web.views import AtlasViews

    _, atlas = synthetic
    warm, lazy = AtlasViews(atlas), AtlasViews(atlas)
    warm.warm_briefs()
    for feature in range(atlas.n_features):
        a, b = warm.brief(feature), lazy.brief(feature)
        assert (a.label, a.label_note) == (b.label, b.label_note)
        assert a.max_activation == pytest.approx(b.max_activation, rel=1e-6)  # the table keeps float32
