"""The janitor: a sweep every ``janitor_interval_s``, by whichever worker takes the sweep lock first.

Every worker's main process runs a janitor thread; the lock (``SET NX EX interval``) lets one sweep through
per interval for the whole deployment. A sweep

1. takes the ids of expired job records out of the indexes (``JobStore.prune_expired``), so the key count
   and memory return to their baseline once results expire;
2. watches every active job. A job is *alive* while a lease of one of its units exists (a worker runs it:
   see shared/jobs/leases.py), while the queue its next unit goes to holds messages (it may be waiting its turn;
   for one visibility timeout at most), or, for a pipeline, while its current stage's job is active. A job
   found idle on two sweeps in a row has lost its work (a worker died with messages it had taken, a child died
   between two steps) and the janitor sends its pending units again:

       ingest, encode, train, index, recommend   the job's task
       triplets                                   the shards not done; the join once all are; the planning
                                                  task while none is
       pipeline                                   a step (which looks at its current stage and moves on)

   Units are idempotent and leased, so a resend that meets the original delivery is dropped. A job resent
   ``MAX_RESENDS`` times fails with the reason; a unit that kills its worker fails its job sooner, through
   its start count (shared/jobs/leases.py).

The janitor is the only redelivery of a message whose worker died whole: the broker forgets a message once a
worker has taken it (no kombu ack emulation, see shared/infra/celery_app.py). While the queue holds messages the
lost one cannot be told from one waiting its turn, so a busy queue counts as alive for at most
``visibility_timeout_s`` without a lease, the bound kombu's restore had; then the units are sent again anyway,
and a copy that was only waiting is dropped at admission.

Keys, all with a TTL: ``<prefix>:janitor:lock`` (one interval), ``<prefix>:janitor:idle:<job>`` (the sweep that
first found the job idle; a few intervals), ``<prefix>:janitor:queued:<job>`` (the sweep that first found it
without a lease behind a busy queue; the visibility timeout and a few intervals), ``<prefix>:janitor:resends:<job>``
(a day).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from celery import Celery

from shared.infra.celery_app import CPU_QUEUE, GPU_QUEUE, PRIORITY_STEPS, queue_keys
from shared.jobs.pipeline import STAGES
from shared.jobs.store import Job
from shared.jobs.submit import (
    DESCRIBE_DEVICE_TASK,
    ENCODE_TASK,
    INDEX_TASK,
    INGEST_TASK,
    MINE_TASK,
    PIPELINE_STEP_TASK,
    RECOMMEND_TASK,
    TRAIN_TASK,
)
from shared.services import Services
from shared.store.triplets import plan_shards

log = logging.getLogger(__name__)

MINE_SHARD_TASK = "workers.cpu.mine_shard"
JOIN_TRIPLETS_TASK = "workers.cpu.join_triplets"

MAX_RESENDS = 5
"""A job whose work was lost this many times fails instead of being sent again."""

JOB_TASKS = {
    "ingest": INGEST_TASK,
    "triplets": MINE_TASK,
    "encode": ENCODE_TASK,
    "train": TRAIN_TASK,
    "index": INDEX_TASK,
    "recommend": RECOMMEND_TASK,
    "pipeline": PIPELINE_STEP_TASK,
    "device": DESCRIBE_DEVICE_TASK,
}
"""The task that runs each kind of job (``args=[job id, params]``), as ``shared.jobs.submit`` sends it."""


@dataclass(frozen=True)
class Unit:
    """A part of a job that a message runs: its lease name, its task and the task's arguments."""

    name: str
    task: str
    args: list[Any]

    @property
    def queue(self) -> str:
        return GPU_QUEUE if self.task.startswith("workers.gpu.") else CPU_QUEUE


class Janitor:
    def __init__(self, services: Services, celery: Celery, *, worker: str) -> None:
        self._svc = services
        self._celery = celery
        self._worker = worker
        self._prefix = services.settings.key_prefix
        self._interval = services.settings.janitor_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ------------------------------------------------------------------------------------
    def start(self, **_: Any) -> None:
        self._thread = threading.Thread(target=self._loop, name="movierec-janitor", daemon=True)
        self._thread.start()

    def stop(self, **_: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval / 3):
            try:
                lock = f"{self._prefix}:janitor:lock"
                if self._svc.redis.set(lock, self._worker, nx=True, px=int(self._interval * 1000)):
                    report = self.sweep()
                    if any(report.values()):
                        log.info("janitor: %s", report)
            except redis.RedisError:
                log.warning("janitor sweep failed (Redis unreachable?); trying again", exc_info=True)
            except Exception:
                log.exception("janitor sweep failed; trying again")

    # -- one sweep -------------------------------------------------------------------------------------
    def sweep(self) -> dict[str, int]:
        """Prune expired ids, then look after the active jobs; answers what it did."""
        jobs = self._svc.jobs
        report = {"pruned": jobs.prune_expired(), "resent": 0, "failed": 0, "forgotten": 0}
        active = set(jobs.active_ids())
        waiting = self._waiting() if active else {}  # once a sweep, not once a job
        for job_id in active:
            job = jobs.get(job_id)
            if job is None or job.finished:  # gone without finishing (deleted), or finished since the read
                jobs.forget(job_id)
                report["forgotten"] += job is None
                continue
            if job.kind not in JOB_TASKS:
                log.error("janitor: job %s has an unknown kind %r; left alone", job_id, job.kind)
                continue
            units = self.pending_units(job)
            idle_key = f"{self._prefix}:janitor:idle:{job_id}"
            if self._alive(job, units, active=active, waiting=waiting):
                self._svc.redis.delete(idle_key)
                continue
            if self._svc.redis.set(idle_key, f"{time.time():.3f}", nx=True, ex=int(self._interval * 4) + 1):
                continue  # idle for the first time: look again next sweep
            self._svc.redis.delete(idle_key)
            report["resent" if self._resend(job, units) else "failed"] += 1
        return report

    def pending_units(self, job: Job) -> list[Unit]:
        """What a job still needs run, each as the message that runs it."""
        if job.kind == "triplets" and job.status == "running":
            shards = self._shards(job)
            done = self._svc.jobs.shards_done(job.id) if shards else set()
            todo = [(lo, hi) for lo, hi in shards if f"{lo:09d}" not in done]
            if done and todo:
                total = len(shards)
                return [
                    Unit(f"shard-{lo:09d}", MINE_SHARD_TASK, [job.id, job.params, lo, hi, total]) for lo, hi in todo
                ]
            if done:
                return [Unit("join", JOIN_TRIPLETS_TASK, [job.id, job.params])]
            # No shard came back yet: the planning task may have died before sending them all; it plans again.
        if job.kind == "pipeline":
            return [Unit("step", PIPELINE_STEP_TASK, [job.id])]
        return [Unit("main", JOB_TASKS[job.kind], [job.id, job.params])]

    def _shards(self, job: Job) -> list[tuple[int, int]]:
        dataset = self._svc.datasets.get(str(job.params.get("dataset")))
        if dataset is None:
            return []
        return plan_shards(int(dataset["counts"]["movies"]), int(job.params["shard_size"]))

    def _alive(self, job: Job, units: list[Unit], *, active: set[str], waiting: dict[str, int]) -> bool:
        r = self._svc.redis
        if job.kind == "pipeline":
            raw = self._svc.jobs.field(job.id, "pipeline")
            if raw is None:
                return False
            state = json.loads(raw)
            stage = STAGES[state["stage"]] if state["stage"] < len(STAGES) else None
            child = state["children"].get(stage) if stage else None
            return child is not None and child in active
        leases = [self._svc.units.lease_key(job.id, name) for name in {"main", "join", *(u.name for u in units)}]
        queued = f"{self._prefix}:janitor:queued:{job.id}"
        if cast(int, r.exists(*leases)):
            r.delete(queued)
            return True
        # Messages waiting in the unit's queue: this one may be among them, for a visibility timeout at most.
        if not any(waiting[u.queue] for u in units):
            return False
        bound = self._svc.settings.visibility_timeout_s
        r.set(queued, f"{time.time():.3f}", nx=True, ex=bound + int(self._interval * 4) + 1)
        since = cast("bytes | None", r.get(queued))
        return since is None or time.time() - float(since) < bound

    def _waiting(self) -> dict[str, int]:
        """Messages waiting in each queue, every priority step counted (one round trip)."""
        queues = (CPU_QUEUE, GPU_QUEUE)
        pipe = self._svc.redis.pipeline(transaction=False)
        for queue in queues:
            for key in queue_keys(self._prefix, queue):
                pipe.llen(key)
        lengths = iter(cast("list[int]", pipe.execute()))
        return {queue: sum(next(lengths) for _ in PRIORITY_STEPS) for queue in queues}

    def _resend(self, job: Job, units: list[Unit]) -> bool:
        """Send the units again, or fail the job when it was resent too often; True when resent."""
        count = cast(int, self._svc.redis.incr(f"{self._prefix}:janitor:resends:{job.id}"))
        self._svc.redis.expire(f"{self._prefix}:janitor:resends:{job.id}", 24 * 3600)
        if count > MAX_RESENDS:
            message = f"its work was lost {MAX_RESENDS} times (no worker finished it); not sent again"
            self._svc.jobs.fail(job.id, code="lost", message=message, details={"resends": MAX_RESENDS})
            parent = job.params.get("parent")
            if parent:
                self._celery.send_task(PIPELINE_STEP_TASK, args=[parent["id"]])
            log.warning("janitor: job %s failed: %s", job.id, message)
            return False
        self._svc.redis.delete(f"{self._prefix}:janitor:queued:{job.id}")
        for unit in units:
            self._celery.send_task(unit.task, args=unit.args)
        log.warning("janitor: job %s (%s) was idle with no worker on it; sent %s again", job.id, job.kind,
                    ", ".join(u.name for u in units))  # fmt: skip
        return True
