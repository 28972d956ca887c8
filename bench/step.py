"""One TopK training step against the dense matmul bound, in one process, at fixed dead fractions.

    .venv/bin/python bench/step.py                       # table: step time and % of the matmul rate
    .venv/bin/python bench/step.py --profile --dead 0.25 # torch.profiler table of one step
    .venv/bin/python bench/step.py --phases --dead 0.25  # wall and CPU seconds per phase of the step

The bench size of issue 16: batch 4,096, d=1280, 16,384 latents, TopK k=32, AuxK k_aux 512.
Each row alternates (matmul, step) `--reps` times in the same process and reports the best of
each, so the ratio is measured under the same machine load. The step is `Run.train_step` (learning
rate, forward, AuxK, backward, decoder-gradient projection, fused Adam, renormalisation, counters);
a fraction of the latents is held dead by resetting their counters before each step. Inputs are
the bench's EfficientNet-lite0 embeddings when `bench/out/effnet_embeddings-4096.npy` exists (made by
bench/train.py), else Gaussian.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipatlas.sae import TopKConfig, TrainConfig  # noqa: E402
from clipatlas.sae.training import Run, build_sae  # noqa: E402
from clipatlas.workspace import SAEFiles  # noqa: E402

EMBEDDINGS = Path(__file__).resolve().parent / "out" / "effnet_embeddings-4096.npy"


def inputs(batch_size: int, d: int) -> np.ndarray:
    if EMBEDDINGS.is_file():
        x = np.load(EMBEDDINGS)
        return x[np.random.default_rng(0).integers(0, len(x), batch_size)].astype(np.float32)
    return np.random.default_rng(0).standard_normal((batch_size, d)).astype(np.float32)


def make_run(args, x: np.ndarray, aux_rows: int) -> Run:
    cfg = TrainConfig(
        name="step",
        sae=TopKConfig(k=args.k, k_aux=args.k_aux, aux_rows=aux_rows),
        expansion=args.latents / x.shape[1],
        lr=4e-4,
        batch_size=args.batch_size,
        steps=10**6,
        warmup_steps=1,
    )

    class _Store:  # build_sae reads only these two
        dir, encoder = Path(tempfile.gettempdir()), "bench"

    files = SAEFiles(Path(tempfile.mkdtemp(prefix="bench-step-")))
    return Run(cfg, files, build_sae(cfg, x, _Store), total_steps=10**6, dead_window=10**9, meta={})


def step_gflop(batch: int, d: int, latents: int, k: int) -> float:
    """The work counted for one step: the dense encoder product and the k-sparse products."""
    return (2 * batch * d * latents + 8 * batch * k * d) / 1e9


def timed(work) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is what this
    process itself spent, so a ratio of CPU times is far less disturbed by other processes."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def timed_step(run: Run, x: torch.Tensor, n_dead: int) -> tuple[float, float]:
    run.samples_since_fired[:n_dead] = run.dead_window  # these latents count as dead this step
    return timed(lambda: run.train_step(x, autocast=False))


def timed_matmul(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return timed(lambda: a @ b)


def measure(args, dead_fraction: float, aux_rows: int) -> dict:
    x_np = inputs(args.batch_size, 1280)
    run = make_run(args, x_np, aux_rows)
    x = torch.from_numpy(x_np)
    n_dead = round(dead_fraction * args.latents)
    a, b = torch.randn(args.batch_size, x.shape[1]), torch.randn(x.shape[1], args.latents)
    timed_matmul(a, b), timed_step(run, x, n_dead)  # warm-up: allocations, Adam state
    matmul, step = [], []
    for _ in range(args.reps):
        matmul.append(timed_matmul(a, b))
        step.append(timed_step(run, x, n_dead))
    work = step_gflop(args.batch_size, x.shape[1], args.latents, args.k)
    matmul_work = 2 * args.batch_size * x.shape[1] * args.latents / 1e9
    best = {clock: (min(m[clock] for m in matmul), min(s[clock] for s in step)) for clock in (0, 1)}
    return {
        "dead_fraction": dead_fraction,
        "aux_rows": aux_rows,
        "matmul_s": best[0][0],
        "step_s": best[0][1],
        "matmul_cpu_s": best[1][0],
        "step_cpu_s": best[1][1],
        "matmul_gflops": matmul_work / best[0][0],
        "step_gflops": work / best[0][1],
        "fraction_of_matmul": (work / best[0][1]) / (matmul_work / best[0][0]),
        "fraction_of_matmul_cpu": (work / best[1][1]) / (matmul_work / best[1][0]),
        "samples_per_s": args.batch_size / best[0][1],
    }


def profile(args) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x_np = inputs(args.batch_size, 1280)
    run = make_run(args, x_np, args.aux_rows[0])
    x = torch.from_numpy(x_np)
    n_dead = round(args.dead[0] * args.latents)
    timed_step(run, x, n_dead)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        seconds = timed_step(run, x, n_dead)
    print(f"one step, {args.dead[0]:.0%} dead: {seconds[0]:.3f} s")
    # by input shape: which (4,096 x 16,384) or (16,384 x 1,280) pass a copy or fill belongs to
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50, max_shapes_column_width=80
    )
    print(table)


@contextlib.contextmanager
def _timing_phases(run: Run, totals: dict[str, list[float]]):
    """Wrap the step's phases so each adds (wall s, CPU s) to totals[phase]: a CPU/wall ratio near 1
    marks a phase that keeps one of the threads busy, near the thread count one that uses them all."""

    def timed_phase(name, work):
        def wrapper(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            result = work(*args, **kwargs)
            total = totals.setdefault(name, [0.0, 0.0])
            total[0] += time.perf_counter() - wall
            total[1] += time.process_time() - cpu
            return result

        return wrapper

    backward = torch.Tensor.backward
    run.sae.training_loss = timed_phase("forward (encoder matmul, top-k, AuxK, decode)", run.sae.training_loss)
    run.sae.remove_parallel_decoder_grad = timed_phase(
        "decoder-gradient projection", run.sae.remove_parallel_decoder_grad
    )
    run.optimizer.step = timed_phase("Adam", run.optimizer.step)
    run.sae.normalise_decoder = timed_phase("decoder renormalisation", run.sae.normalise_decoder)
    torch.Tensor.backward = timed_phase("backward", backward)
    try:
        yield
    finally:
        torch.Tensor.backward = backward
        for name in ("training_loss", "remove_parallel_decoder_grad", "normalise_decoder"):
            delattr(run.sae, name)
        del run.optimizer.step


def phases(args) -> None:
    x_np = inputs(args.batch_size, 1280)
    run = make_run(args, x_np, args.aux_rows[0])
    x = torch.from_numpy(x_np)
    n_dead = round(args.dead[0] * args.latents)
    timed_step(run, x, n_dead)  # warm-up
    totals: dict[str, list[float]] = {}
    with _timing_phases(run, totals):
        steps = [timed_step(run, x, n_dead) for _ in range(args.reps)]
    totals["rest of the step"] = [sum(s[i] for s in steps) - sum(t[i] for t in totals.values()) for i in (0, 1)]
    print(f"{args.reps} steps, {args.dead[0]:.0%} dead, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print("| phase | wall s / step | share of the step | CPU s / wall s |")
    print("|---|---|---|---|")
    step_wall = sum(s[0] for s in steps)
    for name, (wall, cpu) in totals.items():
        print(f"| {name} | {wall / args.reps:.3f} | {wall / step_wall:.0%} | {cpu / max(wall, 1e-9):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--latents", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--k-aux", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dead", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    p.add_argument(
        "--aux-rows", type=int, nargs="+", default=[0, 512], help="AuxK rows per batch to compare (0: the whole batch)"
    )
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step")
    p.add_argument("--phases", action="store_true", help="print wall and CPU seconds per phase of the step")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        return profile(args)
    if args.phases:
        return phases(args)
    load_before = os.getloadavg()
    rows = [measure(args, fraction, aux_rows) for fraction in args.dead for aux_rows in args.aux_rows]
    print(json.dumps({"settings": vars(args), "load_before": load_before, "load_after": os.getloadavg(), "rows": rows}))
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(
        "| dead | AuxK rows | matmul GFLOP/s | step s | step GFLOP/s | % of matmul (wall) | % (CPU time) | samples/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dead_fraction']:.0%} | {r['aux_rows'] or 'all'} | {r['matmul_gflops']:.0f} | {r['step_s']:.3f} "
            f"| {r['step_gflops']:.0f} | {r['fraction_of_matmul']:.0%} | {r['fraction_of_matmul_cpu']:.0%} "
            f"| {r['samples_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
