"""kombu's Redis transport with two changes: clients kept, and a message that can join a caller's MULTI.

1. **Clients kept.** kombu's Redis channel builds a new ``redis.Redis`` (a ``PrefixedStrictRedis`` with our
   key prefix) for each publish, each unacked-message write and each ack (``Channel._create_client``).
   Building one copies redis-py's table of response callbacks, about a hundred entries, a cost that shows
   under recommendation load (BENCHMARKS.md has the profile). The object holds no connection (its pool
   does), so a channel here keeps one per pool and builds another only when kombu replaces the pool (after
   it closes or disconnects).
2. **Messages onto a pipeline.** Inside ``with onto(pipe):`` a message this thread publishes is not sent:
   its final ``LPUSH`` (the exact bytes kombu would send, to the exact key) is queued on ``pipe``. The job
   store queues the job's record on the same MULTI, so a job and its message reach Redis together or not at
   all, in one round trip and one disk flush (``shared.jobs.submit``). Celery still builds the message; only
   where its last command goes changes.

    celery.send_task ─> kombu Producer.publish ─> Channel._put ─┬─> LPUSH now            (no ``onto``)
                                                                └─> pipe.lpush, sent with  (inside ``onto``)
                                                                    the caller's EXEC

``shared.jobs.celery_app`` selects this transport with ``broker_transport``; broker URLs stay ``redis://`` or
``rediss://``, and what reaches Redis is what kombu's own transport writes. It overrides private methods of
kombu's channel, so kombu is pinned to the minor version it was written against (pyproject.toml), and
tests/redis/test_broker.py compares a message sent onto a pipeline with one kombu sent itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps
from redis.client import Pipeline

_local = threading.local()


@contextmanager
def onto(pipe: Pipeline) -> Iterator[None]:
    """Queue the messages this thread publishes in the block on ``pipe`` instead of sending them."""
    outer = getattr(_local, "pipe", None)
    _local.pipe = pipe
    try:
        yield
    finally:
        _local.pipe = outer


class Channel(kombu_redis.Channel):
    _clients: dict[bool, tuple[Any, Any]]

    def _create_client(self, asynchronous: bool = False) -> Any:
        pool = self.async_pool if asynchronous else self.pool
        clients = self.__dict__.setdefault("_clients", {})
        cached = clients.get(asynchronous)
        if cached is None or cached[0] is not pool:
            client = super()._create_client(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
            cached = clients[asynchronous] = (pool, client)
        return cached[1]

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        pipe: Pipeline | None = getattr(_local, "pipe", None)
        if pipe is None or kwargs.get("_publish_batch") is not None or (self._expires and queue in self._expires):
            super()._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]
            return
        # kombu's own client adds the global prefix to the key; the caller's pipeline does not.
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))  # type: ignore[no-untyped-call]
        pipe.lpush(f"{self.global_keyprefix}{key}", dumps(message))  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
"""The name Celery's ``broker_transport`` takes."""
