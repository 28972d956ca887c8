"""VLM labelling throughput: labels per second against a local chat-completions server.

    .venv/bin/python bench/interp.py -w demo-atlas [--features 192] [--delay 1.0]

The server (`python -m clipatlas.interp.caption_server`, its own process) answers each call after
`--delay` seconds, standing in for a model's latency, so the ideal rate at concurrency c is
c / delay. The client is clipatlas's own VLM client (the `openai` AsyncOpenAI client, requests as
`clipatlas label --labeller vlm` builds them: 16 JPEG images each), measured at 1, 8 and 32
calls in flight, each run on a fresh answer cache. Two capacity runs show what limits it:
  * server alone: the same request bodies sent with a bare httpx client, delay 0;
  * client + server: clipatlas's client at 32 in flight, delay 0.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipatlas.interp.config import SplitConfig, VLMConfig  # noqa: E402
from clipatlas.interp.run import feature_splits, open_data  # noqa: E402
from clipatlas.interp.vlm import MAX_TOKENS, VLMClient, VLMLabeller  # noqa: E402

KEY_ENV = "CLIPATLAS_BENCH_VLM_KEY"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(workspace: str, delay: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipatlas.interp.caption_server",
            "-w",
            workspace,
            "--port",
            str(port),
            "--delay",
            str(delay),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    process.stdout.readline()  # printed once its images are indexed, just before it listens
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, url
        time.sleep(0.05)
    raise RuntimeError("the caption server did not start")


def client_rate(requests, url: str, concurrency: int) -> dict:
    config = VLMConfig(base_url=url, model="caption-vlm", api_key_env=KEY_ENV, concurrency=concurrency)
    with tempfile.TemporaryDirectory() as cache:
        client = VLMClient(config, Path(cache) / "cache.sqlite")
        started = time.perf_counter()
        answers = client.run(requests, f"c={concurrency}")
        seconds = time.perf_counter() - started
    assert all(a is not None for a in answers), client.usage.format()
    return {"labels": len(requests), "seconds": round(seconds, 2), "labels_per_s": round(len(requests) / seconds, 1)}


def server_rate(requests, url: str, concurrency: int) -> dict:
    """The same bodies through a bare httpx client: what the server itself sustains."""
    import httpx2 as httpx  # the HTTP client the openai package uses

    bodies = [
        json.dumps(
            {"model": "caption-vlm", "messages": r.messages, "max_tokens": MAX_TOKENS, "temperature": 0}
        ).encode()
        for r in requests
    ]

    async def run() -> float:
        semaphore = asyncio.Semaphore(concurrency)
        headers = {"authorization": "Bearer test-key", "content-type": "application/json"}
        async with httpx.AsyncClient(timeout=60) as client:

            async def one(body: bytes) -> None:
                async with semaphore:
                    response = await client.post(f"{url}/chat/completions", content=body, headers=headers)
                    response.raise_for_status()

            started = time.perf_counter()
            await asyncio.gather(*(one(b) for b in bodies))
            return time.perf_counter() - started

    seconds = asyncio.run(run())
    return {"calls": len(bodies), "seconds": round(seconds, 2), "calls_per_s": round(len(bodies) / seconds, 1)}


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-w", "--workspace", required=True, help="a workspace with an atlas and a captioned store")
    parser.add_argument("--name", default=None)
    parser.add_argument("--features", type=int, default=192, help="features labelled per measurement")
    parser.add_argument("--delay", type=float, default=1.0, help="the server's seconds per answer (a model's latency)")
    args = parser.parse_args()
    os.environ[KEY_ENV] = "test-key"

    atlas, data = open_data(args.workspace, args.name, SplitConfig())
    splits, _ = feature_splits(data, SplitConfig())
    labeller = VLMLabeller(data, VLMConfig(base_url="http://unused/v1", model="caption-vlm"))
    started = time.perf_counter()
    requests = [labeller.request(data.view(s)) for s in list(splits.values())[: args.features]]
    prepare = time.perf_counter() - started
    size = sum(len(json.dumps(r.messages)) for r in requests) / len(requests)
    print(
        json.dumps(
            {"requests_prepared": len(requests), "seconds": round(prepare, 2), "mean_body_kb": round(size / 1024, 1)}
        )
    )

    for delay, runs in ((0.0, "capacity"), (args.delay, "latency")):
        server, url = start_server(args.workspace, delay)
        try:
            if runs == "capacity":
                print(
                    json.dumps(
                        {
                            "measure": "server alone (bare httpx)",
                            "delay": 0,
                            "concurrency": 32,
                            **server_rate(requests, url, 32),
                        }
                    )
                )
                print(
                    json.dumps(
                        {
                            "measure": "clipatlas client + server",
                            "delay": 0,
                            "concurrency": 32,
                            **client_rate(requests, url, 32),
                        }
                    )
                )
            else:
                for concurrency in (1, 8, 32):
                    ideal = round(concurrency / delay, 1)
                    row = client_rate(requests[: 16 * concurrency], url, concurrency)
                    print(
                        json.dumps(
                            {"measure": "labels/s", "delay": delay, "concurrency": concurrency, "ideal": ideal, **row}
                        )
                    )
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
