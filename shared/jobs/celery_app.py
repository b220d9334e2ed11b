"""The one factory that builds the Celery app, for the API (which only sends) and the workers.

Routing is by the job-kind table (shared/jobs/kinds.py): each task to its queue (``cpu`` or ``gpu``) and
priority (recommendations overtake batch work). Messages are JSON only. Tasks are acknowledged late, and
requeued when the pool process running them dies (``task_reject_on_worker_lost``) or the worker shuts down,
so every task is written to be idempotent (deterministic output keys).

Redelivery after a whole worker dies is the janitor's (workers/janitor.py), not kombu's. kombu's Redis
transport emulates acknowledgements by copying each message it hands out into an ``unacked`` hash and
deleting it on ack, and restores what a dead worker held after the visibility timeout (3 h by default). The
janitor finds such a job within a lease TTL and two sweeps and sends it again, so kombu's copy only ever
arrived as a late duplicate, and it cost two writes per task (two disk flushes, on a Redis that fsyncs every
write, one of them before the task could start). So ``ack_emulation`` is off: the broker forgets a message
once a worker has taken it. ``visibility_timeout_s`` stays the bound after which the janitor resends a job
that a busy queue might still be holding, and ``Settings`` still keeps the hard time limit below it.

There is no result backend: a job's state and result live in our job store (``shared.jobs.store``), and nothing
asks Celery for a task's result. With one, every send subscribed to the task's result channel and
unsubscribed again, two round trips on each submission for an answer no one reads. The broker is kombu's
Redis transport with its clients kept and submissions sent in one MULTI with their record (``shared.infra.broker``).

Task events are off: Flower (``movierec flower``) turns them on in the workers it sees (Celery's
``enable_events`` control, every 5 s while it runs) and they stay on until a worker restarts. Left on for good
(``worker_send_task_events``) they cost the serving path about a quarter of its throughput on 2 cores
(BENCHMARKS.md, "Metrics and task events"); the API sends no ``task-sent`` events, so Flower shows a task from
when a worker receives it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from celery import Celery

from shared.infra.broker import TRANSPORT
from shared.infra.keys import Keys
from shared.infra.settings import Settings
from shared.jobs.kinds import CPU_QUEUE, PRIORITY_STEPS, QUEUES, TASK_MODULES, routes


def queue_lengths(app: Celery, queues: Iterable[str] = QUEUES) -> dict[str, int]:
    """Messages waiting in each queue, every priority step counted, through kombu's public API.

    Declaring a queue on kombu's Redis transport writes nothing; its answer counts the waiting messages.
    """
    with app.pool.acquire(block=True) as conn:
        channel = conn.default_channel
        return {queue: int(channel.queue_declare(queue=queue).message_count) for queue in queues}


class MovierecCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries the process settings, so tasks reach them through ``self.app``."""

    settings: Settings


def make_celery(settings: Settings) -> MovierecCelery:
    app = MovierecCelery("movierec", broker=settings.redis_url, include=TASK_MODULES)
    app.settings = settings
    transport: dict[str, Any] = {
        # Our prefix on the queues and bindings too, so two deployments (or test runs) share a Redis safely.
        "global_keyprefix": Keys(settings.key_prefix).celery_prefix,
        "ack_emulation": False,  # redelivery is the janitor's (see above)
        "priority_steps": list(PRIORITY_STEPS),
    }
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        task_routes=routes(),
        task_default_queue=CPU_QUEUE,
        task_create_missing_queues=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.soft_time_limit_s,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport=TRANSPORT,
        broker_transport_options=transport,
        enable_utc=True,
    )
    return app


def settings_of(app: Celery) -> Settings:
    """The settings a task's app was built with."""
    return cast(MovierecCelery, app).settings
