"""Past one machine: the approximate retrieval index at the paper's size, and Ray with 1 vs 2 workers.

    .venv/bin/python bench/scale.py --only ann --demo demo-atlas [--rows 1400000] [--queries 200]
    .venv/bin/python bench/scale.py --only ray-embed,ray-atlas [--workers 1,2]

- ann (needs --demo W, a workspace with an atlas): a float16 store of --rows rows made from the demo's rows
  (row i = demo row i mod n plus Gaussian noise shaped like the demo's own spread: its principal directions,
  scaled so a copy sits half the demo's median nearest-neighbour distance from its original), their atlas codes
  tiled. Builds the FAISS index (`clipatlas.steer.ann`, saved in the bench store's workspace) and times steers
  as the playground sends them: a 2x `set` edit of a random feature firing on >= 10 demo images on a random
  store row, edit-aware ranking, k = 16, on the approximate index and on the exact one; recall@16 = share of
  the exact top 16 the approximate ranking also returns; plain cosine top 16 the same way; index file size.
- ray-embed: `clipatlas embed --engine ray` of --images demo images (efficientnet-lite0, CPU) on a local Ray
  with N CPUs and N encoder actors, for each N in --workers; the local engine with one decode worker as
  reference. ray-atlas: `build_atlas(engine="ray")` of a synthetic --atlas-rows x 1280 store and a random
  TopK SAE (--atlas-features latents) on a local Ray with N CPUs (N tasks at a time).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from steer import demo_parts, synthetic_store, tiled_codes  # noqa: E402  (a sibling benchmark)


def shaped_noise(demo: np.ndarray, rng: np.random.Generator):
    """make_rows(begin, end) for synthetic_store: demo rows plus noise with the demo's covariance shape."""
    centred = demo - demo.mean(axis=0)
    _, spread, basis = np.linalg.svd(centred, full_matrices=False)
    spread = (spread / np.sqrt(len(demo))).astype(np.float32)
    unit = demo / np.linalg.norm(demo, axis=1, keepdims=True)
    distances = np.sqrt(np.maximum(0, 2 - 2 * (unit @ unit.T)))
    np.fill_diagonal(distances, np.inf)
    nearest = np.median(distances.min(axis=1)) * np.median(np.linalg.norm(demo, axis=1))
    scale = 0.5 * nearest / np.sqrt((spread**2).sum())

    def make_rows(begin: int, end: int) -> np.ndarray:
        noise = (rng.standard_normal((end - begin, len(spread)), dtype=np.float32) * spread) @ basis
        return demo[np.arange(begin, end) % len(demo)] + scale * noise

    return make_rows, float(scale)


def percentile_ms(values: list[float]) -> str:
    ms = np.array(values) * 1e3
    return f"median {np.median(ms):.1f} ms, p95 {np.quantile(ms, 0.95):.1f} ms, max {ms.max():.1f} ms"


def bench_ann(args) -> None:
    import faiss

    from clipatlas.steer.ann import ApproximateIndex, ensure_index
    from clipatlas.steer.config import IndexConfig, RetrievalConfig
    from clipatlas.steer.ranking import CosineIndex, EditRanker, Guide

    steerer, table, decoder_rows, eligible = demo_parts(args)
    demo = steerer.store.to_array()
    rng = np.random.default_rng(0)
    make_rows, scale = shaped_noise(demo, rng)
    workspace = args.store_dir / f"ann-{args.rows}"
    store = synthetic_store(workspace, args.rows, demo.shape[1], make_rows)
    print(f"store: {len(store):,} x {store.d} float16 from {len(demo):,} demo rows (noise scale {scale:.3f})")
    codes = tiled_codes(steerer.atlas.image_codes(), np.arange(len(store)) % len(demo))
    config = IndexConfig(kind="ivf", nprobe=args.nprobe, shortlist=args.shortlist)
    build = ensure_index(workspace, store, config)
    how = f"built in {build.seconds:.0f} s" if build.built else "reused"
    print(
        f"index: IVF{build.nlist},SQ8 over {build.rows:,} rows, {build.file_bytes / 1e9:.2f} GB ({how}); "
        f"exact float16 index: {len(store) * store.d * 2 / 1e9:.2f} GB"
    )
    approximate = ApproximateIndex(store, faiss.read_index(str(build.path)), config)
    start = time.perf_counter()
    exact = CosineIndex(store)
    print(f"exact index built in {time.perf_counter() - start:.0f} s")
    rankers = {
        "approximate": EditRanker(approximate, codes, table.max_activation),
        "exact": EditRanker(exact, codes, table.max_activation),
    }
    cfg = RetrievalConfig()
    queries = []
    for f in rng.choice(eligible, args.queries, replace=True):
        source = store[int(rng.integers(len(store)))].astype(np.float32)
        queries.append((source + 2 * table.max_activation[f] * decoder_rows[f], Guide(raised=(int(f),), source=source)))
    for ranker in rankers.values():  # warm-up: posting lists, page cache
        ranker.rank(*queries[0], cfg, 16)
    times = {name: [] for name in rankers}
    plain = {name: [] for name in rankers}
    overlap, plain_overlap = [], []
    for i, (y, guide) in enumerate(queries):
        found = {}
        for name, ranker in rankers.items():
            if name == "exact" and i >= args.exact_queries:
                continue
            start = time.perf_counter()
            found[name] = ranker.rank(y, guide, cfg, 16).rows
            times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            found[name + " plain"] = ranker.index.search(y[None], 16)[0][0]
            plain[name].append(time.perf_counter() - start)
        if "exact" in found:
            overlap.append(len(set(found["approximate"]) & set(found["exact"])) / 16)
            plain_overlap.append(len(set(found["approximate plain"]) & set(found["exact plain"])) / 16)
    for name in rankers:
        print(f"steer (edit-aware, k=16), {name}: {percentile_ms(times[name])} over {len(times[name])} queries")
        print(f"plain cosine top 16, {name}: {percentile_ms(plain[name])}")
    print(
        f"recall@16 against exact over {len(overlap)} queries: edit-aware {statistics.mean(overlap):.3f} "
        f"(min {min(overlap):.2f}), plain cosine {statistics.mean(plain_overlap):.3f} (min {min(plain_overlap):.2f}); "
        f"nprobe {args.nprobe}, shortlist {args.shortlist}"
    )


def _ray_session(cpus: int):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return ray


def bench_ray_embed(args) -> None:
    from clipatlas.sources import available_demo_sets
    from clipatlas.store import embed

    sources = [f"demo:{name}" for name in ("tuxpaint", "emoji") if name in available_demo_sets()]
    if not sources:
        raise SystemExit("no demo images on this machine (make demo-data)")
    common = dict(encoder="efficientnet-lite0", device="cpu", limit=args.images, progress=False, batch_size=32)
    root = Path(tempfile.mkdtemp(prefix="clipatlas-scale-"))
    rates = {}
    try:
        summary = embed(sources, root / "local", workers=1, **common)
        rates["local, 1 decode worker"] = summary.embedded_now / summary.seconds
        for n in args.workers:
            ray = _ray_session(n)
            embed(sources, root / f"warm{n}", engine="ray", ray_encoders=n, **{**common, "limit": 2 * 32})
            summary = embed(sources, root / f"ray{n}", engine="ray", ray_encoders=n, **common)
            rates[f"ray, {n} CPU(s), {n} encoder actor(s)"] = summary.embedded_now / summary.seconds
            ray.shutdown()
    finally:
        shutil.rmtree(root)
    report("embed", rates, args.images, "images")


def bench_ray_atlas(args) -> None:
    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.sae import make_config
    from clipatlas.sae.model import ARCHITECTURES

    root = Path(tempfile.mkdtemp(prefix="clipatlas-scale-"))
    rates = {}
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.atlas_rows, 1280), dtype=np.float32).astype(np.float16)
        from clipatlas.store import write_store

        write_store(root / "ws", x, dtype="float16")
        torch.manual_seed(0)
        ARCHITECTURES["topk"](make_config("topk", d_in=1280, d_sae=args.atlas_features, k=32)).save_pretrained(
            root / "ws" / "saes" / "t"
        )
        config = dict(chunk_size=2048, map_method="pca", thumbnails=False, device="cpu")
        for n in [None, *args.workers]:
            shutil.rmtree(root / "ws" / "saes" / "t" / "atlas", ignore_errors=True)
            if n is not None:
                ray = _ray_session(n)
            start = time.perf_counter()
            build_atlas(
                root / "ws", "t", AtlasConfig(**config, **({"engine": "ray", "chunks_per_task": 2} if n else {}))
            )
            key = "local, 1 thread" if n is None else f"ray, {n} CPU(s)"
            rates[key] = args.atlas_rows / (time.perf_counter() - start)
            if n is not None:
                ray.shutdown()
    finally:
        shutil.rmtree(root)
    report(f"atlas build (d 1280, {args.atlas_features} latents)", rates, args.atlas_rows, "rows")


def report(what: str, rates: dict[str, float], n: int, unit: str) -> None:
    ray_rates = [rate for key, rate in rates.items() if key.startswith("ray")]
    for key, rate in rates.items():
        print(f"{what}, {n:,} {unit}: {key}: {rate:.1f} {unit}/s")
    if len(ray_rates) >= 2:
        print(f"{what}: scaling ratio {ray_rates[-1] / ray_rates[0]:.2f} from the first to the last Ray size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="ray-embed,ray-atlas", help="comma-separated: ann,ray-embed,ray-atlas")
    parser.add_argument("--demo", type=Path, help="a workspace with an atlas (ann)")
    parser.add_argument("--name", help="its SAE (default: the only one)")
    parser.add_argument("--rows", type=int, default=1_400_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=50, help="queries also ranked exactly (1 s+ each)")
    parser.add_argument("--nprobe", type=int, default=24)
    parser.add_argument("--shortlist", type=int, default=256)
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--atlas-rows", type=int, default=65_536)
    parser.add_argument("--atlas-features", type=int, default=8192)
    parser.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--store-dir", type=Path, default=Path(tempfile.gettempdir()) / "clipatlas-steer-bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = {"ann": bench_ann, "ray-embed": bench_ray_embed, "ray-atlas": bench_ray_atlas}
    for part in args.only.split(","):
        if part == "ann" and args.demo is None:
            raise SystemExit("--only ann needs --demo W (a workspace with an atlas)")
        parts[part](args)


if __name__ == "__main__":
    main()
