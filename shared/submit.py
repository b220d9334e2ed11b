"""Submitting a job: the record first, then the message, so an answered id is never unknown."""

from __future__ import annotations

from typing import Any

from celery import Celery

from .errors import ServiceUnavailable
from .jobs import Job, JobStore

INGEST_TASK = "workers.cpu.ingest_dataset"
MINE_TASK = "workers.cpu.mine_triplets"
INDEX_TASK = "workers.cpu.build_index"
RECOMMEND_TASK = "workers.cpu.recommend"
PIPELINE_STEP_TASK = "workers.cpu.pipeline_step"
ENCODE_TASK = "workers.gpu.encode"
TRAIN_TASK = "workers.gpu.train"
DESCRIBE_DEVICE_TASK = "workers.gpu.describe_device"


def submit(
    celery: Celery, jobs: JobStore, *, kind: str, task: str, params: dict[str, Any], owner: str | None = None
) -> Job:
    """``owner``: who may see the job when the API runs with keys (``api.auth``); None when it is open."""
    job = jobs.create(kind, params, owner=owner)
    try:
        celery.send_task(task, args=[job.id, params], task_id=job.id)
    except Exception as exc:
        jobs.fail(job.id, code="enqueue_failed", message="the job could not be queued")
        raise ServiceUnavailable("the job queue is unreachable; try again shortly") from exc
    jobs.confirm_durable(job.id)  # 202 only once it is on disk: see shared/durability.py
    return job


def cancel(celery: Celery, jobs: JobStore, job_id: str) -> bool:
    """Cancel a queued or running job; False when it had already finished."""
    if not jobs.cancel(job_id):
        return False
    # A prefork child running it is stopped; a queued message is dropped when a worker sees it,
    # and even a worker that missed the broadcast skips it, since the record now says cancelled.
    celery.control.revoke(job_id, terminate=True, signal="SIGTERM")
    return True
