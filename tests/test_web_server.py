"""`clipatlas serve`: loopback by default, a token on other addresses, clear errors."""

from __future__ import annotations

import socket

import pytest
import uvicorn
from fastapi.testclient import TestClient

from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas
from clipatlas.cli import main
from clipatlas.errors import UserError
from clipatlas.web import server
from clipatlas.web.security import is_loopback


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_synthetic_atlas(tmp_path_factory.mktemp("serve"), SyntheticAtlasConfig(n_features=64, n_images=32))


@pytest.fixture
def captured_run(monkeypatch):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.setattr(server, "check_port_free", lambda host, port: None)
    return calls


@pytest.mark.parametrize(
    "host,expected",
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.0.3", False),
        ("::", False),
        ("example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_app_url():
    assert server.app_url("127.0.0.1", 8000, None) == "http://127.0.0.1:8000/"
    assert server.app_url("::1", 80, "abc") == "http://[::1]:80/?token=abc"
    assert server.app_url("0.0.0.0", 80, None) == f"http://{socket.gethostname()}:80/"


def test_loopback_serve_prints_plain_url(workspace, captured_run, capsys):
    assert main(["serve", "-w", str(workspace.root), "--port", "8123"]) == 0
    app, kwargs = captured_run[0]
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8123
    assert "http://127.0.0.1:8123/ " in capsys.readouterr().out
    assert app.state.context.views._map_json is not None  # the map was prepared before the URL was printed


def test_public_serve_makes_a_token_and_enforces_it(workspace, captured_run, capsys):
    assert main(["serve", "-w", str(workspace.root), "--host", "0.0.0.0", "--port", "8124"]) == 0
    app, kwargs = captured_run[0]
    assert kwargs["host"] == "0.0.0.0"
    printed = capsys.readouterr().out
    token = printed.split("?token=")[1].split()[0]
    assert len(token) >= 24
    with TestClient(base_url="http://127.0.0.1", app=app, client=("203.0.113.5", 4000)) as remote:
        assert remote.post("/api/uploads").status_code == 401
        assert remote.post("/api/uploads", headers={"x-clipatlas-token": token}).status_code == 422  # no file sent


def test_serve_without_atlas_says_what_to_run(tmp_path, capsys):
    assert main(["serve", "-w", str(tmp_path)]) == 2
    assert "has no embedding store; make one with: clipatlas embed SOURCE" in capsys.readouterr().err


def test_busy_port_is_a_user_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="--port"):
            server.check_port_free("127.0.0.1", taken.getsockname()[1])
