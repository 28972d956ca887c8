"""Steering benchmark: a stack of 100 edits on a seed-size SAE, and a retrieval preview over a
synthetic store of seed size (1.4M x 1280 float16).

    .venv/bin/python bench/steer.py [--rows 1400000] [--d-sae 163840] [--store-dir /tmp/steer-bench]

The store is written once to --store-dir and reused by later runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipatlas.sae import ARCHITECTURES, ReLUConfig
from clipatlas.steer import Edit, SteerContext, steer_embedding
from clipatlas.steer.decoders import CosineIndex


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def edit_stack(n: int, d_sae: int, rng: np.random.Generator) -> list[Edit]:
    features = rng.choice(d_sae, n, replace=False)
    ops = ["set", "add", "scale", "ban"]
    return [
        Edit(
            ops[i % 4],
            feature=int(f),
            value=0.0 if ops[i % 4] == "ban" else float(rng.uniform(0.5, 3)),
            relative=ops[i % 4] in ("set", "add"),
        )
        for i, f in enumerate(features)
    ]


def bench_edits(d: int, d_sae: int, repeats: int) -> None:
    torch.manual_seed(0)
    sae = ARCHITECTURES["relu"](ReLUConfig(d_in=d, d_sae=d_sae)).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=d).astype(np.float32)
    edits = edit_stack(100, d_sae, rng)
    ctx = SteerContext(latents_of=lambda ref: None, max_activation=lambda f: 2.0)
    times = timed(lambda: steer_embedding(sae, x, edits, ctx), repeats)
    print(
        f"100 stacked edits, SAE {d}x{d_sae}: median {statistics.median(times) * 1e3:.1f} ms "
        f"(min {min(times) * 1e3:.1f}, {repeats} runs; encode, 100 edits, decode of the changed rows)"
    )


def synthetic_store(store_dir: Path, rows: int, d: int):
    from clipatlas.store import Store, write_store

    if (store_dir / "store" / "manifest.json").is_file():
        store = Store.open(store_dir)
        if len(store) == rows and store.d == d:
            return store
        raise SystemExit(f"{store_dir} holds a different store; pass another --store-dir")
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    emb = np.empty((rows, d), dtype=np.float16)
    for begin in range(0, rows, 100_000):  # chunks keep the float32 draw small
        emb[begin : begin + 100_000] = rng.standard_normal((min(100_000, rows - begin), d), dtype=np.float32)
    write_store(store_dir, emb, dtype="float16", shard_size=200_000)
    del emb
    store = Store.open(store_dir)
    print(f"wrote a {rows:,} x {d} float16 store in {time.perf_counter() - start:.0f} s")
    return store


def bench_retrieval(store, repeats: int) -> None:
    queries = np.random.default_rng(1).normal(size=(2, store.d)).astype(np.float32)
    start = time.perf_counter()
    index = CosineIndex(store)  # built once per server / CLI run
    print(f"retrieval index build: {time.perf_counter() - start:.1f} s")
    times = timed(lambda: index.search(queries, 16), repeats)
    gb = len(store) * store.d * store.dtype.itemsize / 1e9
    print(
        f"retrieval preview (before + after, top 16) over {len(store):,} rows ({gb:.2f} GB): median "
        f"{statistics.median(times):.2f} s (min {min(times):.2f}, {repeats} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_400_000)
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument("--d-sae", type=int, default=163_840)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--store-dir", type=Path, default=Path(tempfile.gettempdir()) / "clipatlas-steer-bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_edits(args.d, args.d_sae, args.repeats)
    bench_retrieval(synthetic_store(args.store_dir, args.rows, args.d), args.repeats)


if __name__ == "__main__":
    main()
