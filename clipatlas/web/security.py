"""Who may compute or upload, and how big an upload may be.

The server binds 127.0.0.1 by default. On any other address a token is required for every
endpoint that computes or uploads: the printed URL carries it once as `?token=`, the server
answers with an HttpOnly cookie, and the page's scripts send that cookie back. Requests that
come from another origin (a web page trying to drive a local server) are refused outright.
"""

from __future__ import annotations

import ipaddress
import secrets

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


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not sent by browsers for same-origin GETs, nor by curl
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


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
    return None


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
