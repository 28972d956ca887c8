"""Rendered pages kept in memory, keyed by the atlas's version, with ETags and 304 answers.

A page (HTML, or the JSON of a GET that reads only the atlas) is a pure function of (atlas version,
URL): render it once, compress it once, then hand out the same bytes.
The version is the atlas's build id and the identity of its database file (inode, size, mtime), so
a rebuilt atlas (another build id, a new file) and labels, icons or scores added while serving (a
write to the file) both make every cached page miss. A browser holding an old ETag is never told
304 for a changed page: the ETag names the version and hashes the body.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response

# Browsers may keep a page but must ask (If-None-Match) before showing it again.
CACHE_CONTROL = "no-cache"


GZIP_MIN_BYTES = 2048  # as the app's GZipMiddleware: smaller bodies are sent as they are


@dataclass(frozen=True)
class CachedPage:
    body: bytes
    media_type: str
    etag: str
    gzipped: bytes | None = None  # the body compressed once, for clients that accept gzip


def cached_page(version: str, body: bytes, media_type: str) -> CachedPage:
    text = media_type.startswith("text/") or media_type == "application/json"  # images are compressed already
    gzipped = gzip.compress(body, compresslevel=6) if text and len(body) >= GZIP_MIN_BYTES else None
    return CachedPage(body, media_type, etag_of(version, body), gzipped)


def atlas_version(atlas) -> str:
    """Changes when the atlas is rebuilt or annotated (one stat call: cheap enough for every request)."""
    stat = atlas.db_path.stat()
    return f"{atlas.build_id}:{stat.st_ino:x}:{stat.st_size:x}:{stat.st_mtime_ns:x}"


def etag_of(version: str, body: bytes) -> str:
    """A strong validator: a hash of the atlas version and of the bytes."""
    digest = hashlib.blake2b(version.encode(), digest_size=12)
    digest.update(body)
    return f'"{digest.hexdigest()}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: a list of (weak or strong) validators, or `*`."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


class PageCache:
    """Least-recently-used pages, at most `max_pages`; thread-safe (routes run in a thread pool)."""

    def __init__(self, max_pages: int = 4096):
        self.max_pages = max_pages
        self._pages: OrderedDict[tuple[str, str], CachedPage] = OrderedDict()
        self._lock = threading.Lock()
        self._version = ""

    def __len__(self) -> int:
        return len(self._pages)

    def get(self, key: tuple[str, str]) -> CachedPage | None:
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page

    def put(self, key: tuple[str, str], page: CachedPage) -> None:
        with self._lock:
            self._pages[key] = page
            self._pages.move_to_end(key)
            while len(self._pages) > self.max_pages:
                self._pages.popitem(last=False)

    def respond(
        self, request: Request, atlas, render: Callable[[], Response], cache_control: str = CACHE_CONTROL
    ) -> Response:
        """The page at `request`'s URL for the atlas as it is now: 304 when the client holds it, else
        the cached bytes, else `render()`d and kept (only 200 answers are kept)."""
        version = atlas_version(atlas)
        with self._lock:
            if version != self._version:  # pages of an older atlas will never be asked for again
                self._pages.clear()
                self._version = version
        key = (version, f"{request.url.path}?{request.url.query}")
        page = self.get(key)
        if page is None:
            response = render()
            if response.status_code != 200:
                return response
            page = cached_page(version, bytes(response.body), response.media_type)
            self.put(key, page)
        headers = {"ETag": page.etag, "Cache-Control": cache_control, "Vary": "Accept-Encoding"}
        if etag_matches(request.headers.get("if-none-match"), page.etag):
            return Response(status_code=304, headers=headers)
        if page.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
            # compressed once when cached; the GZipMiddleware leaves a response with an encoding alone
            headers["Content-Encoding"] = "gzip"
            return Response(page.gzipped, media_type=page.media_type, headers=headers)
        return Response(page.body, media_type=page.media_type, headers=headers)


def page_cache_of(request: Request) -> PageCache:
    return request.app.state.page_cache


Cache = Annotated[PageCache, Depends(page_cache_of)]
