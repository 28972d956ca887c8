"""Atlas build speed against N (images) and F (features), and its fraction of matmul speed.

    .venv/bin/python bench/atlas.py                      # the default grid, CPU
    .venv/bin/python bench/atlas.py --sizes 1400000x163840 --d 1280 --device cuda

For each size: a synthetic float16 store (N x d Gaussian rows) and a random TopK SAE (k=32).
`pass` is the streaming pass alone (encoder product + top-k/histogram/code folding);
`build` is the whole `build_atlas` (relations, PCA map, database; no thumbnails).
`matmul %` = (2*N*d*F / pass seconds) / (GFLOP/s of a bare x @ W_enc of one chunk, the
better of measurements just before and just after the pass).
`paired %` = a matmul-only pass (same chunks, same store reads, bare x @ W_enc) over the
full pass, each the best of two runs alternated: robust to load from other processes.
`--reference NxF` also runs the naive dense reference (full activation matrix + argsort)
and checks that top-k rows, counts, maxima and histograms are identical.
`--profile NxF` runs one pass under torch.profiler: where its time goes, per chunk.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipatlas._alloc import tune_cpu_allocator
from clipatlas.atlas import AtlasConfig, build_atlas, stream
from clipatlas.sae import make_config
from clipatlas.sae.model import ARCHITECTURES
from clipatlas.store import Store

K_ACTIVE = 32


def matmul_gflops(chunk: int, d: int, n_features: int, device: torch.device) -> float:
    x = torch.randn(chunk, d, device=device)
    w = torch.randn(d, n_features, device=device)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        x @ w
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * chunk * d * n_features / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_workspace(root: Path, n: int, d: int, n_features: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows_per_shard = 100_000
    from clipatlas.store import StoreWriter

    writer = StoreWriter(
        root / "store", encoder="synthetic", d=d, dtype="float16", shard_size=rows_per_shard, sources=["bench"]
    )
    for start in range(0, n, rows_per_shard):
        count = min(rows_per_shard, n - start)
        x = rng.standard_normal((count, d), dtype=np.float32)
        writer.add(x, [{"image_id": f"{start + i:09d}", "uri": f"synthetic:{start + i}"} for i in range(count)])
    writer.close()
    torch.manual_seed(seed)
    sae = ARCHITECTURES["topk"](make_config("topk", d_in=d, d_sae=n_features, k=K_ACTIVE))
    sae.save_pretrained(root / "saes" / "bench")


def time_pass(
    root: Path, config: AtlasConfig, around: contextlib.AbstractContextManager | None = None
) -> tuple[float, stream.StreamState]:
    """Seconds of one streaming pass (`around`, e.g. a profiler, wraps the timed part only)."""
    from clipatlas.sae import SAE

    store = Store.open(root)
    sae = SAE.from_pretrained(root / "saes" / "bench", device=config.device).eval()
    with tempfile.TemporaryDirectory() as work:
        device = torch.device(config.device)
        _sync(device)
        start = time.perf_counter()
        with around or contextlib.nullcontext():
            state = stream.run_stream(
                store,
                sae.encode_sparse,
                sae.cfg.d_sae,
                work_dir=Path(work),
                top_k=config.top_k,
                codes_per_image=config.codes_per_image,
                chunk_size=config.chunk_size,
                device=device,
                checkpoint_seconds=float("inf"),
            )
            _sync(device)
        return time.perf_counter() - start, state


def time_matmul_only(root: Path, config: AtlasConfig) -> float:
    """The same chunks read from the same store through the bare encoder matmul: the floor."""
    from clipatlas.sae import SAE

    store = Store.open(root)
    device = torch.device(config.device)
    w_enc = SAE.from_pretrained(root / "saes" / "bench", device=config.device).W_enc.detach()
    _sync(device)
    start = time.perf_counter()
    for first in range(0, len(store), config.chunk_size):
        x = torch.from_numpy(store.rows(slice(first, first + config.chunk_size))).to(device)
        x @ w_enc
    _sync(device)
    return time.perf_counter() - start


def naive_reference(root: Path, top_k: int):
    """Dense activation matrix of the whole store, then argsort: what the pass replaces."""
    from clipatlas.sae import SAE

    start = time.perf_counter()
    sae = SAE.from_pretrained(root / "saes" / "bench").eval()
    x = torch.from_numpy(Store.open(root).to_array())
    with torch.no_grad():
        z = sae.encode(x).numpy()
    order = np.argsort(-z, axis=0, kind="stable")[:top_k].T  # (F, k)
    values = np.take_along_axis(z.T, order, axis=1)
    rows = np.where(values > 0, order, -1)
    counts = (z > 0).sum(axis=0)
    maxima = z.max(axis=0)
    hist = np.stack(
        [
            np.histogram(
                np.clip(col[col > 0], stream.HIST_EDGES[0], np.nextafter(stream.HIST_EDGES[-1], 0)),
                bins=stream.HIST_EDGES,
            )[0]
            for col in z.T
        ]
    )
    return time.perf_counter() - start, rows, counts, maxima, hist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", nargs="*", default=["25000x4096", "25000x16384", "50000x16384", "100000x16384", "200000x16384"]
    )
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--full-build", action="store_true", help="also time the whole build_atlas")
    parser.add_argument(
        "--reference", default="20000x4096", help="size for the naive reference comparison ('' to skip)"
    )
    parser.add_argument("--profile", default="", help="size NxF to profile one pass at ('' to skip)")
    args = parser.parse_args()
    tune_cpu_allocator()  # as the CLI does before every command: both passes run under it
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = AtlasConfig(chunk_size=args.chunk_size, device=args.device, map_method="pca", thumbnails=False)
    print(f"device={device} threads={args.threads} d={args.d} chunk={args.chunk_size} topk SAE k={K_ACTIVE}")
    print(
        "| N | F | pass s | images/s | pass GFLOP/s | matmul GFLOP/s | matmul % | matmul-only pass s "
        "| paired % | build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        n, n_features = (int(v) for v in size.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            make_workspace(root, n, args.d, n_features)
            # The machine is shared: take the better of a peak measured before and after the pass.
            before = matmul_gflops(args.chunk_size, args.d, n_features, device)
            seconds, _ = time_pass(root, config)
            peak = max(before, matmul_gflops(args.chunk_size, args.d, n_features, device))
            # Paired, in the order pass, matmul-only, matmul-only, pass (best of two each): load drift cancels.
            floor = min(time_matmul_only(root, config), time_matmul_only(root, config))
            seconds = min(seconds, time_pass(root, config)[0])
            achieved = 2 * n * args.d * n_features / seconds / 1e9
            build = ""
            if args.full_build:
                start = time.perf_counter()
                build_atlas(root, "bench", config=config)
                build = f"{time.perf_counter() - start:.1f}"
            print(
                f"| {n:,} | {n_features:,} | {seconds:.1f} | {n / seconds:,.0f} | {achieved:.0f} | {peak:.0f} "
                f"| {100 * achieved / peak:.0f}% | {floor:.1f} | {100 * floor / seconds:.0f}% | {build} |",
                flush=True,
            )
    if args.reference:
        compare_with_reference(args, config)
    if args.profile:
        profile_pass(args, config)


def profile_pass(args, config: AtlasConfig, rows: int = 12) -> None:
    """The pass's torch ops by their own time per chunk, and what is outside torch ops."""
    from torch.profiler import ProfilerActivity, profile

    n, n_features = (int(v) for v in args.profile.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_workspace(root, n, args.d, n_features)
        time_pass(root, config)  # warm: first-touch pages, thread pools
        seconds, _ = time_pass(root, config)  # without the profiler's start, stop and per-op costs
        profiler = profile(activities=[ProfilerActivity.CPU])
        time_pass(root, config, around=profiler)
    chunks = math.ceil(n / config.chunk_size)
    events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
    in_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    print(
        f"\nprofile {n:,}x{n_features:,}: pass {seconds:.1f} s = {1e3 * seconds / chunks:.0f} ms per chunk, unprofiled"
    )
    print("| op | ms per chunk | calls per chunk |\n|---|---|---|")
    for event in events[:rows]:
        print(f"| {event.key} | {event.self_cpu_time_total / 1e3 / chunks:.1f} | {event.count / chunks:g} |")
    print(f"| other torch ops | {sum(e.self_cpu_time_total for e in events[rows:]) / 1e3 / chunks:.1f} | |")
    print(f"| outside torch ops (store reads, numpy, code files, Python) | {1e3 * (seconds - in_ops) / chunks:.1f} | |")


def compare_with_reference(args, config: AtlasConfig) -> None:
    n, n_features = (int(v) for v in args.reference.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_workspace(root, n, args.d, n_features, seed=1)
        cpu = dataclasses.replace(config, device="cpu")
        seconds, state = time_pass(root, cpu)
        ref_seconds, rows, counts, maxima, hist = naive_reference(root, cpu.top_k)
        same = (
            np.array_equal(state.top_rows.numpy(), rows)
            and np.array_equal(state.count.numpy(), counts)
            and np.array_equal(state.max.numpy(), maxima)
            and np.array_equal(state.hist.numpy(), hist)
        )
        print(
            f"\nreference {n:,}x{n_features:,}: streaming pass {seconds:.1f} s, "
            f"naive dense+argsort {ref_seconds:.1f} s "
            f"(peak RAM of its activation matrix {n * n_features * 4 / 2**30:.2f} GiB); identical results: {same}"
        )


if __name__ == "__main__":
    main()
