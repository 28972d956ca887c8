"""The HTML pages: the summary, feature pages, the map, image pages, search and the playground."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse

from clipatlas.web.cache import Cache
from clipatlas.web.context import Context, may_compute
from clipatlas.web.uploads import receive_upload
from clipatlas.web.views import valid_image_id

router = APIRouter(default_response_class=HTMLResponse)


@router.get("/")
def index(request: Request, ctx: Context, cache: Cache):
    return cache.respond(
        request, ctx.views.atlas, lambda: ctx.page(request, "index.html", rows=ctx.views.summary_rows())
    )


@router.get("/features/{feature_id}")
async def feature_page(request: Request, feature_id: int, ctx: Context, cache: Cache):
    return cache.respond(
        request,
        ctx.views.atlas,
        lambda: ctx.page(request, "feature.html", title=f"feature {feature_id}", f=ctx.views.feature_page(feature_id)),
    )


@router.get("/features")
def feature_list_page(
    request: Request,
    ctx: Context,
    cache: Cache,
    sort: str = "score",
    min_score: str = "",
    named: bool = False,
    page: int = 1,
):
    per_page = 100
    page = max(page, 1)
    try:
        threshold = float(min_score) if min_score.strip() else None  # the form sends "" for no minimum
    except ValueError:
        raise HTTPException(400, f"minimum score must be a number, not {min_score!r}") from None

    def render():
        found = ctx.views.feature_list(sort, threshold, named, per_page, (page - 1) * per_page)
        return ctx.page(
            request, "features.html", title="features by score", found=found, named=named, page=page, per_page=per_page
        )

    return cache.respond(request, ctx.views.atlas, render)


@router.get("/map")
async def map_page(request: Request, ctx: Context, cache: Cache):
    return cache.respond(request, ctx.views.atlas, lambda: ctx.page(request, "map.html", title="feature map"))


@router.get("/images/{image_id}")
async def image_page(request: Request, image_id: str, ctx: Context, cache: Cache):
    return cache.respond(
        request,
        ctx.views.atlas,
        lambda: ctx.page(
            request, "image.html", title=f"image {image_id}", image=ctx.views.image_page(valid_image_id(image_id))
        ),
    )


@router.get("/search")
async def search_page(request: Request, ctx: Context, cache: Cache, q: str = ""):
    def render():
        found = ctx.views.search(q)
        if found.get("exact_feature") is not None:
            return RedirectResponse(f"/features/{found['exact_feature']}", status_code=303)
        return ctx.page(request, "search.html", title="search", q=q, results=found["results"])

    return cache.respond(request, ctx.views.atlas, render)


@router.post("/search/image", dependencies=[Depends(may_compute)])
async def search_by_image_page(request: Request, ctx: Context, file: UploadFile = File(...)):
    upload = await receive_upload(ctx, file)
    return ctx.page(request, "search.html", title="search by image", q="", upload=upload, results=upload["features"])


@router.get("/playground")
async def playground_page(request: Request, ctx: Context, cache: Cache):
    # The page is the atlas's sample images and the app's fixed settings; the browser does the rest.
    return cache.respond(
        request,
        ctx.views.atlas,
        lambda: ctx.page(
            request,
            "playground.html",
            title="playground",
            decoder=ctx.steering.decoder_name,
            samples=ctx.views.sample_images(),
            strength=ctx.steering.default_strength,
        ),
    )


@router.get("/api")
def api_index(request: Request, ctx: Context):
    """The JSON routes, read from the app's own OpenAPI description."""
    paths = request.app.openapi()["paths"]
    routes = [
        {"path": path, "methods": sorted(m.upper() for m in ops), "summary": next(iter(ops.values()))["summary"]}
        for path, ops in paths.items()
        if path.startswith("/api/")
    ]
    return ctx.page(request, "api.html", title="JSON API", routes=routes)
