"""``/v1/system``: the overview a dashboard polls: queues, job counts, the active model, the latest evaluation."""

from __future__ import annotations

from typing import Any, cast

from apiflask import APIBlueprint

from shared.infra.celery_app import queue_lengths
from shared.jobs.kinds import QUEUES

from . import celery, services
from .schemas import SystemOut

bp = APIBlueprint("system", __name__, url_prefix="/v1/system", tag="system")

FINISHED = ("succeeded", "failed", "cancelled")


@bp.get("")
@bp.output(SystemOut)
def system() -> dict[str, Any]:
    """Every queue with its depth and live workers; jobs by status; the active model; the latest evaluation;
    how many datasets and models are stored.

    Queued and running are counted now, from the unfinished jobs; succeeded, failed and cancelled are totals
    since the deployment began (the job counters of ``/metrics``). With API keys the counts take in every
    owner's jobs: an operator's view, which names no job."""
    svc = services()
    keys = svc.keys
    pipe = svc.redis.pipeline(transaction=False)
    pipe.smembers(keys.jobs_active)
    pipe.hgetall(keys.metrics_jobs)
    pipe.zcard(keys.datasets)
    pipe.get(keys.active_model)
    first = cast(tuple[set[bytes], dict[bytes, bytes], int, "bytes | None"], pipe.execute())
    active_ids, counters, datasets, active = first
    ids = sorted(i.decode() for i in active_ids)
    for job_id in ids:  # as many as are unfinished
        pipe.hget(keys.job(job_id), "status")
    statuses = [s.decode() for s in cast(list[bytes | None], pipe.execute()) if s is not None]
    jobs = {status: statuses.count(status) for status in ("queued", "running")} | dict.fromkeys(FINISHED, 0)
    for field, count in counters.items():
        status = field.decode().rsplit("\t", 1)[-1]
        if status in FINISHED:
            jobs[status] += int(count)

    models = svc.models.records()  # newest first, one MGET
    evaluated = next((m for m in models if m.get("evaluation")), None)
    depth, live = queue_lengths(celery(), QUEUES), svc.live_queues()
    return {
        "queues": [{"name": q, "depth": depth.get(q, 0), "workers": live.get(q, 0)} for q in QUEUES],
        "jobs": jobs,
        "active_model": next((m for m in models if active and m.get("version") == active.decode()), None),
        "latest_evaluation": None
        if evaluated is None
        else {
            "model": evaluated["version"],
            "dataset": evaluated["evaluation"].get("dataset", evaluated.get("dataset")),
            "table": evaluated["evaluation"],
        },
        "datasets": datasets,
        "models": len(models),
    }
