"""The class of each stored image, read from a store metadata column (`label` by default)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipatlas.errors import UserError
from clipatlas.store import LABEL_COLUMN, Store

NO_LABELS_HINT = (
    "probing, purity and zero-shot fidelity need labels: add them with "
    "`clipatlas embed SOURCE -w W --labels-from folder` (or a path,label CSV; nothing is re-embedded), "
    "or name a metadata column with --label-column"
)


@dataclass(frozen=True)
class Labels:
    """Classes of the store's rows: `codes[row]` indexes `classes`, -1 where a row has no label."""

    column: str
    classes: list[str]
    codes: np.ndarray  # (n_store,) int32

    @property
    def labelled(self) -> np.ndarray:
        return self.codes >= 0


def read_labels(store: Store, column: str | None = None) -> Labels | None:
    """The labels in `column` (default `label`); None when the store has none there."""
    names = store.metadata.column_names
    if column is not None and column not in names:
        raise UserError(f"the store has no metadata column {column!r}; it has: {', '.join(names)}")
    column = column or LABEL_COLUMN
    if column not in names:
        return None
    values = store.metadata.column(column)
    if values.null_count == len(values):
        return None
    text = pc.cast(values, pa.string()) if not pa.types.is_string(values.type) else values
    encoded = text.combine_chunks().dictionary_encode()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    return Labels(column, [str(c) for c in encoded.dictionary.to_pylist()], codes)
