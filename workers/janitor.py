"""The janitor: a sweep every ``janitor_interval_s``, by whichever worker takes the sweep lock first.

Every worker's main process runs a janitor thread; the lock (``SET NX EX interval``) lets one sweep through
per interval for the whole deployment. A sweep

1. takes the ids of expired job records out of the indexes (``JobStore.prune_expired``), so the key count
   and memory return to their baseline once results expire;
2. watches every active job. A job is *alive* while a message of it waits in a queue (not yet taken by a
   worker, however long the backlog: ``shared.jobs.celery_app.waiting_jobs`` walks the queues once a sweep),
   while a lease of one of its units exists (a live worker process runs it: see shared/jobs/leases.py), or,
   for a pipeline or an evaluation, while the child job it waits on is active. A job found idle on two sweeps
   in a row was taken and orphaned (a worker died with messages it had taken, a child died between two
   steps): the janitor sends its pending units again:

       ingest, encode, train, index, recommend   the job's task
       triplets, recommend-batch                  once planned, the shards not done, or the join once all
                                                  are (shared/jobs/sharded.py ``pending``); before, the task
                                                  that plans
       pipeline                                   a step (which looks at its current stage and moves on)
       evaluate                                   a step while it waits on a child job (alive while that
                                                  is), or its split; once its scoring is planned (its
                                                  baselines' cells start as its recipes train), as a
                                                  sharded job

   Units are idempotent and leased, so a resend that meets the original delivery is dropped. A job resent
   ``MAX_RESENDS`` times fails with the reason; a unit that kills its worker fails its job sooner, through
   its start count (shared/jobs/leases.py). Waiting is never counted: only a job with no message in any queue,
   no lease and no active child is idle.
3. tells each queued job where it waits: its message says which queue and how many messages a worker takes
   before it, with an ETA once two sweeps have seen it move.

The janitor is the only redelivery of a message whose worker died whole: the broker forgets a message once a
worker has taken it (no kombu ack emulation, see shared/jobs/celery_app.py). That includes a message Redis
handed to a worker already dead: Redis frees a closed client at the end of its event loop's turn, so a push in
the turn that read a killed worker's close still goes to its blocked BRPOP. Between a worker taking a message
and its lease there are milliseconds; the second sighting a sweep interval later covers them.

A sweep walks every tenant's jobs in turn (``Services.tenants``: each tenant's jobs live in its keyspace), and
the messages it sends name the job's tenant (shared/jobs/celery_app.py ``TENANT_HEADER``).

Keys, all with a TTL: ``<prefix>:janitor:lock`` (one interval; the deployment's), and in the job's tenant's
keyspace ``<prefix>:janitor:idle:<job>`` (the sweep that first found the job idle; a few intervals),
``<prefix>:janitor:queued:<job>`` (where the last sweep saw the queued job wait, for its ETA; a few intervals),
``<prefix>:janitor:resends:<job>`` (a day).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, cast

import redis
from celery import Celery

from shared.jobs import kinds
from shared.jobs.celery_app import TENANT_HEADER, Waiting, waiting_jobs
from shared.jobs.kinds import PIPELINE_STEP, Task
from shared.jobs.sharded import pending, stored_plan
from shared.jobs.store import Job
from shared.logic import evaluation
from shared.logic.pipeline import PipelineState
from shared.logic.services import Services

log = logging.getLogger(__name__)

MAX_RESENDS = 5
"""A job whose work was lost this many times fails instead of being sent again."""


@dataclass(frozen=True)
class Unit:
    """A part of a job that a message runs: its lease name, its task and the task's arguments."""

    name: str
    task: Task
    args: list[Any]


class Janitor:
    def __init__(self, services: Services, celery: Celery, *, worker: str) -> None:
        self._svc = services
        self._celery = celery
        self._worker = worker
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
                lock = self._svc.cluster_keys.janitor_lock
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
        """Prune expired ids, then look after the active jobs, tenant by tenant (one walk of the queues for all:
        job ids are UUIDs); answers what it did, summed over the tenants."""
        tenants = [self._svc.for_tenant(name) for name in self._svc.tenants()]
        report = {"pruned": sum(svc.jobs.prune_expired() for svc in tenants), "resent": 0, "failed": 0,
                  "forgotten": 0, "waiting": 0}  # fmt: skip
        active = {svc.tenant: set(svc.jobs.active_ids()) for svc in tenants}
        waiting = waiting_jobs(self._celery) if any(active.values()) else {}  # once a sweep, not once a job
        for svc in tenants:
            done = TenantSweep(svc, self._celery).sweep(active[svc.tenant], waiting)
            for what, count in done.items():
                report[what] += count
        return report


class TenantSweep:
    """One tenant's part of a sweep: its jobs, its keys; the messages it sends name the tenant."""

    def __init__(self, services: Services, celery: Celery) -> None:
        self._svc = services
        self._celery = celery
        self._keys = services.keys
        self._interval = services.settings.janitor_interval_s
        self._headers = {TENANT_HEADER: services.tenant}

    def sweep(self, active: set[str], waiting: dict[str, Waiting]) -> dict[str, int]:
        """Look after the tenant's ``active`` jobs, given what waits in the queues; answers what it did."""
        jobs = self._svc.jobs
        report = {"resent": 0, "failed": 0, "forgotten": 0, "waiting": len(waiting.keys() & active)}
        queued: dict[str, Waiting] = {}  # the queued jobs to tell where they wait, once the sweep is done
        for job_id in active:
            job = jobs.get(job_id)
            if job is None or job.finished:  # gone without finishing (deleted), or finished since the read
                jobs.forget(job_id)
                report["forgotten"] += job is None
                continue
            if job.kind not in kinds.KINDS:
                log.error("janitor: job %s has an unknown kind %r; left alone", job_id, job.kind)
                continue
            units = self.pending_units(job)
            idle_key = self._keys.janitor_idle(job_id)
            if self._alive(job, units, active=active, waiting=waiting):
                self._svc.redis.delete(idle_key)
                if job.status == "queued" and job_id in waiting:
                    queued[job_id] = waiting[job_id]
                continue
            pipe = self._svc.redis.pipeline(transaction=False)
            pipe.set(idle_key, f"{self._svc.jobs.clock.now():.3f}", nx=True, ex=int(self._interval * 4) + 1)
            if self._marked(pipe, job_id)[0]:
                continue  # idle for the first time: look again next sweep
            self._svc.redis.delete(idle_key)
            report["resent" if self._resend(job, units) else "failed"] += 1
        self._tell_places(queued)
        return report

    def pending_units(self, job: Job) -> list[Unit]:
        """What a job still needs run, each as the message that runs it."""
        plan = stored_plan(self._svc.jobs, job.id) if job.kind in kinds.SHARDED and job.status == "running" else None
        if plan is not None:
            return [Unit(*unit) for unit in pending(self._svc.jobs, job.id, job.kind, plan)]
        if job.kind == "evaluate":
            return [Unit(*unit) for unit in evaluation.janitor_units(self._svc, job)[1]]
        if job.kind in kinds.STEPPED:
            return [Unit("step", kinds.STEPPED[job.kind], [job.id])]
        # Not planned yet (a sharded job's planning task may have died before storing its plan): it plans again.
        return [Unit("main", kinds.task_of(job.kind), [job.id, job.params])]

    def _alive(self, job: Job, units: list[Unit], *, active: set[str], waiting: dict[str, Waiting]) -> bool:
        if job.id in waiting:  # a message of it waits its turn: not lost, however long the backlog
            return True
        if job.kind == "pipeline":
            state = PipelineState.read(self._svc.jobs, job.id)
            child = state.current_child if state is not None else None
            return child is not None and child in active
        if job.kind == "evaluate" and evaluation.janitor_units(self._svc, job)[0] in active:
            return True  # its current child runs (its scoring cells may run beside it: their leases, below)
        leases = [self._svc.units.lease_key(job.id, name) for name in {"main", "join", *(u.name for u in units)}]
        return bool(cast(int, self._svc.redis.exists(*leases)))

    def _tell_places(self, queued: dict[str, Waiting]) -> None:
        """Note on each queued job where it waits, with an ETA from how fast its place moved since the last sweep
        that saw it (kept in its ``queued`` mark): two round trips for all of them."""
        if not queued:
            return
        now, marks = self._svc.jobs.clock.now(), [self._keys.janitor_queued(job_id) for job_id in queued]
        pipe = self._svc.redis.pipeline(transaction=False)
        lasts = cast("list[bytes | None]", self._svc.redis.mget(marks))
        for (job_id, place), mark, last in zip(queued.items(), marks, lasts, strict=True):
            eta = ""
            if last is not None:
                then, before = (float(x) for x in last.split())
                if before == place.ahead:
                    continue  # nothing moved: the note stands
                if before > place.ahead and now > then:
                    eta = f"; ETA {place.ahead / ((before - place.ahead) / (now - then)):.0f} s"
            pipe.set(mark, f"{now:.3f} {place.ahead}", ex=int(self._interval * 4) + 1)
            message = f"waiting in the {place.queue} queue: {place.ahead} messages ahead{eta}"
            self._svc.jobs.note_queued(job_id, message, pipe=pipe)
        pipe.execute()

    def _marked(self, pipe: redis.client.Pipeline, job_id: str) -> list[Any]:
        """Run ``pipe``, which writes a mark of ``job_id``, and drop its marks if the job has finished.

        The job's finish deletes its marks, so a mark written before it is gone with it; one written after
        it (this sweep read the job as active a moment too early) is seen here and deleted, not left to expire.
        """
        pipe.sismember(self._keys.jobs_active, job_id)
        *replies, active = pipe.execute()
        if not active:
            self._svc.redis.delete(*self._keys.janitor_marks(job_id))
        return replies

    def _resend(self, job: Job, units: list[Unit]) -> bool:
        """Send the units again, or fail the job when it was resent too often; True when resent."""
        resends = self._keys.janitor_resends(job.id)
        pipe = self._svc.redis.pipeline(transaction=False)
        pipe.incr(resends)
        pipe.expire(resends, 24 * 3600)
        count = cast(int, self._marked(pipe, job.id)[0])
        if count > MAX_RESENDS:
            message = f"its work was lost {MAX_RESENDS} times (no worker finished it); not sent again"
            self._svc.jobs.fail(job.id, code="lost", message=message, details={"resends": MAX_RESENDS})
            parent = job.params.get("parent")
            if parent:
                self._celery.send_task(parent.get("step") or PIPELINE_STEP.name, args=[parent["id"]],
                                       headers=self._headers)  # fmt: skip
            log.warning("janitor: job %s failed: %s", job.id, message)
            return False
        self._svc.redis.delete(self._keys.janitor_queued(job.id))
        for unit in units:
            self._celery.send_task(unit.task.name, args=unit.args, headers=self._headers)
        log.warning("janitor: job %s (%s) was idle with no worker on it; sent %s again", job.id, job.kind,
                    ", ".join(u.name for u in units))  # fmt: skip
        return True
