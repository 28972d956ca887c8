"""Who may reach the server, who may compute or upload, and how big a request may be.

The server binds 127.0.0.1 by default. On any other address a token is required for every
endpoint that computes or uploads: the printed URL carries it once as `?token=`, the server
answers with an HttpOnly cookie, and the page's scripts send that cookie back. Requests that
come from another origin (a web page trying to drive a local server) are refused outright.

Every request's Host must be one the server answers to (`HostAllowList`): a DNS-rebinding page
(attacker.example resolving to 127.0.0.1) sends its own name as Host and its own origin, which
agree with each other, so comparing Origin with Host alone would let it through.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import HTTPException, Request
from PIL import Image

from clipatlas.sources import ImageDecodeError, decode_image
from clipatlas.web.config import UploadLimits

TOKEN_HEADER = "x-clipatlas-token"
TOKEN_COOKIE = "clipatlas_token"
TOKEN_QUERY = "token"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def presented_token(request: Request) -> str | None:
    return (
        request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or request.query_params.get(TOKEN_QUERY)
    )


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8000` -> `::1`, `Example.org:80` -> `example.org`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostAllowList:
    """The Host names the server answers to: loopback names, the address it listens on and `--allow-host`.

    Bound to every address (0.0.0.0), it also answers to this machine's names and to any literal
    address: DNS rebinding needs a name of the attacker's, never an address.
    """

    names: frozenset[str]
    any_address: bool = False

    @classmethod
    def serving(cls, bound: str = "127.0.0.1", extra: Iterable[str] = ()) -> HostAllowList:
        names = {*LOOPBACK_NAMES, *(host_name(name) for name in extra)}
        wildcard = bound in WILDCARD_ADDRESSES
        if wildcard:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        else:
            names.add(host_name(bound))
        return cls(frozenset(names), any_address=wildcard)

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        name = host_name(host_header)
        return name in self.names or (self.any_address and _is_address(name))


def _same_origin(request: Request) -> bool:
    """Origin (when sent) is this server as the browser reached it, scheme included; the Host itself
    has already been checked against the allow-list by the request guard."""
    origin = request.headers.get("origin")
    if origin is None:  # not sent by browsers for same-origin GETs, nor by curl
        return True
    return origin.lower() == f"{request.url.scheme}://{request.headers.get('host', '')}".lower()


def check_compute_allowed(request: Request, token: str | None) -> None:
    """Raise 403 unless this request may run a computation or upload a file."""
    if not _same_origin(request):
        raise HTTPException(403, "cross-origin requests may not compute or upload; open the app's own page")
    if token is None:
        client = request.client.host if request.client else None
        if not is_loopback(client):
            raise HTTPException(
                403,
                "this server has no token, so it computes only for loopback clients; "
                "restart it with `clipatlas serve --host ADDRESS` to get a token URL",
            )
        return
    given = presented_token(request)
    if not given or not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "a token is required: open the URL `clipatlas serve` printed (it ends in ?token=...)")


# Multipart framing and form fields around the file itself.
BODY_OVERHEAD = 64 * 1024
# A JSON request (a recipe of at most 1024 edits) is far smaller; nesting deeper than this is refused unparsed.
MAX_JSON_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes) -> int:
    """How deeply a JSON text nests arrays and objects, found without parsing it (strings skipped), so a
    body nested thousands deep is refused before a recursive parser sees it."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub(b"", raw)):
        depth += 1 if match.group() in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def oversized_body(request: Request, limits: UploadLimits) -> tuple[int, str] | None:
    """(status, reason) when a POST body is, or may be, larger than an upload may be.

    Checked before the body is read: the form parser would otherwise spool any size to disk.
    """
    if request.method != "POST":
        return None
    length = request.headers.get("content-length")
    if length is None:
        return 411, "send a Content-Length header (chunked uploads are not accepted)"
    if not length.isdigit():
        return 400, "the Content-Length header is not a number"
    if int(length) > limits.max_bytes + BODY_OVERHEAD:
        return 413, f"request body larger than {limits.max_bytes // (1024 * 1024)} MiB; send a smaller image"
    if is_json(request.headers.get("content-type")) and int(length) > MAX_JSON_BYTES:
        return 413, f"a JSON request body may have at most {MAX_JSON_BYTES // 1024} KiB"
    return None


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def read_upload_capped(upload, limits: UploadLimits) -> bytes:
    """Read an uploaded file, refusing (413) anything larger than `limits.max_bytes`."""
    chunks, total = [], 0
    while block := await upload.read(1 << 16):
        total += len(block)
        if total > limits.max_bytes:
            raise HTTPException(
                413, f"upload larger than {limits.max_bytes // (1024 * 1024)} MiB; send a smaller image"
            )
        chunks.append(block)
    if total == 0:
        raise HTTPException(400, "the uploaded file is empty; choose an image file")
    return b"".join(chunks)


def decode_upload(data: bytes, limits: UploadLimits) -> Image.Image:
    """Decode an upload as the embed pipeline decodes images (upright RGB, transparency on white),
    checking the pixel count before any pixel is decoded."""
    try:
        return decode_image(data, max_pixels=limits.max_pixels)
    except ImageDecodeError as exc:
        if exc.reason == "too many pixels":
            raise HTTPException(413, f"{exc}; the limit is {limits.max_pixels:,} pixels") from exc
        raise HTTPException(400, f"not a readable image ({exc}); upload a PNG, JPEG or WebP") from exc
