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

import warnings
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


def _to_csr(z: torch.Tensor) -> sp.csr_matrix:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        csr = z.cpu().to_sparse_csr()
    return sp.csr_matrix(
        (csr.values().numpy(), csr.col_indices().numpy(), csr.crow_indices().numpy()), shape=tuple(z.shape)
    )


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
    fired = torch.zeros(coder.width, dtype=torch.int64, device=device)
    pieces: list = []
    reconstruction = MetricsAccumulator(store.d, coder.width)
    rebuilds = False
    for start in tqdm(range(0, len(rows), batch_size), desc=f"coding ({coder.name})", unit="batch", leave=False):
        chunk = rows[start : start + batch_size]
        x = torch.from_numpy(_read(store, chunk)).to(device)
        z = coder.encode(x)
        fired += (z != 0).sum(dim=0)
        chunk_keep = torch.from_numpy(keep[start : start + batch_size]).to(device)
        kept = z[chunk_keep]
        pieces.append(kept.float().cpu().numpy() if coder.dense else _to_csr(kept.float()))
        chunk_held = held[start : start + batch_size]
        if chunk_held.any():
            mask = torch.from_numpy(chunk_held).to(device)
            x_held, z_held = x[mask], z[mask]
            x_hat = coder.decode(z_held)
            if x_hat is not None:
                rebuilds = True
                reconstruction.add(x_held.cpu().numpy(), x_hat.float().cpu().numpy(), (z_held != 0).cpu().numpy())
                for sink in sinks:
                    sink.add(x_held, x_hat.float(), chunk[chunk_held])
    if coder.dense:
        codes = np.concatenate(pieces) if pieces else np.zeros((0, coder.width), np.float32)
    else:
        codes = sp.vstack(pieces, format="csr") if pieces else sp.csr_matrix((0, coder.width), dtype=np.float32)
        codes.eliminate_zeros()
    return Coded(
        coder,
        codes,
        fired.cpu().numpy(),
        len(rows),
        reconstruction.result() if rebuilds else None,
        {key: value for sink in sinks for key, value in sink.result().items()} if rebuilds else {},
    )
