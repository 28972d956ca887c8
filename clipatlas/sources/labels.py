"""`clipatlas embed --labels-from`: give every listed image a class label.

* `folder`: the name of the folder that holds the image (ImageFolder style: `train/cat/1.jpg` is
  `cat`; a WebDataset member `cat/1.jpg` is `cat`); images with no folder keep the label their
  source gave them.
* a CSV file with a header and the columns `path,label`: a path relative to the CSV's folder, an
  absolute path, or an item's URI exactly as stored (`tar://SHARD#MEMBER`, `emoji:HEX`).

These labels replace any the source carries itself (`.cls`, a list's label column, a demo category).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path, PurePosixPath

from clipatlas.errors import UserError
from clipatlas.sources.files import TAR_SCHEME, split_tar_uri
from clipatlas.sources.items import SourceItem

FOLDER = "folder"
CSV_COLUMNS = ("path", "label")


def folder_label(uri: str) -> str | None:
    """The name of the folder holding the image at `uri`, if it has one."""
    if uri.startswith(TAR_SCHEME):
        parent = PurePosixPath(split_tar_uri(uri)[1]).parent.name
    elif ":" in uri.split("/", 1)[0]:  # emoji:HEX, remote URLs: no folder
        return None
    else:
        parent = Path(uri).parent.name
    return parent or None


def read_label_csv(path: Path) -> dict[str, str]:
    """{absolute path or URI: label} from a `path,label` CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not set(CSV_COLUMNS) <= {f.strip() for f in reader.fieldnames}:
                raise UserError(
                    f"{path} needs a header with the columns path,label (it has: {', '.join(reader.fieldnames or [])})"
                )
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except OSError as exc:
        raise UserError(f"cannot read the labels file {path} ({exc})") from exc
    labels = {}
    for row in rows:
        if row["path"] and row["label"]:
            labels[_key(row["path"], path.parent)] = row["label"]
    return labels


def _key(entry: str, base: Path) -> str:
    if "://" in entry or ":" in entry.split("/", 1)[0]:
        return entry
    candidate = Path(entry).expanduser()
    return str(candidate if candidate.is_absolute() else (base / candidate).resolve())


def with_labels(items: list[SourceItem], labels_from: str | None) -> list[SourceItem]:
    """`items` with the labels `labels_from` gives them (`folder` or a CSV path); unchanged for None."""
    if labels_from is None:
        return items
    if labels_from == FOLDER:
        return [_relabel(item, folder_label(item.uri)) for item in items]
    path = Path(labels_from).expanduser()
    if not path.is_file():
        raise UserError(f"--labels-from takes 'folder' or a CSV file with path,label columns; {labels_from} is neither")
    labels = read_label_csv(path)
    found = [labels.get(item.uri) or labels.get(_key(item.uri, path.parent)) for item in items]
    if labels and items and not any(found):
        raise UserError(
            f"no image of the sources is named in {path}; its path column must hold the images' paths "
            "(absolute or relative to the CSV's folder)"
        )
    return [_relabel(item, label) for item, label in zip(items, found)]


def _relabel(item: SourceItem, label: str | None) -> SourceItem:
    return dataclasses.replace(item, label=label) if label else item
