"""Tasks of a batch recommendation job (``cpu`` queue): planning, the shards and the join.

The job's data and its result's shape are shared/logic/batch.py's; its shards and join run in the sharded-job
frame (workers/sharded.py); a shard's users are answered at once, each as the single-user query answers them
(shared/ml/batch.py).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app, shared_task

from shared.infra.clock import parse_iso
from shared.jobs.progress import Position, whole
from shared.jobs.sharded import ShardPlan, send_shards, stored_plan
from shared.jobs.store import Job
from shared.logic.batch import STAGE, answer_part, plan, store_part, summary
from shared.logic.services import Services

from .base import JobContext, Outcome, run_job, services
from .sharded import run_join, run_shard

log = logging.getLogger(__name__)


@shared_task(name="workers.batch.recommend_batch")
def recommend_batch(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Resolve the job's users (once), plan its shards and send them; the last shard sends the join."""

    def body(ctx: JobContext) -> Outcome | None:
        svc = ctx.services
        planned = plan(svc, job_id, params, ttl_s=svc.settings.result_ttl_s)
        if planned.items == 0:
            return Outcome(summary(params, planned, [], 0.0), message="no users")
        ctx.progress(0.0, STAGE, f"0 of {planned.items:,} users ({len(planned.ranges)} shards)")
        send_shards(svc.jobs, current_app, job_id, "recommend-batch", planned)
        return None

    return run_job(job_id, stage="planning", body=body)


@shared_task(name="workers.batch.batch_shard")
def batch_shard(job_id: str, params: dict[str, Any], lo: int, hi: int, total: int) -> None:
    """Answer the job's users [lo, hi); idempotent: the part's name is fixed by lo."""

    def work(svc: Services) -> dict[str, Any]:
        rows, stats = answer_part(svc, job_id, params, lo=lo, hi=hi)
        store_part(svc.artifacts, job_id, lo, rows, ttl_s=svc.settings.result_ttl_s)
        return stats

    run_shard("recommend-batch", job_id, params, (lo, hi, total), work, describe=_users_done)


def _users_done(job: Job, done: int, total: int) -> tuple[Position, str]:
    planned = stored_plan(services().jobs, job.id)
    items = planned.items if planned is not None else 0
    users = min(done * (planned.size if planned is not None else 0), items)  # about: the last shard is shorter
    return whole(job.id, STAGE), f"{done} of {total} shards, ~{users:,} of {items:,} users"


@shared_task(name="workers.batch.batch_join")
def batch_join(job_id: str, params: dict[str, Any]) -> None:
    """Finish the job with its summary once every part is stored (the parts are the result)."""

    def finish(svc: Services, job: Job, planned: ShardPlan, stats: list[dict[str, Any]]) -> Outcome:
        elapsed = svc.jobs.clock.now() - parse_iso(str(job.started_at))  # both ends by Redis's clock
        result = summary(params, planned, stats, elapsed)
        message = f"{result['users']:,} users, {result['rows']:,} rows, {result['users_per_second']:,} users/s"
        log.info("batch %s: %s (shards %.1f s in all)", job_id, message, result["shard_seconds"])
        return Outcome(result, message=message)

    run_join(job_id, finish)
