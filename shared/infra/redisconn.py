"""One way to open Redis, so every process gets the same timeouts, retry policy and TLS; one way to run Lua.

Where Redis is comes from one URL (``REDIS_URL``), parsed here once (``RedisTarget.parse``) and translated for
each library that opens connections: redis-py (``connect``: the API, the workers, the janitor) and kombu
(``RedisTarget.kombu``: Celery's broker in the same processes, and Flower). The forms:

    redis://[[user]:password@]host[:6379][/db]                       plaintext
    rediss://[[user]:password@]host[:6379][/db][?TLS]                TLS on every connection
    redis+sentinel://[[user]:password@]h1[:26379],h2,h3[/db]?master_name=NAME[&sentinel_password=P]
    rediss+sentinel://...?master_name=NAME[&TLS]                     TLS to the sentinels and to the primary
    unix:///path/redis.sock[?db=N&password=P]                        redis-py only (kombu has no unix://)

    TLS: ssl_ca_certs=/path/ca.pem (else the system's CAs), ssl_certfile=, ssl_keyfile= (a client certificate),
         ssl_check_hostname=false, ssl_cert_reqs=none (no verification: an explicit, logged opt-out)

The user and password are the primary's (``requirepass``/ACL); sentinels get ``sentinel_password`` if set.
A TLS option on a plaintext scheme is refused rather than ignored, so a URL never falls back to plaintext.

**TLS fails fast and says so.** Every TLS connection (redis-py's and kombu's, to a server or a sentinel) is a
``TLSConnection``: its handshake is bounded by the connect timeout (redis-py bounds it by the read timeout, 40 s
here, retried: 161 s against a plaintext port), and a handshake that fails raises ``TLSError``, naming TLS, the
host and why (certificate verification failed, no TLS at that port), and is not retried (``FailFastRetry``).
No command, AUTH included, is written before the handshake succeeds. ``preflight`` runs one connection at the
start of each long-running process (cli/main.py), which exits with that message instead of retrying for minutes;
the API answers 503 ``redis_tls`` meanwhile (``TRANSIENT_CAUSES``).

``sent_ahead`` drives redis-py's pipeline below its public API (its command stack, a pooled connection's
packed send, the client's reply parsing), and ``TLSConnection`` overrides its socket set-up: this module is
the one place that does, redis-py is pinned to the minor series it was written against (pyproject.toml), and
tests/redis/test_run_job.py and tests/system/test_tls.py check those parts, so an upgrade that changes them
fails there first.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import redis
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.connection import Connection
from redis.retry import Retry

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 40.0
"""A blocked read fails after this long instead of hanging a request or a task (above the 30 s ?wait)."""

CONNECT_TIMEOUT_S = 5.0
"""A TCP connect, and a TLS handshake after it, fails after this long."""

SENTINEL_TIMEOUT_S = 2.0
"""A question to one sentinel (where is the primary?) fails after this long, and the next sentinel is asked."""

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname", "ssl_cert_reqs")
_SENTINEL_OPTIONS = ("master_name", "sentinel_password")
_SCHEMES = {"redis": (False, False), "rediss": (True, False), "redis+sentinel": (False, True),
            "rediss+sentinel": (True, True)}  # fmt: skip
"""scheme: (TLS, sentinel)."""


class TLSError(redis.ConnectionError):
    """A connection that could not be secured: nothing speaks TLS at that address, or its certificate failed
    verification. A ``ConnectionError``, so every handler of an unreachable Redis handles it, but never retried:
    the same handshake fails the same way."""


class FailFastRetry(Retry):
    """redis-py's retry of connection errors, except a ``TLSError`` raises at once."""

    def call_with_retry(
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        def retryable(error: Exception) -> bool:
            return not isinstance(error, TLSError) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def retry_policy() -> Retry:
    """Up to 3 more tries of a command that met a connection error, 50 ms doubling to 1 s apart."""
    return FailFastRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)


class TLSConnection(redis.SSLConnection):
    """redis-py's TLS connection with a bounded handshake and a ``TLSError`` that says what went wrong."""

    def _connect(self) -> Any:
        sock = Connection._connect(self)  # type: ignore[no-untyped-call]  # TCP; a refused or unreachable address stays an OSError
        sock.settimeout(self.socket_connect_timeout or CONNECT_TIMEOUT_S)
        where = f"{self.host}:{self.port}"
        try:
            secured = self._wrap_socket_with_ssl(sock)  # type: ignore[no-untyped-call]
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise TLSError(
                f"TLS to Redis at {where}: certificate verification failed ({exc.verify_message}); "
                "give the CA that signed the server's certificate as ssl_ca_certs in REDIS_URL"
            ) from exc
        except OSError as exc:  # ssl.SSLError, a timeout, a reset: no TLS server there
            sock.close()
            reason = "timed out" if isinstance(exc, TimeoutError) else (getattr(exc, "reason", None) or str(exc))
            raise TLSError(
                f"TLS handshake with Redis at {where} failed ({reason}): is that a TLS port "
                "(redis-server --tls-port)? A plaintext Redis needs redis://, not rediss://"
            ) from exc
        secured.settimeout(self.socket_timeout)
        return secured


class SentinelManagedTLSConnection(redis.sentinel.SentinelManagedConnection, TLSConnection):
    """A connection to whichever server the sentinels name as the primary, over ``TLSConnection``."""


@dataclass(frozen=True)
class KombuBroker:
    """``RedisTarget`` as Celery and kombu take it (shared/jobs/celery_app.py, Flower in cli/main.py)."""

    url: str
    """One URL, never a ``;`` list: kombu cycles through a list on errors and re-parses each URL's scheme into
    its own transport, leaving ours (shared/infra/broker.py). Sentinels travel in ``transport_options``."""
    scheme: str
    """``redis``, ``rediss`` or ``sentinel``: the name of kombu's own transport for this URL (Flower's)."""
    use_ssl: dict[str, Any] | None
    """Celery's ``broker_use_ssl``: redis-py's ``ssl_*`` options, None for plaintext."""
    transport_options: dict[str, Any]
    alternates: str
    """Every sentinel as kombu's own ``sentinel://h1;sentinel://h2`` (Flower's kombu); else ``url``."""


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to reach it, parsed from ``REDIS_URL`` (the module docstring has the forms)."""

    hosts: tuple[tuple[str, int], ...]
    """The server, or every sentinel when ``master_name`` is set; empty for a unix socket."""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: Mapping[str, Any] | None = None
    """redis-py's ``ssl_*`` keyword arguments (verification required unless the URL says otherwise); None:
    plaintext."""
    master_name: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    unix_url: str | None = field(default=None, repr=False)
    """A ``unix://`` URL, handed to redis-py as it is."""

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Raises ValueError naming what is wrong (never the password)."""
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if scheme == "unix":
            return cls(hosts=(), unix_url=url)
        if not sep or scheme not in _SCHEMES:
            raise ValueError(f"REDIS_URL must start with {', '.join(f'{s}://' for s in _SCHEMES)} or unix://")
        tls, sentinel = _SCHEMES[scheme]
        rest = rest.partition("#")[0]
        rest, _, query = rest.partition("?")
        where, _, path = rest.partition("/")
        auth, at, hostlist = where.rpartition("@")
        username, _, password = auth.partition(":") if at else ("", "", "")
        options = dict(parse_qsl(query, keep_blank_values=True))
        allowed = (_TLS_OPTIONS if tls else ()) + (_SENTINEL_OPTIONS if sentinel else ())
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            plain = [o for o in unknown if o in _TLS_OPTIONS]
            hint = f" (TLS options need {scheme.replace('redis', 'rediss', 1)}://)" if plain else ""
            raise ValueError(f"REDIS_URL: unknown option(s) {', '.join(unknown)} for {scheme}://{hint}")
        default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT
        hosts = tuple(_host_port(h, default_port) for h in hostlist.split(",")) if hostlist else ()
        if not hosts or (len(hosts) > 1 and not sentinel):
            raise ValueError(f"REDIS_URL names {'no' if not hosts else 'several'} host(s); only "
                             "redis+sentinel:// takes a comma-separated list (of sentinels)")  # fmt: skip
        if sentinel and not options.get("master_name"):
            raise ValueError(f"REDIS_URL: {scheme}:// needs ?master_name=<the name the sentinels monitor>")
        if not path.strip("/").isdigit() and path.strip("/"):
            raise ValueError("REDIS_URL: the path is the database number (/0)")
        return cls(
            hosts=hosts,
            db=int(path.strip("/") or 0),
            username=unquote(username) or None,
            password=unquote(password) or None,
            tls=_tls_options(options) if tls else None,
            master_name=options.get("master_name"),
            sentinel_password=options.get("sentinel_password") or None,
        )

    def where(self) -> str:
        """Where, for messages: ``host:port``, or the sentinels and the master's name (no password)."""
        if self.unix_url is not None:
            return self.unix_url.partition("?")[0]
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        tls = " over TLS" if self.tls is not None else ""
        return f"{hosts}{tls}" if self.master_name is None else f"{self.master_name!r} via sentinels {hosts}{tls}"

    def sentinel_kwargs(self) -> dict[str, Any]:
        """What a connection to one sentinel takes (redis-py's ``Sentinel(sentinel_kwargs=...)``)."""
        kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        if self.tls is not None:
            kwargs |= {"ssl": True, **self.tls}
        return kwargs

    def kombu(self) -> KombuBroker:
        auth = ""
        if self.username or self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        if self.unix_url is not None:
            return KombuBroker(self.unix_url, "redis", None, {}, self.unix_url)
        options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S}
        scheme = "rediss" if self.tls is not None else "redis"
        if self.master_name is not None:
            scheme = "sentinel"
            options |= {
                "master_name": self.master_name,
                "sentinels": [list(h) for h in self.hosts],
                "sentinel_kwargs": self.sentinel_kwargs(),
            }
        urls = [f"{scheme}://{auth}{host}:{port}/{self.db}" for host, port in self.hosts]
        use_ssl = dict(self.tls) if self.tls is not None else None
        return KombuBroker(urls[0], scheme, use_ssl, options, ";".join(urls))


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:6379
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:  # no port, or a bare IPv6 address
        host, port = text, ""
    if not host or (port and not port.isdigit()):
        raise ValueError(f"REDIS_URL: {text!r} is not host[:port]")
    return host, int(port or default_port)


def _tls_options(options: Mapping[str, str]) -> dict[str, Any]:
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs not in ("required", "none"):
        raise ValueError("REDIS_URL: ssl_cert_reqs is required (the default) or none")
    if reqs == "none":
        log.warning("REDIS_URL has ssl_cert_reqs=none: Redis's certificate is not verified, so anyone between "
                    "here and Redis can read the password and the data")  # fmt: skip
    check = options.get("ssl_check_hostname", "true").lower() not in ("false", "0", "no")
    tls: dict[str, Any] = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED if reqs == "required" else ssl.CERT_NONE,
        "ssl_check_hostname": check and reqs == "required",
    }
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if options.get(name):
            tls[name] = options[name]
    return tls


def _client_options() -> dict[str, Any]:
    return {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": 30,
        "retry": retry_policy(),
    }


def sentinel_manager(
    sentinels: Sequence[Sequence[Any]], sentinel_kwargs: Mapping[str, Any], **connection_kwargs: Any
) -> redis.sentinel.Sentinel:
    """redis-py's Sentinel on ``sentinels`` (``[(host, port), ...]``), each asked with ``sentinel_kwargs``
    (``RedisTarget.sentinel_kwargs``): over ``TLSConnection`` when they say ``ssl`` (redis-py would build its own
    ``SSLConnection``: an unbounded handshake, an unnamed failure). ``connection_kwargs`` go to the connections
    to the primary (``master_for``). Also kombu's, through our Sentinel channel (shared/infra/broker.py)."""
    manager = redis.sentinel.Sentinel([], **connection_kwargs)  # type: ignore[no-untyped-call]
    kwargs = {k: v for k, v in sentinel_kwargs.items() if k != "ssl"}
    cls = TLSConnection if sentinel_kwargs.get("ssl") else Connection
    manager.sentinels = [
        redis.Redis.from_pool(redis.ConnectionPool(connection_class=cls, host=host, port=port, **kwargs))
        for host, port in sentinels
    ]
    return manager


_SentinelManaged = redis.sentinel.SentinelManagedConnection


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (any form of the module docstring) that retries brief outages; through Sentinel, it
    asks where the primary is on each new connection, so it follows a failover."""
    target = RedisTarget.parse(url)
    options = _client_options()
    if target.unix_url is not None:
        return redis.Redis.from_url(url, **options)
    auth = {"db": target.db, "username": target.username, "password": target.password, **(target.tls or {})}
    if target.master_name is not None:
        cls: type[Connection] = SentinelManagedTLSConnection if target.tls is not None else _SentinelManaged
        manager = sentinel_manager(target.hosts, target.sentinel_kwargs())
        client: redis.Redis = manager.master_for(target.master_name, connection_class=cls, **auth, **options)  # type: ignore[no-untyped-call]
        return client
    cls = TLSConnection if target.tls is not None else Connection
    ((host, port),) = target.hosts
    return redis.Redis.from_pool(redis.ConnectionPool(connection_class=cls, host=host, port=port, **auth, **options))


def preflight(url: str) -> None:
    """Open a connection to ``url`` now (to each sentinel too) and raise ``TLSError`` if one cannot be secured,
    ValueError if ``url`` is malformed. Any other failure (Redis not up yet) is left to the usual retries."""
    target = RedisTarget.parse(url)
    client = connect(url)
    if target.master_name is not None:
        for sentinel in sentinel_manager(target.hosts, target.sentinel_kwargs()).sentinels:
            _ping_unless_unreachable(sentinel)
    _ping_unless_unreachable(client)


def _ping_unless_unreachable(client: redis.Redis) -> None:
    try:
        client.ping()
    except TLSError:
        raise
    except redis.RedisError as exc:
        log.warning("Redis not answering yet (%s); the process goes on and keeps trying", type(exc).__name__)
    finally:
        client.close()


TRANSIENT_CAUSES = {
    "redis_down": ("Redis is unreachable", 5),
    "redis_tls": (
        "Redis cannot be reached over TLS (no TLS at its address, or its certificate failed verification)",
        30,
    ),
    "redis_loading": ("Redis is loading its data after a restart", 5),
    "redis_read_only": ("Redis refuses writes (a read-only replica, or it cannot write to its disk)", 15),
    "redis_out_of_memory": ("Redis is out of memory (maxmemory reached): free some or raise maxmemory", 30),
    "redis_replicas": ("Redis's replicas did not confirm the write in time (MOVIEREC_WAIT_REPLICAS)", 5),
}
"""Why Redis refused, where waiting (or an operator) can cure it: the cause, what to say, and the seconds a
client is asked to wait (``Retry-After``) before trying again."""


def transient_cause(exc: BaseException) -> str | None:
    """The ``TRANSIENT_CAUSES`` key of a Redis failure that should pass (the server away, loading, read-only,
    out of memory, a TLS handshake an operator must mend), looking through the exceptions it wraps (kombu's
    ``OperationalError``, redis-py's pipeline errors); None for any other error, which is a bug to report, not
    to retry."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen.args[0]) if seen.args else ""
        if isinstance(seen, TLSError):
            return "redis_tls"
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
