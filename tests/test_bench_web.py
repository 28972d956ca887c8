"""bench/web.py's load client: each client from its own loopback address (so the server's per-address
generation limit sees 50 users, not one), and the CPU accounting of a server and its workers."""

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("bench_web", Path(__file__).parents[1] / "bench" / "web.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_clients_connect_from_their_own_loopback_address_unless_told_to_share():
    async def peers_seen(sources: list[str | None]) -> list[str]:
        seen = []

        async def answer(reader, writer):
            seen.append(writer.get_extra_info("peername")[0])
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for source in sources:
            async with bench.LeanClient(f"http://127.0.0.1:{port}", source=source) as client:
                assert (await client.request("GET", "/")).text == "ok"
        server.close()
        return seen

    own = [bench.client_address(i, one_address=False) for i in range(300)]
    assert len(set(own)) == 300 and own[0] == "127.0.1.1" and own[250] == "127.0.2.1"
    assert bench.client_address(7, one_address=True) is None
    assert asyncio.run(peers_seen([own[0], own[299], None])) == ["127.0.1.1", "127.0.2.50", "127.0.0.1"]


def test_cpu_seconds_counts_the_worker_processes_too():
    busy = "import time; t = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {busy!r}]); exec({busy!r})",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while bench.cpu_seconds(parent.pid) < 1.2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert bench.cpu_seconds(parent.pid) >= 1.2  # 0.6 s in the parent and 0.6 s in its child
    finally:
        import psutil

        for process in psutil.Process(parent.pid).children(recursive=True):
            process.kill()
        parent.kill()
        parent.wait()


def test_the_server_imports_clipatlas_from_the_checkout_it_is_given(tmp_path):
    """`--code` gives a before: run from this repository, the server must still import the other checkout."""
    checkout = tmp_path / "older"
    (checkout / "clipatlas").mkdir(parents=True)
    (checkout / "clipatlas" / "__init__.py").write_text("")
    (checkout / "clipatlas" / "__main__.py").write_text("import clipatlas, sys; print(clipatlas.__file__); sys.exit(0)")
    repo = Path(__file__).parents[1]
    found = subprocess.run(
        bench.server_command([]),
        env=bench.server_environment(checkout, ["uvloop"], tmp_path),
        cwd=repo,  # as `bench/web.py --code OLDER` runs it: from this repository
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == checkout / "clipatlas" / "__init__.py"
    hidden = subprocess.run(
        [sys.executable, "-P", "-c", "import uvloop"],
        env=bench.server_environment(repo, ["uvloop"], tmp_path),
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "hidden by bench/web.py --without" in hidden.stderr
