"""What every source yields: a `SourceItem`, a lightweight reference that a worker can read."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_NOT_ID_CHARS = re.compile(r"[^a-z0-9]+")
_ID_SLUG_CHARS = 48


@dataclass(frozen=True)
class SourceItem:
    """One input image, not yet read.

    `image_id` is stable (derived from where the image sits inside its source, not from the
    machine it is on) and URL-safe; `uri` is what `open_uri` and the workers read. `label` is
    the image's class where the source gives one (a WebDataset `.cls`, a list's `label` column,
    a demo set's category, or `clipatlas embed --labels-from`); the store keeps it for evaluation.
    """

    image_id: str
    uri: str
    source: str
    caption: str | None = None
    label: str | None = None


def make_image_id(source_name: str, key: str) -> str:
    """A readable, URL-safe id: a slug of `source_name/key` plus a short hash for uniqueness."""
    text = f"{source_name}/{key}"
    slug = _NOT_ID_CHARS.sub("-", text.lower()).strip("-")[-_ID_SLUG_CHARS:].strip("-")
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest
