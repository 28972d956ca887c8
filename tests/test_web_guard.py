"""Issue 15: the server reads no file but store images and its uploads, answers only to its own Host,
bounds what one request or client can cost, and names a broken workspace file instead of failing."""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipatlas._serve import serving_in_thread
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas
from clipatlas.cli import main
from clipatlas.web.app import create_app
from clipatlas.web.config import WebConfig
from clipatlas.web.jobs import DONE, GenerationQueue, QueueFull
from clipatlas.web.security import HostAllowList
from clipatlas.web.steering import UploadRegistry
from clipatlas.workspace import Workspace

LOOPBACK = ("127.0.0.1", 50000)
LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_synthetic_atlas(tmp_path_factory.mktemp("guard"), SyntheticAtlasConfig(n_features=300, n_images=120))


@pytest.fixture(scope="module")
def client(workspace):
    with TestClient(base_url=LOCAL, app=create_app(workspace.root), client=LOOPBACK) as test_client:
        yield test_client


def png_bytes(colour=(200, 30, 30), size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- 1. no file is read but store images and this server's uploads ------------------------------
@pytest.mark.parametrize("where", ["image", "transfer", "difference"])
def test_a_file_in_the_servers_directory_is_never_read(client, tmp_path, monkeypatch, where):
    (tmp_path / "secret.png").write_bytes(png_bytes())
    monkeypatch.chdir(tmp_path)  # the bare name resolves here, as in the server's working directory

    def recipe(name):
        edits = {
            "image": [],
            "transfer": [{"op": "transfer", "image": name}],
            "difference": [{"op": "difference", "image": "img000001", "other": name}],
        }[where]
        return {"image": name if where == "image" else "img000002", "edits": edits, "seed": 1}

    present = client.post("/api/generate", json=recipe("secret.png"))
    absent = client.post("/api/generate", json=recipe("absent.png"))
    assert present.status_code == absent.status_code == 422
    # The same words whether or not the file exists: the answer tells nothing about the disk.
    assert present.json()["detail"].replace("secret", "absent") == absent.json()["detail"]


def test_steerer_decides_which_files_a_recipe_reads(workspace, tmp_path):
    from clipatlas.atlas import Atlas
    from clipatlas.errors import UserError
    from clipatlas.steer.engine import Steerer

    image = tmp_path / "mine.png"
    image.write_bytes(png_bytes())
    upload_id = "ab" * 16
    upload = Workspace.of(workspace.root).upload(upload_id)
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(png_bytes())
    atlas = Atlas.open(workspace.root)
    command_line, web = Steerer(atlas), Steerer(atlas, allow_files=False)
    assert command_line.file_of(str(image)) == image and command_line.row_of(str(image)) is None
    assert web.file_of(str(image)) is None
    with pytest.raises(UserError, match="not a store image id nor an image uploaded"):
        web.row_of(str(image))
    for steerer in (command_line, web):  # a recipe saved from the playground replays on the command line
        assert steerer.file_of(f"upload:{upload_id}") == upload
    assert web.file_of("upload:../../etc/passwd") is None and web.row_of("img000001") == 1


# ---- 2. the Host allow-list (DNS rebinding) --------------------------------------------------------
def test_rebinding_host_is_refused_everywhere(client):
    attacker = {"host": "attacker.example:8000", "origin": "http://attacker.example:8000"}
    assert client.get("/", headers=attacker).status_code == 400
    assert client.get("/api/summary", headers=attacker).status_code == 400
    refused = client.post("/api/uploads", headers=attacker, files={"file": ("x.png", png_bytes(), "image/png")})
    assert refused.status_code == 400 and "--allow-host" in refused.json()["detail"]
    generate = client.post("/api/generate", headers=attacker, json={"image": "img000001", "edits": []})
    assert generate.status_code == 400
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        assert client.get("/api/summary", headers={"host": host}).status_code == 200


def test_allow_list_from_the_bound_address_and_flag():
    bound = HostAllowList.serving("192.168.1.5", ["Atlas.Example.org"])
    assert bound.allows("192.168.1.5:8000") and bound.allows("atlas.example.org") and bound.allows("localhost")
    assert not bound.allows("10.0.0.1:8000") and not bound.allows("evil.example") and not bound.allows(None)
    everywhere = HostAllowList.serving("0.0.0.0")
    assert everywhere.allows("10.0.0.1:8000") and everywhere.allows(f"{socket.gethostname()}:8000")
    assert not everywhere.allows("attacker.example:8000")  # rebinding needs a name, and names are listed


def test_serve_flag_allow_host(workspace, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    assert main(["serve", "-w", str(workspace.root), "--port", "8125", "--allow-host", "a.example,B.example"]) == 0
    with TestClient(base_url="http://b.example:8125", app=served[0], client=LOOPBACK) as named:
        assert named.get("/api/summary").status_code == 200
        assert named.get("/api/summary", headers={"host": "c.example"}).status_code == 400


# ---- 3. input that gave 500 ----------------------------------------------------------------------
@pytest.mark.parametrize("query", ["²", "#١٢", "9" * 5000, "%", "_", "\\", "'; DROP TABLE labels; --", "\x00"])
def test_search_strings_never_500(client, query):
    for url in ("/api/search", "/search"):
        response = client.get(url, params={"q": query}, headers={"accept": "text/html"})
        assert response.status_code in (200, 422), (url, query, response.status_code)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"image": "img000001", "edits": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"image": "img000001", "settings": ' + b'{"a":' * 40 + b"1" + b"}" * 41,
    ],
)
def test_deeply_nested_bodies_refused_unparsed(client, body):
    response = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "nests deeper" in response.json()["detail"]


@pytest.mark.parametrize(
    "text",
    [
        '{"image": "img000001", "edits": [{"op": "set", "feature": 1, "value": NaN}]}',
        '{"image": "img000001", "edits": [{"op": "add", "feature": 1, "value": Infinity}]}',
        '{"image": "img000001", "edits": [{"op": "difference", "image": "img000002", "other": "img000003", '
        '"value": -Infinity}]}',
        '{"image": "img000001", "edits": [{"op": "scale", "feature": 1, "value": 1e999}]}',
        '{"image": "img000001", "edits": [], "seed": 1e999}',
        '{"image": "img000001", "edits": [], "seed": NaN}',
        '{"image": "img000001", "edits": [{"op": "set", "feature": NaN, "value": 1}]}',
        '{"image": "img000001", "edits": [], "schema_version": Infinity}',
    ],
)
def test_non_finite_numbers_are_422(client, text):
    response = client.post("/api/generate", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"].startswith("invalid")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_query_numbers_are_422(client, value):
    assert client.get("/api/features", params={"min_score": value}).status_code == 422
    page = client.get("/features", params={"min_score": value}, headers={"accept": "text/html"})
    assert page.status_code == 422 and "finite" in page.text


# ---- 4. bounded resources ----------------------------------------------------------------------------
def blocking_queue(release: threading.Event, **limits) -> GenerationQueue:
    def run(recipe, progress):
        release.wait(10)
        return {"images": [b"", b""]}

    return GenerationQueue(run, **limits)


def test_queue_bounds_each_client_and_the_whole():
    release = threading.Event()
    jobs = blocking_queue(release, max_active=3, per_client=2)
    try:
        jobs.submit("a1", None, client="a")
        jobs.submit("a2", None, client="a")
        assert jobs.submit("a1", None, client="a").id == "a1"  # the same recipe again is the same job: no room needed
        with pytest.raises(QueueFull, match="per client") as mine:
            jobs.submit("a3", None, client="a")
        assert mine.value.retry_after >= 1
        jobs.submit("b1", None, client="b")
        with pytest.raises(QueueFull, match="its limit"):
            jobs.submit("c1", None, client="c")
    finally:
        release.set()
        jobs.close()
    for job_id in ("a1", "a2", "b1"):
        assert jobs.get(job_id).status == DONE
    jobs.submit("a3", None, client="a")  # room again once the jobs finished


def test_full_queue_answers_429_with_retry_after(workspace):
    release = threading.Event()
    app = create_app(workspace.root)
    app.state.context.jobs = blocking_queue(release, max_active=8, per_client=2)
    with TestClient(base_url=LOCAL, app=app, client=LOOPBACK) as one_client:
        try:
            statuses = [
                one_client.post("/api/generate", json={"image": "img000001", "edits": [], "seed": seed})
                for seed in range(3)
            ]
            assert [r.status_code for r in statuses] == [200, 200, 429]
            assert int(statuses[2].headers["retry-after"]) >= 1 and "per client" in statuses[2].json()["detail"]
        finally:
            release.set()
            app.state.context.jobs.close()


def test_uploads_expire_by_age_then_least_recently_used(tmp_path):
    ws = Workspace(tmp_path)
    registry = UploadRegistry(max_kept=10, workspace=ws, max_bytes=10_000, max_age_s=3600)
    images = [Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)) for i in range(4)]
    datas = [png_bytes(colour=(40 * i, 0, 0)) for i in range(4)]
    ids = [registry.add(data, image, np.zeros(4)) for data, image in zip(datas, images, strict=True)]
    now = time.time()
    os.utime(ws.upload(ids[0]), (now - 7200, now - 7200))  # unused for two hours: past the age limit
    os.utime(ws.upload(ids[1]), (now - 60, now - 60))
    assert registry.expire() == [ws.upload(ids[0])]
    assert not ws.upload(ids[0]).exists() and ws.upload(ids[1]).exists()
    with pytest.raises(Exception, match="upload the image again"):
        registry.png(ids[0])
    size = ws.upload(ids[2]).stat().st_size
    tight = UploadRegistry(max_kept=10, workspace=ws, max_bytes=2 * size, max_age_s=3600)  # room for two
    assert not ws.upload(ids[1]).exists()  # the least recently used went first
    assert ws.upload(ids[2]).exists() and ws.upload(ids[3]).exists()
    newest = tight.add(png_bytes(colour=(1, 2, 3)), images[0], np.zeros(4))
    assert ws.upload(newest).exists() and len(list(ws.uploads_dir.glob("*.png"))) <= 2


def test_an_upload_received_by_one_process_is_read_back_by_another(tmp_path):
    """`serve --workers N`: the next request for an upload may reach a process that did not receive it."""
    ws = Workspace(tmp_path)
    received = UploadRegistry(max_kept=10, workspace=ws, max_bytes=10_000_000, max_age_s=3600)
    other = UploadRegistry(max_kept=10, workspace=ws, max_bytes=10_000_000, max_age_s=3600)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 600, 3), dtype=np.uint8))
    embedding = np.random.default_rng(1).normal(size=8).astype(np.float32)
    upload_id = received.add(png_bytes(colour=(9, 9, 9)), image, embedding)
    assert other.png(upload_id) == received.png(upload_id)  # the same shown pixels, re-encoded the same way
    assert np.array_equal(other.embedding(upload_id), embedding)
    now = time.time()
    os.utime(ws.upload(upload_id), (now - 7200, now - 7200))
    assert received.expire() == [ws.upload(upload_id)] and not ws.upload_embedding(upload_id).exists()
    with pytest.raises(Exception, match="upload the image again"):
        UploadRegistry(max_kept=10, workspace=ws, max_bytes=10_000_000, max_age_s=3600).embedding(upload_id)


def raw_request(url: str, head: bytes, body_part: bytes, then_close: bool, wait: float = 3.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as conn:
        conn.sendall(head + body_part)
        if then_close:
            return b""
        chunks = []
        try:
            while block := conn.recv(65536):
                chunks.append(block)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_stalled_body_times_out_and_aborted_body_is_one_log_line(workspace, caplog):
    app = create_app(workspace.root, config=WebConfig(body_timeout_s=0.3))
    head = (
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    with caplog.at_level(logging.INFO), serving_in_thread(app) as url:
        answer = raw_request(url, head, b'{"image": ', then_close=False)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.3 s" in answer
        caplog.clear()
        raw_request(url, head, b'{"image": ', then_close=True)
        deadline = time.monotonic() + 5
        while not any("disconnected" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [r for r in caplog.records if r.name.startswith(("clipatlas", "uvicorn"))]
    assert [r.getMessage().split(": ", 1)[1] for r in lines if "disconnected" in r.getMessage()] == [
        "the client disconnected before sending the whole body; nothing was done"
    ]
    assert not any(r.exc_info for r in lines)  # no traceback


# ---- 5. a broken workspace file is a 503 naming it, never a traceback -----------------------------------
@pytest.fixture
def breakable(workspace, tmp_path):
    copy = tmp_path / "ws"
    shutil.copytree(workspace.root, copy)
    return copy


@pytest.mark.parametrize(
    "breaks,named,command,url",
    [
        ("saes/synthetic/atlas/arrays-synthetic", "arrays-synthetic is missing", "clipatlas atlas -w", "/features/5"),
        (
            "store/metadata/metadata_00000.parquet",
            "metadata_00000.parquet is missing",
            "clipatlas embed",
            "/images/img000003",
        ),
    ],
)
def test_missing_part_answers_503_naming_it(breakable, breaks, named, command, url):
    app = create_app(breakable)
    target = breakable / breaks
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with TestClient(base_url=LOCAL, app=app, client=LOOPBACK, raise_server_exceptions=False) as test_client:
        for path, headers in ((url, {"accept": "text/html"}), ("/api" + url, {})):
            response = test_client.get(path, headers=headers)
            assert response.status_code == 503, (path, response.status_code, response.text[:200])
            text = response.text if headers else response.json()["detail"]
            assert named in text and command in text and "Traceback" not in text


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_warm_up_of_a_broken_workspace_logs_one_line_instead_of_a_traceback(breakable, caplog):
    (breakable / "store/metadata/metadata_00000.parquet").unlink()
    with caplog.at_level("WARNING", logger="clipatlas.web.app"):
        create_app(breakable).state.warmup.join()
    warned = [r.getMessage() for r in caplog.records if r.name == "clipatlas.web.app"]
    assert len(warned) == 1 and "warm-up stopped" in warned[0] and "metadata_00000.parquet is missing" in warned[0]


def test_atlas_damaged_while_serving_answers_503(breakable):
    app = create_app(breakable)
    app.state.warmup.join()  # the start-up warm-up has read the map and labels before the damage
    db = breakable / "saes/synthetic/atlas/atlas.sqlite"
    db.write_bytes(bytes(range(256)) * 64)  # overwritten in place: the open connection now reads garbage
    with TestClient(base_url=LOCAL, app=app, client=LOOPBACK, raise_server_exceptions=False) as test_client:
        for path, headers in (("/features/7", {"accept": "text/html"}), ("/api/features/7", {})):
            response = test_client.get(path, headers=headers)
            assert response.status_code == 503
            text = response.text if headers else response.json()["detail"]
            assert "atlas.sqlite is damaged" in text and "clipatlas atlas -w" in text
