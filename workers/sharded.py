"""The worker side of the sharded-job frame (shared/jobs/sharded.py): a shard, the join.

The job's main task (or an evaluation's step) planned it and sent its shards (``send_shards``). Here:

    run_shard(kind, job, payload, (lo, hi, total), work, describe)
        under the shard's unit: skip a shard done already or a job that stopped; run ``work`` with artifact
        writes fenced by the shard's lease; record its stats; report progress with an ETA; the last shard
        sends the join
    run_join(job, finish)
        under the join's unit: the guard (the job runs, every planned shard is done); ``finish`` (the kind's
        result); succeed; drop the parts; tell the parent

A shard that lost its lease while it ran (frozen past it; another delivery may have taken over, even joined)
publishes nothing and is not counted done; the janitor sends it again if need be. So does a shard whose
``work`` raises ``Deferred`` (it cannot run yet, and says who sends it again). A failure of ``work`` or
``finish`` fails the job, naming the shard or the join (``fail_job``), unless Redis refused for a while.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from celery import current_app

from shared.infra.keys import shard_id
from shared.jobs.kinds import SHARDED
from shared.jobs.progress import Position, report, whole
from shared.jobs.sharded import Deferred, ShardPlan, shard_unit, stored_plan
from shared.jobs.store import Job
from shared.logic.services import Services
from shared.store.artifacts import FencedOut

from .base import Outcome, fail_job, notify_parent, services, unit

log = logging.getLogger(__name__)

Work = Callable[[Services], dict[str, Any]]
"""A shard's work: store its part (through the services given, whose writes are fenced) and answer its stats."""
Describe = Callable[[Job, int, int], tuple[Position, str] | None]
"""(the job, shards done, shards in all) -> where its progress bar stands and what to say there (None: the
job's bar is another stage's for now)."""
Finish = Callable[[Services, Job, ShardPlan, list[dict[str, Any]]], Outcome]
"""(services, the job, its plan, every shard's stats in item order) -> the job's outcome."""


def shards_done_message(job: Job, done: int, total: int) -> tuple[Position, str]:
    """The progress of a job whose shards fill its bar: "<done> of <total> shards done"."""
    return whole(job.id, SHARDED[job.kind].stage), f"{done} of {total} shards done"


def run_shard(
    kind: str, job_id: str, payload: dict[str, Any], shard: tuple[int, int, int], work: Work, *,
    describe: Describe = shards_done_message,
) -> None:  # fmt: skip
    """One shard (``lo``, ``hi``, shards in all) of a job, idempotent: its part is named by its job and ``lo``."""
    lo, hi, total = shard
    with unit(job_id, shard_unit(lo), where=f"shard {lo}-{hi}") as admitted:
        done = shard_admitted(job_id, lo, hi, total, work) if admitted else None
    if done is None or done < 0:
        return
    svc = services()
    job = svc.jobs.get(job_id)
    described = describe(job, done, total) if job is not None else None
    if job is not None and described is not None:  # "n of N shards done": the kind's view of the bar, with an ETA
        report(svc.jobs, job, described[0], done / total, described[1])
    if done == total:
        current_app.send_task(SHARDED[kind].join.name, args=[job_id, payload])


def shard_admitted(job_id: str, lo: int, hi: int, total: int, work: Work) -> int | None:
    """Run an admitted shard: answers how many shards are done now (negative when the job stopped meanwhile),
    None when skipped or failed."""
    svc = services()
    shard = shard_id(lo)
    if not svc.jobs.is_running(job_id) or shard in svc.jobs.shards_done(job_id):
        return None
    token = svc.units.holder(job_id, shard_unit(lo))
    if token is not None:
        fenced = svc.artifacts.fenced(svc.units.lease_key(job_id, shard_unit(lo)), token)
        svc = dataclasses.replace(svc, artifacts=fenced)
    try:
        stats = work(svc)
    except FencedOut:
        log.warning("job %s: shard %d-%d: lease lost: output discarded", job_id, lo, hi)
        return None
    except Deferred as why:
        log.info("job %s: shard %d-%d deferred: %s", job_id, lo, hi, why)
        return None
    except Exception as exc:  # noqa: BLE001 - fail_job reports it on the job and logs it
        fail_job(job_id, exc, where=f"shard {lo}-{hi}")
        return None
    return svc.jobs.shard_done(job_id, shard, stats, total=total)


def run_join(job_id: str, finish: Finish) -> None:
    """The join of a job whose every shard is done: its result, once."""
    with unit(job_id, "join", where="join") as admitted:
        if admitted:
            _join_admitted(job_id, finish)


def _join_admitted(job_id: str, finish: Finish) -> None:
    svc = services()
    job = svc.jobs.get(job_id)
    plan = stored_plan(svc.jobs, job_id)
    if job is None or job.status != "running" or plan is None:
        return  # cancelled, failed or expired meanwhile (a second join of a finished job lands here too)
    try:
        stats = svc.jobs.shard_stats(job_id)
        missing = [shard_id(lo) for lo, _ in plan.ranges if shard_id(lo) not in stats]
        if missing:
            raise RuntimeError(f"the join found {len(missing)} shards of the plan not done")
        outcome = finish(svc, job, plan, [stats[shard_id(lo)] for lo, _ in plan.ranges])
    except Exception as exc:  # noqa: BLE001 - fail_job reports it on the job and logs it
        fail_job(job_id, exc, where="join")
        return
    if svc.jobs.succeed(job_id, outcome.result, result_artifact=outcome.artifact, message=outcome.message):
        for name in outcome.drop:
            svc.artifacts.delete(name)
        if job.params.get("parent"):
            notify_parent(job_id, job.params["parent"])
