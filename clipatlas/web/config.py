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
    uploads_max_bytes: int = 512 * 1024 * 1024
    """Disk space the saved uploads may take; beyond it the least recently used are deleted."""
    uploads_max_age_s: float = 7 * 24 * 3600.0
    """Saved uploads unused for this long are deleted."""
    max_queued_jobs: int = 64
    """Generation jobs waiting or running at once; more are refused with 429 and Retry-After."""
    max_jobs_per_client: int = 4
    """Generation jobs one client address may have waiting or running."""
    body_timeout_s: float = 30.0
    """Longest wait for the next part of a request body before answering 408."""


@dataclass(frozen=True)
class ServeConfig:
    """`clipatlas serve`: where to listen and who may compute."""

    host: str = "127.0.0.1"
    """Address to listen on (any address but loopback requires the printed token)."""
    port: int = 8000
    """Port to listen on."""
    token: str | None = None
    """Token for the compute and upload endpoints (default: a random one on non-loopback addresses)."""
    allow_host: tuple[str, ...] = ()
    """Host names the server also answers to, comma-separated (it always answers to loopback names and the
    address it listens on; any other Host header, as DNS rebinding sends, is refused)."""
    workers: int = 1
    """Server processes; each opens the atlas, warms up before it takes a connection, and caches its own
    pages. A generation job (and the per-client job limit) lives in the process that took it, so with
    several, a playground may have to submit a recipe again."""

    def __post_init__(self):
        if isinstance(self.allow_host, str):  # from the command line
            names = tuple(name.strip().lower() for name in self.allow_host.split(",") if name.strip())
            object.__setattr__(self, "allow_host", names)
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
