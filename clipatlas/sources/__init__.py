"""Image sources: folders, WebDataset tar shards, path lists and the built-in demo sets.

`iter_items(specs)` lists inputs cheaply and in a deterministic order (a resumed run relies on
it); `read_image(uri)` does the expensive part (read + decode) and runs in DataLoader workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image

from clipatlas.errors import UserError
from clipatlas.sources.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, to_rgb
from clipatlas.sources.demo import EMOJI_SCHEME, available_demo_sets, emoji_png_bytes, iter_demo
from clipatlas.sources.files import TAR_SCHEME, iter_folder, iter_list, iter_tar, read_tar_member, split_tar_uri
from clipatlas.sources.items import SourceItem, make_image_id
from clipatlas.sources.labels import with_labels

DEMO_PREFIX = "demo:"
LIST_SUFFIXES = (".txt", ".parquet")

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "ImageDecodeError",
    "SourceItem",
    "available_demo_sets",
    "decode_image",
    "iter_items",
    "make_image_id",
    "open_uri",
    "read_image",
    "read_uri_bytes",
    "to_rgb",
    "with_labels",
]


def iter_source(spec: str) -> Iterator[SourceItem]:
    """The items of one SOURCE argument, in a deterministic order."""
    if spec.startswith(DEMO_PREFIX):
        return iter_demo(spec[len(DEMO_PREFIX) :], spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return iter_folder(path.resolve(), spec)
    if path.is_file() and path.suffix.lower() == ".tar":
        return iter_tar(path.resolve(), spec)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return iter_list(path.resolve(), spec)
    if path.is_file():
        raise UserError(
            f"{spec} is a single file; give a folder of images, a WebDataset .tar shard, "
            "a .txt/.parquet list of paths, or demo:samples|tuxpaint|emoji"
        )
    raise UserError(
        f"source {spec!r} does not exist; give a folder, a .tar shard, a .txt/.parquet list, "
        "or one of demo:samples, demo:tuxpaint, demo:emoji"
    )


def iter_items(specs: Sequence[str], limit: int | None = None) -> Iterator[SourceItem]:
    """Items of every source in order, at most `limit` of them."""
    count = 0
    for spec in specs:
        for item in iter_source(spec):
            if limit is not None and count >= limit:
                return
            yield item
            count += 1


def read_uri_bytes(uri: str) -> bytes:
    """The encoded bytes behind a URI; `ImageDecodeError` when they cannot be read."""
    if "://" in uri and not uri.startswith(TAR_SCHEME):
        raise ImageDecodeError("remote URL not fetched", f"{uri}: download the images and list local paths")
    try:
        if uri.startswith(TAR_SCHEME):
            return read_tar_member(*split_tar_uri(uri))
        if uri.startswith(EMOJI_SCHEME):
            return emoji_png_bytes(uri)
        return Path(uri).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("file not found", uri) from None
    except IsADirectoryError:
        raise ImageDecodeError("not a file", uri) from None
    except OSError as exc:
        raise ImageDecodeError("unreadable file", f"{uri}: {exc}") from None


class DecodedImage:
    """An RGB image with the digest of the bytes it came from."""

    __slots__ = ("image", "sha256")

    def __init__(self, image: Image.Image, sha256: str):
        self.image, self.sha256 = image, sha256


def read_image(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    data = read_uri_bytes(uri)
    return DecodedImage(decode_image(data, max_pixels), hashlib.sha256(data).hexdigest())


def open_uri(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The RGB image at `uri` (a path, `tar://SHARD#MEMBER` or `emoji:HEX`)."""
    return read_image(uri, max_pixels).image
