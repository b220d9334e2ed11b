"""``/v1/system``: the overview a dashboard polls: queues, job counts, the active model, the latest evaluation,
of the caller's tenant; with an operator's key, every tenant's counts too."""

from __future__ import annotations

from typing import Any, cast

from apiflask import APIBlueprint

from shared.infra.metrics import finished_by_status
from shared.jobs.celery_app import queue_lengths
from shared.jobs.kinds import QUEUES, task_of
from shared.jobs.store import FINISHED, Status
from shared.logic.services import Services

from .auth import sees_deployment
from .context import celery, deployment, services
from .schemas import SystemOut

bp = APIBlueprint("system", __name__, url_prefix="/v1/system", tag="system")


@bp.get("")
@bp.output(SystemOut)
def system() -> dict[str, Any]:
    """The caller's tenant: its jobs by status, its active model, its latest evaluation, how many datasets and
    models it stores; every queue with its live workers and its depth. A key that sees the deployment (an
    operator's: ``sees_deployment``) gets each queue's whole depth and every tenant's counts, each named; any
    other key, its own tenant's jobs queued in each queue, and no other tenant's name or count.

    Queued and running are counted now, from the unfinished jobs; succeeded, failed and cancelled are totals
    since the tenant's first job (the job counters of ``/metrics``). With API keys the counts take in every
    owner's jobs of the tenant, and name no job."""
    svc = services()
    models = svc.models.records()  # newest first, one MGET
    active = svc.models.active()
    evaluated = next((m for m in models if m.get("evaluation")), None)
    whole = sees_deployment()
    if whole:
        depth = queue_lengths(celery(), QUEUES)
    else:
        depth = {}
        for kind, count in svc.jobs.queued_kinds().items():
            depth[task_of(kind).queue] = depth.get(task_of(kind).queue, 0) + count
    live = svc.live_queues()
    return {
        "tenant": svc.tenant,
        "queues": [{"name": q, "depth": depth.get(q, 0), "workers": live.get(q, 0)} for q in QUEUES],
        "jobs": job_counts(svc),
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
        "tenants": [tenant_counts(deployment().for_tenant(name)) for name in deployment().tenants()] if whole else None,
    }


def job_counts(svc: Services) -> dict[Status, int]:
    """A tenant's jobs by status: queued and running now, the finished ones since its first job."""
    finished = finished_by_status(cast("dict[bytes, bytes]", svc.redis.hgetall(svc.keys.metrics_jobs)))
    return {**svc.jobs.active_statuses(), **{status: finished.get(status, 0) for status in FINISHED}}


def tenant_counts(svc: Services) -> dict[str, Any]:
    """One tenant's row of the deployment's view: its name, jobs, stores and active model."""
    return {
        "tenant": svc.tenant,
        "jobs": job_counts(svc),
        "datasets": svc.datasets.count(),
        "models": svc.models.count(),
        "active_model": svc.models.active(),
    }
