"""The generation queue: one worker thread per device, progress, results cached by recipe hash.

A job's id is its recipe's hash, so submitting the same recipe twice (a shared link opened by
two people, a double click) returns the job already queued, running or finished instead of
running the model again. Finished results are kept in a bounded LRU; failed jobs are kept so
their error can be read, and are retried when the recipe is submitted again.

The queue is bounded twice: at most `max_active` jobs waiting or running in all, and at most
`per_client` of them from one client, so one user (or script) cannot make everyone else wait.
A refused submission says when to come back (`QueueFull.retry_after`, from recent job times).

With `JobRecords`, every job is also written to disk as it is queued, started and finished, so the
processes of `serve --workers N` answer for each other's jobs (a browser's next request may reach
another process) and never run a finished recipe again; the limits stay per process.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipatlas._io import SchemaError, atomic_write_bytes, atomic_write_json, read_json
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JOB_ID = re.compile(r"[0-9a-f]{16,128}")  # a recipe hash: no id can name another file
JOB_FIELDS = ("status", "progress", "message", "device", "error", "submitted_at", "started_at", "finished_at")


class JobRecords:
    """Jobs on disk, one JSON record each (and a job's images beside it once done), for the processes
    that share a workspace. A queued or running record names the process that owns it; one whose
    process is gone reads as absent, so its recipe runs again. About `max_kept` records are kept, the least
    recently written deleted first: each process looks every `max_kept // 16` finished jobs (a look lists and
    stats the whole folder, a thousand system calls that each wait for the GIL under load)."""

    def __init__(self, directory: Path, max_kept: int = 1024):
        self.dir, self.max_kept = Path(directory), max_kept
        self._prune_every, self._finished_since_prune = max(1, max_kept // 16), 0

    def save(self, job: Job) -> None:
        images = job.result["images"] if job.status == DONE else []
        # Not fsynced: a submission writes one in the event loop, and an fsync waits for the disk's journal
        # (tens of ms while other files are written). A machine crash may leave a record empty or an image
        # short; `load` reads those as absent, and the recipe runs again.
        # The images first: a reader that finds a finished record finds its images.
        for index, png in enumerate(images):
            atomic_write_bytes(self.dir / f"{job.id}.{index}.png", png, durable=False)
        record = {field: getattr(job, field) for field in JOB_FIELDS}
        record |= {"id": job.id, "owner": process_identity(os.getpid()), "images": len(images)}
        if job.status == DONE:
            record["result"] = {k: v for k, v in job.result.items() if k != "images"}
        atomic_write_json(self.dir / f"{job.id}.json", record, durable=False)
        if job.status == DONE:
            self._finished_since_prune += 1
            if self._finished_since_prune >= self._prune_every:
                self._prune()
                self._finished_since_prune = 0

    def load(self, job_id: str) -> Job | None:
        """The job recorded under `job_id`, or None (unknown, unreadable, or owned by a process that is gone)."""
        if not JOB_ID.fullmatch(job_id):
            return None
        try:
            record = read_json(self.dir / f"{job_id}.json")
            if record["status"] in (QUEUED, RUNNING) and process_identity(_pid_of(record["owner"])) != record["owner"]:
                return None
            job = Job(id=job_id, recipe=None, **{field: record[field] for field in JOB_FIELDS})
            if job.status == DONE:
                images = [(self.dir / f"{job_id}.{i}.png").read_bytes() for i in range(record["images"])]
                if not all(png.startswith(PNG_SIGNATURE) for png in images):
                    return None  # cut short by a crash (records are not fsynced)
                job.result = {**record["result"], "images": images}
        except (OSError, SchemaError, KeyError, TypeError):  # missing, half-pruned or foreign: as if never run
            return None
        return job

    def _prune(self) -> None:
        records = sorted(self.dir.glob("*.json"), key=_mtime_or_zero)
        for path in records[: max(0, len(records) - self.max_kept)]:
            for stale in [path, *self.dir.glob(f"{path.stem}.*.png")]:
                stale.unlink(missing_ok=True)


def _mtime_or_zero(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # pruned meanwhile by another process
        return 0.0


HAS_PROC = Path("/proc/self/stat").is_file()  # Linux: a process's start time can be read


def process_identity(pid: int) -> str | None:
    """`pid:start` (start: when the process began, where /proc tells; else `pid:alive`), None for no such
    process. A record from a killed server whose pid a new process took (a container's server is often
    pid 1) must not read as that new process's job."""
    if HAS_PROC:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime (the name may hold spaces)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return f"{pid}:alive"


def _pid_of(owner: str) -> int:
    return int(owner.split(":", 1)[0])


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
        records: JobRecords | None = None,
    ):
        """`records`: where jobs are also written, for other processes serving the same workspace."""
        if not devices:
            raise ValueError("at least one device is needed to run generation jobs")
        self._run = run
        self._max_cached = max_cached
        self._max_active = max_active
        self._per_client = per_client
        self._records = records
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
            if job is None and (elsewhere := self._recorded(job_id)) is not None and elsewhere.status != FAILED:
                return elsewhere  # finished, or running in another process: not run twice
            self._check_room(client)
            job = Job(id=job_id, recipe=recipe, client=client)
            self._jobs[job_id] = job
            self._evict_finished()
        self._record(job)
        self._pending.put(job)
        return job

    def _recorded(self, job_id: str) -> Job | None:
        return self._records.load(job_id) if self._records is not None else None

    def _record(self, job: Job) -> None:
        if self._records is not None:
            try:
                self._records.save(job)
            except (OSError, TypeError, ValueError) as exc:  # a full disk, or a result JSON cannot hold: the other
                # processes cannot answer for this job, but it still runs here
                log.warning("generation job %s not recorded for other processes: %s", job.id, exc)

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
        """The job known by `job_id`: this process's, else one recorded by another process."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None else self._recorded(job_id)

    def position(self, job: Job) -> int | None:
        """How many queued jobs were submitted before `job` (None once it has started, or for another
        process's job)."""
        if job.status != QUEUED:
            return None
        with self._lock:
            if self._jobs.get(job.id) is not job:
                return None
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
        self._record(job)

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
            self._record(job)
