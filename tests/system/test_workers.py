"""The worker processes: queues by hardware, lazy device on the GPU queue, cancellation."""

from __future__ import annotations

import time
from typing import Any

import psutil

from api.context import celery as api_celery
from api.context import services as api_services
from shared.jobs.kinds import INGEST
from shared.jobs.submit import submit
from tests.helpers import wait_job


def test_gpu_queue_worker_resolves_its_device_lazily(app: Any, stack: Any) -> None:
    with app.app_context():
        job = submit(api_celery(), api_services().jobs, kind="device", params={})
        done = wait_job(lambda: api_services().jobs.get(job.id).public(result_url=None))
        result = api_services().jobs.get(job.id).result
    assert done["status"] == "succeeded", done
    assert result["device"] == "cpu" and result["torch"].startswith("2.13")
    gpu_worker = next(c for c in stack.children if c.name == "gpu-worker")
    # Solo pool: the task ran in the worker process itself, not in a forked child.
    assert result["pid"] == gpu_worker.process.pid
    assert not psutil.Process(gpu_worker.process.pid).children()


def test_cpu_worker_is_a_prefork_pool(stack: Any) -> None:
    cpu_worker = next(c for c in stack.children if c.name == "cpu-worker")
    assert len(psutil.Process(cpu_worker.process.pid).children()) == 2


def test_cancelled_queued_job_is_never_run(app: Any) -> None:
    with app.app_context():
        jobs = api_services().jobs
        job = jobs.create("ingest", {"path": "ml-latest-small", "tags_per_movie": 4, "genres_fix_csv": None})
        jobs.cancel(job.id)
        # The message arrives after the cancel: the worker must skip it.
        api_celery().send_task(INGEST.name, args=[job.id, job.params], task_id=job.id)
        time.sleep(2.0)
        final = jobs.get(job.id)
    assert final is not None and final.status == "cancelled" and final.started_at is None
