"""The generation queue: one worker thread per device, progress, results cached by recipe hash.

A job's id is its recipe's hash, so submitting the same recipe twice (a shared link opened by
two people, a double click) returns the job already queued, running or finished instead of
running the model again. Finished results are kept in a bounded LRU; failed jobs are kept so
their error can be read, and are retried when the recipe is submitted again.

The queue is bounded twice: at most `max_active` jobs waiting or running in all, and at most
`per_client` of them from one client, so one user (or script) cannot make everyone else wait.
A refused submission says when to come back (`QueueFull.retry_after`, from recent job times).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clipatlas.errors import UserError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
RunFunction = Callable[[Any, ProgressCallback], Any]

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass
class Job:
    id: str
    recipe: Any
    status: str = QUEUED
    progress: float = 0.0
    message: str = "waiting for a worker"
    device: str | None = None
    result: Any = None
    error: str | None = None
    client: str = ""
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def public(self, position: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "message": self.message,
            "device": self.device,
            "error": self.error,
            "queue_position": position,
        }


class QueueFull(Exception):
    """A submission refused because the queue, or the client's share of it, is full."""

    def __init__(self, reason: str, retry_after: int):
        super().__init__(reason)
        self.retry_after = retry_after


class GenerationQueue:
    """Run `run(recipe, progress)` for submitted recipes on one worker thread per device."""

    _STOP = object()

    def __init__(
        self,
        run: RunFunction,
        devices: tuple[str, ...] = ("cpu",),
        max_cached: int = 256,
        max_active: int = 64,
        per_client: int = 4,
    ):
        if not devices:
            raise ValueError("at least one device is needed to run generation jobs")
        self._run = run
        self._max_cached = max_cached
        self._max_active = max_active
        self._per_client = per_client
        self._recent_seconds: collections.deque[float] = collections.deque(maxlen=32)
        self._lock = threading.Lock()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._pending: queue.Queue = queue.Queue()
        self._workers = [
            threading.Thread(target=self._work, args=(device,), name=f"clipatlas-gen-{device}", daemon=True)
            for device in devices
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, job_id: str, recipe: Any, client: str = "") -> Job:
        """The job for `recipe` (the one already known by its id, else a new one queued for `client`);
        raises `QueueFull` when the queue or the client's share of it is full."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status != FAILED:
                self._jobs.move_to_end(job_id)
                return job
            self._check_room(client)
            job = Job(id=job_id, recipe=recipe, client=client)
            self._jobs[job_id] = job
            self._evict_finished()
        self._pending.put(job)
        return job

    def _check_room(self, client: str) -> None:
        active = [job for job in self._jobs.values() if job.status in (QUEUED, RUNNING)]
        if len(active) >= self._max_active:
            raise QueueFull(
                f"the server has {len(active)} generations waiting or running, its limit; try again shortly",
                self._seconds_for(len(active)),
            )
        mine = sum(1 for job in active if job.client == client)
        if mine >= self._per_client:
            raise QueueFull(
                f"you have {mine} generations waiting or running, the limit per client; "
                "wait for one to finish before sending another",
                self._seconds_for(mine),
            )

    def _seconds_for(self, jobs: int) -> int:
        """Roughly when `jobs` jobs will have finished on the workers, from the last jobs' run times."""
        typical = sorted(self._recent_seconds)[len(self._recent_seconds) // 2] if self._recent_seconds else 1.0
        return max(1, math.ceil(typical * jobs / len(self._workers)))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """How many queued jobs were submitted before `job` (None once it has started)."""
        if job.status != QUEUED:
            return None
        with self._lock:
            return sum(
                1 for other in self._jobs.values() if other.status == QUEUED and other.submitted_at < job.submitted_at
            )

    def close(self, timeout: float = 5.0) -> None:
        for _ in self._workers:
            self._pending.put(self._STOP)
        for worker in self._workers:
            worker.join(timeout)

    def _evict_finished(self) -> None:
        # Only finished jobs are evicted: queued and running ones are still wanted by someone.
        finished = [jid for jid, job in self._jobs.items() if job.status in (DONE, FAILED)]
        for jid in finished[: max(0, len(self._jobs) - self._max_cached)]:
            del self._jobs[jid]

    def _work(self, device: str) -> None:
        while True:
            job = self._pending.get()
            if job is self._STOP:
                return
            self._run_one(job, device)

    def _run_one(self, job: Job, device: str) -> None:
        job.status, job.device, job.message, job.started_at = RUNNING, device, "starting", time.time()

        def progress(fraction: float, message: str = "") -> None:
            job.progress = min(max(float(fraction), 0.0), 1.0)
            if message:
                job.message = message

        try:
            job.result = self._run(job.recipe, progress)
        except Exception as exc:  # a failed job reports its error to the page instead of killing the worker
            if isinstance(exc, UserError):  # the recipe's fault, said in one line (e.g. a strength too large)
                log.warning("generation job %s refused: %s", job.id, exc)
            else:
                log.exception("generation job %s failed", job.id)
            job.error = str(exc) or type(exc).__name__
            job.status, job.message = FAILED, "failed"
        else:
            job.progress, job.status, job.message = 1.0, DONE, "done"
        finally:
            job.finished_at = time.time()
            with self._lock:
                self._recent_seconds.append(job.finished_at - job.started_at)
