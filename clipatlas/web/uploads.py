"""Receiving an uploaded image: capped read, decode and embed off the event loop, register."""

from __future__ import annotations

from typing import Any

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from clipatlas.web import security
from clipatlas.web.context import WebContext


async def receive_upload(ctx: WebContext, file: UploadFile) -> dict[str, Any]:
    limits = ctx.config.limits
    data = await security.read_upload_capped(file, limits)
    # Decoding and embedding take CPU time: off the event loop, so pages keep answering.
    image = await run_in_threadpool(security.decode_upload, data, limits)
    embedding = await run_in_threadpool(ctx.steering.embed_image, image)
    upload_id = ctx.uploads.add(data, image, embedding)
    features = await run_in_threadpool(ctx.views.features_of_embedding, embedding)
    return {"upload_id": upload_id, "url": f"/uploads/{upload_id}", "features": features}
