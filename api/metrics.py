"""``/metrics``: Prometheus text exposition of what an operator watches: queues, workers, jobs, the model."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import Response

from shared.infra.celery_app import queue_lengths
from shared.jobs.kinds import QUEUES

from . import celery, services

bp = APIBlueprint("metrics", __name__, tag="metrics")

_TEXT: dict[int | str, dict[str, str | dict[str, dict[str, object]]]] = {
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


@bp.get("/metrics")
@bp.doc(responses=_TEXT)
def metrics() -> Response:
    """Queue lengths, live workers per queue, jobs in the registry, the active model."""
    svc = services()
    lines = [
        "# HELP movierec_queue_length Messages waiting in a Celery queue.",
        "# TYPE movierec_queue_length gauge",
    ]
    for queue, length in queue_lengths(celery(), QUEUES).items():
        lines.append(f'movierec_queue_length{{queue="{queue}"}} {length}')
    lines += ["# HELP movierec_workers Live workers consuming a queue.", "# TYPE movierec_workers gauge"]
    live = svc.live_queues()
    for queue in QUEUES:
        lines.append(f'movierec_workers{{queue="{queue}"}} {live.get(queue, 0)}')
    jobs = svc.jobs.count()
    lines += [
        "# HELP movierec_jobs_indexed Job records in the listing index (finished ones expire).",
        "# TYPE movierec_jobs_indexed gauge",
        f"movierec_jobs_indexed {jobs}",
        "# HELP movierec_active_model 1 for the version recommendations use.",
        "# TYPE movierec_active_model gauge",
    ]
    active = svc.models.active()
    if active:
        lines.append(f'movierec_active_model{{version="{active}"}} 1')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
