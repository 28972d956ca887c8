"""Run the app with uvicorn: loopback by default, a token on every other address."""

from __future__ import annotations

import logging
import socket

from clipatlas._serve import serving_in_thread  # noqa: F401  (tests and benchmarks serve the app with it)
from clipatlas.atlas.check import check_workspace
from clipatlas.errors import UserError
from clipatlas.web.app import create_app
from clipatlas.web.config import ServeConfig, WebConfig
from clipatlas.web.security import HostAllowList, is_loopback, new_token

log = logging.getLogger(__name__)


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
    app = create_app(workspace, name=name, token=token, config=web, hosts=hosts)
    check_port_free(config.host, config.port)
    app.state.context.views.map_json()  # the map is ready before the URL is printed
    url = app_url(config.host, config.port, token)
    print(f"clipatlas is serving {workspace} at {url}  (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
