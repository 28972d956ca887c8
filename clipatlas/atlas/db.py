"""The atlas folder's layout and its database: one row per feature plus one table per relation.

Large dense arrays (the activation histograms, every image's sparse code) live beside the
database as `.npy` files in a directory named by the build (`arrays-<build id>/`), which the
`meta` table points to; replacing the database file therefore switches every array at once.
`write_database` is the only code that creates an atlas.sqlite (the build and the synthetic
atlas of the benchmarks both call it).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clipatlas._io import atomic_path

ATLAS_SCHEMA_VERSION = 2
ARRAYS_PREFIX = "arrays-"
HIST_ARRAY = "hist"  # (features, bins) activation histograms
CODE_ARRAYS = ("codes_indptr", "codes_features", "codes_values")  # every image's sparse code, CSR
THUMBS_DIR = "thumbs"

# Indexes an atlas of this schema may lack (it was built before they were added): `add_missing_indexes`
# creates them when the atlas is opened, so reading never depends on them being there, only speed.
INDEXES_ADDED_IN_PLACE = {
    # {name: what it indexes}. A label's scores without a scan of every score (feature, image and search pages).
    "scores_by_label_id": "scores (label_id, scorer)",
}


def _index_sql(name: str) -> str:
    return f"CREATE INDEX IF NOT EXISTS {name} ON {INDEXES_ADDED_IN_PLACE[name]}"


LABEL_TABLES = """
CREATE TABLE labels (
    id INTEGER PRIMARY KEY,
    feature INTEGER NOT NULL,
    source TEXT NOT NULL,        -- the labeller: 'captions', 'classifier', 'clip-text', 'vlm', ...
    text TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',           -- the model that wrote it ('' for offline labellers)
    prompt_version TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    evidence TEXT NOT NULL DEFAULT '{}'       -- JSON object: what the labeller based it on
);
CREATE INDEX labels_by_feature ON labels (feature);
CREATE UNIQUE INDEX labels_by_maker ON labels (feature, source, model, prompt_version);
CREATE TABLE scores (
    feature INTEGER NOT NULL,
    label_id INTEGER,            -- NULL: a score of the feature itself (intruder)
    scorer TEXT NOT NULL,        -- 'detection', 'intruder'
    judge TEXT NOT NULL,         -- 'vlm', 'clip-text', 'captions', ...
    judge_model TEXT NOT NULL,
    metric TEXT NOT NULL,        -- 'auroc' (detection), 'accuracy' (intruder)
    value REAL NOT NULL,
    baseline REAL NOT NULL,      -- shuffled labels (detection) or chance (intruder)
    n INTEGER NOT NULL,          -- images judged
    beats_baseline INTEGER NOT NULL,  -- value above baseline and chance (AUROC 0.5); readers re-derive it
    validation REAL,             -- the labeller's score on the labelling half only
    details TEXT NOT NULL        -- JSON object
);
CREATE UNIQUE INDEX scores_by_label ON scores (feature, IFNULL(label_id, -1), scorer, judge);
""" + "".join(f"{_index_sql(name)};\n" for name in INDEXES_ADDED_IN_PLACE)

SCHEMA = (
    """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features (
    feature INTEGER PRIMARY KEY,
    alive INTEGER NOT NULL,
    count INTEGER NOT NULL,
    frequency REAL NOT NULL,
    max_activation REAL NOT NULL,
    mean_activation REAL NOT NULL,
    x REAL,
    y REAL,
    cluster INTEGER
);
CREATE TABLE examples (
    feature INTEGER NOT NULL,
    kind TEXT NOT NULL,          -- 'top' or 'quantile'
    rank INTEGER NOT NULL,
    decile INTEGER,              -- quantile samples: 0 = weakest tenth of [0, max activation]
    row INTEGER NOT NULL,
    image_id TEXT NOT NULL,
    activation REAL NOT NULL
);
CREATE INDEX examples_by_feature ON examples (feature, kind, rank);
CREATE TABLE coactivating (
    feature INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    other INTEGER NOT NULL,
    count INTEGER NOT NULL,
    jaccard REAL NOT NULL
);
CREATE INDEX coactivating_by_feature ON coactivating (feature, rank);
CREATE TABLE similar (
    feature INTEGER NOT NULL,
    kind TEXT NOT NULL,          -- 'decoder' or 'encoder'
    rank INTEGER NOT NULL,
    other INTEGER NOT NULL,
    cosine REAL NOT NULL
);
CREATE INDEX similar_by_feature ON similar (feature, kind, rank);
"""
    + LABEL_TABLES
    + """CREATE TABLE icons (feature INTEGER PRIMARY KEY, path TEXT NOT NULL);
CREATE TABLE thumbnails (image_id TEXT PRIMARY KEY, path TEXT NOT NULL);
"""
)


# Schema 1 had unscored "lens" labels written by the build and one JSON column for everything else.
_MIGRATE_1_TO_2 = f"""
DELETE FROM labels WHERE source IN ('imagenet', 'clip-text', 'captions');
ALTER TABLE labels RENAME TO labels_v1;
DROP INDEX IF EXISTS labels_by_feature;
{LABEL_TABLES}
INSERT OR IGNORE INTO labels (id, feature, source, text, evidence)
    SELECT id, feature, source, text, score FROM labels_v1;
DROP TABLE labels_v1;
UPDATE meta SET value = '2' WHERE key = 'schema_version';
"""


def migrate(path: Path) -> bool:
    """Bring an older atlas database up to this schema in place; False if it cannot be written."""
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return False
    conn = connect(path, readonly=False)
    try:
        version = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        if version == 1:
            with conn:
                conn.executescript("BEGIN;" + _MIGRATE_1_TO_2 + "COMMIT;")
        return True
    finally:
        conn.close()


def add_missing_indexes(path: Path) -> bool:
    """Create the `INDEXES_ADDED_IN_PLACE` an older build lacks; False if some are missing and the
    file cannot be written (reads stay correct, only slower). Adding an index changes no answer."""
    names = list(INDEXES_ADDED_IN_PLACE)
    conn = connect(path, readonly=True)
    try:
        marks = ",".join("?" * len(names))
        found = {r[0] for r in conn.execute(f"SELECT name FROM sqlite_master WHERE name IN ({marks})", names)}
    finally:
        conn.close()
    if len(found) == len(names):
        return True
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return False
    conn = connect(path, readonly=False)
    try:
        with conn:
            for name in names:
                conn.execute(_index_sql(name))
        return True
    finally:
        conn.close()


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(ATLAS_SCHEMA_VERSION),))


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:
        # Read-only URI so a reader can never create an empty database by accident.
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


# The columns each table is filled with, in order.
_INSERTS = {
    "features": "INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "examples": "INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?)",
    "coactivating": "INSERT INTO coactivating VALUES (?, ?, ?, ?, ?)",
    "similar": "INSERT INTO similar VALUES (?, ?, ?, ?, ?)",
    "labels": "INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "scores": "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "icons": "INSERT INTO icons VALUES (?, ?)",
    "thumbnails": "INSERT INTO thumbnails VALUES (?, ?)",
}


def write_database(target: Path, meta: Mapping[str, Any], tables: Mapping[str, Iterable[tuple]]) -> None:
    """Write a whole atlas.sqlite under a temporary name and rename it over `target`.

    `tables` maps table names to rows in the column order of `_INSERTS`; missing tables stay empty.
    """
    unknown = set(tables) - set(_INSERTS)
    if unknown:
        raise ValueError(f"no atlas tables named {sorted(unknown)}")
    with atomic_path(target) as tmp:  # an empty file is a valid empty sqlite database
        conn = connect(tmp, readonly=False)
        # A private temporary file, fsynced and renamed by atomic_path: no journal needed.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        try:
            with conn:
                create_schema(conn)
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in sorted(meta.items())])
                for table, sql in _INSERTS.items():
                    conn.executemany(sql, tables.get(table, ()))
        finally:
            conn.close()


def array_path(arrays_dir: Path, name: str) -> Path:
    return arrays_dir / f"{name}.npy"


def save_arrays(arrays_dir: Path, arrays: Mapping[str, np.ndarray]) -> None:
    arrays_dir.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        with atomic_path(array_path(arrays_dir, name)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array)
