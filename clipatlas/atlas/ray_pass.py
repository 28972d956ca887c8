"""`atlas --engine ray`: the streaming pass as Ray tasks over ranges of the store, merged associatively.

Each task opens the store (every node must read the workspace: a shared filesystem), folds its range
of chunks into an empty `StreamState` with `stream.fold_chunk` (the local pass's own code) and returns
the partial state and the range's per-image codes. This process saves each finished range (its code
files, then `partial_<first row>_<stop>.npz`) and merges the partials with `StreamState.merge`: counts,
histograms and maxima add or max exactly, the top-k keeps the same (value desc, row asc) order, so the
atlas is the local build's (the activation sums up to float64 rounding). A killed build re-run submits
only the ranges with no partial on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clipatlas._ray import connect, has_gpus
from clipatlas.atlas import stream
from clipatlas.atlas.config import AtlasConfig
from clipatlas.devices import resolve_device

PARTIAL_PREFIX = "partial_"


TASKS_PER_WORKER = 4  # enough to even out stragglers; each partial costs the driver one F x (bins + k) merge


def _partial_path(work_dir: Path, start: int, stop: int) -> Path:
    return work_dir / f"{PARTIAL_PREFIX}{start:012d}_{stop:012d}.npz"


def task_ranges(ray, n_rows: int, config: AtlasConfig) -> list[tuple[int, int]]:
    """(start, stop) row ranges of whole chunks: `chunks_per_task` chunks each, or by default
    TASKS_PER_WORKER tasks per GPU of the cluster (per CPU when it has none)."""
    n_chunks = -(-n_rows // config.chunk_size)
    per_task = config.chunks_per_task
    if per_task is None:
        resources = ray.cluster_resources()
        workers = int(resources.get("GPU", 0)) or int(resources.get("CPU", 1))
        per_task = -(-n_chunks // (TASKS_PER_WORKER * max(workers, 1)))
    span = config.chunk_size * per_task
    return [(start, min(start + span, n_rows)) for start in range(0, n_rows, span)]


def fold_range(store_dir: str, sae, start: int, stop: int, top_k: int, codes_per_image: int, chunk_size: int):
    """(partial state arrays, [(chunk start, codes)]) of store rows start..stop, on this worker's device."""
    from clipatlas.store import Store

    device = resolve_device("auto")
    sae = sae.to(device).eval()
    store = Store.open(store_dir)
    state = stream.StreamState.empty(int(sae.cfg.d_sae), top_k, device)
    state.next_row = start
    codes = [
        (
            first,
            stream.fold_chunk(store, sae.encode_sparse, state, first, min(first + chunk_size, stop), codes_per_image),
        )
        for first in range(start, stop, chunk_size)
    ]
    return state.arrays(), codes


def run_stream_on_ray(store, sae, *, work_dir: Path, config: AtlasConfig, device: torch.device) -> stream.StreamState:
    """The pass of `stream.run_stream`, on Ray; returns the merged state on `device`."""
    ray = connect(config.address)
    ranges = task_ranges(ray, len(store), config)
    wanted = {_partial_path(work_dir, *r).name for r in ranges}
    for stale in work_dir.glob(f"{PARTIAL_PREFIX}*"):  # ranges of a run cut otherwise (another cluster size)
        if stale.name not in wanted:
            stale.unlink()
    todo = [r for r in ranges if not _partial_path(work_dir, *r).is_file()]
    if todo:
        task = ray.remote(num_gpus=1 if has_gpus(ray) and config.device != "cpu" else 0, num_cpus=1)(fold_range)
        sae_ref = ray.put(sae.to("cpu"))
        pending = {
            task.remote(
                str(store.dir), sae_ref, start, stop, config.top_k, config.codes_per_image, config.chunk_size
            ): (start, stop)
            for start, stop in todo
        }
        with tqdm(total=len(ranges), initial=len(ranges) - len(todo), desc="atlas pass (ray)", unit="range") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                start, stop = pending.pop(done[0])
                arrays, codes = ray.get(done[0])
                _save_partial(work_dir, start, stop, arrays, codes)
                bar.update(1)
    state = stream.StreamState.empty(int(sae.cfg.d_sae), config.top_k, device)
    for start, stop in ranges:  # in row order: the sums add up as the local pass adds them, chunk by chunk
        with np.load(_partial_path(work_dir, start, stop)) as data:
            arrays = {name: data[name] for name in stream.STATE_ARRAYS}
        state.merge(stream.StreamState.from_arrays(stop, arrays, device))
    return state


def _save_partial(
    work_dir: Path, start: int, stop: int, arrays: dict[str, np.ndarray], codes: list[tuple[int, Any]]
) -> None:
    for first, chunk_codes in codes:  # the codes first: a partial on disk means its codes are too
        stream.save_codes(work_dir, first, chunk_codes)
    stream.StreamState.from_arrays(stop, arrays, torch.device("cpu")).save(_partial_path(work_dir, start, stop))
