"""Atomic, schema-versioned file writes shared by every stage, and the thread-safe .npy read.

Every file clipatlas writes goes to a temporary name in the same directory, is fsynced,
then renamed over the target: a killed process leaves either the old file or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clipatlas.errors import UserError

SCHEMA_VERSION = 1

# CPython 3.11.0-3.11.7 and 3.12.0-3.12.1 keep the AST builder's depth counter in interpreter-wide state:
# two threads building an AST at once can fail with "SystemError: AST constructor recursion depth
# mismatch" (python/cpython#106905). numpy parses every .npy header with ast.literal_eval, and the web
# server's threads open arrays lazily, so on those interpreters they take turns. Reentrant: a garbage
# collection inside one parse may run code that parses again on the same thread.
AST_BUILD_IS_SHARED = (3, 11) <= sys.version_info[:3] < (3, 11, 8) or (3, 12) <= sys.version_info[:3] < (3, 12, 2)
AST_LOCK = threading.RLock()


class SchemaError(UserError):
    """A file on disk was written by an incompatible version of clipatlas."""


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry itself reaches the disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` on success.

    The caller writes the temporary file however it likes (numpy, pyarrow, sqlite...).
    `durable=False` skips the fsyncs, for files a reader may find missing or empty after the machine
    crashed and then rebuilds (still whole or absent after a killed process: the rename is atomic).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        if durable:
            _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_path(target, durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(target: str | os.PathLike, obj: dict[str, Any], durable: bool = True) -> None:
    """Write `obj` as JSON with `schema_version` first."""
    payload = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in obj.items() if k != "schema_version"}}
    atomic_write_bytes(target, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode(), durable)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON file written by `atomic_write_json`, refusing newer schema versions."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path} is not valid JSON ({exc}); delete it and re-run the command that wrote it") from exc
    version = obj.get("schema_version")
    if version is None or version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has schema_version {version!r}; this clipatlas reads up to {SCHEMA_VERSION}. "
            "Upgrade clipatlas or rebuild the file."
        )
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_npy(path: str | os.PathLike, mmap_mode: str | None = "r") -> np.ndarray:
    """An .npy array (memory-mapped by default), safe to call from several threads at once."""
    with AST_LOCK if AST_BUILD_IS_SHARED else contextlib.nullcontext():
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
