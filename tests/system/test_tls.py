"""``rediss://`` means TLS on every connection of every process, verified, and a failure that says so at once.

A TLS-only redis-server (``port 0``, a CA and certificate made here with openssl) sits behind a relay
(tests/system/real_redis.py) that refuses, and records, any connection whose first bytes are not a TLS
ClientHello. A whole stack (API, interactive, CPU and GPU workers with their janitors, Flower) runs an ingest
through it with a password; not one connection may open in plaintext. Then the failures: ``rediss://`` to a
plaintext Redis, and a certificate signed by another CA, each end ``movierec api``/``worker`` within seconds
with a message naming TLS and the host, and ``/readyz`` says the same.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests

from api import create_app
from cli.stack import Stack
from shared.infra.redisconn import CONNECT_TIMEOUT_S, TLSError, connect
from shared.infra.settings import Settings
from tests.helpers import FAST, REPO, wait_job
from tests.system.real_redis import RedisProcess, Relay, make_certificates, tls_lines

PASSWORD = "s3cret/pass+word"
TINY_MOVIES = "movieId,title,genres\n1,Alpha (1990),Comedy|Drama\n2,Beta (1991),Horror\n3,Gamma (1992),Comedy\n"
TINY_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,3.5,2\n2,1,5.0,3\n2,3,4.0,4\n"
TINY_TAGS = "userId,movieId,tag,timestamp\n1,1,funny,1\n2,3,dark,2\n"
FLOWER_LOGIN = ("ops", "fl0wer-pw")
FAIL_FAST_S = CONNECT_TIMEOUT_S + 15
"""A process given a URL it cannot secure exits within its connect timeout plus its own start (imports)."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_redis(tmp_path: Path, certs: dict[str, Path]) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", [])
    server.lines = [*tls_lines(certs, server.port), f"requirepass {PASSWORD}", "appendonly yes",
                    "appendfsync always", 'save ""']  # fmt: skip
    url = f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}/0?ssl_ca_certs={certs['ca.crt']}"
    server.start(ready=lambda: bool(connect(url).ping()))
    yield server
    server.stop()


@pytest.fixture
def plain_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "plain", [])
    server.lines = ["bind 127.0.0.1", f"port {server.port}", f"requirepass {PASSWORD}", 'save ""']
    url = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}/0"
    server.start(ready=lambda: bool(connect(url).ping()))
    yield server
    server.stop()


def rediss(port: int, ca: Path | None) -> str:
    query = f"?ssl_ca_certs={ca}" if ca is not None else ""
    return f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0{query}"


def tiny_dataset(root: Path) -> Path:
    directory = root / "tiny"
    directory.mkdir(parents=True)
    for name, text in (("movies.csv", TINY_MOVIES), ("ratings.csv", TINY_RATINGS), ("tags.csv", TINY_TAGS)):
        (directory / name).write_text(text)
    return root


def test_every_connection_of_every_process_is_tls(
    tmp_path: Path, tls_redis: RedisProcess, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", ":".join(FLOWER_LOGIN))  # the stack's children get it
    with Relay(("127.0.0.1", tls_redis.port)) as relay:
        settings = Settings(
            redis_url=rediss(relay.port, certs["ca.crt"]),
            key_prefix=f"tls-{uuid.uuid4().hex[:8]}",
            data_root=tiny_dataset(tmp_path / "data"),
            **FAST,
        )
        stack = Stack(settings, data_dir=tmp_path / "stack", cpu_workers=1, embedded_redis=False,
                      log_dir=tmp_path / "stack" / "logs", flower=True, ready_timeout_s=120)  # fmt: skip
        with stack:
            r = requests.post(f"{stack.api_url}/v1/datasets", json={"path": "tiny"}, timeout=30)
            assert r.status_code == 202, r.text
            job = wait_job(stack.api_url, r.json()["id"], timeout_s=120)
            assert job["status"] == "succeeded", job
            assert requests.get(f"{stack.api_url}/readyz", timeout=30).status_code == 200
            # Flower's Broker view opens a Redis client of its own (flower.utils.broker), beside its kombu.
            queues = requests.get(f"{stack.flower_url}/api/queues/length", auth=FLOWER_LOGIN, timeout=30)
            assert queues.status_code == 200, queues.text
        # Every process has opened several (API, three workers and their janitors, Flower, its broker view).
        assert relay.connections >= 8, relay.connections
        relay.assert_all_tls()
    for log in (tmp_path / "stack" / "logs").glob("*.log"):
        assert PASSWORD not in log.read_text(errors="replace"), f"{log.name} shows the Redis password"


def run_cli(command: list[str], url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = Settings(redis_url=url).child_env()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cli.main", *command], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    return done, time.monotonic() - started


def test_rediss_to_a_plaintext_redis_fails_fast_naming_tls_and_the_host(plain_redis: RedisProcess) -> None:
    with Relay(("127.0.0.1", plain_redis.port)) as relay:
        url = rediss(relay.port, None)
        where = f"127.0.0.1:{relay.port}"

        started = time.monotonic()
        with pytest.raises(TLSError, match=f"TLS handshake with Redis at {where} failed"):
            connect(url).ping()
        assert time.monotonic() - started < CONNECT_TIMEOUT_S + 2  # one bounded handshake, not retried

        for command in (["api", "--port", "1"], ["worker", "--queues", "cpu"]):
            done, seconds = run_cli(command, url)
            assert done.returncode != 0, done
            assert f"TLS handshake with Redis at {where} failed" in done.stderr, done.stderr[-2000:]
            assert seconds < FAIL_FAST_S, (command, seconds)
            assert PASSWORD not in done.stderr + done.stdout

        readyz = create_app({"TESTING": True}, settings=Settings(redis_url=url)).test_client().get("/readyz")
        assert readyz.status_code == 503
        error = readyz.get_json()["error"]
        assert error["details"]["cause"] == "redis_tls" and where in error["message"] and "TLS" in error["message"]
        relay.assert_all_tls()  # the password was never sent: every client opened with a ClientHello
        assert relay.connections >= 3


def test_a_certificate_from_another_ca_fails_verification(
    tmp_path: Path, tls_redis: RedisProcess, certs: dict[str, Path]
) -> None:
    other = make_certificates(tmp_path / "other", name="other")
    where = f"127.0.0.1:{tls_redis.port}"
    for ca in (other["ca.crt"], None):  # another CA's, and the system's (verification is on by default)
        with pytest.raises(TLSError, match=f"TLS to Redis at {where}: certificate verification failed"):
            connect(rediss(tls_redis.port, ca)).ping()
    done, seconds = run_cli(["worker", "--queues", "cpu"], rediss(tls_redis.port, other["ca.crt"]))
    assert done.returncode != 0 and "certificate verification failed" in done.stderr, done.stderr[-2000:]
    assert seconds < FAIL_FAST_S
    # The right CA, for contrast: the same server answers.
    assert connect(rediss(tls_redis.port, certs["ca.crt"])).ping()


def test_the_relay_refuses_a_plaintext_client(tls_redis: RedisProcess) -> None:
    """The guard of the tests above: a ``redis://`` client's first bytes are RESP, recorded and never relayed."""
    with Relay(("127.0.0.1", tls_redis.port)) as relay:
        with pytest.raises(redis.ConnectionError):
            connect(f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{relay.port}/0").ping()
        assert relay.plaintext and relay.plaintext[0].startswith(b"*")
        with pytest.raises(AssertionError, match="plaintext"):
            relay.assert_all_tls()


def test_tls_options_on_a_plaintext_url_are_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match="TLS options need rediss://"):
        connect("redis://127.0.0.1:6379/0?ssl_ca_certs=/etc/ca.pem")
    with pytest.raises(redis.RedisError):  # and nothing is ever sent to a port that may not be Redis
        connect("redis://127.0.0.1:1/0").ping()
