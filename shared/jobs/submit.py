"""Submitting a job: its record and its message in one MULTI, so an answered id is never unknown.

Celery builds the message; ``shared.infra.broker.onto`` queues its ``LPUSH`` on the MULTI that writes the record,
so both land in one round trip (one disk flush when Redis fsyncs every write), or neither does and the
caller gets 503. A worker that takes the message always finds the record.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from shared.errors import ServiceUnavailable
from shared.infra.broker import onto
from shared.infra.redisconn import TRANSIENT_CAUSES, transient_cause
from shared.jobs.celery_app import TENANT_HEADER
from shared.jobs.kinds import task_of
from shared.jobs.store import Job, JobStore


def submit(celery: Celery, jobs: JobStore, *, kind: str, params: dict[str, Any], owner: str | None = None) -> Job:
    """Record a job of ``kind`` and send it to its task (shared/jobs/kinds.py).

    ``owner``: who may see the job when the API runs with keys (``api.auth``); None when it is open. The job is
    ``jobs``' tenant's, and its message says so (``TENANT_HEADER``).
    """
    task = task_of(kind).name
    pipe = jobs.pipeline()
    job = jobs.create_on(pipe, kind, params, owner=owner)
    try:
        with onto(pipe):
            # The params are in the record: the message's printable form (worker logs, events) names the job only.
            celery.send_task(
                task,
                args=[job.id, params],
                task_id=job.id,
                argsrepr=f"[{job.id!r}, ...]",
                kwargsrepr="{}",
                headers={TENANT_HEADER: jobs.tenant},
            )
        pipe.execute()
    except (redis.RedisError, OperationalError, OSError) as exc:
        cause = transient_cause(exc) or "redis_down"
        message = f"the job was not queued: {TRANSIENT_CAUSES[cause][0]}; try again shortly"
        raise ServiceUnavailable(message, details={"cause": cause}) from exc
    jobs.confirm_durable(job.id)  # 202 only once it is on disk: see shared/infra/durability.py
    return job


def cancel(celery: Celery, jobs: JobStore, job_id: str) -> bool:
    """Cancel a queued or running job; False when it had already finished."""
    if not jobs.cancel(job_id):
        return False
    # A prefork child running it is stopped; a queued message is dropped when a worker sees it,
    # and even a worker that missed the broadcast skips it, since the record now says cancelled.
    celery.control.revoke(job_id, terminate=True, signal="SIGTERM")
    return True
