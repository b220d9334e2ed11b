"""The in-flight budget of uploads (api/uploads.py) on a real ``movierec api`` of two gunicorn processes: an upload
past MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES is refused 503 with Retry-After before a byte of its body is read,
whichever process takes it; what an upload holds comes back when it ends, and a process killed mid-upload holds
it for one lease at most."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import redis
import requests

from cli.stack import free_port
from shared.infra.keys import Keys
from shared.infra.settings import Settings
from shared.store.inflight import InFlightBudget
from tests.conftest import delete_prefix
from tests.helpers import SMALL, answers, running, wait_until

UPLOAD_LIMIT = 8 << 20
IN_FLIGHT = 10 << 20
"""Room for one ~6 MB upload at a time, not two."""
BOUNDARY = "budget-test-boundary"


def multipart(ratings_copies: int) -> bytes:
    """movies.csv and ratings.csv (ml-latest-small's, its rows repeated) as one multipart/form-data body."""
    ratings = (SMALL / "ratings.csv").read_bytes()
    rows = ratings.split(b"\n", 1)[1]
    parts = [("movies.csv", (SMALL / "movies.csv").read_bytes()), ("ratings.csv", ratings + rows * ratings_copies)]
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
        f"Content-Type: text/csv\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


BODY = multipart(1)  # ~5.3 MB: one fits in IN_FLIGHT, two do not


def head(url: str, length: int) -> bytes:
    host = url.removeprefix("http://")
    return (f"POST /v1/datasets HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()  # fmt: skip


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    """Read an HTTP answer to its end (the server closes: ``Connection: close``): status, headers, JSON body."""
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    head_, _, body = raw.partition(b"\r\n\r\n")
    lines = head_.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.fixture
def budget_settings(settings: Settings, redis_client: redis.Redis) -> Iterator[Settings]:
    own = settings.model_copy(
        update={
            "key_prefix": f"{settings.key_prefix}-ub{uuid.uuid4().hex[:6]}",
            "max_upload_bytes": UPLOAD_LIMIT,
            "max_uploads_in_flight_bytes": IN_FLIGHT,
            "lease_ttl_s": 2,
        }
    )
    yield own
    delete_prefix(redis_client, own.key_prefix)


def in_flight(client: redis.Redis, settings: Settings) -> InFlightBudget:
    keys = Keys(settings.key_prefix)
    return InFlightBudget(client, key=keys.uploads_in_flight, expiry_key=keys.uploads_in_flight_expiry)


def api(settings: Settings, log: Path, port: int) -> AbstractContextManager[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "cli.main", "api", "--port", str(port), "--workers", "2"]
    return running(command, log, env=settings.child_env(), ready=answers(f"http://127.0.0.1:{port}/healthz"))


def test_past_the_budget_an_upload_is_refused_before_its_body_and_the_budget_comes_back(
    budget_settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    budget = in_flight(redis_client, budget_settings)
    with api(budget_settings, tmp_path / "api.log", port):
        holder = connect(url)
        holder.sendall(head(url, len(BODY)) + BODY[: 1 << 20])  # an upload on its way, a fifth of it sent
        wait_until(lambda: budget.held() == len(BODY), timeout_s=10, failure=lambda: f"held {budget.held()}")

        for _ in range(4):  # new connections, so both API processes answer some
            refused = connect(url)
            started = time.monotonic()
            refused.sendall(head(url, len(BODY)))  # the head only: the answer must come without the body
            status, headers, error = answer(refused)
            assert time.monotonic() - started < 5
            assert status == 503 and headers["retry-after"].isdigit(), (status, headers, error)
            assert error["error"]["code"] == "unavailable"
            assert error["error"]["details"]["cause"] == "uploads_in_flight"
            assert "MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES" in error["error"]["message"]
            refused.close()
        assert budget.held() == len(BODY)  # a refusal takes nothing

        holder.sendall(BODY[1 << 20 :])
        status, _, job = answer(holder)
        assert status == 202, job
        assert budget.held() == 0  # stored: released

        r = requests.post(url + "/v1/datasets", data=BODY, timeout=30,
                          headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})  # fmt: skip
        assert r.status_code == 202, r.text
        bad = requests.post(url + "/v1/datasets", data=b"--nope\r\n" * 1000, timeout=30,
                            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})  # fmt: skip
        assert bad.status_code == 400, bad.text
        assert budget.held() == 0  # refused: released too
    assert "Traceback" not in (tmp_path / "api.log").read_text()


def test_an_api_process_killed_mid_upload_holds_the_budget_for_one_lease_at_most(
    budget_settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    budget = in_flight(redis_client, budget_settings)
    with api(budget_settings, tmp_path / "api-1.log", port) as first:
        holder = connect(url)
        holder.sendall(head(url, len(BODY)) + BODY[: 1 << 20])
        wait_until(lambda: budget.held() == len(BODY), timeout_s=10)
        os.killpg(first.pid, signal.SIGKILL)  # no finally runs: the lease must free it
        first.wait()
        holder.close()
    assert budget.held() == len(BODY)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with api(budget_settings, tmp_path / "api-2.log", port):
        deadline = time.monotonic() + 3 * budget_settings.lease_ttl_s + 5
        while True:  # refused while the dead process's lease lasts, then accepted
            r = requests.post(url + "/v1/datasets", data=BODY, timeout=30,
                              headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})  # fmt: skip
            if r.status_code == 202 or time.monotonic() > deadline:
                break
            assert r.status_code == 503, r.text
            time.sleep(0.5)
        assert r.status_code == 202, r.text
        assert budget.held() == 0
