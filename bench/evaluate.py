"""Evaluation-suite benchmark: the whole `clipatlas evaluate` on 70,000 rows and 16,640 latents.

    .venv/bin/python bench/evaluate.py                      # synthetic 1280-d store, timed run
    .venv/bin/python bench/evaluate.py --data fashion-mnist # EfficientNet features of Fashion-MNIST

The store holds 70,000 rows of d = 1280 with a label column, written as an EfficientNet-lite0 store
so that the ImageNet-head fidelity runs too. `synthetic` rows are sparse sums of unit atoms (each
row 8 atoms of its class's 64 and 24 of 4,096 shared ones, exponential weights, plus a positive
offset and noise), 10 classes; `fashion-mnist` uses the embeddings bench/train.py --data
fashion-mnist makes (37 minutes to embed) and the dataset's 10 classes. Two TopK SAEs (k=32,
expansion 13 = 16,640 latents, the nearest multiple of 1280 above 16,384) are trained first, seeds
0 and 1, so stability has its pair; training is not timed. Timed: one `evaluate_suite` call on
the first SAE, every section and every baseline, with the defaults of `clipatlas evaluate`.
Raw output: bench/out/evaluate-<data>.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE.parent))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = 10


def synthetic(n: int, d: int = 1280, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((4096, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    y = rng.integers(0, CLASSES, n)
    own = y[:, None] * 64 + rng.integers(0, 64, (n, 8))  # atoms 0..639: 64 per class
    shared = rng.integers(0, 4096, (n, 24))
    columns = np.concatenate([own, shared], axis=1)
    weights = rng.exponential(1.0, columns.shape).astype(np.float32)
    coefficients = sp.csr_matrix((weights.ravel(), (np.repeat(np.arange(n), columns.shape[1]), columns.ravel())))
    x = coefficients @ atoms + 0.5 + 0.05 * rng.standard_normal((n, d)).astype(np.float32)
    return x.astype(np.float32), y


def fashion_mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    embeddings = OUT / "fmnist_embeddings-70000.npy"  # the cache bench/train.py writes for all 70,000 images
    if not embeddings.is_file():
        raise SystemExit(
            "embed Fashion-MNIST first: "
            ".venv/bin/python bench/train.py --data fashion-mnist --n-embeddings 70000 --trainers ''"
        )
    labels = [
        gzip.decompress((FASHION_MNIST / f"{p}-labels-idx1-ubyte.gz").read_bytes())[8:] for p in ("train", "t10k")
    ]
    y = np.frombuffer(b"".join(labels), np.uint8).astype(np.int64)
    return np.load(embeddings)[:n], y[:n]


def build(ws: Path, args) -> None:
    from clipatlas.sae import TopKConfig, TrainConfig, train_many
    from clipatlas.store import write_store

    if not (ws / "store").is_dir():
        x, y = synthetic(args.rows) if args.data == "synthetic" else fashion_mnist(args.rows)
        meta = [
            {"image_id": f"{i:06d}", "uri": f"{args.data}:{i}", "source": args.data, "label": f"class{c}"}
            for i, c in enumerate(y)
        ]
        write_store(ws, x, meta, encoder="efficientnet-lite0", dtype="float16", shard_size=10_000)
    configs = [
        TrainConfig(name=name, sae=TopKConfig(k=32), expansion=13, steps=args.steps, seed=seed, checkpoint_every=10**9)
        for name, seed in (("a", 0), ("a-seed1", 1))
    ]
    train_many(ws, configs)


def matmul_gflops(threads: int) -> float:
    """Dense fp32 matmul speed at the SAE encoder's shape (4096 x 1280 x 16640), best of 3."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 1280), torch.randn(1280, 16640)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 4096 * 1280 * 16640 / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("synthetic", "fashion-mnist"), default="synthetic")
    p.add_argument("--rows", type=int, default=70_000)
    p.add_argument("--steps", type=int, default=30, help="training steps of each SAE (not timed)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from clipatlas.evaluate import EvaluateConfig, evaluate_suite

    torch.set_num_threads(args.threads)
    OUT.mkdir(exist_ok=True)
    ws = OUT / f"evaluate-ws-{args.data}"
    build(ws, args)
    for stale in (ws / "saes" / "a" / "eval").rglob("*.json"):
        stale.unlink()  # a timed run computes every section
    peak = matmul_gflops(args.threads)  # this machine's speed now: it is shared, so say how loaded it was
    load = os.getloadavg()[0]
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    report = evaluate_suite(ws, ["a"], EvaluateConfig(device="cpu"))["a"]
    seconds = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "data": args.data,
        "rows": report["store_rows"],
        "d": report["d_in"],
        "latents": report["d_sae"],
        "threads": args.threads,
        "torch": torch.__version__,
        "seconds": seconds,
        "cpu_seconds": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime,
        "load_average_before": load,
        "load_average_after": os.getloadavg()[0],
        "matmul_gflops_before": peak,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "section_seconds": report["seconds"],
        "section_cpu_seconds": report["cpu_seconds"],
        "report": str(ws / "saes" / "a" / "eval" / "report.md"),
    }
    (OUT / f"evaluate-{args.data}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    from clipatlas.evaluate import print_report

    print_report(report)


if __name__ == "__main__":
    main()
