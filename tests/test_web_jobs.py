"""The generation queue: one worker per device, progress, cache by recipe hash, failures."""

from __future__ import annotations

import os
import threading
import time

import pytest

from clipatlas.web.jobs import DONE, FAILED, QUEUED, RUNNING, GenerationQueue


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


class GatedRun:
    """A run function that blocks until released, recording which thread ran each recipe."""

    def __init__(self):
        self.release = threading.Event()
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, recipe, progress):
        progress(0.5, f"half of {recipe}")
        self.release.wait(5)
        with self.lock:
            self.calls.append((recipe, threading.current_thread().name))
        if recipe == "bad":
            raise ValueError("feature 99 does not exist")
        return {"recipe": recipe}


@pytest.fixture
def gated():
    run = GatedRun()
    queue = GenerationQueue(run, devices=("cpu",), max_cached=3)
    yield run, queue
    run.release.set()
    queue.close()


def test_job_reports_progress_then_result(gated):
    run, queue = gated
    job = queue.submit("h1", "r1")
    wait_for(lambda: job.status == RUNNING and job.progress == 0.5)
    assert job.message == "half of r1" and job.device == "cpu"
    run.release.set()
    wait_for(lambda: job.status == DONE)
    assert job.result == {"recipe": "r1"} and job.progress == 1.0


def test_same_hash_is_run_once(gated):
    run, queue = gated
    first = queue.submit("h1", "r1")
    second = queue.submit("h1", "r1")
    assert second is first
    run.release.set()
    wait_for(lambda: first.status == DONE)
    assert queue.submit("h1", "r1") is first  # cached result, no new run
    time.sleep(0.05)
    assert [recipe for recipe, _ in run.calls] == ["r1"]


def test_one_worker_per_device_runs_jobs_in_order(gated):
    run, queue = gated
    jobs = [queue.submit(f"h{i}", f"r{i}") for i in range(3)]
    wait_for(lambda: jobs[0].status == RUNNING)
    assert jobs[1].status == QUEUED and queue.position(jobs[2]) == 1
    run.release.set()
    wait_for(lambda: all(job.status == DONE for job in jobs))
    assert [recipe for recipe, _ in run.calls] == ["r0", "r1", "r2"]
    assert {thread for _, thread in run.calls} == {"clipatlas-gen-cpu"}


def test_two_devices_run_concurrently():
    started = threading.Barrier(2, timeout=5)

    def run(recipe, progress):
        started.wait()  # only returns when both devices are busy at the same time
        return threading.current_thread().name

    queue = GenerationQueue(run, devices=("cuda:0", "cuda:1"))
    try:
        jobs = [queue.submit("a", "a"), queue.submit("b", "b")]
        wait_for(lambda: all(job.status == DONE for job in jobs))
        assert {job.result for job in jobs} == {"clipatlas-gen-cuda:0", "clipatlas-gen-cuda:1"}
    finally:
        queue.close()


def test_failed_job_keeps_error_worker_survives_and_retry_reruns(gated):
    run, queue = gated
    run.release.set()
    bad = queue.submit("hbad", "bad")
    wait_for(lambda: bad.status == FAILED)
    assert bad.error == "feature 99 does not exist" and bad.result is None
    good = queue.submit("hgood", "good")
    wait_for(lambda: good.status == DONE)
    retry = queue.submit("hbad", "bad")
    assert retry is not bad
    wait_for(lambda: retry.status == FAILED)
    assert [recipe for recipe, _ in run.calls].count("bad") == 2


def test_cache_evicts_oldest_finished_only(gated):
    run, queue = gated
    run.release.set()
    done = [queue.submit(f"h{i}", f"r{i}") for i in range(4)]
    wait_for(lambda: all(job.status == DONE for job in done))
    queue.submit("h4", "r4")
    assert queue.get("h0") is None and queue.get("h1") is None
    assert queue.get("h3") is done[3] and queue.get("h4") is not None


def test_needs_a_device():
    with pytest.raises(ValueError, match="device"):
        GenerationQueue(lambda recipe, progress: None, devices=())


# ---- several processes on one workspace (`serve --workers N`): jobs recorded on disk ------------------
HASH = "ab" * 32  # job ids on disk are recipe hashes
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PngRun:
    """A run function returning two 'images' and a JSON-ready result, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, recipe, progress):
        self.calls += 1
        images = [PNG_SIGNATURE + b"before " + recipe.encode(), PNG_SIGNATURE + b"after"]
        return {"images": images, "decoder": "retrieval", "seconds": 0.01}


def test_a_job_finished_by_one_process_is_answered_and_never_rerun_by_another(tmp_path):
    from clipatlas.web.jobs import JobRecords

    first_run, other_run = PngRun(), PngRun()
    first = GenerationQueue(first_run, records=JobRecords(tmp_path))
    other = GenerationQueue(other_run, records=JobRecords(tmp_path))  # as the other worker process
    try:
        assert other.get(HASH) is None
        job = first.submit(HASH, "r1", client="127.0.0.1")
        wait_for(lambda: job.status == DONE)
        seen = other.get(HASH)  # a poll that reached the other process
        assert seen.status == DONE and seen.result == job.result and other.position(seen) is None
        again = other.submit(HASH, "r1", client="127.0.0.2")  # the same recipe, submitted there
        assert again.status == DONE and again.result["images"] == [
            PNG_SIGNATURE + b"before r1",
            PNG_SIGNATURE + b"after",
        ]
        assert (first_run.calls, other_run.calls) == (1, 0)
        assert other.get("../../etc/passwd") is None and other.get("AB" * 32) is None  # only hashes name files
    finally:
        first.close()
        other.close()


def test_a_record_left_running_by_a_dead_process_is_run_again(tmp_path):
    import json
    import subprocess
    import sys

    from clipatlas.web.jobs import JobRecords, process_identity

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert process_identity(int(gone.stdout)) is None
    dead_owner = f"{int(gone.stdout)}:12345"  # as that process wrote it while it lived
    record = {"schema_version": 1, "id": HASH, "owner": dead_owner, "images": 0, "status": RUNNING, "progress": 0.5}
    record |= {
        "message": "",
        "device": "cpu",
        "error": None,
        "submitted_at": 1.0,
        "started_at": 2.0,
        "finished_at": None,
    }
    (tmp_path / f"{HASH}.json").write_text(json.dumps(record))
    live = {**record, "id": "cd" * 32, "owner": process_identity(os.getpid())}  # a live process's, still running
    (tmp_path / f"{'cd' * 32}.json").write_text(json.dumps(live))
    run = PngRun()
    queue = GenerationQueue(run, records=JobRecords(tmp_path))
    try:
        assert queue.get(HASH) is None and queue.get("cd" * 32).status == RUNNING
        job = queue.submit(HASH, "r1")
        wait_for(lambda: job.status == DONE)
        assert run.calls == 1 and queue.submit("cd" * 32, "r2").status == RUNNING and run.calls == 1
    finally:
        queue.close()


def test_records_beyond_the_limit_go_least_recently_written_first(tmp_path):
    from clipatlas.web.jobs import JobRecords

    run = PngRun()
    queue = GenerationQueue(run, records=JobRecords(tmp_path, max_kept=2))
    try:
        for i in range(3):
            job = queue.submit(f"{i:02d}" * 32, f"r{i}")
            wait_for(lambda job=job: job.status == DONE)
            time.sleep(0.02)  # distinct modification times
        kept = sorted(p.name for p in tmp_path.iterdir())
        assert kept == [f"{i:02d}" * 32 + suffix for i in (1, 2) for suffix in (".0.png", ".1.png", ".json")]
    finally:
        queue.close()


def test_a_record_cut_short_by_a_crash_reads_as_absent_and_its_recipe_runs_again(tmp_path):
    """Records are not fsynced (a submission writes one in the event loop): after a machine crash an image
    may be empty. Such a record is not served; the recipe runs again."""
    from clipatlas.web.jobs import JobRecords

    first_run, second_run = PngRun(), PngRun()
    first = GenerationQueue(first_run, records=JobRecords(tmp_path))
    try:
        job = first.submit(HASH, "r")
        wait_for(lambda: job.status == DONE)
    finally:
        first.close()
    assert JobRecords(tmp_path).load(HASH).result["images"][1] == PNG_SIGNATURE + b"after"
    (tmp_path / f"{HASH}.1.png").write_bytes(b"")  # what a crash before the data reached the disk leaves
    assert JobRecords(tmp_path).load(HASH) is None
    second = GenerationQueue(second_run, records=JobRecords(tmp_path))
    try:
        again = second.submit(HASH, "r")
        wait_for(lambda: again.status == DONE)
        assert second_run.calls == 1 and JobRecords(tmp_path).load(HASH).result["images"][1] == PNG_SIGNATURE + b"after"
    finally:
        second.close()
