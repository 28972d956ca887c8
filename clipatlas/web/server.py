"""Run the app with uvicorn: loopback by default, a token on every other address."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import socket

from clipatlas._serve import serving_in_thread  # noqa: F401  (tests and benchmarks serve the app with it)
from clipatlas.atlas.check import check_workspace
from clipatlas.errors import UserError
from clipatlas.web.app import create_app
from clipatlas.web.config import ServeConfig, UploadLimits, WebConfig
from clipatlas.web.security import HostAllowList, is_loopback, new_token

log = logging.getLogger(__name__)

# `serve --workers N` hands its settings to uvicorn's worker processes in this variable.
APP_SETTINGS_ENV = "CLIPATLAS_SERVE_APP"
WORKER_READY = "clipatlas: worker ready, process"  # printed by each `serve --workers N` process once it serves


def app_url(host: str, port: int, token: str | None) -> str:
    """The URL to open: a wildcard address is shown as this machine's name."""
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port (make demo PORT=8001)"
            ) from exc


def serve(
    workspace, name: str | None = None, config: ServeConfig = ServeConfig(), web: WebConfig = WebConfig()
) -> None:
    """Serve the atlas until interrupted, printing the URL to open."""
    import uvicorn

    check_workspace(workspace, name)  # one line naming a broken file, before anything is served
    token = config.token
    if token is None and not is_loopback(config.host):
        token = new_token()
    hosts = HostAllowList.serving(config.host, config.allow_host)
    check_port_free(config.host, config.port)
    if config.workers == 1:
        app = warmed(create_app(workspace, name=name, token=token, config=web, hosts=hosts))
    else:
        from clipatlas.atlas import Atlas

        Atlas.open(workspace, name)  # a missing atlas is one clear error here, not one per worker
        os.environ[APP_SETTINGS_ENV] = json.dumps(
            {
                "workspace": str(workspace),
                "name": name,
                "token": token,
                "web": dataclasses.asdict(web),
                "bound": config.host,
                "allow_host": list(config.allow_host),
            }
        )
        app = f"{__name__}:app_from_environment"
    url = app_url(config.host, config.port, token)
    print(f"clipatlas is serving {workspace} at {url}  (Ctrl-C to stop)", flush=True)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        workers=config.workers,
        factory=config.workers > 1,
        access_log=False,  # with log_level "warning" it is never shown: do not even format it per request
    )


def warmed(app):
    """`app` once its warm-up is done (the map and label search are ready before anyone is told to come).
    What warm-up read stays for the process's life (830,000 objects at 163,840 features): frozen, so the
    cyclic garbage collector does not walk it again, which stopped every request for 0.6 s each time."""
    app.state.warmup.join()
    gc.freeze()
    return app


def app_from_environment():
    """The app factory each `serve --workers N` process runs, with the settings `serve` left in the environment.
    Returns once the app is warm: uvicorn calls it before the process accepts connections, so a worker
    still preparing the map and search takes none (the ones already serving take them)."""
    settings = json.loads(os.environ[APP_SETTINGS_ENV])
    web = settings["web"]
    config = WebConfig(**{**web, "limits": UploadLimits(**web["limits"]), "devices": tuple(web["devices"])})
    hosts = HostAllowList.serving(settings["bound"], settings["allow_host"])
    app = warmed(
        create_app(settings["workspace"], name=settings["name"], token=settings["token"], config=config, hosts=hosts)
    )
    print(f"{WORKER_READY} {os.getpid()}", flush=True)
    return app
