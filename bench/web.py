"""Web app benchmark: feature-page server time (p95) and map load time at the seed's scale.

    .venv/bin/python bench/web.py [--features 163840] [--images 8192] [--pages 300]

Builds (once, cached under bench/out/) a synthetic atlas of 163,840 features through the atlas
schema, then
  * requests `--pages` distinct random feature pages in-process and reads the server's own
    time from the `Server-Timing` header (p50 / p95 / max), plus the HTML size;
  * serves the app with uvicorn (the map JSON prepared first, as `clipatlas serve` does before
    printing its URL) and opens /map in headless Chromium, timing navigation start to the map
    being drawn: first visit (fresh browser, nothing cached) and second visit.
Targets: feature page p95 < 30 ms; map load < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipatlas._io import atomic_write_json, read_json  # noqa: E402
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
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


def synthetic_workspace(out: Path, cfg: SyntheticAtlasConfig) -> Path:
    root = out / f"web-atlas-{cfg.n_features}-{cfg.n_images}"
    marker = root / "synthetic.json"
    if not marker.is_file():
        if root.exists():
            import shutil

            shutil.rmtree(root)  # a half-written earlier attempt
        started = time.perf_counter()
        write_synthetic_atlas(root, cfg)
        atomic_write_json(marker, {"config": cfg.__dict__, "seconds": time.perf_counter() - started})
    print(f"synthetic atlas: {root} (built in {read_json(marker)['seconds']:.1f} s)")
    return root


def feature_pages(app, features: np.ndarray) -> dict:
    from fastapi.testclient import TestClient

    server_ms, wall_ms, sizes = [], [], []
    with TestClient(app, client=("127.0.0.1", 1)) as client:
        client.get("/features/0")  # templates compiled, connections opened
        for fid in features:
            started = time.perf_counter()
            response = client.get(f"/features/{int(fid)}", headers={"accept": "text/html"})
            wall_ms.append(1000 * (time.perf_counter() - started))
            assert response.status_code == 200, response.text[:200]
            server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))
            sizes.append(len(response.content))
    return {
        "pages": len(features),
        "server_p50_ms": float(np.percentile(server_ms, 50)),
        "server_p95_ms": float(np.percentile(server_ms, 95)),
        "server_max_ms": float(np.max(server_ms)),
        "client_p95_ms": float(np.percentile(wall_ms, 95)),
        "html_kib_mean": float(np.mean(sizes) / 1024),
    }


def map_load(app) -> dict:
    from playwright.sync_api import sync_playwright

    from clipatlas.web.server import serving_in_thread

    timings = {}
    with serving_in_thread(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        for visit in ("first", "second"):
            started = time.perf_counter()
            page.goto(f"{url}/map")
            page.wait_for_selector("body[data-map-ready]", timeout=60_000)
            timings[f"map_{visit}_s"] = time.perf_counter() - started
            timings[f"map_{visit}_points"] = page.evaluate("window.clipatlasMap.count")
        draws = []
        for step in range(20):  # zoom in and out: each step redraws every point
            page.mouse.wheel(0, -120 if step % 2 else 120)
            page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            draws.append(page.evaluate("window.clipatlasMap.drawMs()"))
        timings["map_redraw_ms_median"] = float(np.median(draws))
        timings["map_redraw_ms_max"] = float(np.max(draws))
        page.screenshot(path=str(ROOT / "bench" / "out" / "web-map.png"))
        browser.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=163_840)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--pages", type=int, default=300)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    root = synthetic_workspace(out, SyntheticAtlasConfig(n_features=args.features, n_images=args.images, seed=0))

    from clipatlas.atlas import Atlas
    from clipatlas.web.app import create_app

    atlas = Atlas.open(root)
    alive = atlas.map_points().feature
    chosen = np.random.default_rng(1).choice(alive, size=min(args.pages, len(alive)), replace=False)
    results = {
        "features": args.features,
        "alive": int(len(alive)),
        **feature_pages(create_app(root, atlas=atlas), chosen),
    }
    if Path(CHROMIUM).exists():
        served = create_app(root)
        served.state.context.views.map_json()  # as `clipatlas serve` does before printing the URL
        results.update(map_load(served))
    else:
        print(f"{CHROMIUM} is missing: map load not measured")
    atomic_write_json(out / "web.json", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
