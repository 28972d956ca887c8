"""Static-site export at the seed's size: `clipatlas export-site` of a synthetic atlas of 163,840 features.

    .venv/bin/python bench/site.py [--features 163840] [--images 50000] [--top-k 22] [--deciles 10]
                                   [--max-images 32] [--thumbs-from WORKSPACE] [--out bench/out/site]

Builds (once, cached under --out) a synthetic atlas through the atlas schema (clipatlas.atlas.synthetic:
`--top-k` top images and `--deciles` quantile samples per feature, so --max-images of them can be shown).
Its thumbnails are flat two-colour squares that compress to almost nothing, so `--thumbs-from` replaces
each with a real atlas thumbnail (cycled) for a realistic size. Then exports the site (every feature, or
--select), and prints the wall and CPU time, the total size, and what one feature page downloads (its
chunk and its sprite sheet). Re-running resumes an interrupted export. Writes `result.json` under --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np

from clipatlas.atlas import Atlas
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas
from clipatlas.share.config import SiteConfig
from clipatlas.share.site import SiteLinks, export_site, folder_bytes


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=int, default=163_840)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--top-k", type=int, default=22)
    p.add_argument("--deciles", type=int, default=10)
    p.add_argument("--max-images", type=int, default=32)
    p.add_argument("--tile-size", type=int, default=SiteConfig.tile_size)
    p.add_argument("--select", default="all", help="--features of export-site")
    p.add_argument("--thumbs-from", type=Path, help="a workspace whose atlas thumbnails replace the synthetic ones")
    p.add_argument("--out", type=Path, default=Path("bench/out/site"))
    args = p.parse_args()

    cfg = SyntheticAtlasConfig(n_features=args.features, n_images=args.images, top_k=args.top_k, deciles=args.deciles)
    root = synthetic_workspace(args.out / f"atlas-{args.features}-{args.images}", cfg, args.thumbs_from)
    site = args.out / f"site-{args.features}-{args.max_images}-{args.tile_size}"
    config = SiteConfig(features=args.select, max_images=args.max_images, tile_size=args.tile_size)
    wall, cpu = time.perf_counter(), time.process_time()
    export = export_site(root, None, site, config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    links = SiteLinks(config.chunk_size, 1)
    chunks = [p.stat().st_size for p in (site / "data/features").glob("*.json.gz")]
    sheets = [p.stat().st_size for p in (site / "sheets").rglob("*.webp")]
    result = {
        "features": export.n_features,
        "images": export.n_images,
        "max_images": args.max_images,
        "tile_size": args.tile_size,
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
