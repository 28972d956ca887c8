"""The one streaming pass over the store: per-feature statistics in O(top_k + bins) each.

For every chunk of rows the SAE gives sparse codes (its dense encoder product is the only
dense work); their (feature, row, value) triplets fold into
  * count, sum and max of the non-zero activations per feature,
  * a histogram of the non-zero activations on fixed log-spaced bins (`HIST_EDGES`),
  * the running top-k rows per feature: only triplets above a feature's current k-th value
    are merged (as packed (value, row) keys), so ties keep the earlier row,
  * each row's strongest `codes_per_image` active features (the per-image sparse code).
The state is checkpointed between chunks; every quantity is a deterministic function of the
chunks before it, so a resumed pass ends in exactly the state of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from clipatlas._io import atomic_path

# Ten bins per decade from 1e-5 to 1e5; activations outside fall into the end bins.
LOG10_LOW, LOG10_HIGH, BINS_PER_DECADE = -5, 5, 10
N_BINS = (LOG10_HIGH - LOG10_LOW) * BINS_PER_DECADE
HIST_EDGES = 10.0 ** (LOG10_LOW + np.arange(N_BINS + 1) / BINS_PER_DECADE)
STATE_FILE = "stream_state.npz"
STATE_ARRAYS = ("count", "total", "max", "hist", "top_values", "top_rows")


def hist_bin(values: torch.Tensor) -> torch.Tensor:
    """Log-spaced bin index of positive activations (float64 log so edges are exact enough)."""
    position = (torch.log10(values.double()) - LOG10_LOW) * BINS_PER_DECADE
    return torch.floor(position).clamp_(0, N_BINS - 1).long()


@contextlib.contextmanager
def _deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """The fold is many small ops on ~k*n elements: threads only add synchronisation (3x
    slower on a loaded 2-core machine), while the encoder matmul before it keeps them all."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class StreamState:
    next_row: int
    count: torch.Tensor  # (F,) int64: images where the feature is > 0
    total: torch.Tensor  # (F,) float64: sum of its activations
    max: torch.Tensor  # (F,) float32
    hist: torch.Tensor  # (F, N_BINS) int64
    top_values: torch.Tensor  # (F, k) float32, descending; 0 = empty slot
    top_rows: torch.Tensor  # (F, k) int64; -1 = empty slot

    @classmethod
    def empty(cls, n_features: int, top_k: int, device: torch.device) -> StreamState:
        return cls(
            next_row=0,
            count=torch.zeros(n_features, dtype=torch.int64, device=device),
            total=torch.zeros(n_features, dtype=torch.float64, device=device),
            max=torch.zeros(n_features, dtype=torch.float32, device=device),
            hist=torch.zeros(n_features, N_BINS, dtype=torch.int64, device=device),
            top_values=torch.zeros(n_features, top_k, dtype=torch.float32, device=device),
            top_rows=torch.full((n_features, top_k), -1, dtype=torch.int64, device=device),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name).cpu().numpy() for name in STATE_ARRAYS}

    @classmethod
    def from_arrays(cls, next_row: int, arrays: dict[str, np.ndarray], device: torch.device) -> StreamState:
        tensors = {name: torch.from_numpy(np.require(arrays[name], requirements="W")) for name in STATE_ARRAYS}
        return cls(next_row=next_row, **{name: tensor.to(device) for name, tensor in tensors.items()})

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, next_row=np.int64(self.next_row), **self.arrays())

    @classmethod
    def load(cls, path: Path, device: torch.device) -> StreamState:
        with np.load(path) as data:
            return cls.from_arrays(int(data["next_row"]), {name: data[name] for name in STATE_ARRAYS}, device)

    def merge(self, other: StreamState) -> None:
        """Fold in the statistics of another set of rows (a partial pass over another range).
        Associative and exact (the sums up to float64 rounding): ranges folded apart and merged in
        any grouping give the state of one pass over all of them."""
        self.count += other.count.to(self.count.device)
        self.total += other.total.to(self.total.device)
        torch.maximum(self.max, other.max.to(self.max.device), out=self.max)
        self.hist += other.hist.to(self.hist.device)
        held = other.top_rows >= 0
        feats = torch.arange(len(other.count), device=held.device)[:, None].expand_as(held)[held]
        self._merge_top(
            feats.to(self.count.device),
            other.top_values[held].to(self.count.device),
            other.top_rows[held].to(self.count.device),
        )
        self.next_row = max(self.next_row, other.next_row)

    def fold(self, indices: torch.Tensor, values: torch.Tensor, first_row: int) -> None:
        """Fold the sparse codes (n, m) of rows first_row.. (SAE.encode_sparse) into the statistics."""
        n, m = indices.shape
        feats, vals = indices.reshape(-1), values.reshape(-1).float()
        rows = torch.arange(first_row, first_row + n, device=indices.device).repeat_interleave(m)
        active = vals > 0  # encode_sparse pads with index -1, value 0
        if not bool(active.all()):  # a TopK SAE's codes are all active: no boolean indexing of n*m triplets
            feats, vals, rows = feats[active], vals[active], rows[active]
        ones = torch.ones_like(feats)
        self.count.index_add_(0, feats, ones)
        if feats.is_cuda:  # GPU atomics add floats in a random order; re-runs must agree to the bit
            with _deterministic():
                self.total.index_put_((feats,), vals.double(), accumulate=True)
        else:  # the CPU kernel adds in index order
            self.total.index_add_(0, feats, vals.double())
        self.max.scatter_reduce_(0, feats, vals, reduce="amax")
        self.hist.view(-1).index_add_(0, feats * N_BINS + hist_bin(vals), ones)
        self._merge_top(feats, vals, rows)
        self.next_row = first_row + n

    def _merge_top(self, feats: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor) -> None:
        """Merge candidate (feature, value, row) triplets into the running top-k.

        Order within a feature: value descending, then row ascending (the brute-force order).
        Only candidates ahead of a feature's current k-th entry in that order can enter (so held
        entries of later rows, as a merge brings them, are judged right too). Each touched feature
        gets one row of packed keys (held entries, then its candidates) and keeps the k smallest.
        """
        k = self.top_values.shape[1]
        # A value below the feature's k-th cannot enter: this cheap test drops most candidates
        # once the top-k have filled, before the exact (value, row) key test on the rest.
        maybe = vals >= self.top_values[:, -1][feats]
        feats, vals, rows = feats[maybe], vals[maybe], rows[maybe]
        enters = pack_keys(vals, rows) < pack_keys(self.top_values[feats, -1], self.top_rows[feats, -1])
        feats, vals, rows = feats[enters], vals[enters], rows[enters]
        if len(feats) == 0:
            return
        order = _argsort(feats)
        feats, vals, rows = feats[order], vals[order], rows[order]
        touched, counts = torch.unique_consecutive(feats, return_counts=True)
        slot = torch.repeat_interleave(torch.arange(len(touched), device=feats.device), counts)
        position = torch.arange(len(feats), device=feats.device) - (torch.cumsum(counts, 0) - counts)[slot]
        keys = torch.full((len(touched), k + int(counts.max())), EMPTY_KEY, dtype=torch.int64, device=feats.device)
        keys[:, :k] = pack_keys(self.top_values[touched], self.top_rows[touched])
        keys[slot, k + position] = pack_keys(vals, rows)
        best = torch.topk(keys, k, dim=1, largest=False).values
        self.top_values[touched], self.top_rows[touched] = unpack_keys(best)


def _argsort(values: torch.Tensor) -> torch.Tensor:
    if values.is_cuda:
        return torch.argsort(values)
    # numpy's radix/timsort of int64 is ~10x faster than torch's CPU sort at these sizes.
    return torch.from_numpy(np.argsort(values.numpy(), kind="stable"))


# A (value, row) pair as one int64 that sorts ascending in the brute-force order: value
# descending (the bits of a positive float32 order like the float), then row ascending.
EMPTY_KEY = torch.iinfo(torch.int64).max
_VALUE_MASK = (1 << 31) - 1


def pack_keys(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    bits = values.float().contiguous().view(torch.int32).long()
    keys = ((_VALUE_MASK - bits) << 32) | rows
    return torch.where(values > 0, keys, EMPTY_KEY)


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    empty = keys == EMPTY_KEY
    bits = (_VALUE_MASK - (keys >> 32)).to(torch.int32)
    values = torch.where(empty, 0.0, bits.view(torch.float32))
    rows = torch.where(empty, -1, keys & 0xFFFFFFFF)
    return values, rows


def image_codes(
    indices: torch.Tensor, values: torch.Tensor, per_image: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's strongest `per_image` active features: (counts (n,), features, values), strongest first."""
    indices, values = indices[:, :per_image], values[:, :per_image]
    active = values > 0
    return (
        active.sum(dim=1).cpu().numpy().astype(np.int64),
        indices[active].cpu().numpy().astype(np.int32),
        values[active].float().cpu().numpy(),
    )


def run_stream(
    store,
    encode_sparse: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    n_features: int,
    *,
    work_dir: Path,
    top_k: int,
    codes_per_image: int,
    chunk_size: int,
    device: torch.device,
    checkpoint_seconds: float,
) -> StreamState:
    """Stream the store through `encode_sparse`, resuming from `work_dir` if a pass was interrupted.

    `encode_sparse(x)` returns (indices, values), each (n, m), strongest first, padded with -1 / 0.

        Per-image codes go to `work_dir/codes_<first row>.npz`, one file per chunk; each is on disk
        before any checkpoint that counts its rows.
    """
    state_path = work_dir / STATE_FILE
    state = (
        StreamState.load(state_path, device) if state_path.is_file() else StreamState.empty(n_features, top_k, device)
    )
    n_rows = len(store)
    n_chunks = math.ceil(n_rows / chunk_size)
    last_save = time.monotonic()
    # One writer thread saves each chunk's codes (its fsync waits on the disk) while the next chunk is
    # encoded; every write finishes before a checkpoint, so a checkpoint never counts rows whose codes
    # are not on disk.
    with ThreadPoolExecutor(max_workers=1) as writer:
        writes = []
        with tqdm(total=n_chunks, initial=state.next_row // chunk_size, desc="atlas pass", unit="chunk") as bar:
            for start in range(state.next_row, n_rows, chunk_size):
                codes = fold_chunk(store, encode_sparse, state, start, min(start + chunk_size, n_rows), codes_per_image)
                writes.append(writer.submit(save_codes, work_dir, start, codes))
                bar.update(1)
                if time.monotonic() - last_save >= checkpoint_seconds:
                    _wait_for(writes)
                    state.save(state_path)
                    last_save = time.monotonic()
        _wait_for(writes)
    state.save(state_path)
    return state


def _wait_for(writes: list[Future]) -> None:
    """Finish the submitted writes (raising the first failure) and forget them."""
    for write in writes:
        write.result()
    writes.clear()


def fold_chunk(
    store, encode_sparse, state: StreamState, start: int, stop: int, codes_per_image: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode rows start..stop, fold their codes into `state`; returns their per-image codes."""
    device = state.count.device
    x = torch.from_numpy(store.rows(slice(start, stop))).to(device)
    with torch.no_grad():
        indices, values = encode_sparse(x)
    with _one_cpu_thread(device):
        codes = image_codes(indices, values, codes_per_image)
        state.fold(indices, values, start)
    return codes


def save_codes(work_dir: Path, start: int, codes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """The per-image codes of the chunk starting at row `start` (`load_codes` reads them back)."""
    counts, features, values = codes
    with atomic_path(work_dir / f"codes_{start:012d}.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, counts=counts, features=features, values=values)


def load_codes(work_dir: Path, n_rows: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate the per-chunk code files into CSR arrays (indptr (n+1,), features, values)."""
    counts, features, values = [], [], []
    for start in range(0, n_rows, chunk_size):
        with np.load(work_dir / f"codes_{start:012d}.npz") as data:
            counts.append(data["counts"])
            features.append(data["features"])
            values.append(data["values"])
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=indptr[1:])
    features_all = np.concatenate(features) if features else np.zeros(0, np.int32)
    values_all = np.concatenate(values) if values else np.zeros(0, np.float32)
    return indptr, features_all, values_all
