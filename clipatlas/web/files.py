"""Image files, served by id only: thumbnails, icons, uploads and generated images."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from clipatlas.web.cache import Cache
from clipatlas.web.context import Context
from clipatlas.web.jobs import DONE
from clipatlas.web.views import valid_image_id, valid_upload_id

router = APIRouter()
LONG_CACHE_CONTROL = "public, max-age=86400"
LONG_CACHE = {"Cache-Control": LONG_CACHE_CONTROL}


def file_or_404(path: Path | None) -> FileResponse:
    if path is None:
        raise HTTPException(404, "no such image")
    return FileResponse(path, headers=LONG_CACHE)


@router.get("/thumbs/{image_id}")
async def thumbnail(request: Request, image_id: str, ctx: Context, cache: Cache):
    image_id = valid_image_id(image_id)
    path = ctx.views.thumbnail_file(image_id)
    if path is not None:  # the atlas's own thumbnails: read once per atlas version, then from memory
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return cache.respond(
            request, ctx.views.atlas, lambda: Response(path.read_bytes(), media_type=media_type), LONG_CACHE_CONTROL
        )
    webp = ctx.views.store_thumbnail(image_id)
    if webp is None:
        raise HTTPException(404, "no image with this id")
    return Response(webp, media_type="image/webp", headers=LONG_CACHE)


@router.get("/icons/{feature_id}")
def icon(feature_id: int, ctx: Context):
    return file_or_404(ctx.views.icon_file(feature_id))


@router.get("/uploads/{upload_id}")
def uploaded_image(upload_id: str, ctx: Context):
    png = ctx.uploads.png(valid_upload_id(upload_id))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/jobs/{job_id}/images/{index}.png")
def job_image(job_id: str, index: int, ctx: Context):
    job = ctx.jobs.get(job_id)
    if job is None or job.status != DONE:
        raise HTTPException(404, "no finished generation with this id; submit the recipe again")
    images = job.result["images"]
    if not 0 <= index < len(images):
        raise HTTPException(404, f"this generation has images 0..{len(images) - 1}")
    return Response(images[index], media_type="image/png", headers=LONG_CACHE)
