"""Slow and idle clients against a real ``movierec api`` (issue #14, finding 1; api/connections.py), bare and
behind the compose file's nginx (deploy/nginx.conf, run by the system's nginx, which ``make test`` installs).

The servers here run with short bounds (a 2 s header timeout, a 3 s body timeout at 500 bytes/s) so the test
sees them expire; ``python -m bench.slow_clients`` measures the defaults. Before the gevent worker, 300
half-open connections left ``/healthz`` answering none of 12 requests, and nothing was ever closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from cli.stack import free_port
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery, queue_lengths
from tests.conftest import delete_prefix
from tests.helpers import answers, running, wait_until

pytestmark = pytest.mark.system

HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 3
MIN_RATE = 500
PROBE_TIMEOUT_S = 5.0
REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def bounded_settings(settings: Settings) -> Iterator[Settings]:
    """Short connection bounds, and a key prefix of the module's own that no worker consumes."""
    prefix = f"{settings.key_prefix}-{uuid.uuid4().hex[:8]}"
    yield settings.model_copy(
        update={
            "key_prefix": prefix,
            "header_timeout_s": HEADER_TIMEOUT_S,
            "body_timeout_s": BODY_TIMEOUT_S,
            "body_min_rate": MIN_RATE,
        }
    )
    delete_prefix(connect(settings.redis_url), prefix)


@pytest.fixture(scope="module")
def bounded_api(bounded_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``movierec api`` (two gunicorn workers, as deployed) with ``bounded_settings``, on the session's Redis."""
    port = free_port()
    log = tmp_path_factory.mktemp("bounded-api") / "api.log"
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "cli.main", "api", "--port", str(port), "--workers", "2"], log,
                 env=bounded_settings.child_env(), ready=answers(f"{url}/healthz")):  # fmt: skip
        yield url
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def proxied_api(bounded_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """deploy/nginx.conf in front of ``bounded_api``: its upstream, port and paths swapped, its client timeouts
    shortened like the API's."""
    if NGINX is None:
        pytest.skip("no nginx here: `make test` installs Debian's nginx-light (it needs apt-get and root)")
    where = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    for old, new in (
        ("server api:8000;", f"server {bounded_api.removeprefix('http://')};"),
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
        ("/tmp/", f"{where}/"),
        ("client_header_timeout 10s;", f"client_header_timeout {HEADER_TIMEOUT_S}s;"),
        ("client_body_timeout 10s;", f"client_body_timeout {BODY_TIMEOUT_S}s;"),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    (where / "nginx.conf").write_text(conf)
    url = f"http://127.0.0.1:{port}"
    command = [NGINX, "-p", str(where), "-c", str(where / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"]
    with running(command, where / "nginx.log", ready=answers(f"{url}/healthz"), timeout_s=30):
        yield url


@pytest.fixture(params=["bare", "nginx"])
def front(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(which, url): the API itself, or nginx in front of it."""
    url: str = request.getfixturevalue("bounded_api" if request.param == "bare" else "proxied_api")
    return request.param, url


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _connect(url: str, first: bytes) -> socket.socket:
    s = socket.create_connection(_address(url), timeout=10)
    s.sendall(first)
    return s


def _closed(s: socket.socket) -> bool:
    """Whether the server closed the connection (all it sent read, then the end)."""
    s.setblocking(False)
    try:
        while data := s.recv(65536):
            del data
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _answers(url: str, count: int) -> list[int]:
    """``count`` rounds of /healthz, /readyz and a recommendation, one at a time: the statuses, or 0 for none."""
    statuses = []
    for i in range(count):
        for method, path, body in (
            ("GET", "/healthz", None),
            ("GET", "/readyz", None),
            ("POST", "/v1/recommendations", {"user_id": 1 + i}),
        ):
            try:
                r = requests.request(method, url + path, json=body, timeout=PROBE_TIMEOUT_S)
                assert r.headers["Content-Type"] == "application/json"
                statuses.append(r.status_code)
            except requests.RequestException:
                statuses.append(0)
    return statuses


def test_idle_and_trickling_connections_neither_block_the_api_nor_stay(front: tuple[str, str]) -> None:
    which, api = front
    idle = [_connect(api, b"GET /healthz HTTP/1.1\r\nHost: t\r\n") for _ in range(1000)]
    head = (
        b"POST /v1/recommendations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
    )
    trickling = [_connect(api, head) for _ in range(20)]
    stop = threading.Event()

    def trickle() -> None:  # one byte a second on each, as long as the server reads it
        while not stop.wait(1.0):
            for s in trickling:
                with contextlib.suppress(OSError):
                    s.send(b" ")

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        statuses = _answers(api, 8)
        # Every probe is answered: /healthz and /readyz 200 (or readyz 503 naming a cause), a recommendation
        # 200/202, or 409 while the session has no active model; none times out.
        assert 0 not in statuses, statuses
        assert all(s < 500 or s == 503 for s in statuses), statuses

        wait_until(lambda: all(_closed(s) for s in idle), timeout_s=HEADER_TIMEOUT_S + 10, every_s=0.25)
        if which == "bare":
            # Each trickled body is answered 408 and closed: a 500 bytes/s floor, and 64 bytes at 1 byte/s.
            # (nginx's body timeout runs between two reads: it holds such a body, cheaply, and never passes it on.)
            wait_until(lambda: all(_closed(s) for s in trickling), timeout_s=BODY_TIMEOUT_S + 10, every_s=0.25)
    finally:
        stop.set()
        for s in idle + trickling:
            s.close()


def test_a_trickled_body_is_answered_408_and_closed(bounded_api: str) -> None:
    head = (
        b"POST /v1/recommendations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
    )
    s = _connect(bounded_api, head)
    with s:
        s.settimeout(1.0)
        received = b""
        for _ in range(BODY_TIMEOUT_S + 10):
            with contextlib.suppress(OSError):
                s.sendall(b" ")
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
        head_part, _, body = received.partition(b"\r\n\r\n")
        assert head_part.startswith(b"HTTP/1.1 408"), received
        assert b"connection: close" in head_part.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "request_timeout"
        assert "MOVIEREC_BODY_TIMEOUT_S" in error["message"]


def test_a_body_sent_above_the_minimum_rate_is_read_whole(bounded_api: str) -> None:
    """A body that takes twice the body timeout, sent at 1,200 bytes/s, is not cut: the deadline grows."""
    body = json.dumps({"user_id": 1}).encode().ljust(int(2 * BODY_TIMEOUT_S * 1200))  # JSON with trailing spaces
    s = _connect(
        bounded_api,
        (
            "POST /v1/recommendations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode(),
    )
    with s:
        for at in range(0, len(body), 600):
            s.sendall(body[at : at + 600])
            time.sleep(0.5)
        s.settimeout(PROBE_TIMEOUT_S)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    status = int(received.split(b" ", 2)[1])
    assert status != 408, received
    assert status in {200, 202, 409}, received  # 409: the session may have no active model


def test_a_kept_alive_connection_is_closed_once_idle_past_the_header_timeout(bounded_api: str) -> None:
    s = _connect(bounded_api, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    with s:
        s.settimeout(PROBE_TIMEOUT_S)
        answer = b""
        while b'"ok"' not in answer:  # the head and the body may come in two reads
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        s.settimeout(HEADER_TIMEOUT_S + 10)
        assert s.recv(65536) == b""  # closed by the server, not by this timeout (which would raise)


def test_concurrent_submissions_each_queue_their_own_message(bounded_api: str, bounded_settings: Settings) -> None:
    """48 submissions at once, interleaved in each worker's greenlets: every one answered 202, and the queue holds
    exactly one message per job, named by its id (module state shared between greenlets would mix them up)."""

    def submit(i: int) -> str:
        r = requests.post(f"{bounded_api}/v1/jobs/encode", json={"texts": [f"text {i}"]}, timeout=30)
        assert r.status_code == 202, r.text
        job_id: str = r.json()["id"]
        return job_id

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(submit, range(48)))
    assert len(set(ids)) == 48
    app = make_celery(bounded_settings)
    assert queue_lengths(app)["gpu"] == 48
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        queued = [channel.basic_get("gpu", no_ack=True) for _ in range(48)]
    assert sorted(m.headers["id"] for m in queued) == sorted(ids)
