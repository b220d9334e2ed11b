"""How long a client may hold a connection to ``movierec api``: the gunicorn worker class and its deadlines.

A connection costs one greenlet here, not one thread: ``movierec api`` runs gunicorn's gevent worker, each
process holding up to ``--connections`` (1,000) connections at once, so idle and slow clients no longer take
the few threads every request needs (issue #14, finding 1; ``python -m bench.slow_clients`` has the figures
before and after). What a connection may do is then bounded, after Apache's mod_reqtimeout, by four settings:

    request line and headers   MOVIEREC_HEADER_TIMEOUT_S (10) in all, from when the server starts waiting for
                               them (a new connection, or the last answer on a kept-alive one): a client that
                               sends half a request line and idles is closed then, without an answer
    body                       MOVIEREC_BODY_TIMEOUT_S (20), extended by a second for every
                               MOVIEREC_BODY_MIN_RATE (500) bytes received: a body that trickles slower is cut
                               with a JSON 408 ``request_timeout`` and the connection closed; an upload at any
                               real link's speed never meets it
    answer                     each write must be taken by the client within MOVIEREC_SEND_TIMEOUT_S (30), or
                               the connection is closed

The header bound is gunicorn's own: its async workers read each request's head under
``gevent.Timeout(keepalive)``, so ``keepalive`` is the header timeout. The body and send bounds are
``_DeadlineSocket``, the socket the request parser reads from, armed by ``BoundedGeventWorker`` while a
request is handled. A read past the deadline marks the request to close its connection and raises
``BodyTimeout``, an HTTP error, which the app answers through its one error handler (api/errors.py).

This module is the one place gunicorn's insides are reached (STYLE.md, guideline 16): ``BoundedGeventWorker``
overrides the gevent worker's ``handle`` and ``handle_request`` and wraps the client socket the parser reads,
which is why gunicorn is pinned to the minor series tested (pyproject.toml); tests/unit/test_fences.py checks
the signatures it overrides and tests/system/test_slow_clients.py its behaviour on a real server.

Behind the compose file's nginx (``deploy/nginx.conf``), nginx applies the same bounds first and buffers each
body whole before passing it on, so a slow client never reaches gunicorn; these bounds keep a bare
``movierec api`` (a laptop, ``movierec up``) standing on its own. README's "Slow clients" says which layer
does what.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from apiflask import HTTPError
from gunicorn.workers.ggevent import GeventWorker

from shared.infra.settings import Settings

LINGER_S = 2.0
"""After a 408 the client may still be sending: the connection reads and drops its bytes this long after the
answer (a lingering close, as Apache's), since closing with bytes unread resets the connection, and a reset can
destroy the answer before the client reads it."""


@dataclass(frozen=True)
class Limits:
    """The bounds of the module docstring, in seconds and bytes per second."""

    header_timeout_s: int
    body_timeout_s: int
    body_min_rate: int
    send_timeout_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.header_timeout_s, settings.body_timeout_s, settings.body_min_rate, settings.send_timeout_s)


class BodyTimeout(HTTPError):
    """A request body that did not arrive in time: 408, and the connection is closed after the answer."""

    def __init__(self, received: int, limits: Limits) -> None:
        super().__init__(
            408,
            f"the request body did not arrive in time ({received} bytes received): a body may take "
            f"{limits.body_timeout_s} s (MOVIEREC_BODY_TIMEOUT_S) plus a second for every {limits.body_min_rate} "
            "bytes (MOVIEREC_BODY_MIN_RATE)",
        )


class _DeadlineSocket:
    """A client socket whose reads, while armed, must end by a deadline that grows with the bytes received,
    and whose writes must progress within the send timeout. Everything else passes through."""

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self._sock = sock
        self._limits = limits
        self._started: float | None = None  # when the current request's body began; None: unarmed
        self._received = 0
        self._request: Any = None
        self._expired = False

    def arm(self, request: Any) -> None:
        """Start the deadline of ``request`` (gunicorn's parsed request), whose body is read from now on."""
        self._started, self._received, self._request = time.monotonic(), 0, request

    def disarm(self) -> None:
        self._started = self._request = None
        self._sock.settimeout(None)

    def _expire(self) -> BodyTimeout:
        # The rest of the body may still be coming: it must not be read as the next request.
        self._request.force_close()
        self._expired = True
        return BodyTimeout(self._received, self._limits)

    def recv(self, size: int) -> bytes:
        if self._started is None:
            return self._sock.recv(size)
        limits = self._limits
        left = self._started + limits.body_timeout_s + self._received / limits.body_min_rate - time.monotonic()
        if left <= 0:
            raise self._expire()
        self._sock.settimeout(left)
        try:
            data = self._sock.recv(size)
        except TimeoutError:
            raise self._expire() from None
        self._received += len(data)
        return data

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._limits.send_timeout_s)
        try:
            self._sock.sendall(data)
        finally:
            self._sock.settimeout(None)  # an armed recv sets its own

    def close(self) -> None:
        if self._expired:  # a lingering close (LINGER_S)
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + LINGER_S
                while (left := deadline - time.monotonic()) > 0:
                    self._sock.settimeout(left)
                    if not self._sock.recv(65536):
                        break
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BoundedGeventWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, with a deadline on each request's body and writes (see the module docstring).
    ``worker_class`` makes the subclass that carries a server's ``limits``."""

    limits: ClassVar[Limits]

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        super().handle(listener, _DeadlineSocket(client, self.limits), addr)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        sock.arm(req)
        try:
            kept: bool = super().handle_request(listener_name, req, sock, addr)
        finally:
            sock.disarm()
        return kept


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """The options of ``api.server.serve`` that bound connections: the worker class and the header timeout."""
    limits = Limits.from_settings(settings)
    worker = type(BoundedGeventWorker.__name__, (BoundedGeventWorker,), {"limits": limits})
    return {"worker_class": worker, "keepalive": limits.header_timeout_s}
