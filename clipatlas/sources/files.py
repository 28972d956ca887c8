"""Images on disk: folders (recursive), WebDataset tar shards (read in place) and path lists."""

from __future__ import annotations

import functools
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from clipatlas.errors import UserError
from clipatlas.sources.items import SourceItem, make_image_id

# Files beside an image that carry its caption or class; they are never inputs themselves.
CAPTION_SUFFIXES = (".txt", ".caption")
LABEL_SUFFIX = ".cls"  # the WebDataset convention: the class, as text
SIDECAR_SUFFIXES = CAPTION_SUFFIXES + (".json", LABEL_SUFFIX, ".npy", ".parquet")
TAR_SCHEME = "tar://"
LIST_PATH_COLUMNS = ("path", "uri", "image_path", "file", "filename", "url")
LIST_CAPTION_COLUMNS = ("caption", "text", "title")
LIST_LABEL_COLUMNS = ("label", "class", "cls")


def read_caption(path: Path) -> str | None:
    """The first non-empty line of a caption file (later lines are often translations)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return next((line.strip() for line in text.splitlines() if line.strip()), None)


def caption_beside(path: Path) -> str | None:
    for suffix in CAPTION_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return read_caption(candidate)
    return None


def label_beside(path: Path) -> str | None:
    """The class in a `name.cls` beside `name.jpg` (its first non-empty line)."""
    candidate = path.with_suffix(LABEL_SUFFIX)
    return read_caption(candidate) if candidate.is_file() else None


# -- folders -----------------------------------------------------------------------------------
def iter_folder(root: Path, spec: str) -> Iterator[SourceItem]:
    """Every file under `root` in sorted order, except hidden files and caption sidecars.

    Whether a file is an image is decided by its content when it is decoded; a non-image is
    skipped there with the reason "not an image", so nothing is silently left out.
    """
    for path in _walk_sorted(root):
        if path.suffix.lower() in SIDECAR_SUFFIXES:
            continue
        key = path.relative_to(root).as_posix()
        yield SourceItem(make_image_id(root.name, key), str(path), spec, caption_beside(path), label_beside(path))


def _walk_sorted(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                path = Path(dirpath) / name
                if path.is_file():
                    yield path


# -- WebDataset tar shards -----------------------------------------------------------------------
TAR_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "jp2")


@functools.lru_cache(maxsize=64)
def tar_index(path: str) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size), from the headers alone: the shard is never extracted."""
    if not tarfile.is_tarfile(path):
        raise UserError(f"{path} is not a tar file")
    try:
        with tarfile.open(path, mode="r:") as archive:
            return {m.name: (m.offset_data, m.size) for m in archive if m.isfile()}
    except tarfile.ReadError as exc:
        raise UserError(
            f"cannot read {path} as an uncompressed tar ({exc}); WebDataset shards must be "
            "plain .tar files: decompress .tar.gz shards first"
        ) from exc


def read_tar_member(path: str, member: str) -> bytes:
    try:
        offset, size = tar_index(path)[member]
    except KeyError:
        raise FileNotFoundError(f"{member} is not in {path}") from None
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def _sample_key(member: str) -> tuple[str, str]:
    """WebDataset convention: the key is everything before the first dot of the file name."""
    folder, _, name = member.rpartition("/")
    stem, _, suffix = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def iter_tar(path: Path, spec: str) -> Iterator[SourceItem]:
    """One item per WebDataset sample that has an image member, in shard order."""
    index = tar_index(str(path))
    samples: dict[str, dict[str, str]] = {}
    for member in index:  # dicts keep the shard's order
        key, suffix = _sample_key(member)
        samples.setdefault(key, {})[suffix] = member
    for key, members in samples.items():
        image_member = next((members[s] for s in TAR_IMAGE_SUFFIXES if s in members), None)
        if image_member is None:
            continue
        caption = _tar_caption(str(path), members)
        label = _tar_text(str(path), members["cls"]) if "cls" in members else None
        yield SourceItem(make_image_id(path.stem, key), f"{TAR_SCHEME}{path}#{image_member}", spec, caption, label)


def _tar_text(path: str, member: str) -> str | None:
    """The first line of a text member, stripped."""
    text = read_tar_member(path, member).decode("utf-8", errors="replace").strip()
    return text.splitlines()[0].strip() if text else None


def _tar_caption(path: str, members: dict[str, str]) -> str | None:
    for suffix in ("txt", "caption"):
        if suffix in members:
            return _tar_text(path, members[suffix])
    if "json" in members:
        try:
            value = json.loads(read_tar_member(path, members["json"]))
        except ValueError:
            return None
        caption = value.get("caption") if isinstance(value, dict) else None
        return str(caption) if caption else None
    return None


def split_tar_uri(uri: str) -> tuple[str, str]:
    path, _, member = uri[len(TAR_SCHEME) :].rpartition("#")
    return path, member


# -- lists of paths --------------------------------------------------------------------------------
def iter_list(list_path: Path, spec: str) -> Iterator[SourceItem]:
    """A .txt (one path per line, # comments) or .parquet (a path column, optional caption and
    label columns) list.

    Relative paths are relative to the list's folder, so a list travels with its images.
    """
    if list_path.suffix.lower() == ".parquet":
        rows = _parquet_rows(list_path)
    else:
        lines = list_path.read_text(encoding="utf-8").splitlines()
        rows = ((line.strip(), None, None) for line in lines if line.strip() and not line.lstrip().startswith("#"))
    for position, (entry, caption, label) in enumerate(rows):
        key = f"{position}:{entry}"
        if "://" in entry:  # remote: kept as is, reported as skipped when read
            yield SourceItem(make_image_id(list_path.stem, key), entry, spec, caption, label)
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = list_path.parent / path
        yield SourceItem(
            make_image_id(list_path.stem, key),
            str(path),
            spec,
            caption or caption_beside(path),
            label or label_beside(path),
        )


def _parquet_rows(list_path: Path) -> Iterator[tuple[str, str | None, str | None]]:
    table = pq.read_table(list_path)
    path_column = next((c for c in LIST_PATH_COLUMNS if c in table.column_names), None)
    if path_column is None:
        raise UserError(
            f"{list_path} has no path column; name one of {', '.join(LIST_PATH_COLUMNS)} "
            f"(it has {', '.join(table.column_names)})"
        )
    paths = table.column(path_column).to_pylist()
    captions, labels = (
        _optional_column(table, names, len(paths)) for names in (LIST_CAPTION_COLUMNS, LIST_LABEL_COLUMNS)
    )
    return ((str(p), c, None if b is None else str(b)) for p, c, b in zip(paths, captions, labels) if p)


def _optional_column(table, names: tuple[str, ...], n: int) -> list:
    """The first of `names` that `table` has, as a list; all None when it has none."""
    name = next((c for c in names if c in table.column_names), None)
    return table.column(name).to_pylist() if name else [None] * n
