"""The request guard: the first thing every request meets (plain ASGI, so it sees the body as it arrives).

- The Host header must be one the server answers to (`security.HostAllowList`: DNS rebinding).
- A POST body must declare its length, within the upload limit (a JSON body: `security.MAX_JSON_BYTES`).
- The body is read here in full, each part within `body_timeout_s` (else 408: a client that stops
  sending cannot hold the server), and handed on in one piece. A client that disconnects mid-body
  is logged as one line and nothing below runs (no half-parsed upload, no traceback in the log).
- A JSON body nested deeper than `security.MAX_JSON_DEPTH` is refused before any parser sees it.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request
from fastapi.responses import JSONResponse

from clipatlas.web import security
from clipatlas.web.config import UploadLimits

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client closed the connection before its request body was complete."""


class RequestGuard:
    def __init__(self, app, *, hosts: security.HostAllowList, limits: UploadLimits, body_timeout_s: float):
        self.app = app
        self.hosts = hosts
        self.limits = limits
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        host = request.headers.get("host")
        if not self.hosts.allows(host):
            reason = (
                f"this server does not answer to Host {host!r}; open it at the address it printed, "
                "or restart it with --allow-host NAME"
            )
            return await _refuse(scope, receive, send, 400, reason)
        too_big = security.oversized_body(request, self.limits)
        if too_big is not None:
            return await _refuse(scope, receive, send, *too_big)
        if request.method != "POST":
            return await self.app(scope, receive, send)
        where = f"{request.method} {request.url.path} from {request.client.host if request.client else '?'}"
        try:
            body = await self._read_body(receive)
        except TimeoutError:
            log.warning("%s: no body data for %g s; answered 408", where, self.body_timeout_s)
            reason = f"the request body did not arrive within {self.body_timeout_s:g} s; send it again"
            return await _refuse(scope, receive, send, 408, reason, {"connection": "close"})
        except ClientGone:
            log.warning("%s: the client disconnected before sending the whole body; nothing was done", where)
            return None
        if (
            security.is_json(request.headers.get("content-type"))
            and security.json_depth(body) > security.MAX_JSON_DEPTH
        ):
            reason = f"the JSON body nests deeper than {security.MAX_JSON_DEPTH} levels; send a flat recipe"
            return await _refuse(scope, receive, send, 400, reason)
        return await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive) -> bytes:
        chunks = []
        while True:
            message = await asyncio.wait_for(receive(), self.body_timeout_s)
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that gives the whole body once, then whatever the connection says next (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


async def _refuse(scope, receive, send, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
    await JSONResponse({"detail": reason}, status_code=status, headers=headers)(scope, receive, send)
