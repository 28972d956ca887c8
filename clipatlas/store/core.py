"""The embedding store: clip-retrieval layout, atomic shards, memory-mapped reads.

```
store/
  img_emb/img_emb_00000.npy           (n_i, d) float16 | float32
  metadata/metadata_00000.parquet     one row per embedding (METADATA_SCHEMA)
  manifest.json                       encoder, d, dtype, count, shards, skipped, consumed
```

Stores written before the `label` column existed still open: their shards read as having no
labels, and a later `embed` run that gives labels writes them into those shards.

A shard's files are written first, then the manifest that lists them, each atomically: the
manifest is the commit point, so a killed run leaves only whole shards behind, and
`StoreWriter.consumed` tells the producer how many inputs those shards account for.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipatlas._io import atomic_path, atomic_write_json, open_npy, read_json, sha256_file
from clipatlas.errors import UserError

METADATA_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("caption", pa.string()),
        ("source", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
        ("label", pa.string()),  # the image's class, where its source gives one (evaluation probes it)
    ]
)
LABEL_COLUMN = "label"
SUPPORTED_DTYPES = ("float16", "float32")
MANIFEST = "manifest.json"


class StoreError(UserError):
    """The store is missing, inconsistent, or incompatible with the request."""


def store_dir_of(path: str | Path) -> Path:
    """Accept a workspace directory or its `store/` directory."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    return path / "store"


def _emb_name(index: int) -> str:
    return f"img_emb/img_emb_{index:05d}.npy"


def _meta_name(index: int) -> str:
    return f"metadata/metadata_{index:05d}.parquet"


def shard_files(store_dir: Path, shard: dict[str, Any]) -> tuple[Path, Path]:
    """(embeddings .npy, metadata .parquet) of one manifest shard entry."""
    return store_dir / _emb_name(shard["index"]), store_dir / _meta_name(shard["index"])


@dataclass(frozen=True)
class ShardInfo:
    index: int
    count: int
    emb_sha256: str
    meta_sha256: str


@dataclass
class _Pending:
    embeddings: list[np.ndarray] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    consumed: int = 0


class StoreWriter:
    """Append embeddings shard by shard; re-opening a partial store resumes it.

    The producer must feed inputs in a deterministic order and skip the first
    `writer.consumed` of them on resume; the finished store is then byte-identical to an
    uninterrupted run. Batches should not straddle shard boundaries (`rows_until_flush`),
    so that a resumed run forms the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        store_dir: str | Path,
        *,
        encoder: str,
        d: int,
        dtype: str = "float16",
        shard_size: int = 10_000,
        sources: Sequence[str] = (),
        encoder_info: dict[str, Any] | None = None,
    ):
        if dtype not in SUPPORTED_DTYPES:
            raise StoreError(f"unsupported store dtype {dtype!r}; use one of {SUPPORTED_DTYPES}")
        if shard_size < 1:
            raise StoreError("shard size must be at least 1")
        self.dir = Path(store_dir)
        self.encoder, self.d, self.dtype, self.shard_size = encoder, int(d), dtype, int(shard_size)
        self.sources = list(sources)
        self.encoder_info = dict(encoder_info or {})
        self._manifest = self._load_or_start()
        self._pending = _Pending()
        self.resumed_image_ids = self._committed_image_ids()  # read once: resume checks and `has` share it
        self._known_ids = set(self.resumed_image_ids)

    # -- resume -------------------------------------------------------------------------
    def _load_or_start(self) -> dict[str, Any]:
        path = self.dir / MANIFEST
        if not path.is_file():
            return {
                "encoder": self.encoder,
                "encoder_info": self.encoder_info,
                "d": self.d,
                "dtype": self.dtype,
                "shard_size": self.shard_size,
                "sources": self.sources,
                "count": 0,
                "consumed": 0,
                "complete": False,
                "shards": [],
                "skipped": [],
            }
        manifest = read_json(path)
        self._check_compatible(manifest)
        return manifest

    def _check_compatible(self, manifest: dict[str, Any]) -> None:
        for key, mine in (
            ("encoder", self.encoder),
            ("d", self.d),
            ("dtype", self.dtype),
            ("shard_size", self.shard_size),
        ):
            if manifest.get(key) != mine:
                raise StoreError(
                    f"the store in {self.dir} was written with {key}={manifest.get(key)!r}, not {mine!r}; "
                    "use a new workspace (-w) or the same settings"
                )
        previous = list(manifest.get("sources", []))
        if self.sources and self.sources[: len(previous)] != previous:
            raise StoreError(
                f"the store in {self.dir} was built from {previous}; to add inputs, list those first "
                f"(then the new ones), or use a new workspace"
            )
        manifest["sources"] = self.sources or previous
        if self.sources != previous:
            manifest["complete"] = False

    def _committed_image_ids(self) -> list[str]:
        """Image ids of the rows on disk, in store order."""
        ids: list[str] = []
        for shard in self._manifest["shards"]:
            table = pq.read_table(self.dir / _meta_name(shard["index"]), columns=["image_id"])
            ids.extend(table.column("image_id").to_pylist())
        return ids

    @property
    def skipped_uris(self) -> set[str]:
        """Inputs recorded as skipped, committed or pending."""
        return {entry["uri"] for entry in self._manifest["skipped"] + self._pending.skipped}

    @property
    def consumed(self) -> int:
        """Inputs (embedded or skipped) already committed to disk."""
        return int(self._manifest["consumed"])

    @property
    def count(self) -> int:
        return int(self._manifest["count"]) + len(self._pending.rows)

    @property
    def rows_until_flush(self) -> int:
        return self.shard_size - len(self._pending.rows)

    def has(self, image_id: str) -> bool:
        return image_id in self._known_ids

    def set_labels(self, labels: dict[str, str]) -> int:
        """Write `labels` ({image_id: label}) into the committed shards' metadata; returns how many
        stored rows changed. Rows not named keep their label, so a run without labels erases none.
        Each rewritten shard is committed (file, then manifest) before the next is read."""
        changed = 0
        for shard in self._manifest["shards"]:
            path = self.dir / _meta_name(shard["index"])
            table = pq.read_table(path)
            has_column = LABEL_COLUMN in table.column_names
            old = table.column(LABEL_COLUMN).to_pylist() if has_column else [None] * len(table)
            new = [labels.get(image_id, label) for image_id, label in zip(table.column("image_id").to_pylist(), old)]
            moved = sum(a != b for a, b in zip(old, new))
            if not moved:
                continue
            column = pa.array(new, pa.string())
            if has_column:
                table = table.set_column(table.column_names.index(LABEL_COLUMN), LABEL_COLUMN, column)
            else:
                table = table.append_column(LABEL_COLUMN, column)
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
            shard["meta_sha256"] = sha256_file(path)
            self._write_manifest()
            changed += moved
        return changed

    # -- appending ----------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, rows: Sequence[dict[str, Any]]) -> None:
        """Append embeddings (n, d) with one metadata dict per row."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.d:
            raise StoreError(f"expected embeddings of shape (n, {self.d}), got {embeddings.shape}")
        if len(rows) != len(embeddings):
            raise StoreError(f"{len(embeddings)} embeddings but {len(rows)} metadata rows")
        with np.errstate(over="ignore"):  # overflow becomes Inf, reported just below
            stored = embeddings.astype(self.dtype)
        if not np.isfinite(stored).all():
            bad = [rows[i].get("uri") for i in np.where(~np.isfinite(stored).all(axis=1))[0][:5]]
            raise StoreError(
                f"the encoder produced NaN/Inf embeddings (first: {bad}); "
                f"check the encoder weights and dtype (float16 overflows above 65504)"
            )
        start = 0
        while start < len(rows):
            take = min(self.rows_until_flush, len(rows) - start)
            self._pending.embeddings.append(stored[start : start + take])
            for row in rows[start : start + take]:
                self._pending.rows.append(_normalise_row(row))
                self._known_ids.add(str(row["image_id"]))
            self._pending.consumed += take
            start += take
            if self.rows_until_flush == 0:
                self.flush()

    def skip(self, uri: str, reason: str) -> None:
        """Record an input that produced no embedding, with the reason."""
        self._pending.skipped.append({"uri": str(uri), "reason": str(reason)})
        self._pending.consumed += 1

    def flush(self) -> None:
        """Commit the pending rows as one shard (and any pending skips)."""
        pending, self._pending = self._pending, _Pending()
        manifest = self._manifest
        if pending.rows:
            index = len(manifest["shards"])
            emb = np.concatenate(pending.embeddings, axis=0)
            emb_path, meta_path = self.dir / _emb_name(index), self.dir / _meta_name(index)
            with atomic_path(emb_path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, emb)
            table = pa.Table.from_pylist(pending.rows, schema=METADATA_SCHEMA)
            with atomic_path(meta_path) as tmp:
                pq.write_table(table, tmp)
            manifest["shards"].append(
                {
                    "index": index,
                    "count": len(emb),
                    "emb_sha256": sha256_file(emb_path),
                    "meta_sha256": sha256_file(meta_path),
                }
            )
            manifest["count"] += len(emb)
        manifest["skipped"].extend(pending.skipped)
        manifest["consumed"] += pending.consumed
        self._write_manifest()

    def close(self) -> None:
        """Flush what is pending and mark the store complete."""
        self.flush()
        self._manifest["complete"] = True
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.dir / MANIFEST, self._manifest)


def _normalise_row(row: dict[str, Any]) -> dict[str, Any]:
    if not row.get("image_id"):
        raise StoreError("every metadata row needs an image_id")
    return {name: row.get(name) for name in METADATA_SCHEMA.names}


class Store:
    """Read-only, memory-mapped view over every shard of a store."""

    def __init__(self, store_dir: Path, manifest: dict[str, Any]):
        self.dir = store_dir
        self.manifest = manifest
        self.d = int(manifest["d"])
        self.dtype = np.dtype(manifest["dtype"])
        self.encoder = str(manifest["encoder"])
        self._shards = [self._map_shard(s) for s in manifest["shards"]]
        self._offsets = np.cumsum([0] + [len(s) for s in self._shards]).tolist()
        self._metadata: pa.Table | None = None
        self._row_of: dict[str, int] | None = None

    @classmethod
    def open(cls, path: str | Path) -> Store:
        store_dir = store_dir_of(path)
        if not (store_dir / MANIFEST).is_file():
            raise StoreError(
                f"no embedding store at {store_dir}; create one with: clipatlas embed SOURCE -w {Path(path)}"
            )
        return cls(store_dir, read_json(store_dir / MANIFEST))

    def _map_shard(self, shard: dict[str, Any]) -> np.ndarray:
        path = self.dir / _emb_name(shard["index"])
        try:
            array = open_npy(path)
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {path} ({exc}); re-run `clipatlas embed` to rebuild the store") from exc
        if array.shape != (shard["count"], self.d):
            raise StoreError(f"{path} has shape {array.shape}, the manifest says ({shard['count']}, {self.d})")
        return array

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def skipped(self) -> list[dict[str, str]]:
        return list(self.manifest.get("skipped", []))

    # -- embeddings ---------------------------------------------------------------------
    def _locate(self, row: int) -> tuple[int, int]:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range for a store of {len(self)} rows")
        shard = bisect.bisect_right(self._offsets, row) - 1
        return shard, row - self._offsets[shard]

    def __getitem__(self, row: int) -> np.ndarray:
        shard, local = self._locate(int(row))
        return np.asarray(self._shards[shard][local], dtype=np.float32)

    def rows(self, index: slice | Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows as float32; a slice reads shard ranges, an index array gathers."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._range(start, stop)
            index = np.arange(start, stop, step)
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), self.d), dtype=np.float32)
        if len(index) == 0:
            return out
        if index.min() < 0 or index.max() >= len(self):
            raise IndexError(f"row index out of range for a store of {len(self)} rows")
        shard_of = np.searchsorted(self._offsets, index, side="right") - 1
        for shard in np.unique(shard_of):
            mask = shard_of == shard
            out[mask] = self._shards[shard][index[mask] - self._offsets[shard]]
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(stop - start, 0), self.d), dtype=np.float32)
        pos = start
        while pos < stop:
            shard, local = self._locate(pos)
            take = min(stop - pos, len(self._shards[shard]) - local)
            out[pos - start : pos - start + take] = self._shards[shard][local : local + take]
            pos += take
        return out

    def iter_batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first_row, float32 rows) in store order."""
        for start in range(0, len(self), batch_size):
            yield start, self._range(start, min(start + batch_size, len(self)))

    def to_array(self, dtype: Any = np.float32) -> np.ndarray:
        """Every row in RAM, in store order."""
        return self._range(0, len(self)).astype(dtype, copy=False)

    # -- metadata -----------------------------------------------------------------------
    @property
    def metadata(self) -> pa.Table:
        if self._metadata is None:
            tables = [pq.read_table(self.dir / _meta_name(s["index"])) for s in self.manifest["shards"]]
            # Shards from before a column existed (the label) or with extra columns (LAION-style
            # metadata) line up by name; missing values read as null.
            self._metadata = (
                pa.concat_tables(tables, promote_options="permissive") if tables else METADATA_SCHEMA.empty_table()
            )
        return self._metadata

    def meta(self, row: int) -> dict[str, Any]:
        self._locate(int(row))
        return self.metadata.slice(int(row), 1).to_pylist()[0]

    def row_of(self, image_id: str) -> int:
        if self._row_of is None:
            self._row_of = {image_id: i for i, image_id in enumerate(self.metadata.column("image_id").to_pylist())}
        try:
            return self._row_of[image_id]
        except KeyError:
            raise KeyError(f"no image with id {image_id!r} in the store") from None

    def open_image(self, row: int):
        """The original image of `row` (PIL, RGB), reopened from its URI."""
        from clipatlas.sources import open_uri

        return open_uri(self.meta(row)["uri"])

    def verify(self) -> list[str]:
        """Problems found by re-hashing every shard; empty when the store is intact."""
        problems = []
        for shard in self.manifest["shards"]:
            for name, key in ((_emb_name(shard["index"]), "emb_sha256"), (_meta_name(shard["index"]), "meta_sha256")):
                path = self.dir / name
                if not path.is_file():
                    problems.append(f"{name} is missing")
                elif sha256_file(path) != shard[key]:
                    problems.append(f"{name} does not match its checksum")
        return problems


def write_store(
    workspace: str | Path,
    embeddings: np.ndarray,
    metadata: Sequence[dict[str, Any]] | None = None,
    *,
    encoder: str = "synthetic",
    dtype: str = "float32",
    shard_size: int = 100_000,
) -> Store:
    """Make a store from an in-memory array (precomputed embeddings, tests, benchmarks)."""
    embeddings = np.asarray(embeddings)
    if metadata is None:
        metadata = [
            {"image_id": f"{i:08d}", "uri": f"synthetic:{i}", "source": "synthetic"} for i in range(len(embeddings))
        ]
    store_dir = store_dir_of(workspace)
    if (store_dir / MANIFEST).exists():
        raise StoreError(f"{store_dir} already holds a store; use a new workspace")
    writer = StoreWriter(
        store_dir, encoder=encoder, d=embeddings.shape[1], dtype=dtype, shard_size=shard_size, sources=["array"]
    )
    writer.add(embeddings, list(metadata))
    writer.close()
    return Store.open(store_dir)
