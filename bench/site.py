"""Static-site export at the seed's size: `clipatlas export-site` of a synthetic atlas of 163,840 features.

    .venv/bin/python bench/site.py [--features 163840] [--images 50000] [--top-k 22] [--deciles 10]
                                   [--max-images 32] [--thumbs-from WORKSPACE] [--out bench/out/site]

Builds (once, cached under --out) a synthetic atlas through the atlas schema (clipatlas.atlas.synthetic:
`--top-k` top images and `--deciles` quantile samples per feature, so --max-images of them can be shown).
Its thumbnails are flat two-colour squares that compress to almost nothing, so `--thumbs-from` replaces
each with a real atlas thumbnail (cycled) for a realistic size. Then exports the site (every feature, or
--select), and prints the wall and CPU time, the total size, and what one feature page downloads (its
chunk and its sprite sheet). Re-running resumes an interrupted export. Writes `result.json` under --out.

`--browse N` exports nothing: it serves the site already exported with these settings with
`python -m http.server` and opens N of its features (a seeded random sample of the finished chunks) in
headless Chromium, each in a fresh browser context (nothing cached), and records the time from the start
of navigation until the feature's page shows and all its images are decoded (`browse.json` under --out).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from clipatlas.atlas import Atlas
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas
from clipatlas.atlas.thumbs import thumbnail_image
from clipatlas.share.config import SiteConfig
from clipatlas.share.site import WEBP_METHOD, SiteLinks, export_site, folder_bytes, read_gzip_json, sprite_sheet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402  (bench/web.py)

# performance.now() (ms since navigation began) once the page's feature is shown and every image decoded; polled
# every 10 ms (polling on animation frames stalled in headless Chromium here)
PAGE_READY_MS = """() => {
    const images = [...document.querySelectorAll("article.feature .sprite img")];
    const ready = images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
    return ready ? performance.now() : false;
}"""


def synthetic_workspace(root: Path, cfg: SyntheticAtlasConfig, thumbs_from: Path | None) -> Path:
    done = root / "ready"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    write_synthetic_atlas(root, cfg)
    if thumbs_from:
        real = sorted(Atlas.open(thumbs_from).files.atlas_dir.glob("thumbs/*.webp"))
        thumbs = sorted(Atlas.open(root).files.atlas_dir.glob("thumbs/*.webp"))
        for target, source in zip(thumbs, itertools.cycle(real)):
            shutil.copyfile(source, target)
    print(f"synthetic atlas of {cfg.n_features:,} features written in {time.perf_counter() - started:.0f} s")
    done.write_text("ok\n")
    return root


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the --jobs workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def sheet_sweep(root: Path, n: int, out: Path) -> list[dict]:
    """Bytes and encode time of the sprite sheets of the n most frequent features at several tile sizes,
    WebP qualities and methods (one sheet per size also saved as PNG under `out`, to look at)."""
    atlas = Atlas.open(root)
    shown = [atlas.top_images(int(f)) + atlas.quantile_samples(int(f)) for f in atlas.select_features(f"top:{n}")]
    sources = {e.image_id: Image.open(atlas.thumbnail_path(e.image_id)).convert("RGB") for s in shown for e in s}
    rows = []
    for size in (40, 44, 48, 56, 64):
        sheets = [sprite_sheet([thumbnail_image(sources[e.image_id], size) for e in s[:32]], size) for s in shown]
        sheets[3].save(out / f"sheet-{size}.png")
        for quality, method in [(q, WEBP_METHOD) for q in (40, 50, 60, 70)] + [(50, m) for m in (0, 4, 6)]:
            sizes, started = [], time.process_time()
            for sheet in sheets:
                encoded = io.BytesIO()
                sheet.save(encoded, format="WEBP", quality=quality, method=method)
                sizes.append(encoded.tell())
            rows.append(
                {
                    "tile_size": size,
                    "quality": quality,
                    "method": method,
                    "kb_per_sheet": round(float(np.mean(sizes)) / 1e3, 2),
                    "gb_163840_sheets": round(float(np.mean(sizes)) * 163_840 / 1e9, 3),
                    "encode_ms": round((time.process_time() - started) / len(sheets) * 1e3, 2),
                }
            )
            print(rows[-1])
    return rows


def with_images(pages: dict[str, str]) -> list[str]:
    """The features of a chunk whose pages show images (a dead feature's page has none to wait for)."""
    return [feature for feature, html in pages.items() if 'class="sprite' in html]


def browse(site: Path, n: int, seed: int = 0) -> dict:
    """Load times of n feature pages of an exported site from a static file server (see the docstring)."""
    from playwright.sync_api import sync_playwright

    chunks = sorted((site / "data/features").glob("*.json.gz"))
    rng = np.random.default_rng(seed)
    picked = [chunks[i] for i in rng.choice(len(chunks), size=min(n, len(chunks)), replace=False)]
    features = [int(rng.choice(sorted(with_images(read_gzip_json(c)["features"]), key=int))) for c in picked]
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "-b", "127.0.0.1", "-d", str(site)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/feature.html", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        times = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for feature in features:
                context = browser.new_context(viewport={"width": 1280, "height": 860})
                page = context.new_page()
                page.goto(f"{url}/feature.html?id={feature}", wait_until="commit")
                times.append(page.wait_for_function(PAGE_READY_MS, polling=10, timeout=30_000).json_value())
                context.close()
            browser.close()
    finally:
        server.terminate()
        server.wait()
    return {
        "features": features,
        "load_ms": [round(t, 1) for t in times],
        "median_ms": round(float(np.median(times)), 1),
        "max_ms": round(float(np.max(times)), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=int, default=163_840)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--top-k", type=int, default=22)
    p.add_argument("--deciles", type=int, default=10)
    p.add_argument("--max-images", type=int, default=32)
    p.add_argument("--tile-size", type=int, default=SiteConfig.tile_size)
    p.add_argument("--quality", type=int, default=SiteConfig.quality)
    p.add_argument("--jobs", type=int, default=1, help="worker processes of export-site")
    p.add_argument("--select", default="all", help="--features of export-site")
    p.add_argument("--thumbs-from", type=Path, help="a workspace whose atlas thumbnails replace the synthetic ones")
    p.add_argument("--out", type=Path, default=Path("bench/out/site"))
    p.add_argument("--sheet-sweep", type=int, default=0, help="bytes per sheet vs tile size/quality, N features")
    p.add_argument("--browse", type=int, default=0, help="time N feature pages of the exported site in Chromium")
    args = p.parse_args()

    cfg = SyntheticAtlasConfig(n_features=args.features, n_images=args.images, top_k=args.top_k, deciles=args.deciles)
    root = synthetic_workspace(args.out / f"atlas-{args.features}-{args.images}", cfg, args.thumbs_from)
    site = args.out / f"site-{args.features}-{args.max_images}-{args.tile_size}"
    if args.sheet_sweep:
        rows = sheet_sweep(root, args.sheet_sweep, args.out)
        (args.out / "sheets.json").write_text(json.dumps(rows, indent=1) + "\n")
        return
    if args.browse:
        timed = {"site": str(site), "site_mb": round(folder_bytes(site) / 1e6, 1), **browse(site, args.browse)}
        print(json.dumps(timed, indent=1))
        (args.out / "browse.json").write_text(json.dumps(timed, indent=1) + "\n")
        return
    config = SiteConfig(
        features=args.select, max_images=args.max_images, tile_size=args.tile_size, quality=args.quality, jobs=args.jobs
    )
    wall, cpu = time.perf_counter(), cpu_seconds()
    export = export_site(root, None, site, config)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    links = SiteLinks(config.chunk_size, 1)
    chunks = [p.stat().st_size for p in (site / "data/features").glob("*.json.gz")]
    sheets = [p.stat().st_size for p in (site / "sheets").rglob("*.webp")]
    result = {
        "features": export.n_features,
        "images": export.n_images,
        "max_images": args.max_images,
        "tile_size": args.tile_size,
        "quality": args.quality,
        "jobs": args.jobs,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "total_mb": round(export.bytes / 1e6, 1),
        "sheets_mb": round(sum(sheets) / 1e6, 1),
        "feature_chunk_kb_mean": round(float(np.mean(chunks)) / 1e3, 1),
        "sheet_kb_mean": round(float(np.mean(sheets)) / 1e3, 1),
        "map_kb": round((site / links.map_data()).stat().st_size / 1e3, 1),
        "search_mb": round(folder_bytes(site / "data/search") / 1e6, 1),
    }
    print(export.summary_line())
    print(json.dumps(result, indent=1))
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
