"""Tasks of an evaluation job (``cpu`` queue): its step, the split, the scoring shards and the join.

The stages and their order are shared/logic/evaluation.py's; the data, shared/logic/scoring.py's; the scoring
shards and the join run in the sharded-job frame (workers/sharded.py).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from typing import Any

from celery import current_app, shared_task

from shared.jobs.kinds import EVALUATE_SHARD, EVALUATE_STEP
from shared.jobs.progress import Position
from shared.jobs.sharded import ShardPlan
from shared.jobs.store import Job
from shared.logic.evaluation import EvaluationState, advance, build_table, parent, trained_models
from shared.logic.scoring import (
    FitPending,
    NotTrained,
    derive,
    part_names,
    row_scores,
    score_shard,
    store_part,
    trained_cell,
)
from shared.logic.services import Services
from shared.ml.protocol import Protocol

from .base import Outcome, fail_job, run_step, services, unit
from .sharded import run_join, run_shard

log = logging.getLogger(__name__)


@shared_task(name="workers.evaluation.evaluation_step")
def evaluation_step(job_id: str, params: dict[str, Any] | None = None) -> None:
    """Move an evaluation on: start its next stage (a child job, the split, the shards), or fail it."""
    run_step(evaluation_step, job_id, what="evaluation", advance=advance)


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
    """Rank cell ``lo`` of the plan (a group of rows by a chunk of users); idempotent: the part's name is fixed
    by lo."""

    def work(svc: Services) -> dict[str, Any]:
        state = EvaluationState.read(svc.jobs, job_id) if trained_cell(plan, lo) else None
        trained = trained_models(state or EvaluationState())
        try:
            top, stats = score_shard(svc.artifacts, svc.models, plan, lo, hi, trained=trained,
                                     claim=lambda fit_id: _fitting(job_id, fit_id))  # fmt: skip
        except NotTrained:
            # Sent again before its recipe's pipeline finished (the step sends the recipes' cells once all have):
            # a step moves the job on, and sends this cell again when the model is there.
            current_app.send_task(EVALUATE_STEP.name, args=[job_id])
            raise
        except FitPending:
            # Its baseline is being fitted by another process: this cell comes back once that fit is likely
            # stored, and loads it; meanwhile this process takes other work.
            current_app.send_task(EVALUATE_SHARD.name, args=[job_id, plan, lo, hi, total], countdown=FIT_WAIT_S)
            raise
        store_part(svc.artifacts, job_id, lo, top, ttl_s=svc.settings.result_ttl_s)
        return stats

    run_shard("evaluate", job_id, plan, (lo, hi, total), work, describe=_scored)


FIT_WAIT_S = 20
"""How long a cell whose baseline another process is fitting waits before it is tried again (a fit at the
notebook's scale takes minutes; a try that finds it still running costs two Redis round trips)."""


def _fitting(job_id: str, fit_id: str) -> AbstractContextManager[bool]:
    """The lease on fitting one stored baseline of a job's scoring: a unit of the job (``unit``: renewed while its
    process lives, dropped when it is done or raised), True for the process that is to fit it, False while
    another live one holds it; a fit whose process died every time fails the job, as any unit's."""
    return unit(job_id, f"fit-{fit_id}", where=f"fitting baseline {fit_id}")


def _scored(job: Job, done: int, total: int) -> tuple[Position, str] | None:
    """The shards' share of the evaluation's bar: the ``score`` stage's, once it has begun (before, the baselines'
    cells score while the recipes train, and the bar is their pipelines')."""
    if job.stage != "score":
        return None
    return parent(job.id, job.params, "score"), f"{done} of {total} shards scored"


@shared_task(name="workers.evaluation.evaluation_join")
def evaluation_join(job_id: str, plan: dict[str, Any]) -> None:
    """Metrics per row from the shards' parts; the table as the job's result and on each recipe's model."""

    def finish(svc: Services, job: Job, shards: ShardPlan, stats: list[dict[str, Any]]) -> Outcome:
        state = EvaluationState.read(svc.jobs, job_id)
        if state is None:
            raise RuntimeError("the evaluation has no state")
        started = time.perf_counter()
        starts = [lo for lo, _ in shards.ranges]
        skipped = {name for s in stats for name in s.get("skipped", {})}
        scores = row_scores(svc.artifacts, plan, job_id, skipped)
        table = build_table(job.params, state, plan, scores, stats)
        for row in table["rows"]:
            if row["model"] is not None:
                svc.models.update(row["model"], evaluation=table)
        log.info("evaluation %s joined in %.1f s", job_id, time.perf_counter() - started)
        best = f"; best recipe {table['best']}" if table["best"] else ""
        message = f"{len(table['rows'])} rows, {table['users']:,} users{best}"
        return Outcome(table, message=message, drop=part_names(job_id, starts))

    run_join(job_id, finish)
