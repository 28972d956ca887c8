"""The JSON API under /api/: typed responses (clipatlas.web.schemas), listed at /api."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel

from clipatlas.web import schemas
from clipatlas.web.cache import Cache, PageCache
from clipatlas.web.context import Context, WebContext, may_compute
from clipatlas.web.jobs import DONE, QueueFull
from clipatlas.web.uploads import receive_upload
from clipatlas.web.views import MAX_QUERY, valid_image_id, valid_upload_id

router = APIRouter(prefix="/api")


def cached_json(request: Request, ctx: WebContext, cache: PageCache, model: type[BaseModel], make) -> Response:
    """The JSON of a GET that reads only the atlas: validated against `model`, serialised and compressed
    once per atlas version and URL (the page cache), with an ETag."""

    def render() -> Response:
        return Response(model.model_validate(make()).model_dump_json(), media_type="application/json")

    return cache.respond(request, ctx.views.atlas, render)


@router.get("/summary", response_model=schemas.Summary)
def api_summary(ctx: Context):
    return ctx.views.summary()  # not cached: it includes metrics.json, which `clipatlas eval` may rewrite


@router.get("/features/{feature_id}", response_model=schemas.FeaturePage)
async def api_feature(request: Request, feature_id: int, ctx: Context, cache: Cache):
    return cached_json(request, ctx, cache, schemas.FeaturePage, lambda: ctx.views.feature_page(feature_id))


@router.get("/features/{feature_id}/brief", response_model=schemas.FeatureBriefOut)
async def api_feature_brief(request: Request, feature_id: int, ctx: Context, cache: Cache):
    def make():
        brief = ctx.views.brief(ctx.views.check_feature(feature_id))
        return {"feature": feature_id, **brief.naming(), "max_activation": brief.max_activation}

    return cached_json(request, ctx, cache, schemas.FeatureBriefOut, make)


@router.get("/features", response_model=schemas.FeatureList)
def api_features(
    ctx: Context,
    sort: Literal["score", "feature"] = "score",
    min_score: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    named: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**31)] = 0,
):
    """Labelled features sorted by score (or id), optionally only those scoring at least min_score or named."""
    return ctx.views.feature_list(sort, min_score, named, limit, offset)


@router.get("/map", responses={200: {"model": schemas.MapPoints}})
def api_map(request: Request, ctx: Context):
    # Serialised once and served as bytes: at 160k features validating it per request would cost a second.
    raw, compressed = ctx.views.map_json()
    headers = {"Cache-Control": "private, max-age=600", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(compressed, media_type="application/json", headers={**headers, "Content-Encoding": "gzip"})
    return Response(raw, media_type="application/json", headers=headers)


@router.get("/images/{image_id}", response_model=schemas.ImagePage)
async def api_image(request: Request, image_id: str, ctx: Context, cache: Cache):
    return cached_json(request, ctx, cache, schemas.ImagePage, lambda: ctx.views.image_page(valid_image_id(image_id)))


@router.get("/search", response_model=schemas.SearchResult)
async def api_search(request: Request, ctx: Context, cache: Cache, q: Annotated[str, Query(max_length=MAX_QUERY)] = ""):
    return cached_json(request, ctx, cache, schemas.SearchResult, lambda: ctx.views.search(q))


@router.get("/samples", response_model=schemas.Samples)
def api_samples(ctx: Context):
    return {"images": ctx.views.sample_images()}


@router.post("/uploads", response_model=schemas.Upload, dependencies=[Depends(may_compute)])
async def api_upload(ctx: Context, file: UploadFile = File(...)):
    return await receive_upload(ctx, file)


@router.get("/uploads/{upload_id}", response_model=schemas.Upload)
def api_upload_features(upload_id: str, ctx: Context):
    upload_id = valid_upload_id(upload_id)
    features = ctx.views.features_of_embedding(ctx.uploads.embedding(upload_id))
    return {"upload_id": upload_id, "url": f"/uploads/{upload_id}", "features": features}


@router.post(
    "/generate",
    response_model=schemas.SubmittedJob,
    dependencies=[Depends(may_compute)],
    responses={429: {"description": "the queue, or this client's share of it, is full; see Retry-After"}},
)
async def api_generate(sent: schemas.RecipeIn, request: Request, ctx: Context):
    recipe, recipe_hash = ctx.steering.validate(sent)
    known = ctx.jobs.get(recipe_hash)
    cached = known is not None and known.status == DONE
    try:
        job = ctx.jobs.submit(recipe_hash, recipe, client=request.client.host if request.client else "")
    except QueueFull as full:
        raise HTTPException(429, str(full), headers={"Retry-After": str(full.retry_after)}) from full
    return {**job_json(ctx, job), "cached": cached}


@router.get("/jobs/{job_id}", response_model=schemas.Job)
async def api_job(job_id: str, ctx: Context):  # polled several times a second: in the loop, no thread hop
    job = ctx.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, "no generation job with this id (results are kept for a while); submit it again")
    return job_json(ctx, job)


def job_json(ctx: WebContext, job) -> dict[str, Any]:
    body = job.public(ctx.jobs.position(job))
    if job.status == DONE:
        urls = [f"/api/jobs/{job.id}/images/{i}.png" for i in range(len(job.result["images"]))]
        result = {k: v for k, v in job.result.items() if k != "images"}
        body["result"] = {**result, "before_url": urls[0], "after_url": urls[1], "image_urls": urls}
    return body
