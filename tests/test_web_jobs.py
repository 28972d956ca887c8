"""The generation queue: one worker per device, progress, cache by recipe hash, failures."""

from __future__ import annotations

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
