"""Is a workspace whole? One line naming the first broken file and the command that rebuilds it.

Commands that read a store, an SAE or an atlas run `check_workspace` before they start (the CLI
asks for the parts each command reads), `clipatlas serve` before it listens, `clipatlas info
--verify` with every shard re-hashed and the atlas database checked page by page, and the web app
when a request meets a file it cannot read (it answers 503 with the line). The checks read file
headers only (the manifest, `.npy` headers, parquet footers, the atlas's meta table), so they take
milliseconds at any size. It lives in the atlas stage because the atlas is the last stage it reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from clipatlas._io import open_npy, read_json
from clipatlas.atlas.db import CODE_ARRAYS, HIST_ARRAY, array_path, connect
from clipatlas.errors import UserError
from clipatlas.store.core import MANIFEST, shard_files, store_dir_of
from clipatlas.workspace import SAEFiles, Workspace

PARTS = ("store", "sae", "atlas")


class BrokenWorkspace(UserError):
    """A workspace file is missing or unreadable: the server's problem, not the request's (503 on the web)."""

    def __init__(self, path: Path, problem: str, command: str, fix: str = "rebuild it"):
        super().__init__(f"{path} {problem}; {fix} with: {command}")
        self.path = path


def check_workspace(
    workspace: str | Path | Workspace, name: str | None = None, parts: Iterable[str] = PARTS, verify: bool = False
) -> None:
    """Raise `BrokenWorkspace` for the first missing or unreadable file of `parts` (store, sae, atlas) of
    SAE `name`; `verify` also re-hashes the store's shards and checks every page of the atlas database."""
    ws, parts = Workspace.of(workspace), set(parts)
    if "store" in parts:
        check_store(ws, verify)
    if name is None and len(ws.sae_names()) > 1:
        return  # which SAE is read is decided later (a recipe may name it); the command asks when it cannot tell
    if parts & {"sae", "atlas"}:
        files = ws.sae(name)
        check_sae(ws, files)
        if "atlas" in parts:
            check_atlas(ws, files, verify)


def _embed_command(ws: Workspace, manifest: dict | None) -> str:
    sources = " ".join((manifest or {}).get("sources", [])) or "SOURCE"
    return f"clipatlas embed {sources} -w {ws.root} (into a new workspace, or after deleting {ws.store_dir})"


def check_store(ws: Workspace, verify: bool = False) -> None:
    store_dir = store_dir_of(ws.root)
    manifest_path = store_dir / MANIFEST
    if not manifest_path.is_file():
        raise BrokenWorkspace(ws.root, "has no embedding store", f"clipatlas embed SOURCE -w {ws.root}", "make one")
    try:
        manifest = read_json(manifest_path)
        shards, d = list(manifest["shards"]), int(manifest["d"])
    except (UserError, KeyError, TypeError, ValueError) as exc:
        reason = exc.__cause__ or exc  # read_json's own message names the file again
        raise BrokenWorkspace(manifest_path, f"is not a store manifest ({reason})", _embed_command(ws, None)) from exc
    rebuild = _embed_command(ws, manifest)
    for shard in shards:
        emb_path, meta_path = shard_files(store_dir, shard)
        shape = (shard["count"], d)
        _check_npy(emb_path, shape, rebuild)
        try:
            rows = pq.ParquetFile(meta_path).metadata.num_rows
        except (OSError, ValueError) as exc:  # pyarrow's errors are OSError (missing) and ArrowInvalid (ValueError)
            raise BrokenWorkspace(meta_path, _unreadable(meta_path, exc), rebuild) from exc
        if rows != shard["count"]:
            raise BrokenWorkspace(meta_path, f"has {rows} rows, the manifest says {shard['count']}", rebuild)
    if verify:
        from clipatlas._io import sha256_file

        for shard in shards:
            for path, key in zip(shard_files(store_dir, shard), ("emb_sha256", "meta_sha256"), strict=True):
                if sha256_file(path) != shard[key]:
                    raise BrokenWorkspace(path, "does not match its checksum in the manifest", rebuild)


def check_sae(ws: Workspace, files: SAEFiles) -> None:
    rebuild = f"clipatlas train -w {ws.root} --name {files.name}"
    try:
        read_json(files.config)
    except UserError as exc:
        raise BrokenWorkspace(files.config, f"is unreadable ({exc})", rebuild) from exc
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(files.weights), framework="numpy") as weights:
            weights.keys()
    except (SafetensorError, OSError) as exc:
        raise BrokenWorkspace(files.weights, _unreadable(files.weights, exc), rebuild) from exc


def check_atlas(ws: Workspace, files: SAEFiles, verify: bool = False) -> None:
    rebuild = f"clipatlas atlas -w {ws.root} --name {files.name}"
    if not files.atlas_db.is_file():
        raise BrokenWorkspace(files.dir, "has no atlas", rebuild, "build it")
    try:
        conn = connect(files.atlas_db, readonly=True)
        try:
            meta = {row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM meta")}
            if verify and (damage := conn.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                raise sqlite3.DatabaseError(damage)
        finally:
            conn.close()
        arrays_dir = files.atlas_dir / meta["arrays_dir"]
        n_features, n_images = int(meta["n_features"]), int(meta["n_images"])
    except (sqlite3.Error, KeyError, ValueError) as exc:
        raise BrokenWorkspace(files.atlas_db, f"is damaged ({exc})", rebuild) from exc
    if not arrays_dir.is_dir():
        raise BrokenWorkspace(arrays_dir, "is missing (the atlas's arrays)", rebuild)
    _check_npy(array_path(arrays_dir, HIST_ARRAY), (n_features, None), rebuild)
    _check_npy(array_path(arrays_dir, CODE_ARRAYS[0]), (n_images + 1,), rebuild)
    for name in CODE_ARRAYS[1:]:
        _check_npy(array_path(arrays_dir, name), (None,), rebuild)


def _check_npy(path: Path, shape: tuple[int | None, ...], rebuild: str) -> None:
    """An .npy file whose header reads and whose shape matches (None: any length on that axis)."""
    try:
        found = open_npy(path).shape
    except (OSError, ValueError) as exc:
        raise BrokenWorkspace(path, _unreadable(path, exc), rebuild) from exc
    if len(found) != len(shape) or any(want is not None and want != got for want, got in zip(shape, found)):
        raise BrokenWorkspace(path, f"has shape {found}, expected {shape}", rebuild)


def _unreadable(path: Path, exc: Exception) -> str:
    return "is missing" if not path.exists() else f"is unreadable ({exc})"


def diagnose(workspace: str | Path | Workspace, name: str | None, error: Exception) -> UserError:
    """What broke, for `error` raised while reading SAE `name`'s workspace: the broken file `check_workspace`
    names, else the error itself with the command that checks every file."""
    try:
        check_workspace(workspace, name)
    except BrokenWorkspace as found:
        return found
    ws = Workspace.of(workspace)
    if isinstance(error, sqlite3.DatabaseError):  # damage in a page the quick check does not read
        files = ws.sae(name)
        return BrokenWorkspace(
            files.atlas_db, f"is damaged ({error})", f"clipatlas atlas -w {ws.root} --name {files.name}"
        )
    if isinstance(error, UserError):
        return error
    return UserError(
        f"a workspace file could not be read ({error}); check them all with: clipatlas info -w {ws.root} --verify"
    )
