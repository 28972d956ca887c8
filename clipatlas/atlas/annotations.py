"""What later stages add to a built atlas: feature icons (steer) and labels (labellers).

Both survive a rebuild of the atlas for the same SAE weights (`build._kept_rows`). The reader,
`Atlas`, is told to forget what it cached (`Atlas.refresh`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path

from clipatlas.atlas.db import connect
from clipatlas.atlas.query import Atlas
from clipatlas.atlas.types import AtlasError, Label

# One writer at a time per process: SQLite would serialise them anyway, but with retries.
_WRITE_LOCK = threading.Lock()


def _execute_many(atlas: Atlas, sql: str, rows: list[tuple]) -> None:
    with _WRITE_LOCK:
        conn = connect(atlas.db_path, readonly=False)
        try:
            with conn:
                conn.executemany(sql, rows)
        finally:
            conn.close()
    atlas.refresh()


def set_icon(atlas: Atlas, feature: int, path: str | Path) -> None:
    """Record a feature's icon; a path inside the SAE folder is stored relative to it."""
    feature = atlas.check_feature(feature)
    path = Path(path).resolve()
    sae_dir = atlas.files.dir.resolve()
    stored = path.relative_to(sae_dir) if path.is_relative_to(sae_dir) else path
    _execute_many(atlas, "INSERT OR REPLACE INTO icons VALUES (?, ?)", [(feature, str(stored))])


def add_labels(atlas: Atlas, labels: Iterable[Label]) -> int:
    """Add label rows (lens labels are rebuilt with the atlas, all others kept); returns how many."""
    rows = []
    for label in labels:
        if not label.source or not label.text:
            raise AtlasError("a label needs a non-empty source and text")
        rows.append((atlas.check_feature(label.feature), label.source, label.text, json.dumps(label.score)))
    _execute_many(atlas, "INSERT INTO labels (feature, source, text, score) VALUES (?, ?, ?, ?)", rows)
    return len(rows)
