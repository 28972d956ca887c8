"""The atlas.sqlite schema: one row per feature plus one table per relation.

Large dense arrays (the activation histograms, every image's sparse code) live beside the
database as `.npy` files in a directory named by the build (`arrays-<build id>/`), which the
`meta` table points to; replacing the database file therefore switches every array at once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

ATLAS_SCHEMA_VERSION = 1
DB_NAME = "atlas.sqlite"

SCHEMA = """
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
CREATE TABLE labels (
    id INTEGER PRIMARY KEY,
    feature INTEGER NOT NULL,
    source TEXT NOT NULL,        -- 'imagenet', 'clip-text', 'captions', or a labeller's name
    text TEXT NOT NULL,
    score TEXT NOT NULL          -- JSON object: the evidence and any verification scores
);
CREATE INDEX labels_by_feature ON labels (feature);
CREATE TABLE icons (feature INTEGER PRIMARY KEY, path TEXT NOT NULL);
CREATE TABLE thumbnails (image_id TEXT PRIMARY KEY, path TEXT NOT NULL);
"""


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
