"""Settings of the web app and its server (import-light: the command line makes its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from clipatlas.errors import UserError


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 8 * 1024 * 1024
    """Largest upload accepted."""
    max_pixels: int = 25_000_000
    """Largest image (width x height) an upload may decode to."""


@dataclass(frozen=True)
class WebConfig:
    """The app: what it may load and keep."""

    limits: UploadLimits = UploadLimits()
    """Upload limits."""
    devices: tuple[str, ...] = ("cpu",)
    """One generation worker per device."""
    decoder: str | None = None
    """Playground decoder: retrieval, kandinsky[:PATH_OR_ID], kandinsky-img2img[:PATH_OR_ID]
    (default: kandinsky for a kandinsky-clip workspace, else retrieval)."""
    max_cached_results: int = 256
    """Finished generations kept for their links."""
    max_uploads_kept: int = 64
    """Uploads kept in memory for the playground."""


@dataclass(frozen=True)
class ServeConfig:
    """`clipatlas serve`: where to listen and who may compute."""

    host: str = "127.0.0.1"
    """Address to listen on (any address but loopback requires the printed token)."""
    port: int = 8000
    """Port to listen on."""
    token: str | None = None
    """Token for the compute and upload endpoints (default: a random one on non-loopback addresses)."""
    workers: int = 1
    """Server processes; each opens the atlas and caches its own pages. A generation job lives in the
    process that took it, so with several, a playground may have to submit a recipe again."""

    def __post_init__(self):
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
