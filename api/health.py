"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import redis
from apiflask import APIBlueprint

from shared.jobs.kinds import QUEUES

from . import services
from .errors import error_response
from .schemas import HealthOut, ReadyOut

bp = APIBlueprint("health", __name__, tag="health")


@bp.get("/healthz")
@bp.output(HealthOut)
def healthz() -> dict[str, Any]:
    """The API process is up."""
    return {"status": "ok"}


@bp.get("/readyz")
@bp.output(ReadyOut)
@bp.doc(responses={503: "Redis or a worker queue is unreachable"})
def readyz() -> Any:
    """Redis answers and at least one live worker consumes each queue."""
    try:
        services().redis.ping()
        workers = services().live_queues()
        durability = services().jobs.durability().mode
    except (redis.ConnectionError, redis.TimeoutError):
        return error_response(503, "not_ready", "Redis is unreachable", {"redis": False, "workers": {}})
    missing = [q for q in QUEUES if workers.get(q, 0) == 0]
    if missing:
        details = {"redis": True, "workers": workers, "missing_queues": missing}
        return error_response(503, "not_ready", f"no live worker on queue(s) {', '.join(missing)}", details)
    return {"status": "ready", "redis": True, "workers": workers, "durability": durability}
