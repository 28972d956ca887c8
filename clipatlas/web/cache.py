"""Rendered pages kept in memory, keyed by the atlas's version, with ETags and 304 answers.

A page (HTML, or the JSON of a GET that reads only the atlas) is a pure function of (atlas version,
URL): render it once, compress it once, then hand out the same bytes. A route renders and keeps a page
(`PageCache.respond`); later GETs of it are answered by `CachedPages` in front of the app, without
routing, dependencies or a thread. The routes whose first render is a few milliseconds (feature and image
pages and their JSON, search, thumbnails, the map and playground pages; also generation submissions) are
`async def`, so that work runs in the event loop too: it holds the GIL in a worker thread just the same, and
handing it to the thread pool and back cost about a tenth of the server's time under load, while requests
waiting in the pool queued behind the loop for the GIL (bench/RESULTS.md). Routes that count over the atlas
(the home page, the feature list, the summary), build the map's JSON, or serve uploads, icons and
generated images stay in the pool.
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
from starlette.datastructures import Headers

# Browsers may keep a page but must ask (If-None-Match) before showing it again.
CACHE_CONTROL = "no-cache"


GZIP_MIN_BYTES = 2048  # as the app's GZipMiddleware: smaller bodies are sent as they are


@dataclass(frozen=True)
class CachedPage:
    body: bytes
    content_type: str  # the Content-Type header the render sent ("text/html; charset=utf-8")
    etag: str
    gzipped: bytes | None = None  # the body compressed once, for clients that accept gzip
    cache_control: str = CACHE_CONTROL


def cached_page(version: str, body: bytes, content_type: str, cache_control: str = CACHE_CONTROL) -> CachedPage:
    text = content_type.startswith(("text/", "application/json"))  # images are compressed already
    gzipped = gzip.compress(body, compresslevel=6) if text and len(body) >= GZIP_MIN_BYTES else None
    return CachedPage(body, content_type, etag_of(version, body), gzipped, cache_control)


def page_key(scope) -> str:
    """What a page is cached under: its path and query, as the request sent them."""
    return f"{scope['path']}?{scope['query_string'].decode('latin-1')}"


def page_answer(page: CachedPage, request_headers: Headers) -> Response:
    """304 when the client holds `page`, else its bytes (gzipped when the client accepts it)."""
    headers = {"ETag": page.etag, "Cache-Control": page.cache_control, "Vary": "Accept-Encoding"}
    if etag_matches(request_headers.get("if-none-match"), page.etag):
        return Response(status_code=304, headers=headers)
    headers["Content-Type"] = page.content_type
    if page.gzipped is not None and "gzip" in request_headers.get("accept-encoding", ""):
        # compressed once when cached; the GZipMiddleware leaves a response with an encoding alone
        headers["Content-Encoding"] = "gzip"
        return Response(page.gzipped, headers=headers)
    return Response(page.body, headers=headers)


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

    def version_of(self, atlas) -> str:
        """The atlas's version now; pages of an older version are dropped (they will never be asked for again)."""
        version = atlas_version(atlas)
        with self._lock:
            if version != self._version:
                self._pages.clear()
                self._version = version
        return version

    def find(self, scope, atlas) -> CachedPage | None:
        """The page kept for this request's URL and the atlas as it is now, if any."""
        return self.get((self.version_of(atlas), page_key(scope)))

    def respond(
        self, request: Request, atlas, render: Callable[[], Response], cache_control: str = CACHE_CONTROL
    ) -> Response:
        """The page at `request`'s URL for the atlas as it is now: the cached bytes (or 304), else
        `render()`d and kept (only 200 answers are kept)."""
        version = self.version_of(atlas)
        key = (version, page_key(request.scope))
        page = self.get(key)
        if page is None:
            response = render()
            if response.status_code != 200:
                return response
            page = cached_page(version, bytes(response.body), response.headers["content-type"], cache_control)
            self.put(key, page)
        return page_answer(page, request.headers)


class CachedPages:
    """Plain ASGI in front of the app: a GET of a page the cache holds for the current atlas version is
    answered here (bytes or 304), skipping routing, dependency injection, validation and the thread
    pool, which cost more than the answer itself. Everything else, and any miss, goes to the app.
    Sits inside the request guard and the response headers, so every answer still meets both."""

    def __init__(self, app, cache: PageCache, atlas):
        self.app, self.cache, self.atlas = app, cache, atlas

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            try:
                page = self.cache.find(scope, self.atlas)
            except OSError:  # the database is gone: the app answers that (503, named)
                page = None
            if page is not None:
                return await page_answer(page, Headers(scope=scope))(scope, receive, send)
        await self.app(scope, receive, send)


async def page_cache_of(request: Request) -> PageCache:  # async: a plain def dependency costs a thread-pool hop
    return request.app.state.page_cache


Cache = Annotated[PageCache, Depends(page_cache_of)]
