"""`Atlas`: the read API over a built feature encyclopedia (web, steering and labels use only this).

It only reads: the build (`build.py`) writes an atlas, `annotations.py` adds icons and labels.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from clipatlas._io import read_json
from clipatlas.atlas.db import ATLAS_SCHEMA_VERSION, CODE_ARRAYS, HIST_ARRAY, array_path, connect
from clipatlas.atlas.types import (
    LENS_SOURCES,
    Activation,
    AtlasError,
    Example,
    FeatureInfo,
    FeatureTable,
    ImageCodes,
    Label,
    MapPoints,
    Neighbour,
)
from clipatlas.workspace import SAEFiles, Workspace

_LABEL_ORDER_SQL = (
    "CASE source " + " ".join(f"WHEN '{s}' THEN {i + 1}" for i, s in enumerate(LENS_SOURCES)) + " ELSE 0 END"
)


def _label_order(source: str) -> int:
    return LENS_SOURCES.index(source) + 1 if source in LENS_SOURCES else 0


class Atlas:
    """A built atlas: `Atlas.open(workspace, name)`. Thread-safe for readers."""

    def __init__(self, files: SAEFiles, workspace: Workspace):
        self.files = files
        self.dir = files.atlas_dir
        self.workspace = workspace
        self._local = threading.local()
        self.meta = {r["key"]: r["value"] for r in self._conn().execute("SELECT key, value FROM meta")}
        version = int(self.meta.get("schema_version", -1))
        if version != ATLAS_SCHEMA_VERSION:
            raise AtlasError(
                f"{self.db_path} has atlas schema {version}, this clipatlas reads {ATLAS_SCHEMA_VERSION}; "
                f"rebuild it with: clipatlas atlas -w {workspace.root}"
            )
        self.n_features = int(self.meta["n_features"])
        self.n_images = int(self.meta["n_images"])
        self.arrays_dir = self.dir / self.meta["arrays_dir"]
        self.hist_edges = np.asarray(json.loads(self.meta["hist_edges"]), dtype=np.float64)
        self._hist: np.ndarray | None = None
        self._codes: ImageCodes | None = None
        self._table: FeatureTable | None = None
        self._map: MapPoints | None = None
        self._store = None
        self._sae = None

    @classmethod
    def open(cls, workspace: str | Path | Workspace, name: str | None = None) -> Atlas:
        ws = Workspace.of(workspace)
        files = ws.sae(name)
        if not files.atlas_db.is_file():
            flag = f" --name {files.name}" if name else ""
            raise AtlasError(f"no atlas for SAE {files.name!r}; build it with: clipatlas atlas -w {ws.root}{flag}")
        return cls(files, ws)

    @property
    def name(self) -> str:
        """The SAE's name."""
        return self.files.name

    @property
    def db_path(self) -> Path:
        return self.files.atlas_db

    @property
    def build_id(self) -> str:
        """Changes whenever the atlas is rebuilt (caches of its pages are keyed by it)."""
        return self.meta.get("build_id", "")

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.db_path, readonly=True)
        return conn

    def check_feature(self, i: int) -> int:
        """`i` as an int, or an AtlasError naming the valid range."""
        i = int(i)
        if not 0 <= i < self.n_features:
            raise AtlasError(f"feature {i} does not exist; this SAE has features 0..{self.n_features - 1}")
        return i

    # -- per feature ---------------------------------------------------------------------
    def feature(self, i: int) -> FeatureInfo:
        i = self.check_feature(i)
        row = self._conn().execute("SELECT * FROM features WHERE feature = ?", (i,)).fetchone()
        counts = self._histograms()[i]
        nonzero = np.flatnonzero(counts)
        lo, hi = (nonzero[0], nonzero[-1] + 1) if len(nonzero) else (0, 0)
        icon = self.icon_path(i)
        return FeatureInfo(
            feature=i,
            alive=bool(row["alive"]),
            count=int(row["count"]),
            frequency=float(row["frequency"]),
            max_activation=float(row["max_activation"]),
            mean_activation=float(row["mean_activation"]),
            hist_edges=self.hist_edges[lo : hi + 1].tolist() if hi > lo else [],
            hist_counts=counts[lo:hi].astype(int).tolist(),
            x=row["x"],
            y=row["y"],
            cluster=row["cluster"],
            labels=self.labels(i),
            icon=str(icon) if icon else None,
        )

    def labels(self, i: int) -> list[Label]:
        """Labels of feature i, best first (labeller labels, then imagenet, clip-text, captions)."""
        i = self.check_feature(i)
        rows = (
            self._conn()
            .execute("SELECT feature, source, text, score FROM labels WHERE feature = ? ORDER BY id", (i,))
            .fetchall()
        )
        labels = [Label(r["feature"], r["source"], r["text"], json.loads(r["score"])) for r in rows]
        return sorted(labels, key=lambda label: _label_order(label.source))

    def _examples(self, i: int, kind: str) -> list[Example]:
        i = self.check_feature(i)
        rows = (
            self._conn()
            .execute(
                "SELECT row, image_id, activation, rank, decile FROM examples "
                "WHERE feature = ? AND kind = ? ORDER BY rank",
                (i, kind),
            )
            .fetchall()
        )
        return [Example(r["row"], r["image_id"], r["activation"], r["rank"], r["decile"]) for r in rows]

    def top_images(self, i: int) -> list[Example]:
        """The images that activate feature i most, strongest first (at most top_k)."""
        return self._examples(i, "top")

    def quantile_samples(self, i: int) -> list[Example]:
        """A few images per tenth of [0, max activation] (`decile` 0 = weakest), weakest first."""
        return self._examples(i, "quantile")

    def coactivating(self, i: int) -> list[Neighbour]:
        """Features that fire on the same images, by Jaccard index; `count` = images where both fire."""
        i = self.check_feature(i)
        rows = (
            self._conn()
            .execute("SELECT other, jaccard, count FROM coactivating WHERE feature = ? ORDER BY rank", (i,))
            .fetchall()
        )
        return [Neighbour(r["other"], r["jaccard"], r["count"]) for r in rows]

    def similar(self, i: int, by: str = "decoder") -> list[Neighbour]:
        """Alive features whose decoder (or encoder) direction is nearest by cosine, nearest first."""
        if by not in ("decoder", "encoder"):
            raise AtlasError(f"similar(by={by!r}): use 'decoder' or 'encoder'")
        i = self.check_feature(i)
        rows = (
            self._conn()
            .execute("SELECT other, cosine FROM similar WHERE feature = ? AND kind = ? ORDER BY rank", (i, by))
            .fetchall()
        )
        return [Neighbour(r["other"], r["cosine"]) for r in rows]

    # -- per image -----------------------------------------------------------------------
    def features_of_image(self, image_id: str) -> list[Activation]:
        """The active features of a stored image, strongest first (at most `codes_per_image`)."""
        try:
            row = self.store.row_of(image_id)
        except KeyError:
            raise AtlasError(f"no image with id {image_id!r} in this workspace's store") from None
        codes = self.image_codes()
        lo, hi = int(codes.indptr[row]), int(codes.indptr[row + 1])
        return [Activation(int(f), float(v)) for f, v in zip(codes.features[lo:hi], codes.values[lo:hi])]

    def features_of_embedding(self, x: Any) -> list[Activation]:
        """Run the SAE on one raw-scale embedding (d,) and list its active features, strongest first."""
        import torch

        vector = np.asarray(x, dtype=np.float32)
        sae = self.sae
        d_in = int(sae.cfg.d_in)
        if vector.shape != (d_in,):
            raise AtlasError(f"expected an embedding of shape ({d_in},), got {vector.shape}")
        if not np.isfinite(vector).all():
            raise AtlasError("the embedding contains NaN or Inf values")
        with torch.no_grad():
            z = sae.encode(torch.from_numpy(vector)[None]).float().cpu().numpy()[0]
        active = np.flatnonzero(z > 0)
        order = active[np.lexsort((active, -z[active]))]
        return [Activation(int(f), float(z[f])) for f in order]

    # -- search, map, summary ------------------------------------------------------------
    def search_labels(self, text: str, limit: int = 50) -> list[Label]:
        """Labels containing `text` (case-insensitive), labeller labels first, then by feature."""
        needle = text.strip()
        if not needle:
            return []
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = (
            self._conn()
            .execute(
                "SELECT feature, source, text, score FROM labels WHERE text LIKE ? ESCAPE '\\' ORDER BY feature, id",
                (f"%{escaped}%",),
            )
            .fetchall()
        )
        labels = [Label(r["feature"], r["source"], r["text"], json.loads(r["score"])) for r in rows]
        labels.sort(key=lambda label: (_label_order(label.source), label.feature))
        return labels[:limit]

    def map_points(self) -> MapPoints:
        """x, y, cluster, feature id and best label of every alive feature (cached)."""
        if self._map is None:
            conn = self._conn()
            rows = conn.execute(
                "SELECT feature, x, y, cluster FROM features WHERE alive = 1 ORDER BY feature"
            ).fetchall()
            table = np.array(rows, dtype=np.float64).reshape(-1, 4)
            # Worst label first, so that dict() keeps each feature's best one.
            best = dict(conn.execute(f"SELECT feature, text FROM labels ORDER BY {_LABEL_ORDER_SQL} DESC, id DESC"))
            ids = table[:, 0].astype(np.int32)
            self._map = MapPoints(
                feature=ids,
                x=table[:, 1].astype(np.float32),
                y=table[:, 2].astype(np.float32),
                cluster=table[:, 3].astype(np.int32),
                label=[best.get(f, "") for f in ids.tolist()],
            )
        return self._map

    def summary(self) -> dict[str, Any]:
        """Encoder id, SAE name, counts, build parameters, and the SAE's metrics.json if any."""
        n_alive = self._conn().execute("SELECT COUNT(*) FROM features WHERE alive = 1").fetchone()[0]
        n_labelled = self._conn().execute("SELECT COUNT(DISTINCT feature) FROM labels").fetchone()[0]
        metrics_path = self.files.metrics
        return {
            "sae": self.name,
            "encoder": self.meta["encoder"],
            "n_images": self.n_images,
            "n_features": self.n_features,
            "n_alive": int(n_alive),
            "dead_over_store": 1.0 - int(n_alive) / self.n_features,
            "n_labelled": int(n_labelled),
            "top_k": int(self.meta["top_k"]),
            "codes_per_image": int(self.meta["codes_per_image"]),
            "metrics": read_json(metrics_path) if metrics_path.is_file() else None,
        }

    # -- files ---------------------------------------------------------------------------
    def thumbnail_path(self, image_id: str) -> Path | None:
        """The ~128 px webp of an example image, or None if the atlas made none for it."""
        row = self._conn().execute("SELECT path FROM thumbnails WHERE image_id = ?", (image_id,)).fetchone()
        return self.dir / row[0] if row else None

    def icon_path(self, i: int) -> Path | None:
        i = self.check_feature(i)
        row = self._conn().execute("SELECT path FROM icons WHERE feature = ?", (i,)).fetchone()
        if row is None:
            return None
        path = Path(row[0])
        return path if path.is_absolute() else self.files.dir / path

    def refresh(self) -> None:
        """Forget what was read, after icons or labels were added (`clipatlas.atlas.annotations`)."""
        self._map = None

    # -- lazily loaded ---------------------------------------------------------------------
    def _histograms(self) -> np.ndarray:
        if self._hist is None:
            self._hist = np.load(array_path(self.arrays_dir, HIST_ARRAY), mmap_mode="r")
        return self._hist

    def image_codes(self) -> ImageCodes:
        """Every store image's sparse code (CSR, strongest first; memory-mapped, read once)."""
        if self._codes is None:
            self._codes = ImageCodes(
                *(np.load(array_path(self.arrays_dir, name), mmap_mode="r") for name in CODE_ARRAYS)
            )
        return self._codes

    def feature_table(self) -> FeatureTable:
        """alive, count and max activation of every feature as arrays (one query, cached)."""
        if self._table is None:
            rows = self._conn().execute("SELECT alive, count, max_activation FROM features ORDER BY feature").fetchall()
            table = np.array([tuple(r) for r in rows], dtype=np.float64).reshape(-1, 3)
            self._table = FeatureTable(
                alive=table[:, 0].astype(bool),
                count=table[:, 1].astype(np.int64),
                max_activation=table[:, 2].astype(np.float32),
            )
        return self._table

    @property
    def store(self):
        if self._store is None:
            from clipatlas.store import Store

            self._store = Store.open(self.workspace.root)
        return self._store

    @property
    def sae(self):
        if self._sae is None:
            from clipatlas.sae import SAE

            self._sae = SAE.from_pretrained(self.files.dir).eval()
        return self._sae
