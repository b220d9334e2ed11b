"""One way to open Redis, so every process gets the same timeouts and retry policy; one way to run Lua.

``sent_ahead`` drives redis-py's pipeline below its public API (its command stack, a pooled connection's
packed send, the client's reply parsing): this module is the one place that does, redis-py is pinned to the
minor series it was written against (pyproject.toml), and tests/redis/test_run_job.py checks its replies and
errors, so an upgrade that changes those parts fails there first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.retry import Retry

SOCKET_TIMEOUT_S = 40.0
"""A blocked read fails after this long instead of hanging a request or a task (above the 30 s ?wait)."""

CONNECT_TIMEOUT_S = 5.0


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``) that retries brief outages."""
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


TRANSIENT_CAUSES = {
    "redis_down": ("Redis is unreachable", 5),
    "redis_loading": ("Redis is loading its data after a restart", 5),
    "redis_read_only": ("Redis refuses writes (a read-only replica, or it cannot write to its disk)", 15),
    "redis_out_of_memory": ("Redis is out of memory (maxmemory reached): free some or raise maxmemory", 30),
}
"""Why Redis refused, where waiting (or an operator) can cure it: the cause, what to say, and the seconds a
client is asked to wait (``Retry-After``) before trying again."""


def transient_cause(exc: BaseException) -> str | None:
    """The ``TRANSIENT_CAUSES`` key of a Redis failure that should pass (the server away, loading, read-only,
    out of memory), looking through the exceptions it wraps (kombu's ``OperationalError``, redis-py's
    pipeline errors); None for any other error, which is a bug to report, not to retry."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen.args[0]) if seen.args else ""
        if isinstance(seen, redis.exceptions.BusyLoadingError) or text.startswith("LOADING"):
            return "redis_loading"
        if isinstance(seen, (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)):
            return "redis_down"
        if isinstance(seen, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in text:
            return "redis_out_of_memory"
        if isinstance(seen, redis.exceptions.ReadOnlyError) or text.startswith(("READONLY", "MISCONF")):
            return "redis_read_only"
        seen = seen.__cause__ or seen.__context__
    return None


class Script:
    """A Lua script: EVALSHA on a client (loaded again after a Redis restart), EVAL in a pipeline.

    A pipeline holding one of redis-py's registered scripts asks SCRIPT EXISTS before it runs: a round trip
    more on the paths that count them (a recommendation's start and finish each run in one pipeline). In a
    pipeline this sends the body instead; Redis finds it by its SHA1 in its script cache, and a Redis that
    restarted with an empty cache compiles it again, where an EVALSHA would fail.
    """

    def __init__(self, client: redis.Redis, source: str) -> None:
        self._source = source
        self._registered = client.register_script(source)

    def __call__(self, *, keys: Sequence[Any], args: Sequence[Any], client: redis.Redis | None = None) -> Any:
        if isinstance(client, Pipeline):
            return client.eval(self._source, len(keys), *keys, *args)
        return self._registered(keys=keys, args=args, client=client)


@contextmanager
def sent_ahead(pipe: Pipeline) -> Iterator[Callable[[], list[Any]]]:
    """Send ``pipe``'s commands now; the block gets a function that reads their replies when called (once
    the block is left, at the latest). Whatever runs in between overlaps the round trip and, on a Redis that
    fsyncs every write, its disk flush.

    Unlike ``execute`` there is no retry: a connection error raises, and the connection is dropped.
    """
    commands = list(pipe.command_stack)
    pipe.reset()
    pool = pipe.connection_pool
    # redis-py's connection layer and the pipeline's reply parsing are untyped.
    conn: Any = pool.get_connection()
    parser: Any = pipe
    replies: list[Any] | None = None

    def read() -> list[Any]:
        nonlocal replies
        if replies is None:
            out: list[Any] = []
            for args, options in commands:
                try:
                    out.append(parser.parse_response(conn, args[0], **options))
                except redis.ResponseError as exc:
                    out.append(exc)
            replies = out
            parser.raise_first_error(commands, out)
        return replies

    try:
        conn.send_packed_command(conn.pack_commands([args for args, _ in commands]))
        yield read
        read()  # every reply is drained before the connection goes back to the pool
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
