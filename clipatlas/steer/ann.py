"""The approximate retrieval index: FAISS over the store's unit rows, built once and kept in the workspace.

At the paper's size exact cosine retrieval scans 1.4M x 1280 values per query (1.2 s on a CPU core,
bench/RESULTS.md). `ApproximateIndex` scans `nprobe` cells of an inverted file of 8-bit quantised unit rows
(1 byte per value: 1.8 GB at 1.4M x 1280, half the exact index's float16) and re-scores its `shortlist`
candidates exactly from the store's memory-mapped rows, so shown cosines are exact and only recall is
approximate (measured by `clipatlas index`, bench/scale.py). It answers the same calls as
`ranking.CosineIndex`; `retrieval_index` picks one (`IndexConfig`), and `exact` small stores keep the scan.

The saved index records the store's shard hashes: a store that changed gets a new index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clipatlas._io import atomic_path, atomic_write_json, read_json
from clipatlas.errors import UserError
from clipatlas.steer.config import IndexConfig
from clipatlas.steer.ranking import CosineIndex, best_k, unit_queries
from clipatlas.workspace import Workspace

log = logging.getLogger(__name__)
_ADD_BATCH_ROWS = 65_536
DEFAULT_INDEX = IndexConfig()
DECODE_LIMIT = 4096  # rows decoded by id per query; past it a scan of every cell is cheaper


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UserError("the approximate retrieval index needs FAISS: pip install 'clipatlas[ann]'") from None
    return faiss


def store_identity(store) -> str:
    """Hash of the store's shards: the index is stale when it changes."""
    hashes = [shard["emb_sha256"] for shard in store.manifest["shards"]]
    return hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:16]


class ApproximateIndex:
    """`CosineIndex`'s calls over a FAISS inverted file (module docstring)."""

    exact = False

    def __init__(self, store, faiss_index, config: IndexConfig):
        self.store, self.faiss_index = store, faiss_index
        self.d = store.d
        self.shortlist = config.shortlist
        self.faiss_index.nprobe = config.nprobe
        self.faiss_index.make_direct_map()  # 8 bytes a row: decode any row's code by id

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def units(self, queries: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(unit_queries(queries, self.d))

    def candidates(self, units: torch.Tensor, among: np.ndarray | None = None) -> np.ndarray:
        """(m, shortlist) rows the index finds nearest each unit query, -1 where it found fewer; with `among`,
        only those rows, from every cell (the rows an edit favours, a feature's images, mostly lie in cells
        far from the query): up to DECODE_LIMIT rows by decoding their codes by id, more by a full scan that
        scores only them."""
        queries = np.ascontiguousarray(units.numpy(), dtype=np.float32)
        if among is None:
            return self.faiss_index.search(queries, self.shortlist)[1]
        among = np.asarray(among, dtype=np.int64)
        if len(among) > DECODE_LIMIT:
            faiss = _faiss()
            params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(among), nprobe=self.faiss_index.nlist)
            return self.faiss_index.search(queries, self.shortlist, params=params)[1]
        scores = queries @ self.faiss_index.reconstruct_batch(among).T
        if len(among) <= self.shortlist:
            return np.broadcast_to(among, scores.shape)
        best = np.argpartition(-scores, self.shortlist - 1, axis=1)[:, : self.shortlist]
        return among[best]

    def cosines(self, units: torch.Tensor, rows: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), m) exact cosines of store rows (read from the store) with unit queries."""
        if rows is None:
            raise ValueError("an approximate index scores given rows only; use its candidates")
        stored = self.store.rows(np.asarray(rows, dtype=np.int64))
        stored /= np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
        return stored @ units.numpy().T

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosines), each (B, k), best first: the shortlist re-scored exactly."""
        units = self.units(queries)
        k = min(int(k), len(self))
        if k < 1:
            raise UserError("retrieval needs a non-empty store and k >= 1")
        found = self.candidates(units)
        out_rows, out_cos = [], []
        for b, rows in enumerate(found):
            rows = rows[rows >= 0]
            cos = self.cosines(units[b : b + 1], rows)[:, 0]
            if len(rows) < k:  # a query whose probed cells hold too few rows: pad with the worst
                rows = np.concatenate([rows, np.full(k - len(rows), -1)])
                cos = np.concatenate([cos, np.full(k - len(cos), -np.inf, np.float32)])
            top_rows, top_cos = best_k(rows[None], cos[None], k)
            out_rows.append(top_rows[0])
            out_cos.append(top_cos[0])
        return np.stack(out_rows), np.stack(out_cos).astype(np.float32)

    def memory_bytes(self) -> int:
        """Bytes the FAISS index holds (its serialised size: codes, ids and cells)."""
        return int(_faiss().serialize_index(self.faiss_index).nbytes)


def _unit(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12), np.float32)


def build_index(store, config: IndexConfig = DEFAULT_INDEX, progress: bool = True):
    """Train and fill a FAISS IVF index with 8-bit scalar quantisation over the store's unit rows."""
    faiss = _faiss()
    n = len(store)
    nlist = config.nlist or max(16, round(math.sqrt(n)))
    nlist = min(nlist, n)
    sample = np.sort(np.random.default_rng(0).choice(n, min(n, max(config.train_rows, 39 * nlist)), replace=False))
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(store.d), store.d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.train(_unit(store.rows(sample)))
    with tqdm(total=n, desc="retrieval index", unit="row", disable=not progress, dynamic_ncols=True) as bar:
        for _, batch in store.iter_batches(_ADD_BATCH_ROWS):
            index.add(_unit(batch))
            bar.update(len(batch))
    return index


@dataclass(frozen=True)
class IndexBuild:
    path: Path
    rows: int
    nlist: int
    file_bytes: int
    seconds: float
    built: bool  # False: an up-to-date saved index was reused


def ensure_index(workspace, store, config: IndexConfig = DEFAULT_INDEX, *, progress: bool = True) -> IndexBuild:
    """The workspace's saved index for this store, built (and saved atomically) unless up to date."""
    ws = Workspace.of(workspace)
    faiss = _faiss()
    wanted = {"store": store_identity(store), "kind": "ivf-sq8", "rows": len(store), **config.build_params()}
    if ws.retrieval_index.is_file() and ws.retrieval_index_meta.is_file():
        meta = read_json(ws.retrieval_index_meta)
        if {key: meta.get(key) for key in wanted} == wanted:
            return IndexBuild(
                ws.retrieval_index, len(store), meta["cells"], ws.retrieval_index.stat().st_size, 0, False
            )
    log.warning(
        "building the retrieval index over %d store rows (once per store; `clipatlas index -w %s` builds it ahead)",
        len(store),
        ws.root,
    )
    started = time.perf_counter()
    index = build_index(store, config, progress)
    ws.retrieval_index.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(ws.retrieval_index) as tmp:
        faiss.write_index(index, str(tmp))
    atomic_write_json(ws.retrieval_index_meta, {**wanted, "cells": int(index.nlist), "d": store.d})
    seconds = time.perf_counter() - started
    return IndexBuild(
        ws.retrieval_index, len(store), int(index.nlist), ws.retrieval_index.stat().st_size, seconds, True
    )


def retrieval_index(store, config: IndexConfig = DEFAULT_INDEX) -> Any:
    """The index retrieval uses: `CosineIndex` (exact) or the workspace's `ApproximateIndex` (built once)."""
    if config.kind == "exact" or (config.kind == "auto" and len(store) < config.min_rows):
        return CosineIndex(store)
    if config.kind == "auto":
        try:
            _faiss()
        except UserError:
            log.warning("%d store rows: exact retrieval (pip install 'clipatlas[ann]' for a faster index)", len(store))
            return CosineIndex(store)
    ws = Workspace.of(store.dir.parent)
    ensure_index(ws, store, config)
    return ApproximateIndex(store, _faiss().read_index(str(ws.retrieval_index)), config)


def recall_at(approximate, exact, queries: np.ndarray, k: int) -> float:
    """Share of the exact top-k rows the approximate index also returns, over `queries`."""
    got, _ = approximate.search(queries, k)
    want, _ = exact.search(queries, k)
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))
