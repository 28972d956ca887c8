"""One streaming pass per coder: codes computed once, kept sparse, every held-out metric fed on the way.

The pass reads the store in batches, codes each batch once, and
- counts, per latent, the rows it fired on (the SAE's pass covers the whole store: its dead
  fraction over the store);
- keeps the codes of the analysis rows (held-out rows plus the training sample) as a CSR matrix
  (a dense float32 array for dense coders), which probing and purity read;
- on held-out rows, rebuilds the embeddings and feeds the reconstruction metrics
  (`clipatlas.sae.metrics.MetricsAccumulator`) and the fidelity sinks.
Nothing of size (rows x latents) is ever held densely beyond one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from clipatlas.evaluate.coders import Coder
from clipatlas.sae.metrics import Metrics, MetricsAccumulator
from clipatlas.store import Store


class Sink(Protocol):
    """Takes held-out rows' embeddings and reconstructions batch by batch; `result()` summarises."""

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, rows: np.ndarray) -> None: ...

    def result(self) -> dict[str, Any]: ...


@dataclass
class Coded:
    """A coder's pass: codes of the analysis rows (in row order) and what the held-out rows gave."""

    coder: Coder
    codes: sp.csr_matrix | np.ndarray  # (len(analysis rows), width)
    fired: np.ndarray  # (width,) rows of the pass each latent fired on
    n_rows: int  # rows the pass coded
    reconstruction: Metrics | None
    fidelity: dict[str, Any]

    @property
    def dead_fraction(self) -> float:
        """Share of latents that fired on none of the rows the pass coded."""
        return float((self.fired == 0).mean())


def _csr(indices: torch.Tensor, values: torch.Tensor, width: int) -> sp.csr_matrix:
    """Sparse codes (index -1 = padding, zeros left out) as a CSR matrix (B, width)."""
    indices, values = indices.cpu().numpy(), values.float().cpu().numpy()
    rows = np.broadcast_to(np.arange(len(indices))[:, None], indices.shape)
    stored = (indices >= 0) & (values != 0)
    return sp.csr_matrix((values[stored], (rows[stored], indices[stored])), shape=(len(indices), width))


def _read(store: Store, rows: np.ndarray) -> np.ndarray:
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # contiguous: read shard ranges
        return store.rows(slice(int(rows[0]), int(rows[-1]) + 1))
    return store.rows(rows)


@torch.no_grad()
def code_rows(
    coder: Coder,
    store: Store,
    rows: np.ndarray,
    analysis_rows: np.ndarray,
    held_out_rows: np.ndarray,
    sinks: list[Sink],
    batch_size: int,
    device: torch.device,
) -> Coded:
    """Code the sorted `rows` (a superset of the sorted `analysis_rows`, which hold `held_out_rows`)."""
    keep = np.isin(rows, analysis_rows)
    held = np.isin(rows, held_out_rows)
    fired = np.zeros(coder.width, dtype=np.int64)
    pieces: list = []
    reconstruction = MetricsAccumulator(store.d, coder.width)
    rebuilds = False
    for start in tqdm(range(0, len(rows), batch_size), desc=f"coding ({coder.name})", unit="batch", leave=False):
        chunk = rows[start : start + batch_size]
        x = torch.from_numpy(_read(store, chunk)).to(device)
        codes = coder.encode(x)
        batch = codes.float().cpu().numpy() if coder.dense else _csr(*codes, coder.width)
        fired += np.count_nonzero(batch, axis=0) if coder.dense else np.bincount(batch.indices, minlength=coder.width)
        pieces.append(batch[keep[start : start + batch_size]])
        chunk_held = held[start : start + batch_size]
        if chunk_held.any():
            mask = torch.from_numpy(chunk_held).to(device)
            held_codes = codes[mask] if coder.dense else (codes[0][mask], codes[1][mask])
            x_hat = coder.decode(held_codes)
            if x_hat is not None:
                rebuilds = True
                active = batch[chunk_held] != 0
                active = active if coder.dense else active.toarray()
                reconstruction.add(x[mask].cpu().numpy(), x_hat.float().cpu().numpy(), active)
                for sink in sinks:
                    sink.add(x[mask], x_hat.float(), chunk[chunk_held])
    if coder.dense:
        kept = np.concatenate(pieces) if pieces else np.zeros((0, coder.width), np.float32)
    else:
        kept = sp.vstack(pieces, format="csr") if pieces else sp.csr_matrix((0, coder.width), dtype=np.float32)
    return Coded(
        coder,
        kept,
        fired,
        len(rows),
        reconstruction.result() if rebuilds else None,
        {key: value for sink in sinks for key, value in sink.result().items()} if rebuilds else {},
    )
