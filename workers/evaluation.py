"""Tasks of an evaluation job (``cpu`` queue): its step, the split, the scoring shards and the join.

The stages and their order are shared/logic/evaluation.py's; the data, shared/logic/scoring.py's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import current_app, shared_task
from redis.exceptions import LockNotOwnedError

from shared.jobs.kinds import EVALUATE_STEP
from shared.jobs.leases import shard_unit
from shared.logic.evaluation import EvaluationState, advance, build_table, parent, plan_shards, report
from shared.logic.scoring import derive, drop_parts, row_metrics, score_shard, store_part
from shared.logic.services import Services
from shared.ml.evaluate import Protocol

from .base import fail_job, run_shard, services, unit

log = logging.getLogger(__name__)


@shared_task(name="workers.evaluation.evaluation_step")
def evaluation_step(job_id: str, params: dict[str, Any] | None = None) -> None:
    """Move an evaluation on: start its next stage (a child job, the split, the shards), or fail it."""
    svc = services()
    lock = svc.jobs.lock(f"evaluation:{job_id}")
    if not lock.acquire():
        evaluation_step.apply_async(args=[job_id], countdown=0.2)  # another step is moving it: look again
        return
    try:
        advance(svc, current_app, job_id)
    except Exception as exc:  # noqa: BLE001 - fail_job reports it on the job and logs it
        fail_job(job_id, exc, where="evaluation")
    finally:
        try:
            lock.release()
        except LockNotOwnedError:  # held past its TTL: another step may have moved the job meanwhile
            log.warning("evaluation %s: its step lock expired before the step finished", job_id)


@shared_task(name="workers.evaluation.evaluation_split")
def evaluation_split(job_id: str, source: str, protocol: dict[str, Any]) -> None:
    """Store the training dataset and the test part of ``source`` (or find them stored), then step on."""
    with unit(job_id, "split", where="split") as admitted:
        if admitted:
            svc = services()
            if not svc.jobs.is_running(job_id):
                return
            try:
                derive(svc.datasets, source, Protocol(**protocol))
            except Exception as exc:  # noqa: BLE001 - fail_job reports it on the job and logs it
                fail_job(job_id, exc, where="split")
                return
            current_app.send_task(EVALUATE_STEP.name, args=[job_id])


@shared_task(name="workers.evaluation.evaluation_shard")
def evaluation_shard(job_id: str, plan: dict[str, Any], lo: int, hi: int, total: int) -> None:
    """Rank evaluated users [lo, hi) by every row of the table; idempotent: the part's name is fixed by lo."""
    with unit(job_id, shard_unit(lo), where=f"shard {lo}-{hi}") as admitted:
        if admitted:
            _score_admitted(job_id, plan, lo, hi, total)


def _score_admitted(job_id: str, plan: dict[str, Any], lo: int, hi: int, total: int) -> None:
    def work(svc: Services) -> dict[str, Any]:
        top, stats = score_shard(svc.artifacts, svc.models, plan, lo, hi)
        store_part(svc.artifacts, job_id, lo, top, ttl_s=svc.settings.result_ttl_s)
        return stats

    done = run_shard(job_id, lo, hi, total, work)
    if done is None or done < 0:
        return
    svc = services()
    job = svc.jobs.get(job_id)
    if job is not None:  # shard_done wrote the shards' own fraction: put the overall one back
        report(svc.jobs, job, parent(job_id, job.params, "score"), done / total, f"{done} of {total} shards scored")
    if done == total:
        evaluation_join.apply_async(args=[job_id, plan])


@shared_task(name="workers.evaluation.evaluation_join")
def evaluation_join(job_id: str, plan: dict[str, Any]) -> None:
    """Metrics per row from the shards' parts; the table as the job's result and on each recipe's model."""
    with unit(job_id, "join", where="join") as admitted:
        if admitted:
            _join_admitted(job_id, plan)


def _join_admitted(job_id: str, plan: dict[str, Any]) -> None:
    svc = services()
    job = svc.jobs.get(job_id)
    state = EvaluationState.read(svc.jobs, job_id)
    if job is None or job.status != "running" or state is None:
        return
    starts = [lo for lo, _ in plan_shards(int(plan["users"]), int(plan["shard_users"]))]
    try:
        started = time.perf_counter()
        stats = [s for _, s in sorted(svc.jobs.shard_stats(job_id).items())]
        skipped = {name for s in stats for name in s.get("skipped", {})}
        table = build_table(job.params, state, row_metrics(svc.artifacts, plan, job_id, starts, skipped), stats)
        for row in table["rows"]:
            if row["model"] is not None:
                svc.models.update(row["model"], evaluation=table)
    except Exception as exc:  # noqa: BLE001 - fail_job reports it on the job and logs it
        fail_job(job_id, exc, where="join")
        return
    log.info("evaluation %s joined in %.1f s", job_id, time.perf_counter() - started)
    best = f"; best recipe {table['best']}" if table["best"] else ""
    if svc.jobs.succeed(job_id, table, message=f"{len(table['rows'])} rows, {table['users']:,} users{best}"):
        drop_parts(svc.artifacts, job_id, starts)
