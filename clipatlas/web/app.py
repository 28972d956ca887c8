"""The FastAPI app: it opens one atlas, builds what the routes serve from, and includes the routers.

Routes live in `pages` (HTML), `files` (images by id) and `api` (JSON, typed in `schemas`). Data
comes only from the Atlas query API, generation only through the one `Steerer` built on that atlas.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipatlas.errors import UserError
from clipatlas.steer.engine import Steerer
from clipatlas.web import api, files, pages, security
from clipatlas.web.cache import PageCache
from clipatlas.web.config import WebConfig
from clipatlas.web.context import TEMPLATES_DIR, WebContext, context_of
from clipatlas.web.jobs import GenerationQueue
from clipatlas.web.steering import Steering, UploadRegistry
from clipatlas.web.views import AtlasViews
from clipatlas.workspace import Workspace

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
    workspace, name: str | None = None, token: str | None = None, *, config: WebConfig = WebConfig(), atlas=None
) -> FastAPI:
    """Build the app for SAE `name` of `workspace`.

    `token`: required (header, cookie or `?token=`) by every endpoint that computes or uploads;
    leave it None only when serving on a loopback address. `atlas`: an already opened Atlas
    (benchmarks reuse one); by default `Atlas.open(workspace, name)`.
    """
    if atlas is None:
        from clipatlas.atlas import Atlas

        atlas = Atlas.open(workspace, name)
    uploads = UploadRegistry(config.max_uploads_kept, Workspace.of(workspace).uploads_dir)
    steering = Steering(Steerer(atlas), uploads, decoder=config.decoder, sae=name)
    context = WebContext(
        views=AtlasViews(atlas),
        steering=steering,
        uploads=uploads,
        jobs=GenerationQueue(steering.run, devices=config.devices, max_cached=config.max_cached_results),
        templates=Jinja2Templates(directory=TEMPLATES_DIR),
        config=config,
        token=token,
    )

    # No Swagger UI: it loads scripts from a CDN, and the app must work offline. /api lists the routes.
    app = FastAPI(title="clipatlas", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.context = context
    app.state.page_cache = PageCache()
    app.add_middleware(GZipMiddleware, minimum_size=2048)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for router in (pages.router, files.router, api.router):
        app.include_router(router)
    app.router.on_shutdown.append(context.jobs.close)
    _add_error_handlers(app)
    _add_guard(app, config, token)
    # The map of a big atlas takes a second to serialise: do it before anyone asks.
    threading.Thread(target=context.views.map_json, name="clipatlas-map-warmup", daemon=True).start()
    return app


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
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return await http_error(request, HTTPException(400, str(exc)))


def _add_guard(app: FastAPI, config: WebConfig, token: str | None) -> None:
    @app.middleware("http")
    async def guard_and_annotate(request: Request, call_next):
        started = time.perf_counter()
        too_big = security.oversized_body(request, config.limits)
        if too_big is not None:
            return JSONResponse({"detail": too_big[1]}, status_code=too_big[0])
        response = await call_next(request)
        # Server-Timing shows the server's own time in the browser's devtools and in bench/web.py.
        response.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - started):.2f}"
        # Opening the printed ?token= URL once stores the token in a cookie the scripts send back.
        given = request.query_params.get(security.TOKEN_QUERY)
        if token is not None and given is not None and secrets.compare_digest(given.encode(), token.encode()):
            response.set_cookie(security.TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers.update(SECURITY_HEADERS)
        return response
