"""`Atlas`: the read API over a built feature encyclopedia (web, steering and labels use only this).

It only reads: the build (`build.py`) writes an atlas, `annotations.py` adds icons and labels.
"""

from __future__ import annotations

import bisect
import json
import string
import threading
from pathlib import Path
from typing import Any

import numpy as np

from clipatlas._io import open_npy, read_json
from clipatlas.atlas.config import check_feature_selection
from clipatlas.atlas.db import (
    ATLAS_SCHEMA_VERSION,
    CODE_ARRAYS,
    HIST_ARRAY,
    add_missing_indexes,
    array_path,
    connect,
    migrate,
)
from clipatlas.atlas.types import (
    NAMING_P,
    Activation,
    AtlasError,
    Example,
    FeatureInfo,
    FeatureTable,
    ImageCodes,
    Label,
    MapPoints,
    Neighbour,
    Score,
    naming,
    ranking_score,
)
from clipatlas.workspace import SAEFiles, Workspace

# Why a feature has no name (shown in its place).
UNLABELLED, NOT_SCORED = "unlabelled", "not yet scored"
NO_LABEL_BEATS_BASELINE = f"no label beats its shuffled baseline and chance with p <= {NAMING_P}"
_LABEL_COLUMNS = "id, feature, source, text, model, prompt_version, description, evidence"
ALL = "1"  # the WHERE clause of every row


def _label(row, scores: list[Score]) -> Label:
    return Label(
        feature=row["feature"],
        source=row["source"],
        text=row["text"],
        model=row["model"],
        prompt_version=row["prompt_version"],
        description=row["description"],
        evidence=json.loads(row["evidence"]),
        scores=tuple(scores),
        id=row["id"],
    )


def _score(row) -> Score:
    return Score(
        feature=row["feature"],
        label_id=row["label_id"],
        scorer=row["scorer"],
        judge=row["judge"],
        metric=row["metric"],
        value=row["value"],
        baseline=row["baseline"],
        n=row["n"],  # beats_baseline is re-derived from value and baseline (Score.beats_baseline), not read
        judge_model=row["judge_model"],
        validation=row["validation"],
        details=json.loads(row["details"]),
    )


def label_order(label: Label) -> tuple:
    """A feature's labels as listed: the headline's judge first, then the best-ranked, unscored last."""
    score = label.score()
    rank = ranking_score(score) if score else (0.0, 0.0)
    return (score is None, -rank[0], -rank[1], label.id or 0)


class Atlas:
    """A built atlas: `Atlas.open(workspace, name)`. Thread-safe for readers."""

    def __init__(self, files: SAEFiles, workspace: Workspace):
        self.files = files
        self.dir = files.atlas_dir
        self.workspace = workspace
        self._local = threading.local()
        self.meta = self._read_meta()
        version = int(self.meta.get("schema_version", -1))
        if version == 1 and migrate(self.db_path):
            self.meta = self._read_meta()
            version = int(self.meta["schema_version"])
        if version != ATLAS_SCHEMA_VERSION:
            raise AtlasError(
                f"{self.db_path} has atlas schema {version}, this clipatlas reads {ATLAS_SCHEMA_VERSION}; "
                f"rebuild it with: clipatlas atlas -w {workspace.root}"
            )
        add_missing_indexes(self.db_path)
        self.n_features = int(self.meta["n_features"])
        self.n_images = int(self.meta["n_images"])
        self.arrays_dir = self.dir / self.meta["arrays_dir"]
        self.hist_edges = np.asarray(json.loads(self.meta["hist_edges"]), dtype=np.float64)
        self._hist: np.ndarray | None = None
        self._codes: ImageCodes | None = None
        self._table: FeatureTable | None = None
        self._map: MapPoints | None = None
        self._headlines: tuple[dict[int, Label], dict[int, str], dict[int, Label]] | None = None
        self._labelled: dict[int, list[Label]] | None = None
        self._search: LabelSearch | None = None
        self._store = None
        self._sae = None

    def _read_meta(self) -> dict[str, str]:
        conn = connect(self.db_path, readonly=True)  # not the cached one: a migration changes the schema
        try:
            return {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM meta")}
        finally:
            conn.close()

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
            coherence=self._scores("feature = ? AND label_id IS NULL", (i,)),
        )

    def labels(self, i: int) -> list[Label]:
        """Labels of feature i with their scores: best-ranked first, never-scored ones last."""
        i = self.check_feature(i)
        return self._labels_where("feature = ?", (i,))

    def _scores(self, where: str, params: tuple) -> list[Score]:
        rows = self._conn().execute(f"SELECT * FROM scores WHERE {where} ORDER BY rowid", params).fetchall()
        return [_score(r) for r in rows]

    def _labels_where(self, where: str, params: tuple) -> list[Label]:
        rows = self._conn().execute(f"SELECT {_LABEL_COLUMNS} FROM labels WHERE {where} ORDER BY id", params).fetchall()
        scores: dict[int, list[Score]] = {}
        if where == ALL:
            found = self._scores("label_id IS NOT NULL", ())
        else:  # the features first: scores are indexed by feature, a lookup by label_id alone scans them all
            chosen = f"SELECT {{}} FROM labels WHERE {where}"
            found = self._scores(
                f"feature IN ({chosen.format('feature')}) AND label_id IN ({chosen.format('id')})", params + params
            )
        for score in found:
            scores.setdefault(score.label_id, []).append(score)
        return sorted((_label(r, scores.get(r["id"], [])) for r in rows), key=label_order)

    def headlines(self) -> dict[int, Label]:
        """{feature: its headline label} for every feature that has one (cached; see types.headline)."""
        return self._naming()[0]

    def unnamed_reasons(self) -> dict[int, str]:
        """{feature: why it has no name} for features that have labels but no headline: NOT_SCORED or
        NO_LABEL_BEATS_BASELINE. Features missing from both maps have no label at all (UNLABELLED)."""
        return self._naming()[1]

    def best_guesses(self) -> dict[int, Label]:
        """{feature: its best guess} for unnamed features whose best label beats its baseline and chance but
        misses p <= NAMING_P, with p <= GUESS_P (cached; see types.naming): shown apart from the name,
        never as it."""
        return self._naming()[2]

    def naming_note(self, i: int) -> str:
        """'' for a named feature, else why it has no name."""
        if i in self.headlines():
            return ""
        return self.unnamed_reasons().get(i, UNLABELLED)

    def _naming(self) -> tuple[dict[int, Label], dict[int, str], dict[int, Label]]:
        if self._headlines is None:
            named, reasons, guesses = {}, {}, {}
            for feature, labels in self.labels_by_feature().items():
                best, guess = naming(labels)
                if best is not None:
                    named[feature] = best
                    continue
                scored = any(label.score() is not None for label in labels)
                reasons[feature] = NO_LABEL_BEATS_BASELINE if scored else NOT_SCORED
                if guess is not None:
                    guesses[feature] = guess
            self._headlines = (named, reasons, guesses)
        return self._headlines

    def labels_by_feature(self) -> dict[int, list[Label]]:
        """Every labelled feature's labels (best-ranked first), by feature (cached until `refresh`)."""
        if self._labelled is None:
            found: dict[int, list[Label]] = {}
            for label in self._labels_where(ALL, ()):
                found.setdefault(label.feature, []).append(label)
            self._labelled = dict(sorted(found.items()))  # each feature's labels keep _labels_where's order
        return self._labelled

    def coherence_scores(self) -> list[Score]:
        """Scores of the features themselves (intruder), all features."""
        return self._scores("label_id IS NULL", ())

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
        """Labels containing `text` (case-insensitive, as SQL LIKE: ASCII letters only), best first
        (`search_rank`): labels that name their feature, then those that beat their baseline, then other
        scored ones, then unscored; ties by feature, then in `label_order`."""
        needle = text.strip()
        if not needle:
            return []
        return self.label_search().find(needle, limit)

    def label_search(self) -> LabelSearch:
        """Every label in search order, for `search_labels` (cached until `refresh`)."""
        if self._search is None:
            self._search = LabelSearch(self.labels_by_feature())
        return self._search

    def map_points(self) -> MapPoints:
        """x, y, cluster, feature id, headline label and top image of every alive feature (cached)."""
        if self._map is None:
            conn = self._conn()
            rows = conn.execute(
                "SELECT feature, x, y, cluster FROM features WHERE alive = 1 ORDER BY feature"
            ).fetchall()
            table = np.array(rows, dtype=np.float64).reshape(-1, 4)
            best = {f: label.text for f, label in self.headlines().items()}
            top = dict(conn.execute("SELECT feature, image_id FROM examples WHERE kind = 'top' AND rank = 0"))
            ids = table[:, 0].astype(np.int32)
            self._map = MapPoints(
                feature=ids,
                x=table[:, 1].astype(np.float32),
                y=table[:, 2].astype(np.float32),
                cluster=table[:, 3].astype(np.int32),
                label=[best.get(f, "") for f in ids.tolist()],
                top_image=[top.get(f, "") for f in ids.tolist()],
            )
        return self._map

    def summary(self) -> dict[str, Any]:
        """Encoder id, SAE name, counts, build parameters, and the SAE's metrics.json if any."""
        n_alive = self._conn().execute("SELECT COUNT(*) FROM features WHERE alive = 1").fetchone()[0]
        n_labelled = self._conn().execute("SELECT COUNT(DISTINCT feature) FROM labels").fetchone()[0]
        n_scored = self._conn().execute("SELECT COUNT(DISTINCT feature) FROM scores").fetchone()[0]
        metrics_path = self.files.metrics
        return {
            "sae": self.name,
            "encoder": self.meta["encoder"],
            "n_images": self.n_images,
            "n_features": self.n_features,
            "n_alive": int(n_alive),
            "dead_over_store": 1.0 - int(n_alive) / self.n_features,
            "n_labelled": int(n_labelled),
            "n_scored": int(n_scored),
            "n_named": len(self.headlines()),
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
        """Forget what was read, after icons, labels or scores were added (`clipatlas.atlas.annotations`)."""
        self._map = None
        self._headlines = None
        self._labelled = None
        self._search = None

    # -- lazily loaded ---------------------------------------------------------------------
    def _histograms(self) -> np.ndarray:
        if self._hist is None:
            self._hist = open_npy(array_path(self.arrays_dir, HIST_ARRAY))
        return self._hist

    def image_codes(self) -> ImageCodes:
        """Every store image's sparse code (CSR, strongest first; memory-mapped, read once)."""
        if self._codes is None:
            self._codes = ImageCodes(*(open_npy(array_path(self.arrays_dir, name)) for name in CODE_ARRAYS))
        return self._codes

    def select_features(self, spec: str) -> np.ndarray:
        """Feature ids, ascending, for a `--features` value (`config.check_feature_selection`)."""
        spec = check_feature_selection(spec)
        table = self.feature_table()
        if spec == "all":
            return np.arange(self.n_features)
        if spec == "alive":
            return np.flatnonzero(table.alive)
        if spec.startswith("top:"):
            alive = np.flatnonzero(table.alive)
            order = np.argsort(-table.count[alive], kind="stable")
            return np.sort(alive[order[: int(spec[4:])]])
        ids: set[int] = set()
        for part in spec.split(","):
            low, _, high = part.strip().partition("-")
            ids.update(range(int(low), int(high or low) + 1))
        for i in (min(ids), max(ids)):
            self.check_feature(i)  # an AtlasError naming the valid range
        return np.array(sorted(ids), dtype=np.int64)

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


def search_rank(label: Label) -> tuple:
    """Search order: labels good enough to name their feature, then others that beat their baseline,
    then other scored labels (best score first within each), then unscored ones."""
    score = label.score()
    if score is None:
        return (3, 0.0)
    return (0 if score.names_feature else 1 if score.beats_baseline else 2, -score.value)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # what SQLite's LIKE folds


class LabelSearch:
    """Every label's text in search order (`search_rank`, feature, `label_order`), lower-cased and
    joined into one string: a substring search is `str.find` from the best label on, stopping at
    the limit. A common word stops after a few hundred labels; a rare one is one pass in C over
    a few MB (163,840 labels), instead of ranking every matching label per search."""

    def __init__(self, labels_by_feature: dict[int, list[Label]]):
        flat = [label for labels in labels_by_feature.values() for label in labels]
        self.labels = sorted(flat, key=lambda label: (search_rank(label), label.feature))  # stable: label_order
        texts = [label.text.translate(_ASCII_LOWER) for label in self.labels]
        self.starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]]).tolist() if texts else []
        self.ends = [start + len(t) for start, t in zip(self.starts, texts)]
        self.text = "\n".join(texts)

    def find(self, needle: str, limit: int) -> list[Label]:
        needle = needle.translate(_ASCII_LOWER)
        hits: list[Label] = []
        at = self.text.find(needle)
        while at >= 0 and len(hits) < limit:
            i = bisect.bisect_right(self.starts, at) - 1
            if at + len(needle) <= self.ends[i]:
                hits.append(self.labels[i])
                at = self.ends[i]  # on to the next label
            else:
                at += 1  # the match ran past the end of label i: not one label's text
            at = self.text.find(needle, at)
        return hits
