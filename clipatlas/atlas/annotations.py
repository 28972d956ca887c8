"""What later stages add to a built atlas: feature icons (steer), labels and their scores (interp).

All survive a rebuild of the atlas for the same SAE weights (`build._kept_rows`). The reader,
`Atlas`, is told to forget what it cached (`Atlas.refresh`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from clipatlas.atlas.db import connect
from clipatlas.atlas.query import Atlas
from clipatlas.atlas.types import AtlasError, Label, Score

# One writer at a time per process: SQLite would serialise them anyway, but with retries.
_WRITE_LOCK = threading.Lock()


@contextlib.contextmanager
def _writing(atlas: Atlas) -> Iterator[sqlite3.Connection]:
    """One transaction on the atlas database; the reader forgets its caches afterwards."""
    with _WRITE_LOCK:
        conn = connect(atlas.db_path, readonly=False)
        try:
            with conn:
                yield conn
        finally:
            conn.close()
    atlas.refresh()


def set_icon(atlas: Atlas, feature: int, path: str | Path) -> None:
    """Record a feature's icon; a path inside the SAE folder is stored relative to it."""
    feature = atlas.check_feature(feature)
    path = Path(path).resolve()
    sae_dir = atlas.files.dir.resolve()
    stored = path.relative_to(sae_dir) if path.is_relative_to(sae_dir) else path
    with _writing(atlas) as conn:
        conn.execute("INSERT OR REPLACE INTO icons VALUES (?, ?)", (feature, str(stored)))


def add_labels(atlas: Atlas, labels: Iterable[Label]) -> list[int]:
    """Store labels; one from the same labeller, model and prompt version replaces the feature's
    previous one, and the old label's scores go with it (they judged another text). Returns their ids."""
    rows = []
    for label in labels:
        if not label.source or not label.text:
            raise AtlasError("a label needs a non-empty source and text")
        key = (atlas.check_feature(label.feature), label.source, label.model, label.prompt_version)
        rows.append((*key, label.text, label.description, json.dumps(label.evidence, sort_keys=True)))
    with _writing(atlas) as conn:
        for row in rows:
            conn.execute(
                "DELETE FROM scores WHERE label_id IN (SELECT id FROM labels "
                "WHERE feature = ? AND source = ? AND model = ? AND prompt_version = ?)",
                row[:4],
            )
            conn.execute(
                "DELETE FROM labels WHERE feature = ? AND source = ? AND model = ? AND prompt_version = ?", row[:4]
            )
        ids = [
            conn.execute(
                "INSERT INTO labels (feature, source, model, prompt_version, text, description, evidence) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            ).lastrowid
            for row in rows
        ]
    return ids


def add_scores(atlas: Atlas, scores: Iterable[Score]) -> int:
    """Store scores, replacing an earlier one of the same label (or feature), scorer and judge."""
    rows = [
        (
            atlas.check_feature(s.feature),
            s.label_id,
            s.scorer,
            s.judge,
            s.judge_model,
            s.metric,
            float(s.value),
            float(s.baseline),
            int(s.n),
            int(bool(s.beats_baseline)),
            None if s.validation is None else float(s.validation),
            json.dumps(s.details, sort_keys=True),
        )
        for s in scores
    ]
    with _writing(atlas) as conn:
        conn.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return len(rows)
