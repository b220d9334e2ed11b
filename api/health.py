"""Liveness and readiness.

``/readyz`` answers 503 with ``details.cause``, the first that holds of:

- ``redis_down``: Redis does not answer (refused, timed out, wrong password); ``redis_tls``: a ``rediss://``
  connection could not be secured (the message names the host and why: no TLS there, a certificate that failed
  verification); ``redis_loading``: it is reading its data after a restart;
- ``redis_read_only``: Redis refuses writes: a read-only replica (READONLY), or a disk error (MISCONF: the
  last AOF write or RDB save failed, e.g. a full disk);
- ``redis_out_of_memory``: ``used_memory`` has reached ``maxmemory`` (with noeviction every new job is refused);
- ``no_worker``: no live worker consumes some queue (``details.missing_queues``).

It costs one pipeline (INFO, and DEL of a key that never exists: a write that changes nothing, so it reaches
no AOF, yet Redis refuses it as it would any write), then the heartbeat scan.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.exceptions
from apiflask import APIBlueprint

from shared.infra.redisconn import TRANSIENT_CAUSES, TLSError, transient_cause
from shared.jobs.kinds import QUEUES

from .context import deployment
from .errors import error_response
from .schemas import HealthOut, ReadyOut

bp = APIBlueprint("health", __name__, tag="health")


@bp.get("/healthz")
@bp.output(HealthOut)
def healthz() -> dict[str, Any]:
    """The API process is up."""
    return {"status": "ok"}


def redis_problem(client: redis.Redis, probe_key: str) -> tuple[str, str] | None:
    """(cause, message) when Redis cannot take new jobs, else None; raises ConnectionError/TimeoutError when it
    does not answer."""
    pipe = client.pipeline(transaction=False)
    pipe.info()
    pipe.delete(probe_key)
    info, probe = pipe.execute(raise_on_error=False)
    for answer in (info, probe):  # a connection error came back as the answer
        if isinstance(answer, redis.ConnectionError | redis.TimeoutError):
            raise answer
    refused = transient_cause(probe) if isinstance(probe, Exception) else None
    if refused is not None:  # the probe's write was refused: read-only, a disk error (MISCONF), out of memory
        return refused, f"{TRANSIENT_CAUSES[refused][0]}: {str(probe)[:200]}"
    if isinstance(info, dict):
        if info.get("aof_last_write_status", "ok") != "ok":
            return "redis_read_only", "Redis refuses writes: its last AOF write failed (full disk?)"
        maxmemory, used = int(info.get("maxmemory", 0) or 0), int(info.get("used_memory", 0) or 0)
        if maxmemory > 0 and used >= maxmemory:
            return "redis_out_of_memory", f"Redis is out of memory ({used} of maxmemory {maxmemory} bytes used)"
    return None


@bp.get("/readyz")
@bp.output(ReadyOut)
@bp.doc(
    responses={
        503: "not ready; details.cause: redis_down, redis_tls, redis_loading, redis_read_only, redis_out_of_memory or "
        "no_worker "
        "(details.missing_queues)"
    }
)
def readyz() -> Any:
    """Redis answers and takes writes, and at least one live worker consumes each queue."""
    svc = deployment()
    try:
        problem = redis_problem(svc.redis, svc.cluster_keys.readyz_probe)
        if problem is not None:
            cause, message = problem
            return error_response(503, "not_ready", message, {"redis": True, "workers": {}, "cause": cause})
        workers = svc.live_queues()
        durability = svc.jobs.durability().mode
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        cause = transient_cause(exc) or "redis_down"  # BusyLoadingError is a ConnectionError: redis_loading
        details = {"redis": False, "workers": {}, "cause": cause}
        # A TLSError's text is ours (shared/infra/redisconn.py): TLS, the host and why, never a secret.
        message = str(exc) if isinstance(exc, TLSError) else f"{TRANSIENT_CAUSES[cause][0]} ({type(exc).__name__})"
        return error_response(503, "not_ready", message, details)
    missing = [q for q in QUEUES if workers.get(q, 0) == 0]
    if missing:
        details = {"redis": True, "workers": workers, "missing_queues": missing, "cause": "no_worker"}
        return error_response(503, "not_ready", f"no live worker on queue(s) {', '.join(missing)}", details)
    return {"status": "ready", "redis": True, "workers": workers, "durability": durability}
