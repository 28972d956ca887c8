"""Edit-aware retrieval: which store images best show an edited embedding.

Plain cosine retrieval shows the unedited image for almost every edit weaker than about 5x a
feature's max activation: one feature's decoder direction moves the embedding too little (on the
demo store 0% of 2x edits showed the feature). So the retrieval decoder ranks store image c for a
steered embedding y by `RetrievalConfig`'s mix of cos(y, x_c) and how strongly c shows the features
the edits raised (and lacks the ones they switched off), read from the atlas's per-image codes, and
never shows the unedited image or its near-duplicates for an edit.

Speed: a per-feature posting list (the images where the feature is among their `top_latents`
strongest latents, built once from the codes) holds every image that can earn `rank_weight`. Any
other image scores at most 1 + activation_weight, so when enough posted images score above that
the answer is exact without scanning the store; otherwise (a soft rank_weight, features with huge
posting lists, removal-only edits) the whole store is scanned, as plain cosine retrieval does.
With an approximate index (`steer.ann`, large stores) nothing is scanned: the mix is computed exactly
over the index's candidates nearest y and its candidates among the raised features' posted rows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from clipatlas.atlas.types import ImageCodes
from clipatlas.errors import UserError
from clipatlas.steer.config import RetrievalConfig

MAX_TARGETS = 8  # features an edit raised (or removed) that the ranking looks at, largest changes first
GATHER_FRACTION = 1 / 40  # gathering a row costs ~20x streaming it: past this share of rows, scan them all
_SEARCH_BATCH_ROWS = 65536  # store rows per float32 batch while building the index


def unit_queries(queries: np.ndarray, d: int) -> np.ndarray:
    """Queries (m, d) as float32 unit rows; a wrong width is a UserError."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if queries.shape[1] != d:
        raise UserError(f"embeddings have {queries.shape[1]} dims, the store holds {d}-dim embeddings")
    return queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)


def best_k(rows: np.ndarray, cosines: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines) of each query's k best, (B, k) best first; ties go to the lower row."""
    part = np.argpartition(-cosines, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(cosines, part, 1)
    part_rows = np.take_along_axis(rows, part, 1)
    order = np.lexsort((part_rows, -top), axis=1)
    return np.take_along_axis(part_rows, order, 1).astype(np.int64), np.take_along_axis(top, order, 1)


class CosineIndex:
    """The store's rows, unit-normalised, in RAM in the store's dtype (float16 stores stay float16:
    1.4M x 1280 is 3.6 GB); one matrix product per query batch. Exact, no approximation."""

    exact = True

    def __init__(self, store):
        self.d = store.d
        dtype = torch.float16 if store.dtype == np.float16 else torch.float32
        self.unit_rows = torch.empty((len(store), store.d), dtype=dtype)
        batches = store.iter_batches(_SEARCH_BATCH_ROWS)
        for start, batch in tqdm(
            batches,
            total=-(-len(store) // _SEARCH_BATCH_ROWS),
            desc="retrieval index",
            unit="batch",
            disable=len(store) < 20 * _SEARCH_BATCH_ROWS,
        ):
            norms = np.sqrt(np.einsum("ij,ij->i", batch, batch))[:, None]
            self.unit_rows[start : start + len(batch)] = torch.from_numpy(batch / np.maximum(norms, 1e-12))

    def __len__(self) -> int:
        return len(self.unit_rows)

    def units(self, queries: np.ndarray) -> torch.Tensor:
        """Queries (m, d) as unit rows in the index's dtype."""
        return torch.from_numpy(unit_queries(queries, self.d)).to(self.unit_rows.dtype)

    def cosines(self, units: torch.Tensor, rows: np.ndarray | None = None) -> np.ndarray:
        """(len(rows) or all rows, m) float32 cosines of the store rows with unit queries."""
        if rows is None:
            return (self.unit_rows @ units.T).float().numpy()
        # numpy's row gather is ~5x torch's on this CPU tensor (it shares the memory)
        stored = torch.from_numpy(self.unit_rows.numpy()[np.asarray(rows, dtype=np.int64)])
        return (stored @ units.T).float().numpy()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosines), each (B, k), best first; ties go to the lower row."""
        units = self.units(queries)
        k = min(int(k), len(self.unit_rows))
        if k < 1:
            raise UserError("retrieval needs a non-empty store and k >= 1")
        scores = self.cosines(units).T
        return best_k(np.broadcast_to(np.arange(scores.shape[1]), scores.shape), scores, k)


@dataclass(frozen=True)
class Guide:
    """What one embedding was steered toward, for decoders that choose among existing images.

    `raised`: features the edits raised, largest change first; `removed`: features they switched off;
    `source`: the unedited embedding (it and its near-duplicates are never shown), None for no edit."""

    raised: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    source: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def targets(self) -> tuple[int, ...]:
        return self.raised + self.removed

    @classmethod
    def of_edit(cls, z: np.ndarray, z_edited: np.ndarray, source: np.ndarray, max_activation: np.ndarray) -> Guide:
        """The guide of an edit that turned latents `z` into `z_edited` (both (d_sae,))."""
        scale = np.where(max_activation > 0, max_activation, 1.0)
        change = (z_edited - z) / scale
        raised = np.flatnonzero(change > 0)
        raised = raised[np.lexsort((raised, -change[raised]))][:MAX_TARGETS]
        removed = np.flatnonzero((z > 0) & (z_edited <= 0))
        removed = removed[np.lexsort((removed, -z[removed] / scale[removed]))][:MAX_TARGETS]
        return cls(tuple(int(f) for f in raised), tuple(int(f) for f in removed), np.asarray(source, np.float32))


@dataclass(frozen=True)
class Ranked:
    """Store rows best first, with their mixed scores, cosines to the query, and for each of the guide's
    targets (columns, `Guide.targets` order) its activation in the row and rank in the row's code."""

    rows: np.ndarray
    scores: np.ndarray
    cosines: np.ndarray
    activations: np.ndarray  # (len(rows), len(targets))
    ranks: np.ndarray


class Postings:
    """For each feature, the store rows where it is among the `top_latents` strongest latents of the
    row's code, with its activation and rank there: one pass over the codes, ~5 entries per row."""

    def __init__(self, codes: ImageCodes, n_features: int, top_latents: int):
        lengths = np.diff(codes.indptr)
        rank = np.arange(len(codes.features)) - np.repeat(codes.indptr[:-1], lengths)
        keep = rank < top_latents
        rows = np.repeat(np.arange(len(lengths)), lengths)[keep]
        features = np.asarray(codes.features)[keep]
        order = np.lexsort((rows, features))
        self.rows = rows[order]
        self.values = np.asarray(codes.values)[keep][order].astype(np.float32)
        self.ranks = rank[keep][order]
        self.start = np.searchsorted(features[order], np.arange(n_features + 1))

    def size(self, feature: int) -> int:
        return int(self.start[feature + 1] - self.start[feature])

    def of(self, feature: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self.start[feature], self.start[feature + 1]
        return self.rows[lo:hi], self.values[lo:hi], self.ranks[lo:hi]


class EditRanker:
    """Ranks store rows for steered embeddings by `RetrievalConfig`'s mix (see the module docstring)."""

    def __init__(self, index: CosineIndex, codes: ImageCodes, max_activation: np.ndarray):
        if len(codes) != len(index):
            raise UserError(f"the atlas holds codes for {len(codes)} images, the store {len(index)}; rebuild the atlas")
        self.index = index
        self.codes = codes
        self.max_activation = np.asarray(max_activation, dtype=np.float32)
        self._postings: dict[int, Postings] = {}
        self._lock = threading.Lock()

    def postings(self, top_latents: int) -> Postings:
        with self._lock:
            if top_latents not in self._postings:
                self._postings[top_latents] = Postings(self.codes, len(self.max_activation), top_latents)
            return self._postings[top_latents]

    # -- the score ----------------------------------------------------------------------------------
    def _terms(self, acts: np.ndarray, ranks: np.ndarray, features, cfg: RetrievalConfig, dominant: bool):
        """Per (row, target): activation_weight * min(act / max, 1) + rank_weight * (rank < top_latents)
        [+ dominant_weight * (rank == 0)]."""
        top = self.max_activation[np.asarray(features, dtype=np.int64)]
        level = np.minimum(acts / np.where(top > 0, top, np.inf), 1.0)
        terms = cfg.activation_weight * level + cfg.rank_weight * (ranks < cfg.top_latents)
        return terms + cfg.dominant_weight * (ranks == 0) if dominant else terms

    def bonus(self, acts: np.ndarray, ranks: np.ndarray, guide: Guide, cfg: RetrievalConfig) -> np.ndarray:
        """What the targets add to each row's cosine, from (rows, targets) activations and ranks."""
        n_up = len(guide.raised)
        out = np.zeros(len(acts), dtype=np.float32)
        if n_up:
            out += self._terms(acts[:, :n_up], ranks[:, :n_up], guide.raised, cfg, dominant=True).mean(axis=1)
        if guide.removed:
            out -= self._terms(acts[:, n_up:], ranks[:, n_up:], guide.removed, cfg, dominant=False).mean(axis=1)
        return out

    # -- ranking ------------------------------------------------------------------------------------
    def rank(self, y: np.ndarray, guide: Guide, cfg: RetrievalConfig, k: int) -> Ranked:
        """The best `k` store rows for steered embedding `y` (fewer when too few differ from the source)."""
        units = self.index.units(np.stack([y] if guide.source is None else [y, guide.source]))
        # The approximate index holds no full rows to gather: it always ranks its shortlist.
        found = self._rank_posted(units, guide, cfg, k) if guide.raised and self.index.exact else None
        rows, scores, cosines = found if found is not None else self._rank_all(units, guide, cfg, k)
        if not len(rows):
            raise UserError(
                "every store image is the unedited image or a near-duplicate of it; "
                "raise the retrieval setting duplicate_cosine or add images to the store"
            )
        acts, ranks = self.codes.stats(rows, np.asarray(guide.targets, dtype=np.int64))
        return Ranked(rows, scores, cosines, acts, ranks)

    def candidates(self, y: np.ndarray, guide: Guide, cfg: RetrievalConfig):
        """(rows, scores, ranks of the first raised feature) of the posted rows of the raised features,
        near-duplicates of the source left out: the rows that can show the edit (icon assignment)."""
        units = self.index.units(np.stack([y] if guide.source is None else [y, guide.source]))
        rows, scores, _, ranks = self._score_posted(units, guide, cfg)
        return rows, scores, ranks[:, 0] if len(rows) else np.zeros(0, np.int64)

    def _score_posted(self, units, guide: Guide, cfg: RetrievalConfig):
        postings = self.postings(cfg.top_latents)
        return self._score_rows(units, np.unique(np.concatenate([postings.of(f)[0] for f in guide.raised])), guide, cfg)

    def _score_rows(self, units, rows: np.ndarray, guide: Guide, cfg: RetrievalConfig):
        """(rows, mixed scores, cosines, target ranks) of candidate `rows`, the source's near-duplicates left out."""
        cos = self.index.cosines(units, rows)
        if guide.source is not None:
            keep = cos[:, 1] < cfg.duplicate_cosine
            rows, cos = rows[keep], cos[keep]
        acts, ranks = self.codes.stats(rows, np.asarray(guide.targets, dtype=np.int64))
        return rows, cos[:, 0] + self.bonus(acts, ranks, guide, cfg), cos[:, 0], ranks

    def _rank_posted(self, units, guide: Guide, cfg: RetrievalConfig, k: int):
        """The exact top k from the posted rows alone, or None when rows outside them could still win."""
        postings = self.postings(cfg.top_latents)
        if sum(postings.size(f) for f in guide.raised) > len(self.index) * GATHER_FRACTION:
            return None
        rows, scores, cosines, _ = self._score_posted(units, guide, cfg)
        # An unposted row has no raised feature among its top latents: it scores at most 1 + activation_weight.
        if len(rows) < k or np.partition(scores, len(scores) - k)[len(scores) - k] < 1.0 + cfg.activation_weight:
            return None
        return _best(rows, scores, cosines, k)

    def _rank_all(self, units, guide: Guide, cfg: RetrievalConfig, k: int):
        """The exact top k over the whole store: one scan, plus the targets' terms where they fire."""
        if not self.index.exact:
            return self._rank_shortlist(units, guide, cfg, k)
        cos = self.index.cosines(units)
        scores = cos[:, 0].copy()
        for sign, features, dominant in ((1.0, guide.raised, True), (-1.0, guide.removed, False)):
            for f in features:
                rows, acts, ranks = self.codes.rows_of(f)
                terms = self._terms(acts[:, None], ranks[:, None], [f], cfg, dominant)[:, 0]
                np.add.at(scores, rows, sign * terms / len(features))
        rows = np.arange(len(scores))
        if guide.source is not None:
            rows = rows[cos[:, 1] < cfg.duplicate_cosine]
        return _best(rows, scores[rows], cos[rows, 0], k)

    def _rank_shortlist(self, units, guide: Guide, cfg: RetrievalConfig, k: int):
        """With an approximate index: the mix, computed exactly, over the index's candidates nearest y, among
        all rows and among the raised features' posted rows (those earn rank_weight). Rows outside both lists
        are missed; recall against the exact ranking is measured in bench/scale.py."""
        near = [self.index.candidates(units[:1])[0]]
        if guide.raised:
            postings = self.postings(cfg.top_latents)
            posted = np.concatenate([postings.of(f)[0] for f in guide.raised])
            near.append(self.index.candidates(units[:1], among=posted)[0])
        rows = np.unique(np.concatenate(near))
        rows, scores, cosines, _ = self._score_rows(units, rows[rows >= 0], guide, cfg)
        return _best(rows, scores, cosines, k)


def _best(rows: np.ndarray, scores: np.ndarray, cosines: np.ndarray, k: int):
    """The k best (rows, scores, cosines), best first; ties go to the lower row."""
    if len(rows) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        rows, scores, cosines = rows[part], scores[part], cosines[part]
    order = np.lexsort((rows, -scores))
    return rows[order].astype(np.int64), scores[order].astype(np.float32), cosines[order].astype(np.float32)
