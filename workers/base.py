"""The frame every job task runs in: per-process services, status moves, progress, error mapping.

A task body receives a ``JobContext`` and the job's JSON parameters, and returns the job's JSON result
(optionally with the artifact that ``?format=npy`` serves). ``run_job`` does the rest:

    admit the unit + start (one round trip; skip when the job was cancelled or expired)
      -> body -> succeed + release the unit (one round trip)
              \\-> MovierecError -> fail with its code and message, release
              \\-> a Redis failure that should pass (out of memory, read-only, loading, away) -> release, and the
                 task is sent again after a backoff (``retry_if_transient``): the job is not failed
              \\-> anything else -> fail as internal_error (logged here), release

A *speculative* job (a recommendation: a short query) sends its admission and start, runs its
body while they travel, then reads their replies: on a Redis that fsyncs every write that takes a round
trip and a disk flush off its path. Nothing is given up: the start is counted before any result is
written, and when the admission or the start says no, the answer is dropped unrecorded. So a speculative
body must write nothing but caches (the keyword vector cache), and it gets no parent to report to.

``unit`` is that frame's first step alone, for the tasks that are a part of a job (a shard, a join: the
sharded-job frame, workers/sharded.py): a delivery whose unit another live worker runs is dropped, and a unit
that killed its worker too often fails the job, naming it, instead of running again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task, current_app, current_task
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import LockNotOwnedError

from shared.errors import MovierecError
from shared.infra.process import per_process
from shared.infra.redisconn import sent_ahead, transient_cause
from shared.jobs.celery_app import settings_of, task_tenant
from shared.jobs.kinds import PIPELINE_STEP
from shared.jobs.leases import Admission
from shared.jobs.progress import Position, report
from shared.logic.services import Services

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
"""Progress writes closer together than this are skipped unless the stage changes."""

RETRY_CAP_S = 60.0
"""The longest wait between two tries of a task that Redis refused for a while (1, 2, 4 ... s, then this)."""


@per_process(maxsize=1)
def process_services() -> Services:
    """This process's services (the default tenant's, whence every tenant's), built on first use (again in a
    forked child: see shared/infra/process.py)."""
    return Services.from_settings(settings_of(current_app))


def services() -> Services:
    """The services of the tenant whose job the running task works on (its message's ``TENANT_HEADER``)."""
    return process_services().for_tenant(task_tenant())


@dataclass
class JobContext:
    job_id: str
    services: Services
    parent: dict[str, Any] | None = None  # {"id", "stage", "index", "stages"} when a pipeline runs this job
    _last: tuple[float, str] = field(default=(0.0, ""))

    def progress(self, fraction: float, stage: str, message: str = "") -> None:
        now = time.monotonic()
        last_time, last_stage = self._last
        if stage == last_stage and now - last_time < PROGRESS_INTERVAL_S and fraction < 1.0:
            return
        self._last = (now, stage)
        self.services.jobs.progress(self.job_id, fraction, stage=stage, message=message)
        if self.parent is not None:
            report_to_pipeline(self.services, self.parent, fraction, message or stage)


def report_to_pipeline(svc: Services, parent: Position, fraction: float, message: str) -> None:
    """A stage's progress as the pipeline's: overall fraction, the stage's name, an ETA once measurable."""
    pipeline = svc.jobs.get(parent["id"])
    overall = report(svc.jobs, pipeline, parent, fraction, message)
    grandparent = pipeline.params.get("parent") if pipeline is not None else None
    if grandparent:  # a pipeline that is itself a stage (an evaluation's recipe): its progress is that stage's
        report_to_pipeline(svc, grandparent, overall, f"{parent['stage']}: {message}")


def notify_parent(job_id: str, parent: dict[str, Any] | None = None) -> None:
    """A finished stage job tells its pipeline (or the coordinator named by the parent's ``step``: an
    evaluation) to take the next step (its record is read only when the caller does not already know the
    parent)."""
    if parent is None:
        job = services().jobs.get(job_id)
        parent = job.params.get("parent") if job is not None else None
    if parent:
        current_app.send_task(parent.get("step") or PIPELINE_STEP.name, args=[parent["id"]])


@dataclass(frozen=True)
class Outcome:
    """What a task body hands back: the JSON result, and the artifact holding its array, if any."""

    result: dict[str, Any]
    artifact: str | None = None
    message: str = ""
    inline: str | None = None
    """When set, the JSON form of the result carries the artifact's array under this key."""
    ttl_s: int | None = None
    """How long the result is kept, when not the settings' result TTL (recommendations: an hour)."""
    drop: tuple[str, ...] = ()
    """Artifacts deleted once the job is marked succeeded (its inputs), not before: a run killed in between
    must find them again."""


Body = Callable[[JobContext], Outcome | None]
"""A body answers its Outcome, or None when later tasks (shards, a join) will finish the job."""


def run_job(job_id: str, *, stage: str, body: Body, speculative: bool = False) -> dict[str, Any] | None:
    """Run a job's main task under its unit's lease; ``speculative`` runs the body while the admission is on
    its way (see the module docstring): for a quick body that writes nothing but caches."""
    svc = services()
    # Admission and start share one round trip, and success and release another: on a Redis that fsyncs
    # every write, each round trip saved is a disk flush off a recommendation's path.
    pipe = svc.redis.pipeline(transaction=False)
    admitted = svc.units.admit_on(pipe, job_id, "main")
    started = svc.jobs.start_on(pipe, job_id, stage=stage)
    speculated: list[Attempt] = []  # the speculative body's attempt, once it has run
    if speculative:
        with sent_ahead(pipe) as replies:
            speculated.append(_attempt(body, JobContext(job_id, svc)))
            results = replies()
    else:
        results = pipe.execute()
    admission, starts = admitted(results[0])
    if admission is not Admission.RUN:
        _refuse(job_id, where=stage, admission=admission, starts=starts)  # a speculative answer is dropped
        return None
    released = False
    try:
        job = started(results)
        if job is None:
            log.info("job %s is finished, cancelled or expired; skipping", job_id)
            return None
        ctx = JobContext(job_id, svc, parent=job.params.get("parent"))
        answer, released = _record(ctx, speculated[0] if speculated else _attempt(body, ctx))
        return answer
    finally:
        if not released:
            svc.units.release(job_id, "main")


Attempt = Outcome | None | Exception
"""What running a body gave: its outcome, or the exception it raised."""


def _attempt(body: Body, ctx: JobContext) -> Attempt:
    try:
        return body(ctx)
    except Exception as exc:  # noqa: BLE001 - _record reports it on the job
        return exc


def _record(ctx: JobContext, attempt: Attempt) -> tuple[dict[str, Any], bool]:
    """Record how a started job's body ended: (the task's answer, whether the unit was released)."""
    svc, job_id = ctx.services, ctx.job_id
    released = False
    if isinstance(attempt, MovierecError):
        svc.jobs.fail(job_id, code=attempt.code, message=attempt.message, details=attempt.details)
    elif isinstance(attempt, SoftTimeLimitExceeded):
        limit = svc.settings.soft_time_limit_s
        svc.jobs.fail(job_id, code="timeout", message=f"the job ran past its time limit ({limit} s)")
    elif isinstance(attempt, Exception):
        retry_if_transient(attempt, job_id=job_id, where="its task")
        log.error("job %s failed", job_id, exc_info=attempt)
        svc.jobs.fail(job_id, code="internal_error", message="the job failed unexpectedly; the worker log has details")
    elif attempt is None:  # later tasks (shards, a join) finish it
        return {"job": job_id, "status": "running"}, False
    else:
        pipe = svc.redis.pipeline(transaction=False)
        svc.jobs.succeed(
            job_id,
            attempt.result,
            result_artifact=attempt.artifact,
            result_inline=attempt.inline,
            message=attempt.message,
            ttl_s=attempt.ttl_s,
            pipe=pipe,
        )
        svc.units.release_on(pipe, job_id, "main")
        pipe.execute()
        released = True
        for name in attempt.drop:
            svc.artifacts.delete(name)
    if ctx.parent is not None:
        notify_parent(job_id, ctx.parent)
    return {"job": job_id, "status": "finished"}, released


def _refuse(job_id: str, *, where: str, admission: Admission, starts: int) -> None:
    """A delivery that is not to run its unit: a duplicate (logged), or poison (the job fails, naming the unit)."""
    if admission is Admission.BUSY:
        log.info("job %s: %s is running elsewhere; this delivery is dropped", job_id, where)
        return
    # The start count stays (until its TTL): any later copy of this unit's message is poison too.
    message = (
        f"{where}: started {starts} times and its worker process died each time "
        "(killed, out of memory, or past the time limit); not retried"
    )
    if services().jobs.fail(job_id, code="worker_lost", message=message, details={"where": where, "starts": starts}):
        notify_parent(job_id)


@contextmanager
def unit(job_id: str, name: str, *, where: str) -> Iterator[bool]:
    """Run one unit of a job under its lease: yields True when this delivery is the one to run it."""
    svc = services()
    admission, starts = svc.units.admit(job_id, name)
    if admission is not Admission.RUN:
        _refuse(job_id, where=where, admission=admission, starts=starts)
        yield False
        return
    try:
        yield True
    finally:
        svc.units.release(job_id, name)


def retry_if_transient(exc: BaseException, *, job_id: str, where: str) -> None:
    """When ``exc`` is a Redis failure that should pass (out of memory, read-only, loading, away:
    ``shared.infra.redisconn.transient_cause``), send the running task again after a backoff (1, 2, 4 ... s,
    at most ``RETRY_CAP_S``, for as long as it lasts) instead of failing its job: raises Celery's ``Retry``,
    and the caller's ``unit`` frame releases the unit on the way out. Returns for any other error.

    Every unit's output is content-addressed or fenced by its lease, so a second try redoes the work safely.
    If Redis refuses even the retry's message, the task fails without touching the job, whose unit is free
    again: the janitor sends it once Redis takes writes."""
    cause = transient_cause(exc)
    task = current_task
    if cause is None or task is None or task.request.called_directly:
        return
    countdown = min(RETRY_CAP_S, 2.0 ** int(task.request.retries or 0))
    log.warning("job %s: %s: %s (%s); trying again in %.0f s", job_id, where, cause, exc, countdown)
    raise task.retry(exc=exc, countdown=countdown, max_retries=None)


def fail_job(job_id: str, exc: BaseException, *, where: str) -> None:
    """Fail a job from a task that is not its main one (a shard, a join), naming where it broke; a Redis
    failure that should pass is tried again instead (``retry_if_transient``)."""
    retry_if_transient(exc, job_id=job_id, where=where)
    svc = services()
    if isinstance(exc, MovierecError):
        failed = svc.jobs.fail(job_id, code=exc.code, message=f"{where}: {exc.message}", details={"where": where})
    else:
        log.error("job %s: %s failed", job_id, where, exc_info=exc)
        failed = svc.jobs.fail(
            job_id, code="internal_error", message=f"{where} failed unexpectedly", details={"where": where}
        )
    if failed:
        notify_parent(job_id)


Advance = Callable[[Services, Celery, str], None]
"""One step of a job that moves in steps: look at the job and start, move on, finish or fail it."""


def run_step(task: Task, job_id: str, *, what: str, advance: Advance) -> None:
    """One step of a pipeline or an evaluation (shared/jobs/kinds.py ``STEPPED``), under the job's lock: a step
    that finds the lock taken looks again shortly; a job that finishes tells its parent (an evaluation's recipe
    pipeline); a step that raises fails the job, naming ``what``."""
    svc = services()
    lock = svc.jobs.lock(f"{what}:{job_id}")
    if not lock.acquire():
        task.apply_async(args=[job_id], countdown=0.2)  # another step is moving it: look again
        return
    try:
        advance(svc, current_app, job_id)
        job = svc.jobs.get(job_id)
        if job is not None and job.finished and job.params.get("parent"):
            notify_parent(job_id, job.params["parent"])
    except Exception as exc:  # noqa: BLE001 - fail_job reports it on the job and logs it
        fail_job(job_id, exc, where=what)
    finally:
        try:
            lock.release()
        except LockNotOwnedError:  # held past its TTL: another step may have moved the job meanwhile
            log.warning("%s %s: its step lock expired before the step finished", what, job_id)
