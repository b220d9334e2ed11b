"""``/v1/system``: the overview a dashboard polls: queues, job counts, the active model, the latest evaluation."""

from __future__ import annotations

from typing import Any, cast

from apiflask import APIBlueprint

from shared.infra.metrics import finished_by_status
from shared.jobs.celery_app import queue_lengths
from shared.jobs.kinds import QUEUES
from shared.jobs.store import FINISHED

from .context import celery, services
from .schemas import SystemOut

bp = APIBlueprint("system", __name__, url_prefix="/v1/system", tag="system")


@bp.get("")
@bp.output(SystemOut)
def system() -> dict[str, Any]:
    """Every queue with its depth and live workers; jobs by status; the active model; the latest evaluation;
    how many datasets and models are stored.

    Queued and running are counted now, from the unfinished jobs; succeeded, failed and cancelled are totals
    since the deployment began (the job counters of ``/metrics``). With API keys the counts take in every
    owner's jobs: an operator's view, which names no job."""
    svc = services()
    finished = finished_by_status(cast("dict[bytes, bytes]", svc.redis.hgetall(svc.keys.metrics_jobs)))
    jobs = {**svc.jobs.active_statuses(), **{status: finished.get(status, 0) for status in FINISHED}}
    active = svc.models.active()
    models = svc.models.records()  # newest first, one MGET
    evaluated = next((m for m in models if m.get("evaluation")), None)
    depth, live = queue_lengths(celery(), QUEUES), svc.live_queues()
    return {
        "queues": [{"name": q, "depth": depth.get(q, 0), "workers": live.get(q, 0)} for q in QUEUES],
        "jobs": jobs,
        "active_model": next((m for m in models if active and m.get("version") == active), None),
        "latest_evaluation": None
        if evaluated is None
        else {
            "model": evaluated["version"],
            "dataset": evaluated["evaluation"].get("dataset", evaluated.get("dataset")),
            "table": evaluated["evaluation"],
        },
        "datasets": svc.datasets.count(),
        "models": len(models),
    }
