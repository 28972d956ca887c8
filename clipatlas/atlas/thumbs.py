"""~128 px webp thumbnails of the images shown on feature pages (kept across rebuilds)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from clipatlas._io import atomic_path
from clipatlas.atlas.db import THUMBS_DIR
from clipatlas.errors import UserError

log = logging.getLogger(__name__)

THUMB_SIZE = 128
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def thumb_name(image_id: str) -> str:
    """A file name for the image id: the id itself when filesystem-safe, else its sha256."""
    stem = (
        image_id
        if _SAFE_ID.match(image_id) and not image_id.startswith(".")
        else hashlib.sha256(image_id.encode()).hexdigest()
    )
    return f"{THUMBS_DIR}/{stem}.webp"


def thumbnail_image(image: Image.Image, size: int = THUMB_SIZE) -> Image.Image:
    """RGB, the longer side at most `size`; a small image (28 px Fashion-MNIST) is enlarged by a whole
    factor with nearest-neighbour pixels, so it is seen instead of a speck, and stays sharp."""
    image = image.convert("RGB")
    factor = size // max(image.size)
    if factor >= 2:
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    image.thumbnail((size, size))
    return image


def make_thumbnails(store, images: list[tuple[int, str]], atlas_dir: Path) -> dict[str, str]:
    """Write missing thumbnails of (row, image_id) pairs; returns image_id -> path relative to `atlas_dir`.

    Images that cannot be reopened (synthetic stores, moved files) get no thumbnail.
    """
    made: dict[str, str] = {}
    failures = 0
    for row, image_id in tqdm(images, desc="thumbnails", unit="img", disable=len(images) < 50):
        name = thumb_name(image_id)
        target = atlas_dir / name
        if not target.is_file():
            try:
                image = store.open_image(row)
            except (UserError, OSError, ValueError, ImportError) as exc:
                failures += 1
                log.debug("no thumbnail for %s: %s", image_id, exc)
                continue
            with atomic_path(target) as tmp:
                thumbnail_image(image).save(tmp, format="WEBP", quality=80, method=4)
        made[image_id] = name
    if failures:
        log.info("%d of %d example images could not be reopened; they have no thumbnail", failures, len(images))
    return made
