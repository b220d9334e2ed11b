"""The one factory that builds the Celery app, for the API (which only sends) and the workers.

Routing is by task module: everything in ``workers.cpu`` goes to the ``cpu`` queue, everything in
``workers.gpu`` to ``gpu``. Messages are JSON only. Tasks are acknowledged late and requeued when their
worker dies, so every task is written to be idempotent (deterministic output keys). The Redis visibility
timeout is set in the three places Celery and kombu read it, and it exceeds the hard time limit
(``Settings`` refuses a configuration where it does not).
"""

from __future__ import annotations

from typing import Any, cast

from celery import Celery

from .settings import Settings

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
TASK_MODULES = ("workers.cpu", "workers.gpu")


class MovierecCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries the process settings, so tasks reach them through ``self.app``."""

    settings: Settings


def make_celery(settings: Settings) -> MovierecCelery:
    app = MovierecCelery("movierec", broker=settings.redis_url, backend=settings.redis_url, include=TASK_MODULES)
    app.settings = settings
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout_s,
        # Our prefix on the queues and bindings too, so two deployments (or test runs) share a Redis safely.
        "global_keyprefix": f"{settings.key_prefix}:celery:",
    }
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        result_accept_content=["json"],
        task_routes={
            "workers.cpu.*": {"queue": CPU_QUEUE},
            "workers.gpu.*": {"queue": GPU_QUEUE},
        },
        task_default_queue=CPU_QUEUE,
        task_create_missing_queues=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.soft_time_limit_s,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=dict(transport),
        result_backend_transport_options=dict(transport),
        visibility_timeout=settings.visibility_timeout_s,
        result_expires=settings.result_ttl_s,
        enable_utc=True,
    )
    return app


def settings_of(app: Celery) -> Settings:
    """The settings a task's app was built with."""
    return cast(MovierecCelery, app).settings
