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

Every message names the tenant whose job it works on in its ``TENANT_HEADER`` (shared/infra/keys.py: a tenant
is a keyspace). ``submit`` and the janitor set it from the job; a message a task sends while it runs (a shard,
a join, a pipeline's step, a retry) inherits its sender's (``carry_tenant``). A worker builds that tenant's
services for each task it runs (workers/base.py ``services``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from celery import Celery, current_task
from celery.signals import before_task_publish

from shared.infra.broker import SENTINEL_TRANSPORT, TRANSPORT
from shared.infra.keys import DEFAULT_TENANT, TENANT_SHAPE, Keys
from shared.infra.redisconn import RedisTarget
from shared.infra.settings import Settings
from shared.jobs.kinds import CPU_QUEUE, PRIORITY_STEPS, QUEUES, TASK_MODULES, routes


def queue_lengths(app: Celery, queues: Iterable[str] = QUEUES) -> dict[str, int]:
    """Messages waiting in each queue, every priority step counted, through kombu's public API.

    Declaring a queue on kombu's Redis transport writes nothing; its answer counts the waiting messages.
    """
    with app.pool.acquire(block=True) as conn:
        channel = conn.default_channel
        return {queue: int(channel.queue_declare(queue=queue).message_count) for queue in queues}


SCAN_CHUNK = 1000
"""Messages read per LRANGE when ``waiting_jobs`` walks a queue."""


@dataclass(frozen=True)
class Waiting:
    """Where a job's first message in a queue waits: the queue, and how many messages a worker takes before it."""

    queue: str
    ahead: int


def waiting_jobs(app: Celery, queues: Iterable[str] = QUEUES) -> dict[str, Waiting]:
    """Every job that has a message waiting in a queue (not yet taken by a worker), with its place.

    A worker takes a queue's lowest priority step first and, within a step, the oldest message (kombu pushes on
    the left and pops on the right), so a message's ``ahead`` is every message of the lower steps plus those
    older than it in its own. Each list is read from its head in chunks: a push during the walk shifts what is
    left toward the tail (read twice, harmless) and a pop takes from the tail, so a message that stays in its
    queue throughout the walk is always seen; one taken meanwhile is on its way to a worker's lease.

    Every task's first argument is its job's id (shared/jobs/kinds.py), read from the message's body.
    """
    found: dict[str, Waiting] = {}
    with app.pool.acquire(block=True) as conn:
        channel = conn.default_channel
        client = channel.client
        for queue in queues:
            before = 0  # messages of the lower priority steps, taken first
            for step in PRIORITY_STEPS:
                key = channel._q_for_pri(queue, step)
                length = int(client.llen(key))  # kombu's client adds its prefix to LLEN's key, not to LRANGE's
                start, full_key = 0, f"{channel.global_keyprefix}{key}"
                while start < length:
                    chunk = client.lrange(full_key, start, start + SCAN_CHUNK - 1)
                    for offset, raw in enumerate(chunk):
                        job_id = _job_of(raw)
                        ahead = before + max(0, length - 1 - (start + offset))
                        if job_id is not None and (job_id not in found or found[job_id].ahead > ahead):
                            found[job_id] = Waiting(queue, ahead)
                    start += max(len(chunk), 1)
                before += length
    return found


def _job_of(raw: bytes) -> str | None:
    """The job id a queued kombu message carries (its task's first argument); None for a foreign message."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        return None
    return args[0] if args and isinstance(args[0], str) else None


TENANT_HEADER = "movierec_tenant"
"""The message header naming the tenant whose job a task works on (see the module docstring)."""


def task_tenant() -> str:
    """The tenant of the task this thread runs: its message's header; the default tenant outside a task and for
    a message sent before tenants existed. ValueError for a header that names no tenant."""
    tenant = current_task.request.get(TENANT_HEADER) if current_task else None  # a proxy: false outside a task
    if tenant is None:
        return DEFAULT_TENANT
    if not isinstance(tenant, str) or not TENANT_SHAPE.match(tenant):
        raise ValueError(f"a task message names {tenant!r} as its tenant, which is not a tenant's name")
    return tenant


def carry_tenant(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: a message sent without a tenant (inside a task: a shard, a join, a step, a retry)
    carries the sending task's."""
    if headers is not None and TENANT_HEADER not in headers:
        headers[TENANT_HEADER] = task_tenant()


before_task_publish.connect(carry_tenant, weak=False)


class MovierecCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries the process settings, so tasks reach them through ``self.app``."""

    settings: Settings


def make_celery(settings: Settings) -> MovierecCelery:
    """The app for ``settings``; its broker is ``REDIS_URL`` as ``RedisTarget.kombu`` translates it: TLS options
    (``broker_use_ssl``; kombu would otherwise speak plaintext to a ``rediss://`` URL under our transport, and
    verify nothing under its own) and the sentinels (transport options) included."""
    broker = RedisTarget.parse(settings.redis_url).kombu()
    app = MovierecCelery("movierec", broker=broker.url, include=TASK_MODULES)
    app.settings = settings
    transport: dict[str, Any] = {
        **broker.transport_options,
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
        broker_transport=SENTINEL_TRANSPORT if broker.scheme == "sentinel" else TRANSPORT,
        broker_transport_options=transport,
        broker_use_ssl=broker.use_ssl or False,
        enable_utc=True,
    )
    return app


def settings_of(app: Celery) -> Settings:
    """The settings a task's app was built with."""
    return cast(MovierecCelery, app).settings
