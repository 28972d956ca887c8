"""The web app in a real browser: Debian's chromium, headless, driven by Playwright.

Screenshots go to test-artifacts/ (gitignored) so a person can look at what the tests saw.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import add_guess_and_coin_flip

from clipatlas.atlas import Atlas, Label
from clipatlas.atlas.annotations import add_labels
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas
from clipatlas.web.app import create_app
from clipatlas.web.server import serving_in_thread as serving
from clipatlas.web.views import cluster_names

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
EVIL_LABEL = '<img src=x onerror="alert(1)"><script>alert(2)</script>'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make install adds it)"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package (the dev extra)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert not errors, f"the page raised JavaScript errors: {errors}"


def loaded_widths(images) -> list[int]:
    """Natural widths of images once loaded; lazy ones below the fold are loaded first."""
    return images.evaluate_all(
        "imgs => Promise.all(imgs.map(i => { i.loading = 'eager'; "
        "return i.decode().then(() => i.naturalWidth, () => 0); }))"
    )


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


# ---- the synthetic atlas: browsing -------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, scored_label):
    ws = write_synthetic_atlas(
        tmp_path_factory.mktemp("browser-atlas"), SyntheticAtlasConfig(n_features=400, n_images=150)
    )
    atlas = Atlas.open(ws)
    scored_label(atlas, int(atlas.map_points().feature[0]), EVIL_LABEL)  # labels may come from an LLM
    # feature [1]: a scored label that names it, and a later one nobody scored yet
    scored_label(atlas, int(atlas.map_points().feature[1]), "red striped lamp", value=0.83)
    add_labels(atlas, [Label(int(atlas.map_points().feature[1]), "captions", "unscored words", model="other")])
    add_guess_and_coin_flip(atlas)  # two unnamed features: one with a best guess, one without
    with serving(create_app(ws.root)) as url:
        yield url, Atlas.open(ws)


def test_llm_label_is_shown_as_text_never_run(page, synthetic):
    url, atlas = synthetic
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    evil = int(atlas.map_points().feature[0])
    page.goto(f"{url}/features/{evil}")
    assert page.locator("h1 .label").inner_text() == EVIL_LABEL  # scored, it names the feature: still only text
    assert page.locator("img[src=x]").count() == 0
    page.goto(f"{url}/map")
    page.wait_for_selector("body[data-map-ready]")
    box = page.locator("#map").bounding_box()
    x, y = page.evaluate("window.clipatlasMap.screenOf(0)")
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.locator("#map-tip").wait_for(state="visible")
    assert EVIL_LABEL in page.locator("#map-tip").inner_text()
    assert page.locator("#map-tip script").count() == 0 and page.locator("#map-tip img[src=x]").count() == 0
    assert not dialogs


def test_feature_page_shows_top_images(page, synthetic):
    url, atlas = synthetic
    fid = int(atlas.map_points().feature[3])
    page.goto(f"{url}/features/{fid}")
    tiles = page.locator(".top-images img")
    assert tiles.count() == len(atlas.top_images(fid))
    assert all(width > 0 for width in loaded_widths(tiles))
    assert page.locator("h1 .label").inner_text() == atlas.feature(fid).label
    shot(page, "feature")
    page.locator(".top-images a").first.click()
    page.wait_for_url(f"**/images/{atlas.top_images(fid)[0].image_id}")
    assert page.locator("ol.bars li").count() == len(atlas.features_of_image(atlas.top_images(fid)[0].image_id))


def test_feature_statistics_read_as_words_and_link_the_map_centred_on_the_feature(page, synthetic):
    url, atlas = synthetic
    fid = int(atlas.map_points().feature[1])
    info, points = atlas.feature(fid), atlas.map_points()
    page.goto(f"{url}/features/{fid}")
    stats = page.locator("table.stats")
    assert [th.strip() for th in stats.locator("th").all_inner_texts()] == [
        "active on",
        "max activation",
        "mean activation",
        "on the map",
    ]  # no raw "alive 1", x, y or cluster id
    assert stats.locator(".active-on").inner_text() == f"{info.count:,} stored images ({100 * info.frequency:.3g}%)"
    place = stats.locator(".map-place a")
    named = {c["cluster"]: c["name"] for c in cluster_names(points)}
    assert place.inner_text() == named.get(info.cluster, f"cluster {info.cluster}")
    place.click()
    page.wait_for_selector("body[data-map-ready]")
    x, y = page.evaluate(f"window.clipatlasMap.screenOf({list(points.feature).index(fid)})")
    box = page.locator("#map").bounding_box()
    assert abs(x - box["width"] / 2) < 2 and abs(y - box["height"] / 2) < 2  # the map opens centred on it
    dead = int(next(f for f in range(atlas.n_features) if not atlas.feature_table().alive[f]))
    page.goto(f"{url}/features/{dead}")
    assert page.locator("table.stats .active-on").inner_text() == "0 stored images (0%): dead over the store"
    assert page.locator("table.stats .map-place").count() == 0


def test_map_draws_every_point_hover_and_click(page, synthetic):
    url, atlas = synthetic
    points = atlas.map_points()
    page.goto(f"{url}/map")
    page.wait_for_selector("body[data-map-ready]")
    assert page.evaluate("window.clipatlasMap.count") == len(points)
    box = page.locator("#map").bounding_box()
    x, y = page.evaluate("window.clipatlasMap.screenOf(5)")
    page.mouse.move(box["x"] + x, box["y"] + y)
    tip = page.locator("#map-tip")
    tip.wait_for(state="visible")
    hovered = int(tip.inner_text().split()[0].lstrip("#"))
    index = list(points.feature).index(hovered)
    assert page.locator("#map-tip .tip-label").inner_text() == f"#{hovered} {points.label[index] or '· unnamed'}"
    image = page.locator("#map-tip img")
    assert (
        image.get_attribute("src")
        == f"/thumbs/{points.top_image[index]}"
        == f"/thumbs/{atlas.top_images(hovered)[0].image_id}"
    )
    assert loaded_widths(image) == [48]  # the top image's thumbnail, loaded
    names = page.request.get(f"{url}/api/map").json()["clusters"]
    assert (
        page.evaluate("window.clipatlasMap.clusterNames")
        == [c["name"] for c in sorted(names, key=lambda c: -c["size"])][:40]
    )
    shot(page, "map")
    page.mouse.down()
    page.mouse.up()
    page.wait_for_url(f"**/features/{hovered}")


def test_map_pans_and_zooms(page, synthetic):
    url, _ = synthetic
    page.goto(f"{url}/map")
    page.wait_for_selector("body[data-map-ready]")
    box = page.locator("#map").bounding_box()
    before = page.evaluate("window.clipatlasMap.screenOf(0)")
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 400, box["y"] + 350, steps=4)
    page.mouse.up()
    panned = page.evaluate("window.clipatlasMap.screenOf(0)")
    assert panned == pytest.approx([before[0] + 100, before[1] + 50], abs=1)
    page.mouse.wheel(0, -400)
    page.wait_for_timeout(100)
    zoomed = page.evaluate("window.clipatlasMap.screenOf(0)")
    centre = (300 + 100, 300 + 50)  # the cursor stays over the same map point while zooming
    assert abs(zoomed[0] - centre[0]) > abs(panned[0] - centre[0]) or abs(zoomed[1] - centre[1]) > abs(
        panned[1] - centre[1]
    )


def test_search_by_label_from_the_header_best_score_first(page, synthetic):
    url, atlas = synthetic
    page.goto(url)
    page.fill("header input[name=q]", "mushroom")
    page.press("header input[name=q]", "Enter")
    page.wait_for_url("**/search?q=mushroom")
    hits = page.locator("ol.results li.hit")
    expected = list(dict.fromkeys(label.feature for label in atlas.search_labels("mushroom")))
    assert [int(f) for f in hits.evaluate_all("items => items.map(i => i.dataset.feature)")] == expected
    shown = [float(t) for t in page.locator("ol.results li.hit .score").all_inner_texts()]
    beats = [atlas.labels(f)[0].score().beats_baseline for f in expected]
    assert shown == [round(atlas.labels(f)[0].score().value, 2) for f in expected]
    assert beats == sorted(beats, reverse=True)  # labels that beat their baseline first...
    assert shown[: sum(beats)] == sorted(shown[: sum(beats)], reverse=True)  # ...best score first
    assert page.locator("ol.results li.hit .score.below").count() == len(beats) - sum(beats)
    shot(page, "search")
    hits.first.locator("a.feature-link").click()
    assert "mushroom" in page.locator("h1 .label").inner_text()


def test_feature_page_lists_every_label_with_its_provenance_and_score(page, synthetic):
    url, atlas = synthetic
    fid = int(atlas.map_points().feature[1])
    page.goto(f"{url}/features/{fid}")
    assert page.locator("h1 .label").inner_text() == "red striped lamp" == atlas.feature(fid).label
    rows = page.locator("table.labels tbody tr")
    assert rows.count() == len(atlas.labels(fid)) == 3
    named = page.locator("table.labels tr.headline")
    assert named.locator(".label-text").inner_text() == "red striped lamp" and "name" in named.inner_text()
    cells = [named.locator(f"td.{c}").inner_text() for c in ("source", "model", "prompt", "judge", "auroc", "baseline")]
    assert cells == ["vlm", "test-vlm", "label-v1", "captions", "0.830", "0.500"]
    unscored = rows.filter(has_text="unscored words")
    assert "not yet scored" in unscored.inner_text() and unscored.locator("td.model").inner_text() == "other"
    shot(page, "feature-labels")


GUESS_SCORE = "(AUROC 0.95 vs 0.62 baseline, p 0.061 > 0.05, 16 images, captions judge)"


def shown_name(atlas, feature: int) -> str:
    """A feature's name as pages and the playground show it: its headline label, else "unnamed" and any
    best guess (only "dark birds" here: the synthetic atlas's own scores carry no p-values)."""
    if feature in atlas.headlines():
        return f"#{feature} {atlas.headlines()[feature].text}"
    guess = atlas.best_guesses().get(feature)
    return f"#{feature} · unnamed" + (f" — best guess “{guess.text}” {GUESS_SCORE}" if guess else "")


def labelled(atlas, text: str) -> int:
    return next(f for f, labels in atlas.labels_by_feature().items() if any(label.text == text for label in labels))


def test_unnamed_feature_pages_say_so_and_show_a_best_guess_apart(page, synthetic):
    url, atlas = synthetic
    guessed, coin = labelled(atlas, "dark birds"), labelled(atlas, "coin flip")
    page.goto(f"{url}/features/{guessed}")
    heading = page.locator("h1")
    assert heading.inner_text() == f"#{guessed} · unnamed" and "dark birds" not in heading.inner_text()
    assert heading.locator(".unnamed").get_attribute("title") == atlas.naming_note(guessed)
    assert page.locator(".name-note").inner_text() == atlas.naming_note(guessed)
    assert page.locator(".name-guess").inner_text() == f"best guess “dark birds” {GUESS_SCORE}"
    guess_row = page.locator("table.labels tr.label-row").filter(has_text="dark birds")
    assert "best guess" in guess_row.locator(".badge").inner_text() and page.locator("tr.headline").count() == 0
    assert guess_row.locator("td.beats").inner_text() == "yes, not clearly"
    # a colour distinct from the name's: a reader sees a guess, not a name
    colours = page.evaluate(
        "() => [getComputedStyle(document.querySelector('.name-guess .best-guess')).color, "
        "getComputedStyle(document.querySelector('h1')).color]"
    )
    assert colours[0] != colours[1]
    shot(page, "feature-best-guess")
    page.goto(f"{url}/features/{coin}")
    assert page.locator("h1").inner_text() == f"#{coin} · unnamed" and page.locator(".name-guess").count() == 0
    coin_row = page.locator("table.labels tr.label-row").filter(has_text="coin flip")
    assert coin_row.locator("td.auroc").inner_text() == "0.450" and coin_row.locator("td.beats").inner_text() == "no"
    shot(page, "feature-unnamed")


def test_playground_names_unnamed_features_with_and_without_a_best_guess(page, synthetic):
    url, atlas = synthetic
    guessed, coin = labelled(atlas, "dark birds"), labelled(atlas, "coin flip")
    page.goto(f"{url}/playground")
    page.wait_for_selector("body[data-playground-ready]")
    page.fill("#feature-search", "dark birds")
    page.locator("#feature-results button").first.wait_for()
    assert page.locator("#feature-results .feature-link").all_inner_texts() == [shown_name(atlas, guessed)]
    page.locator("#feature-results button").first.click()
    row = page.locator(f'.slider-row:has(input[data-feature="{guessed}"]) .feature-link')
    row.wait_for()
    assert row.inner_text() == f"#{guessed} · unnamed — best guess “dark birds” {GUESS_SCORE}"
    assert row.locator(".label").count() == 0  # the guess is never set as the name
    page.fill("#feature-search", f"#{coin}")  # found by its number: named as its own page names it
    sync_api.expect(page.locator("#feature-results .feature-link").first).to_have_text(f"#{coin} · unnamed")
    assert page.locator("#feature-results .feature-link .unnamed").first.get_attribute("title") == atlas.naming_note(
        coin
    )
    shot(page, "playground-unnamed")


def set_slider(page, feature: int, value: float) -> None:
    slider = page.locator(f'input[type=range][data-feature="{feature}"]')
    slider.evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }",
        value,
    )


def test_playground_edits_without_running_and_shares_recipe(page, synthetic):
    url, atlas = synthetic
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{url}/playground")
    page.wait_for_selector("body[data-playground-ready]")
    chosen = page.locator(".pick.chosen").get_attribute("data-image")
    active = sorted(atlas.features_of_image(chosen), key=lambda a: -a.activation)
    sliders = page.locator("#features input[type=range]")
    assert sliders.count() == len(active)
    assert [int(s) for s in sliders.evaluate_all("els => els.map(e => e.dataset.feature)")] == [
        a.feature for a in active
    ]
    # each slider names its feature as the atlas pages do: its headline, or "unnamed" (and why, as its tooltip)
    names = page.locator("#features .slider-row .feature-link").all_inner_texts()
    assert names == [shown_name(atlas, a.feature) for a in active]
    reasons = page.locator("#features .slider-row .feature-link .unnamed").evaluate_all("els => els.map(e => e.title)")
    assert reasons == [atlas.naming_note(a.feature) for a in active if a.feature not in atlas.headlines()]

    set_slider(page, active[0].feature, 0.5)
    page.locator(f'.slider-row:has(input[data-feature="{active[1].feature}"]) button.ban').click()
    page.fill("#feature-search", "mushroom")
    page.locator("#feature-results button").first.wait_for()
    added = int(page.locator("#feature-results button").first.get_attribute("data-feature"))
    page.locator("#feature-results button").first.click()
    sync_api.expect(page.locator("#edits li")).to_have_count(3)
    edits = page.locator("#edits li").all_inner_texts()
    assert edits[0].startswith(f"set #{active[0].feature} = 0.5") and edits[1].startswith(f"ban #{active[1].feature}")
    # An added feature starts at the default strength: 7.5x here, as this atlas has no measured curve.
    assert "7.5x" in page.locator("#strength-note").inner_text()
    assert edits[2].startswith(f"set #{added} = {round(7.5 * atlas.feature(added).max_activation, 4)}")
    assert not any("/api/generate" in u or "/api/jobs" in u for u in requests), "sliders must not run the model"
    shot(page, "playground-edits")

    from urllib.parse import unquote

    from clipatlas._io import read_json
    from clipatlas.steer import Recipe

    download = page.locator("#download-recipe").get_attribute("href")
    recipe_file = ARTIFACTS / "web-playground-recipe.json"
    recipe_file.write_text(unquote(download.split(",", 1)[1]))
    replayable = Recipe.from_dict(read_json(recipe_file))  # what `clipatlas steer --recipe` reads
    assert replayable.image == chosen and [e.op for e in replayable.edits] == ["set", "ban", "set"]

    share = page.locator("#share-link").get_attribute("href")
    page.goto(url + share)
    page.wait_for_selector("body[data-playground-ready]")
    assert page.locator("#edits li").all_inner_texts() == edits
    assert page.locator(".pick.chosen").get_attribute("data-image") == chosen


def ban_first_feature_and_generate_twice(page, screenshot: str) -> None:
    """Ban the first listed feature and press Generate: before and after appear from the job, one
    history entry; pressing it again with the same recipe is answered from the cache."""
    first = int(page.locator("#features input[type=range]").first.get_attribute("data-feature"))
    page.locator(f'.slider-row:has(input[data-feature="{first}"]) button.ban').click()
    page.click("#generate")
    sync_api.expect(page.locator("#job-status")).to_contain_text("done", timeout=60_000)
    for image in ("#before", "#after"):
        sync_api.expect(page.locator(image)).to_have_attribute(
            "src", re.compile(r"/api/jobs/[0-9a-f]{64}/images/[01]\.png")
        )
    page.wait_for_load_state("load")
    for image in ("#before", "#after"):
        assert page.locator(image).evaluate("img => img.naturalWidth") > 0
    assert page.locator("#history li").count() == 1
    shot(page, screenshot)
    page.click("#generate")
    sync_api.expect(page.locator("#job-status")).to_contain_text("cached")
    assert page.locator("#history li").count() == 2


def test_playground_generates_before_and_after(page, synthetic):
    url, atlas = synthetic
    page.goto(f"{url}/playground")
    page.wait_for_selector("body[data-playground-ready]")
    ban_first_feature_and_generate_twice(page, "playground-generated")


def test_playground_shows_the_shown_images_with_the_edited_features_activation(page, synthetic):
    from urllib.parse import unquote

    from clipatlas.steer import Recipe, run_recipe

    url, atlas = synthetic
    page.goto(f"{url}/playground")
    page.wait_for_selector("body[data-playground-ready]")
    assert page.locator("#candidates-box").is_hidden()
    page.fill("#feature-search", "mushroom")
    page.locator("#feature-results button").first.click()
    page.click("#generate")
    sync_api.expect(page.locator("#job-status")).to_contain_text("done", timeout=60_000)
    download = page.locator("#download-recipe").get_attribute("href")
    reference = run_recipe(atlas.workspace, Recipe.from_dict(json.loads(unquote(download.split(",", 1)[1]))))
    items = page.locator("#candidates li")
    sync_api.expect(items).to_have_count(min(8, len(reference.after_ranking)))
    for item, hit in zip(items.all(), reference.after_ranking):
        assert item.get_attribute("data-image") == hit.image_id
        target = hit.targets[0]
        shown = item.inner_text()
        assert f"#{target.feature} {target.activation:.2f}" in shown
        assert (f"rank {target.rank}" if target.activation > 0 else "not firing") in shown
    assert all(width > 0 for width in loaded_widths(page.locator("#candidates img")))
    shot(page, "playground-candidates")


# ---- the demo-like atlas: real images, uploads and generation ------------------------------------
@pytest.fixture(scope="module")
def demo_site(demo_workspace):
    with serving(create_app(demo_workspace, "demo")) as url:
        yield url, Atlas.open(demo_workspace, "demo")


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory):
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("upload") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def test_demo_atlas_feature_and_search(page, demo_site):
    url, atlas = demo_site
    page.goto(url)
    label = next(iter(atlas.headlines().values())).text  # named by `clipatlas label` + `score`, as in the demo
    page.fill("header input[name=q]", label)
    page.press("header input[name=q]", "Enter")
    page.locator("ol.results a.feature-link").first.click()
    page.wait_for_load_state("load")
    assert label in page.locator("h1 .label").inner_text()
    assert page.locator(".top-images img").count() > 0
    assert all(width > 0 for width in loaded_widths(page.locator(".top-images img")))
    shot(page, "demo-feature")


def test_demo_search_by_uploaded_image(page, demo_site, cat_png):
    url, _ = demo_site
    page.goto(url)
    page.set_input_files(".upload-form input[type=file]", str(cat_png))
    page.click(".upload-form button")
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text() == "Features of your image"
    assert page.locator("ol.bars li").count() > 0
    shot(page, "demo-upload-search")


def test_demo_playground_generates_with_retrieval(page, demo_site, cat_png):
    url, atlas = demo_site
    page.goto(f"{url}/playground")
    page.wait_for_selector("body[data-playground-ready]")
    page.set_input_files("#upload", str(cat_png))
    sync_api.expect(page.locator("#job-status")).to_have_text("uploaded")
    ban_first_feature_and_generate_twice(page, "demo-playground")
