"""The FastAPI app: it opens one atlas, builds what the routes serve from, and includes the routers.

Routes live in `pages` (HTML), `files` (images by id) and `api` (JSON, typed in `schemas`). Data
comes only from the Atlas query API, generation only through the one `Steerer` built on that atlas.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipatlas._io import SchemaError
from clipatlas.atlas.check import BrokenWorkspace, diagnose
from clipatlas.errors import UserError
from clipatlas.steer.engine import Steerer
from clipatlas.store import StoreError
from clipatlas.web import api, files, pages, security
from clipatlas.web.cache import CachedPages, PageCache
from clipatlas.web.config import WebConfig
from clipatlas.web.context import TEMPLATES_DIR, WebContext, context_of
from clipatlas.web.guard import RequestGuard
from clipatlas.web.jobs import GenerationQueue, JobRecords
from clipatlas.web.links import with_links
from clipatlas.web.steering import Steering, UploadRegistry
from clipatlas.web.views import AtlasViews
from clipatlas.workspace import Workspace

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
# Scripts only from our own /static: a label that slipped past escaping still could not run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # not "no-referrer": with it, Chromium sends `Origin: null` on form posts and the same-origin check refuses them
    "Referrer-Policy": "same-origin",
}


def create_app(
    workspace,
    name: str | None = None,
    token: str | None = None,
    *,
    config: WebConfig = WebConfig(),
    atlas=None,
    hosts: security.HostAllowList | None = None,
) -> FastAPI:
    """Build the app for SAE `name` of `workspace`.

    `token`: required (header, cookie or `?token=`) by every endpoint that computes or uploads;
    leave it None only when serving on a loopback address. `atlas`: an already opened Atlas
    (benchmarks reuse one); by default `Atlas.open(workspace, name)`. `hosts`: the Host names
    answered (default: loopback names only; `serve` adds the address it listens on and --allow-host).
    """
    if atlas is None:
        from clipatlas.atlas import Atlas

        atlas = Atlas.open(workspace, name)
    ws = Workspace.of(workspace)
    uploads = UploadRegistry(config.max_uploads_kept, ws, config.uploads_max_bytes, config.uploads_max_age_s)
    # allow_files=False: a request may name store images and this server's uploads, never a file.
    steering = Steering(Steerer(atlas, allow_files=False), uploads, decoder=config.decoder, sae=name)
    jobs = GenerationQueue(
        steering.run,
        devices=config.devices,
        max_cached=config.max_cached_results,
        max_active=config.max_queued_jobs,
        per_client=config.max_jobs_per_client,
        records=JobRecords(ws.jobs_dir(atlas.build_id), max_kept=4 * config.max_cached_results),
    )
    context = WebContext(
        views=AtlasViews(atlas),
        steering=steering,
        uploads=uploads,
        jobs=jobs,
        templates=with_links(Jinja2Templates(directory=TEMPLATES_DIR)),
        config=config,
        token=token,
    )

    # No Swagger UI: it loads scripts from a CDN, and the app must work offline. /api lists the routes.
    app = FastAPI(title="clipatlas", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.context = context
    app.state.page_cache = PageCache()
    app.add_middleware(GZipMiddleware, minimum_size=2048)
    app.add_middleware(CachedPages, cache=app.state.page_cache, atlas=atlas)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for router in (pages.router, files.router, api.router):
        app.include_router(router)
    app.router.on_shutdown.append(context.jobs.close)
    _add_error_handlers(app)
    app.add_middleware(ResponseHeaders, token=token)
    # Added last, so outermost: every request meets the Host check and body limits first.
    app.add_middleware(
        RequestGuard,
        hosts=hosts or security.HostAllowList.serving(),
        limits=config.limits,
        body_timeout_s=config.body_timeout_s,
    )
    # The map and label search of a big atlas take seconds to prepare: do it before anyone asks.
    app.state.warmup = threading.Thread(target=_warm, args=(context,), name="clipatlas-warmup", daemon=True)
    app.state.warmup.start()
    return app


# A file of the workspace is missing or damaged: the server's problem (503), named in one line.
WORKSPACE_FAULTS = (BrokenWorkspace, StoreError, SchemaError, sqlite3.DatabaseError, OSError)


def _warm(context: WebContext) -> None:
    try:
        context.views.warm()
    except WORKSPACE_FAULTS as exc:  # the pages that need the part answer 503 naming it; the log says it once
        atlas = context.steering.atlas
        log.warning("warm-up stopped: %s", diagnose(atlas.workspace, atlas.name, exc))
    for template in TEMPLATES_DIR.glob("*.html"):  # compiled once here, not by each of the first requests' threads
        context.templates.get_template(template.name)


def _add_error_handlers(app: FastAPI) -> None:
    def wants_html(request: Request) -> bool:
        return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")

    @app.exception_handler(StarletteHTTPException)  # also unknown routes, not only our own raises
    async def http_error(request: Request, exc: StarletteHTTPException):
        if wants_html(request):
            ctx = context_of(request)
            return ctx.page(
                request,
                "error.html",
                status_code=exc.status_code,
                title="error",
                status=exc.status_code,
                detail=exc.detail,
            )
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return await http_error(request, HTTPException(400, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return await http_error(request, HTTPException(422, f"invalid request: {validation_summary(exc)}"))

    async def broken_workspace(request: Request, exc: Exception):
        atlas = context_of(request).steering.atlas
        found = diagnose(atlas.workspace, atlas.name, exc)
        log.warning("%s %s: %s", request.method, request.url.path, found)
        return await http_error(request, HTTPException(503, str(found)))

    for broken in WORKSPACE_FAULTS:
        app.add_exception_handler(broken, broken_workspace)


def validation_summary(exc: RequestValidationError, most: int = 3) -> str:
    """pydantic's errors as one line: `edits.0.value: Input should be a finite number; ...`."""
    parts = []
    for error in exc.errors()[:most]:
        if error["type"] == "json_invalid":
            parts.append(f"body: not JSON ({error['ctx']['error']} at character {error['loc'][-1]})")
            continue
        where = ".".join(str(part) for part in error["loc"][1:]) or str(error["loc"][0])
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - most
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


class ResponseHeaders:
    """Adds the security headers and Server-Timing to every response, and stores the token in a cookie
    when the printed ?token= URL is opened. Plain ASGI: a BaseHTTPMiddleware (`@app.middleware`) runs
    every request's app in a task of its own and passes the body through a stream."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        cookie = self._token_cookie(scope)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                # Server-Timing shows the server's own time in the browser's devtools and in bench/web.py.
                headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - started):.2f}"
                headers.update(SECURITY_HEADERS)
                if cookie:
                    headers.append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _token_cookie(self, scope) -> str | None:
        """The Set-Cookie value when the request carries the right ?token=, else None."""
        if self.token is None:
            return None
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(security.TOKEN_QUERY, [None])[0]
        if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
            return None
        response = Response()
        response.set_cookie(security.TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        return response.headers["set-cookie"]
