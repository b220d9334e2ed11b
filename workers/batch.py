"""Tasks of a batch recommendation job (``cpu`` queue): planning, the shards and the join.

The job's data and its result's shape are shared/logic/batch.py's; each user is answered by the single-user
query's own function (shared/ml/batch.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task

from shared.jobs.leases import shard_unit
from shared.logic.batch import PLAN_FIELD, STAGE, Plan, answer_part, plan, store_part, summary
from shared.logic.evaluation import report
from shared.logic.services import Services

from .base import JobContext, Outcome, fail_job, run_job, run_shard, services, unit

log = logging.getLogger(__name__)

WHOLE = {"stage": STAGE, "index": 0, "stages": 1}
"""The job's progress is its shards' (``report``'s view of a job of one stage)."""


@shared_task(name="workers.batch.recommend_batch")
def recommend_batch(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Resolve the job's users (once), note the plan, send its shards; the last shard sends the join."""

    def body(ctx: JobContext) -> Outcome | None:
        svc = ctx.services
        planned = plan(svc, job_id, params, ttl_s=svc.settings.result_ttl_s)
        if planned.users == 0:
            return Outcome(summary(params, planned, [], 0.0), message="no users")
        svc.jobs.annotate(job_id, **{PLAN_FIELD: planned.to_json()})
        shards = planned.shards
        ctx.progress(0.0, STAGE, f"0 of {planned.users:,} users ({len(shards)} shards)")
        done = svc.jobs.shards_done(job_id)  # a replanning sends only what is missing
        for lo, hi in shards:
            if f"{lo:09d}" not in done:
                batch_shard.apply_async(args=[job_id, params, lo, hi, len(shards)])
        return None

    return run_job(job_id, stage="planning", body=body)


@shared_task(name="workers.batch.batch_shard")
def batch_shard(job_id: str, params: dict[str, Any], lo: int, hi: int, total: int) -> None:
    """Answer the job's users [lo, hi); idempotent: the part's name is fixed by lo."""
    with unit(job_id, shard_unit(lo), where=f"shard {lo}-{hi}") as admitted:
        if admitted:
            _shard_admitted(job_id, params, lo, hi, total)


def _shard_admitted(job_id: str, params: dict[str, Any], lo: int, hi: int, total: int) -> None:
    def work(svc: Services) -> dict[str, Any]:
        rows, stats = answer_part(svc, job_id, params, lo=lo, hi=hi)
        store_part(svc.artifacts, job_id, lo, rows, ttl_s=svc.settings.result_ttl_s)
        return stats

    done = run_shard(job_id, lo, hi, total, work)
    if done is None or done < 0:
        return
    svc = services()
    job = svc.jobs.get(job_id)
    raw = svc.jobs.field(job_id, PLAN_FIELD)
    if job is not None and raw is not None:  # shard_done wrote "n of N shards done": add users and an ETA
        planned = Plan.from_json(raw)
        users = min(done * planned.shard_users, planned.users)  # about: the last shard is shorter
        report(svc.jobs, job, {"id": job_id, **WHOLE}, done / total,
               f"{done} of {total} shards, ~{users:,} of {planned.users:,} users")  # fmt: skip
    if done == total:
        batch_join.apply_async(args=[job_id, params])


@shared_task(name="workers.batch.batch_join")
def batch_join(job_id: str, params: dict[str, Any]) -> None:
    """Check every part is stored and finish the job with its summary (the parts are the result)."""
    with unit(job_id, "join", where="join") as admitted:
        if admitted:
            _join_admitted(job_id, params)


def _join_admitted(job_id: str, params: dict[str, Any]) -> None:
    svc = services()
    job = svc.jobs.get(job_id)
    if job is None or job.status != "running":
        return
    try:
        raw = svc.jobs.field(job_id, PLAN_FIELD)
        if raw is None:
            raise RuntimeError("the job has no plan")
        planned = Plan.from_json(raw)
        stats = [s for _, s in sorted(svc.jobs.shard_stats(job_id).items())]
        if [tuple(s["range"]) for s in stats] != planned.shards:
            raise RuntimeError("the shards' parts do not cover the job's users")
        started = datetime.fromisoformat(str(job.started_at).replace("Z", "+00:00"))
        result = summary(params, planned, stats, (datetime.now(UTC) - started).total_seconds())
    except Exception as exc:  # noqa: BLE001 - fail_job reports it on the job and logs it
        fail_job(job_id, exc, where="join")
        return
    message = f"{result['users']:,} users, {result['rows']:,} rows, {result['users_per_second']:,} users/s"
    if svc.jobs.succeed(job_id, result, message=message):
        log.info("batch %s: %s (shards %.1f s in all)", job_id, message, result["shard_seconds"])
