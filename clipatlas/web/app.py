"""The FastAPI app: feature library pages, the map, search, the playground and a JSON API.

Data comes only from the Atlas query API (`clipatlas.atlas.Atlas`); generation only through
`clipatlas.steer`. Pages are server-rendered with Jinja2 (autoescaped: labels may come from an
LLM) and enhanced by small vanilla scripts in `static/`.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, HTTPException, Request, UploadFile
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipatlas.errors import UserError
from clipatlas.web import security
from clipatlas.web.jobs import DONE, GenerationQueue
from clipatlas.web.security import UploadLimits
from clipatlas.web.steering import Steering, UploadRegistry
from clipatlas.web.views import AtlasViews
from clipatlas.workspace import Workspace

PACKAGE_DIR = Path(__file__).parent
IMAGE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
UPLOAD_ID_PATTERN = re.compile(r"^[0-9a-f]{16,64}$")
# Scripts only from our own /static: a label that slipped past escaping still could not run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # not "no-referrer": with it, Chromium sends `Origin: null` on form posts and the same-origin check refuses them
    "Referrer-Policy": "same-origin",
}


@dataclass(frozen=True)
class WebConfig:
    limits: UploadLimits = UploadLimits()
    devices: tuple[str, ...] = ("cpu",)
    decoder: str | None = None  # None: kandinsky for a kandinsky-clip workspace, else retrieval
    max_cached_results: int = 256
    max_uploads_kept: int = 64


def create_app(
    workspace, name: str | None = None, token: str | None = None, *, config: WebConfig = WebConfig(), atlas=None
) -> FastAPI:
    """Build the app for SAE `name` of `workspace`.

    `token`: required (header, cookie or `?token=`) by every endpoint that computes or uploads;
    leave it None only when serving on a loopback address. `atlas`: an already opened Atlas
    (benchmarks reuse one); by default `Atlas.open(workspace, name)`.
    """
    workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if atlas is None:
        from clipatlas.atlas import Atlas

        atlas = Atlas.open(workspace, name)
    views = AtlasViews(atlas)
    uploads = UploadRegistry(config.max_uploads_kept, workspace.root / "web" / "uploads")
    steering = Steering(workspace, name, atlas, uploads, decoder=config.decoder)
    jobs = GenerationQueue(steering.run, devices=config.devices, max_cached=config.max_cached_results)

    # No Swagger UI: it loads scripts from a CDN, and the app must work offline. /api lists the routes.
    app = FastAPI(title="clipatlas", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.add_middleware(GZipMiddleware, minimum_size=2048)
    app.mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static")
    templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")
    app.state.views, app.state.jobs, app.state.steering, app.state.uploads = views, jobs, steering, uploads
    app.router.on_shutdown.append(jobs.close)
    # The map of a big atlas takes a second to serialise: do it before anyone asks.
    threading.Thread(target=views.map_json, name="clipatlas-map-warmup", daemon=True).start()

    def may_compute(request: Request) -> None:
        security.check_compute_allowed(request, token)

    def page(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
        context.setdefault("title", "clipatlas")
        return templates.TemplateResponse(
            request, template, {"summary": views.summary_brief(), **context}, status_code=status_code
        )

    def wants_html(request: Request) -> bool:
        return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")

    @app.exception_handler(StarletteHTTPException)  # also unknown routes, not only our own raises
    async def http_error(request: Request, exc: StarletteHTTPException):
        if wants_html(request):
            return page(
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

    # ---- pages -------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        return page(request, "index.html", full=views.summary())

    @app.get("/features/{feature_id}", response_class=HTMLResponse)
    def feature_page(request: Request, feature_id: int):
        feature = views.feature_page(feature_id)
        return page(request, "feature.html", title=f"feature {feature_id}", f=feature)

    @app.get("/map", response_class=HTMLResponse)
    def map_page(request: Request):
        return page(request, "map.html", title="feature map")

    @app.get("/images/{image_id}", response_class=HTMLResponse)
    def image_page(request: Request, image_id: str):
        return page(request, "image.html", title=f"image {image_id}", image=views.image_page(valid_image_id(image_id)))

    @app.get("/search", response_class=HTMLResponse)
    def search_page(request: Request, q: str = ""):
        found = views.search(q)
        if found.get("exact_feature") is not None:
            return RedirectResponse(f"/features/{found['exact_feature']}", status_code=303)
        return page(request, "search.html", title="search", q=q, results=found["results"])

    @app.post("/search/image", response_class=HTMLResponse, dependencies=[Depends(may_compute)])
    async def search_by_image_page(request: Request, file: UploadFile = File(...)):
        upload = await receive_upload(file)
        return page(request, "search.html", title="search by image", q="", upload=upload, results=upload["features"])

    @app.get("/playground", response_class=HTMLResponse)
    def playground_page(request: Request):
        return page(
            request, "playground.html", title="playground", decoder=steering.decoder_name, samples=views.sample_images()
        )

    @app.get("/api", response_class=HTMLResponse)
    def api_index(request: Request):
        routes = [
            {"path": route.path, "methods": sorted(route.methods - {"HEAD"}), "summary": route.name.replace("_", " ")}
            for route in app.routes
            if getattr(route, "methods", None) and route.path.startswith("/api/")
        ]
        return page(request, "api.html", title="JSON API", routes=routes)

    # ---- files, served by id only -------------------------------------------------------------
    @app.get("/thumbs/{image_id}")
    def thumbnail(image_id: str):
        image_id = valid_image_id(image_id)
        path = views.thumbnail_file(image_id)
        if path is not None:
            return file_or_404(path)
        webp = views.store_thumbnail(image_id)
        if webp is None:
            raise HTTPException(404, "no image with this id")
        return Response(webp, media_type="image/webp", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/icons/{feature_id}")
    def icon(feature_id: int):
        return file_or_404(views.icon_file(feature_id))

    @app.get("/uploads/{upload_id}")
    def uploaded_image(upload_id: str):
        png = uploads.png(valid_upload_id(upload_id))
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/jobs/{job_id}/images/{index}.png")
    def job_image(job_id: str, index: int):
        job = jobs.get(job_id)
        if job is None or job.status != DONE:
            raise HTTPException(404, "no finished generation with this id; submit the recipe again")
        images = job.result["images"]
        if not 0 <= index < len(images):
            raise HTTPException(404, f"this generation has images 0..{len(images) - 1}")
        return Response(images[index], media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    # ---- JSON API -----------------------------------------------------------------------------
    @app.get("/api/summary")
    def api_summary():
        return views.summary()

    @app.get("/api/features/{feature_id}")
    def api_feature(feature_id: int):
        return views.feature_page(feature_id)

    @app.get("/api/features/{feature_id}/brief")
    def api_feature_brief(feature_id: int):
        brief = views.brief(views.check_feature(feature_id))
        return {"feature": feature_id, "label": brief.label, "max_activation": brief.max_activation}

    @app.get("/api/map")
    def api_map(request: Request):
        raw, compressed = views.map_json()
        headers = {"Cache-Control": "private, max-age=600", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(compressed, media_type="application/json", headers={**headers, "Content-Encoding": "gzip"})
        return Response(raw, media_type="application/json", headers=headers)

    @app.get("/api/images/{image_id}")
    def api_image(image_id: str):
        return views.image_page(valid_image_id(image_id))

    @app.get("/api/search")
    def api_search(q: str = ""):
        return views.search(q)

    @app.get("/api/samples")
    def api_samples():
        return {"images": views.sample_images()}

    @app.post("/api/uploads", dependencies=[Depends(may_compute)])
    async def api_upload(file: UploadFile = File(...)):
        return await receive_upload(file)

    @app.get("/api/uploads/{upload_id}")
    def api_upload_features(upload_id: str):
        upload_id = valid_upload_id(upload_id)
        return {
            "upload_id": upload_id,
            "url": f"/uploads/{upload_id}",
            "features": views.features_of_embedding(uploads.embedding(upload_id)),
        }

    @app.post("/api/generate", dependencies=[Depends(may_compute)])
    async def api_generate(request: Request):
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPException(400, f"the body must be a JSON recipe ({exc})") from exc
        recipe, recipe_hash = steering.validate(payload)
        known = jobs.get(recipe_hash)
        cached = known is not None and known.status == DONE
        return {**job_json(jobs.submit(recipe_hash, recipe)), "cached": cached}

    @app.get("/api/jobs/{job_id}")
    def api_job(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no generation job with this id (results are kept for a while); submit it again")
        return job_json(job)

    # ---- helpers ------------------------------------------------------------------------------
    def job_json(job) -> dict[str, Any]:
        body = job.public(jobs.position(job))
        if job.status == DONE:
            urls = [f"/api/jobs/{job.id}/images/{i}.png" for i in range(len(job.result["images"]))]
            body["result"] = {
                **{k: v for k, v in job.result.items() if k != "images"},
                "before_url": urls[0],
                "after_url": urls[1],
                "image_urls": urls,
            }
        return body

    async def receive_upload(file: UploadFile) -> dict[str, Any]:
        data = await security.read_upload_capped(file, config.limits)
        # Decoding and embedding take CPU time: off the event loop, so pages keep answering.
        image = await run_in_threadpool(security.decode_upload, data, config.limits)
        embedding = await run_in_threadpool(steering.embed_image, image)
        upload_id = uploads.add(data, image, embedding)
        features = await run_in_threadpool(views.features_of_embedding, embedding)
        return {"upload_id": upload_id, "url": f"/uploads/{upload_id}", "features": features}

    return app


def valid_image_id(image_id: str) -> str:
    if not IMAGE_ID_PATTERN.match(image_id) or ".." in image_id:
        raise HTTPException(404, "no image with this id")
    return image_id


def valid_upload_id(upload_id: str) -> str:
    if not UPLOAD_ID_PATTERN.match(upload_id):
        raise HTTPException(404, "no upload with this id")
    return upload_id


def file_or_404(path: Path | None) -> FileResponse:
    if path is None:
        raise HTTPException(404, "no such image")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})
