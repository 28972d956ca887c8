"""The embedding store (clip-retrieval layout) and the pipeline that fills it."""
from clipatlas.store.core import METADATA_SCHEMA, Store, StoreError, StoreWriter, store_dir_of, write_store

__all__ = ["METADATA_SCHEMA", "Store", "StoreError", "StoreWriter", "store_dir_of", "write_store"]
