"""The embedding store (clip-retrieval layout) and the pipeline that fills it."""

from clipatlas.store.config import EmbedConfig
from clipatlas.store.core import (
    LABEL_COLUMN,
    METADATA_SCHEMA,
    Store,
    StoreError,
    StoreWriter,
    store_dir_of,
    write_store,
)

__all__ = [
    "LABEL_COLUMN",
    "METADATA_SCHEMA",
    "EmbedConfig",
    "Store",
    "StoreError",
    "StoreWriter",
    "store_dir_of",
    "write_store",
]


def __getattr__(name: str):
    # The pipeline pulls in torch and the encoders; readers of a store should not pay for that.
    if name in ("embed", "EmbedSummary"):
        from clipatlas.store import pipeline as module

        return getattr(module, name)
    raise AttributeError(name)
