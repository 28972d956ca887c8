"""Web app benchmark: feature-page server time (p95), map load time at the seed's scale, and a load test.

    .venv/bin/python bench/web.py [--features 163840] [--images 8192] [--pages 300]
    .venv/bin/python bench/web.py --load 10000 [--clients 50] [--workspace W] [--code CHECKOUT] [--workers 2]
        [--without httptools,uvloop]  # load test only
    .venv/bin/python bench/web.py --cached-check 10000 [--workspace W] [--code CHECKOUT]  # one cached page
    .venv/bin/python bench/web.py --client-check 10000 [--clients 50]   # what the load client alone can do

Builds (once, cached under bench/out/) a synthetic atlas of 163,840 features through the atlas
schema, then
  * requests `--pages` distinct random feature pages in-process and reads the server's own
    time from the `Server-Timing` header (p50 / p95 / max), plus the HTML size;
  * serves the app with uvicorn (the map JSON prepared first, as `clipatlas serve` does before
    printing its URL) and opens /map in headless Chromium, timing navigation start to the map
    being drawn: first visit (fresh browser, nothing cached) and second visit.
Targets: feature page p95 < 30 ms; map load < 2 s.

`--load N`: `clipatlas serve` in its own process on the same atlas, and `--clients` concurrent
clients (asyncio, one keep-alive connection each: `LeanClient`, one process) sending N requests in a
fixed mix: HTML pages, JSON,
thumbnails, search, the map, and playground generations (retrieval) polled until done. A client
told 429 waits its Retry-After and submits again, as the playground does not but any client
should. Errors: transport failures, 5xx, failed jobs and any status the mix does not expect.
`--workspace`: load-test that workspace's atlas instead of the synthetic one (a copy: opening an
atlas may add an index to it). `--code`: serve from another checkout (a before on the same atlas).

Each client connects from its own loopback address (127.0.1.1, 127.0.1.2, ...), as 50 users have 50
addresses; `--one-address`: all from 127.0.0.1, so the server's per-address limit (4 generations waiting or
running) refuses most generations with 429 and the clients sleep out the Retry-After. The result records the
CPU seconds of the server (all its processes) and of the client, which shares the machine.

`--skip generate`: the mix without those kinds of request (pages only: no generations, so no client
waits out a 429; what the server serves, not how long the generation queue makes clients sleep).

`--without httptools,uvloop`: the server runs as an install without those modules would (uvicorn's
pure-Python h11 and asyncio's loop), e.g. for a before of code that did not depend on them.

`--cached-check N`: `clipatlas serve` (from `--code`) answering one page it has cached (the home page) N
times to the same clients: what the HTTP stack costs a request when the answer itself costs nothing.

`--client-check N`: the same clients sending N requests to a trivial HTTP server (a fixed 2-byte
answer, its own process), so the load client's own ceiling is known next to the server's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipatlas._io import atomic_write_json, read_json  # noqa: E402
from clipatlas.atlas.synthetic import SyntheticAtlasConfig, write_synthetic_atlas  # noqa: E402
from clipatlas.web.server import WORKER_READY  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def synthetic_workspace(out: Path, cfg: SyntheticAtlasConfig) -> Path:
    root = out / f"web-atlas-{cfg.n_features}-{cfg.n_images}"
    marker = root / "synthetic.json"
    if not marker.is_file():
        if root.exists():
            shutil.rmtree(root)  # a half-written earlier attempt
        started = time.perf_counter()
        write_synthetic_atlas(root, cfg)
        atomic_write_json(marker, {"config": cfg.__dict__, "seconds": time.perf_counter() - started})
    print(f"synthetic atlas: {root} (built in {read_json(marker)['seconds']:.1f} s)")
    return root


def feature_pages(app, features: np.ndarray) -> dict:
    from fastapi.testclient import TestClient

    server_ms, wall_ms, sizes = [], [], []
    with TestClient(base_url="http://127.0.0.1", app=app, client=("127.0.0.1", 1)) as client:
        client.get("/features/0")  # templates compiled, connections opened
        for fid in features:
            started = time.perf_counter()
            response = client.get(f"/features/{int(fid)}", headers={"accept": "text/html"})
            wall_ms.append(1000 * (time.perf_counter() - started))
            assert response.status_code == 200, response.text[:200]
            server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))
            sizes.append(len(response.content))
    return {
        "pages": len(features),
        "server_p50_ms": float(np.percentile(server_ms, 50)),
        "server_p95_ms": float(np.percentile(server_ms, 95)),
        "server_max_ms": float(np.max(server_ms)),
        "client_p95_ms": float(np.percentile(wall_ms, 95)),
        "html_kib_mean": float(np.mean(sizes) / 1024),
    }


def map_load(app) -> dict:
    from playwright.sync_api import sync_playwright

    from clipatlas.web.server import serving_in_thread

    timings = {}
    with serving_in_thread(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        for visit in ("first", "second"):
            started = time.perf_counter()
            page.goto(f"{url}/map")
            page.wait_for_selector("body[data-map-ready]", timeout=60_000)
            timings[f"map_{visit}_s"] = time.perf_counter() - started
            timings[f"map_{visit}_points"] = page.evaluate("window.clipatlasMap.count")
        draws = []
        for step in range(20):  # zoom in and out: each step redraws every point
            page.mouse.wheel(0, -120 if step % 2 else 120)
            page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            draws.append(page.evaluate("window.clipatlasMap.drawMs()"))
        timings["map_redraw_ms_median"] = float(np.median(draws))
        timings["map_redraw_ms_max"] = float(np.max(draws))
        page.screenshot(path=str(ROOT / "bench" / "out" / "web-map.png"))
        browser.close()
    return timings


# (kind, weight): the share of each request in the load test's mix.
LOAD_MIX = (
    ("feature_page", 25),
    ("feature_json", 15),
    ("feature_brief", 5),
    ("search_json", 10),
    ("search_page", 5),
    ("thumbnail", 15),
    ("image_json", 10),
    ("index_page", 3),
    ("playground_page", 2),
    ("map_json", 1),
    ("generate", 5),
)
EXPECTED = {"search_page": (200, 303), "generate": (200, 429)}


class LoadPlan:
    """What the clients ask for: alive features, store images with thumbnails, label words, recipes."""

    def __init__(self, root: Path, seed: int = 0):
        from clipatlas.atlas.db import connect
        from clipatlas.atlas.synthetic import WORDS
        from clipatlas.workspace import Workspace

        # Read-only SQL, not Atlas.open: opening may add an index, and a before run must meet the atlas as it was.
        conn = connect(Workspace.of(root).sae(None).atlas_db, readonly=True)
        alive = [r[0] for r in conn.execute("SELECT feature FROM features WHERE alive = 1 ORDER BY feature")]
        rng = np.random.default_rng(seed)
        self.features = rng.choice(alive, size=2000).tolist()
        top = "SELECT image_id FROM examples WHERE feature = ? AND kind = 'top' ORDER BY rank LIMIT 2"
        self.images = sorted({r[0] for f in self.features[:200] for r in conn.execute(top, (int(f),))})
        conn.close()
        self.words = list(WORDS)
        sources, targets = self.images[:20], self.features[:10]
        # 200 distinct recipes: the same recipe sent twice is served from the job cache, as a shared link is.
        self.recipes = [
            {"image": image, "edits": [{"op": "set", "feature": int(f), "value": 2.0, "unit": "max"}], "seed": 1}
            for image in sources
            for f in targets
        ]

    def url(self, kind: str, rng: np.random.Generator) -> str:
        feature = int(rng.choice(self.features))
        image = str(rng.choice(self.images))
        word = str(rng.choice(self.words))
        return {
            "feature_page": f"/features/{feature}",
            "feature_json": f"/api/features/{feature}",
            "feature_brief": f"/api/features/{feature}/brief",
            "search_json": f"/api/search?q={word}",
            "search_page": f"/search?q={word}",
            "thumbnail": f"/thumbs/{image}",
            "image_json": f"/api/images/{image}",
            "index_page": "/",
            "playground_page": "/playground",
            "map_json": "/api/map",
        }[kind]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hiding(modules: list[str], out: Path) -> list[str]:
    """A folder to put first on the server's path, in which importing each of `modules` fails, as in an
    install without them (uvicorn then falls back to h11 for httptools and asyncio's loop for uvloop)."""
    if not modules:
        return []
    folder = out / "hidden-modules"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in modules:
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} hidden by bench/web.py --without')\n")
    return [str(folder)]


def server_command(arguments: list[str]) -> list[str]:
    """`python -P -m clipatlas ARGUMENTS`, importing clipatlas from the checkout `server_environment` names.
    -P: `-m` otherwise puts the working directory first on the path, and a run from this checkout then
    served this checkout's clipatlas whatever `code` said (every "before" of the web load tests until
    stop 24 did)."""
    return [sys.executable, "-P", "-m", "clipatlas", *arguments]


def server_environment(code: Path, without: list[str], out: Path) -> dict[str, str]:
    """The server's environment: `code` (after the folder hiding `without`) on its path, one thread."""
    path = [*hiding(list(without), out), str(code)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}


def start_server(
    root: Path, port: int, log_path: Path, workers: int = 1, code: Path = ROOT, without: list[str] = ()
) -> subprocess.Popen:
    """`clipatlas serve` in its own process (its own GIL), as a user runs it; returns once it answers
    (with several workers: once each has printed that it is warm).

    `code`: the checkout whose clipatlas serves (another one gives a before/after on the same atlas).
    `without`: modules the server must run without (see `hiding`)."""
    import httpx

    command = server_command(["serve", "-w", str(root), "--port", str(port)])
    command += ["--workers", str(workers)] if workers > 1 else []
    env = server_environment(code, without, log_path.parent)
    server = subprocess.Popen(command, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}); see {log_path}")
        try:
            answers = httpx.get(f"http://127.0.0.1:{port}/api/summary", timeout=2).status_code == 200
        except httpx.TransportError:
            answers = False
        # Several workers: each prints a line once warm (the first to answer may be the only one warm yet).
        if answers and (workers == 1 or log_path.read_text().count(WORKER_READY) >= workers):
            return server
        time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"the server did not answer within 180 s; see {log_path}")


class Answer:
    """What `LeanClient` read: the parts of an httpx response the load test looks at."""

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.content = status_code, headers, body

    @property
    def text(self) -> str:
        body = gzip.decompress(self.content) if self.headers.get("content-encoding") == "gzip" else self.content
        return body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.text)


class LeanClient:
    """HTTP/1.1 over one keep-alive connection, as little work per request as Python allows: the load
    test's clients must not be what limits it (httpx cost ~3 ms of CPU a request here; see --client-check).
    Reads Content-Length and chunked bodies; sends Accept-Encoding: gzip, as browsers do."""

    def __init__(self, base: str, timeout: float = 120, source: str | None = None):
        address = base.removeprefix("http://")
        self.host, port = address.split(":")
        self.port, self.timeout = int(port), timeout
        self.local_addr = None if source is None else (source, 0)
        self.reader = self.writer = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        if self.writer is not None:
            self.writer.close()

    async def request(self, method: str, url: str, json: dict | None = None, headers: dict | None = None) -> Answer:
        try:
            return await asyncio.wait_for(self._exchange(method, url, json, headers or {}), self.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            if self.writer is not None:
                self.writer.close()
            self.reader = self.writer = None  # the next request opens a new connection
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc

    async def _exchange(self, method: str, url: str, body_json, headers: dict) -> Answer:
        if self.reader is not None and self.reader.at_eof():  # the server closed it while idle (keep-alive timeout)
            self.writer.close()
            self.reader = self.writer = None
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, local_addr=self.local_addr)
        body = b"" if body_json is None else json.dumps(body_json).encode()
        lines = [f"{method} {url} HTTP/1.1", f"host: {self.host}:{self.port}", "accept-encoding: gzip"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body_json is not None:
            lines += ["content-type: application/json", f"content-length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        found = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        found = {k.lower(): v for k, v in found.items()}
        if "content-length" in found:
            content = await self.reader.readexactly(int(found["content-length"]))
        elif found.get("transfer-encoding") == "chunked":
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            await self.reader.readuntil(b"\r\n")
            content = b"".join(parts)
        else:
            content = b""
        if found.get("connection") == "close":
            self.writer.close()
            self.reader = self.writer = None
        return Answer(status, found, content)


def client_address(index: int, one_address: bool) -> str | None:
    """Client `index`'s source address: its own loopback address (127.0.1.1, 127.0.1.2, ...: Linux answers
    all of 127/8), as 50 users have 50 addresses; with `one_address`, all share 127.0.0.1 and so the
    server's per-address limit on generations (then most of them wait out a 429)."""
    return None if one_address else f"127.0.{1 + index // 250}.{1 + index % 250}"


async def load_test(
    base: str, plan: LoadPlan, total: int, clients: int, seed: int = 0, skip=(), one_address: bool = False
) -> dict:
    mix = [(kind, weight) for kind, weight in LOAD_MIX if kind not in skip]
    kinds = [k for k, _ in mix]
    weights = np.array([w for _, w in mix], dtype=np.float64)
    weights /= weights.sum()
    records: list[tuple[str, int, float]] = []  # (kind, status or -1 for a transport error, seconds)
    failures: list[str] = []
    throttled = 0
    remaining = total

    def take() -> bool:
        nonlocal remaining
        remaining -= 1
        return remaining >= 0

    async def timed(client, kind: str, method: str, url: str, **kwargs):
        started = time.perf_counter()
        try:
            response = await client.request(method, url, **kwargs)
        except ConnectionError as exc:
            records.append((kind, -1, time.perf_counter() - started))
            failures.append(f"{kind} {url}: {type(exc).__name__} {exc}")
            return None
        records.append((kind, response.status_code, time.perf_counter() - started))
        if response.status_code not in EXPECTED.get(kind, (200,)):
            failures.append(f"{kind} {url}: {response.status_code} {response.text[:200]}")
        return response

    async def generate(client, rng) -> None:
        nonlocal throttled
        recipe = plan.recipes[int(rng.integers(len(plan.recipes)))]
        while True:
            response = await timed(client, "generate", "POST", "/api/generate", json=recipe)
            if response is None or response.status_code not in (200, 429):
                return
            if response.status_code == 200:
                break
            throttled += 1
            await asyncio.sleep(float(response.headers.get("retry-after", 1)))
            if not take():
                return
        job = response.json()
        while job["status"] in ("queued", "running") and take():
            await asyncio.sleep(0.1)
            response = await timed(client, "job_poll", "GET", f"/api/jobs/{job['id']}")
            if response is None or response.status_code != 200:
                return
            job = response.json()
        if job["status"] == "failed":
            failures.append(f"job {job['id']} failed: {job['error']}")

    async def one_client(index: int) -> None:
        rng = np.random.default_rng([seed, index])
        async with LeanClient(base, source=client_address(index, one_address)) as client:
            while take():
                kind = kinds[int(rng.choice(len(kinds), p=weights))]
                if kind == "generate":
                    await generate(client, rng)
                else:
                    headers = {"accept": "text/html"} if kind.endswith("_page") else {}
                    await timed(client, kind, "GET", plan.url(kind, rng), headers=headers)

    started = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    wall = time.perf_counter() - started
    by_kind = {}
    for kind in sorted({r[0] for r in records}):
        seconds = np.array([r[2] for r in records if r[0] == kind])
        by_kind[kind] = {
            "n": int(len(seconds)),
            "p50_ms": float(np.percentile(seconds, 50) * 1000),
            "p95_ms": float(np.percentile(seconds, 95) * 1000),
            "max_ms": float(seconds.max() * 1000),
        }
    statuses: dict[str, int] = {}
    for _, status, _ in records:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latencies = np.array([r[2] for r in records])
    return {
        "requests": len(records),
        "clients": clients,
        "wall_s": wall,
        "requests_per_s": len(records) / wall,
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p95_ms": float(np.percentile(latencies, 95) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
        "errors": len(failures),
        "first_errors": failures[:10],
        "throttled_429": throttled,
        "statuses": statuses,
        "by_kind": by_kind,
    }


TRIVIAL_SERVER = """
import asyncio, sys
ANSWER = b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\ncontent-type: text/plain\\r\\n\\r\\nok"
async def answer(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()  # the client closed its connection
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


async def fixed_requests(base: str, total: int, clients: int) -> dict:
    """`clients` concurrent clients as `load_test` makes them, GETting one URL `total` times."""
    seconds: list[float] = []
    remaining = total

    async def one_client() -> None:
        nonlocal remaining
        async with LeanClient(base) as client:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await client.request("GET", "/", headers={"accept": "text/html"})
                seconds.append(time.perf_counter() - started)
                assert response.status_code == 200

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    wall = time.perf_counter() - started
    return {
        "requests": len(seconds),
        "clients": clients,
        "requests_per_s": len(seconds) / wall,
        "p50_ms": float(np.percentile(seconds, 50) * 1000),
        "p99_ms": float(np.percentile(seconds, 99) * 1000),
    }


def client_check(total: int, clients: int) -> dict:
    """The load client's ceiling: its requests per second against a server that does nothing."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", TRIVIAL_SERVER, str(port)])
    try:
        time.sleep(1.0)
        load_before = os.getloadavg()
        results = asyncio.run(fixed_requests(f"http://127.0.0.1:{port}", total, clients))
    finally:
        server.terminate()
        server.wait(30)
    return {**results, "load_average_before": load_before, "load_average_after": os.getloadavg()}


def cached_check(root: Path, out: Path, total: int, clients: int, code: Path = ROOT, without: list[str] = ()) -> dict:
    """What the whole stack costs a request: one page the server has cached (the home page), GET `total`
    times by `clients` clients, through `clipatlas serve` from `code`."""
    port = free_port()
    server = start_server(root, port, out / "web-load-server.log", 1, code, without)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(fixed_requests(base, clients, clients))  # rendered and cached; connections opened
        load_before = os.getloadavg()
        results = asyncio.run(fixed_requests(base, total, clients))
    finally:
        server.terminate()
        server.wait(30)
    return {
        **results,
        "server_code": str(code),
        "server_without": list(without),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (`--workers N`: the worker processes)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def run_load_test(
    root: Path,
    out: Path,
    total: int,
    clients: int,
    workers: int = 1,
    code: Path = ROOT,
    without: list[str] = (),
    skip: list[str] = (),
    one_address: bool = False,
) -> dict:
    plan = LoadPlan(root)
    port = free_port()
    log_path = out / "web-load-server.log"
    server = start_server(root, port, log_path, workers, code, without)
    load_before = os.getloadavg()
    server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
    try:
        results = asyncio.run(
            load_test(f"http://127.0.0.1:{port}", plan, total, clients, skip=skip, one_address=one_address)
        )
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
    finally:
        server.terminate()
        server.wait(30)
    log = log_path.read_text()
    return {
        **results,
        "server_workers": workers,
        "server_code": str(code),
        "server_without": list(without),
        "mix_without": list(skip),
        "client_addresses": 1 if one_address else clients,
        # Cores each side kept busy: the client shares this machine, so its share is not the server's.
        "server_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
        "server_cores": server_cpu / results["wall_s"],
        "client_cores": client_cpu / results["wall_s"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "server_log_lines": len(log.splitlines()),
        "server_tracebacks": log.count("Traceback"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=163_840)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--load", type=int, default=0, help="run only the load test, with this many requests")
    parser.add_argument(
        "--client-check", type=int, default=0, help="only measure the load client against a trivial server"
    )
    parser.add_argument(
        "--cached-check", type=int, default=0, help="only GET one cached page this many times (the stack's own cost)"
    )
    parser.add_argument("--workspace", type=Path, help="load test: this workspace's atlas, not the synthetic one")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients of the load test")
    parser.add_argument("--workers", type=int, default=1, help="server processes of the load test (serve --workers)")
    parser.add_argument(
        "--code", type=Path, default=ROOT, help="load test: serve from this checkout (e.g. an older one, for a before)"
    )
    parser.add_argument(
        "--without",
        default="",
        help="load test: modules the server runs without, comma-separated (httptools,uvloop: as an install "
        "without them, e.g. main's before they were a dependency)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="load test: kinds of request left out of the mix, comma-separated (generate: pages only, no "
        "generations and so no 429 waits)",
    )
    parser.add_argument(
        "--one-address",
        action="store_true",
        help="load test: all clients connect from 127.0.0.1 (as before 2026-11-27), sharing the server's "
        "per-address generation limit, instead of one loopback address each",
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    if args.client_check:
        results = client_check(args.client_check, args.clients)
        atomic_write_json(out / "web-client-check.json", results)
        print(json.dumps(results, indent=2))
        return
    if args.workspace:
        root = args.workspace.resolve()
    else:
        root = synthetic_workspace(out, SyntheticAtlasConfig(n_features=args.features, n_images=args.images, seed=0))
    without = [name for name in args.without.split(",") if name]
    plain = "-without-" + "-".join(without) if without else ""
    if args.cached_check:
        results = cached_check(root, out, args.cached_check, args.clients, args.code.resolve(), without)
        atomic_write_json(out / f"web-cached-{root.name}-{args.code.resolve().name}{plain}.json", results)
        print(json.dumps(results, indent=2))
        return
    if args.load:
        skip = [kind for kind in args.skip.split(",") if kind]
        unknown = sorted(set(skip) - {kind for kind, _ in LOAD_MIX})
        if unknown:
            parser.error(f"--skip: no such kinds {unknown}; the mix has {[kind for kind, _ in LOAD_MIX]}")
        results = run_load_test(
            root, out, args.load, args.clients, args.workers, args.code.resolve(), without, skip, args.one_address
        )
        skipped = "-skip-" + "-".join(skip) if skip else ""
        shared = "-one-address" if args.one_address else ""
        name = (
            f"web-load-{root.name}-{args.code.resolve().name}{plain}{skipped}{shared}-w{args.workers}-n{args.load}.json"
        )
        atomic_write_json(out / name, results)
        print(json.dumps(results, indent=2))
        return

    from clipatlas.atlas import Atlas
    from clipatlas.web.app import create_app

    atlas = Atlas.open(root)
    alive = atlas.map_points().feature
    chosen = np.random.default_rng(1).choice(alive, size=min(args.pages, len(alive)), replace=False)
    results = {
        "features": args.features,
        "alive": int(len(alive)),
        **feature_pages(create_app(root, atlas=atlas), chosen),
    }
    if Path(CHROMIUM).exists():
        served = create_app(root)
        served.state.warmup.join()  # as `clipatlas serve` does before printing the URL
        results.update(map_load(served))
    else:
        print(f"{CHROMIUM} is missing: map load not measured")
    atomic_write_json(out / "web.json", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
