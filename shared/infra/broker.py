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

Both hold for Redis behind Sentinel too (``SentinelTransport``, kombu's ``SentinelChannel`` under ours), and a
TLS connection of either is ``shared.infra.redisconn.TLSConnection`` (a bounded handshake, a named failure).
The sentinels come from our transport option ``sentinels``, not from kombu's ``;``-separated URL list: on an
error kombu walks that list and re-parses each URL's scheme into its own transport, which would drop ours.

``shared.jobs.celery_app`` selects the transport with ``broker_transport`` and gives it the broker URL, TLS
options and transport options that ``shared.infra.redisconn.RedisTarget.kombu`` translates from ``REDIS_URL``;
what reaches Redis is what kombu's own transport writes. It overrides private methods of
kombu's channel, so kombu is pinned to the minor version it was written against (pyproject.toml), and
tests/redis/test_broker.py compares a message sent onto a pipeline with one kombu sent itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.sentinel
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps
from redis.client import Pipeline

from shared.infra.redisconn import SentinelManagedTLSConnection, TLSConnection, sentinel_manager

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
    connection_class_ssl: type[Any] = TLSConnection
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


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Our channel on the primary that the sentinels name (kombu's ``SentinelChannel`` finds it)."""

    from_transport_options = (*kombu_redis.SentinelChannel.from_transport_options, "sentinels")  # type: ignore[assignment]
    connection_class = redis.sentinel.SentinelManagedConnection
    connection_class_ssl = SentinelManagedTLSConnection  # type: ignore[assignment]
    sentinels: list[list[Any]] | None = None
    """``[[host, port], ...]``, from the transport options."""

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        # kombu's own, with the sentinels from our option, asked over TLS like the primary when it is TLS.
        params = self._connparams(asynchronous)  # type: ignore[no-untyped-call]
        params.pop("host", None)
        params.pop("port", None)
        master_name = getattr(self, "master_name", None)
        if master_name is None or not self.sentinels:
            raise ValueError("the Sentinel transport needs the transport options master_name and sentinels")
        manager = sentinel_manager(self.sentinels, getattr(self, "sentinel_kwargs", None) or {}, **params)
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        return manager.master_for(master_name, redis.Redis).connection_pool  # type: ignore[no-untyped-call]


class SentinelTransport(Transport, kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORT = f"{__name__}:Transport"
"""The name Celery's ``broker_transport`` takes."""

SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"
"""The same, for Redis behind Sentinel."""
