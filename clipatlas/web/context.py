"""What every route serves from: one opened atlas and what is built on it, held by the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from clipatlas.web import security
from clipatlas.web.config import WebConfig
from clipatlas.web.jobs import GenerationQueue
from clipatlas.web.steering import Steering, UploadRegistry
from clipatlas.web.views import AtlasViews

TEMPLATES_DIR = Path(__file__).parent / "templates"


@dataclass
class WebContext:
    views: AtlasViews
    steering: Steering
    uploads: UploadRegistry
    jobs: GenerationQueue
    templates: Jinja2Templates
    config: WebConfig
    token: str | None

    def page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        """A server-rendered page (Jinja2, autoescaped: labels may come from a language model)."""
        context.setdefault("title", "clipatlas")
        return self.templates.TemplateResponse(
            request, template, {"summary": self.views.summary_brief(), **context}, status_code=status_code
        )


def context_of(request: Request) -> WebContext:
    return request.app.state.context


async def _context(request: Request) -> WebContext:  # async: FastAPI runs a plain def dependency in a thread
    return context_of(request)


Context = Annotated[WebContext, Depends(_context)]


async def may_compute(request: Request, ctx: Context) -> None:
    """Endpoints that run the model or take uploads depend on this (token or loopback, same origin)."""
    security.check_compute_allowed(request, ctx.token)
