"""Redis refusing for a while, against a real redis-server of this module's own really put in each state (no
stack needed): ``/readyz`` names why it is not ready, and every other route answers a JSON 503 that names the
cause, with a Retry-After: never a 500, never "the job queue is unreachable" for a Redis that is up but full."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

from cli.stack import EmbeddedRedis, free_port
from shared.infra.redisconn import TRANSIENT_CAUSES, connect, transient_cause
from shared.infra.settings import Settings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis", password="readyz-test") as server:
        yield server


@pytest.fixture
def client(server: EmbeddedRedis, data_root: Path) -> Any:
    from api import create_app

    settings = Settings(redis_url=server.url, key_prefix=f"readyz-{uuid.uuid4().hex[:8]}", data_root=data_root)
    return create_app({"TESTING": True}, settings=settings).test_client()


def _not_ready(client: Any) -> tuple[str, str]:
    r = client.get("/readyz")
    assert r.status_code == 503, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "not_ready"
    return error["details"]["cause"], error["message"]


def test_no_worker(client: Any) -> None:
    assert _not_ready(client) == ("no_worker", "no live worker on queue(s) interactive, cpu, gpu")


def test_out_of_memory(client: Any, server: EmbeddedRedis) -> None:
    r = redis.Redis.from_url(server.url)
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", used - 1024)
    cause, message = _not_ready(client)
    assert cause == "redis_out_of_memory" and "out of memory" in message
    r.config_set("maxmemory", 0)
    assert _not_ready(client)[0] == "no_worker"


def test_read_only_replica(client: Any, server: EmbeddedRedis) -> None:
    r = redis.Redis.from_url(server.url)
    r.replicaof("127.0.0.1", free_port())  # a master that never answers; replica-read-only is the default
    try:
        cause, message = _not_ready(client)
        assert cause == "redis_read_only" and "read-only" in message
    finally:
        r.replicaof("NO", "ONE")
    assert _not_ready(client)[0] == "no_worker"


def test_redis_down(client: Any, server: EmbeddedRedis) -> None:
    server.stop()
    cause, message = _not_ready(client)
    assert cause == "redis_down" and "unreachable" in message


# -- every other route ----------------------------------------------------------------------------------
def assert_unavailable(r: Any, cause: str) -> None:
    assert r.status_code == 503, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert error["code"] == "unavailable" and error["details"] == {"cause": cause}
    assert TRANSIENT_CAUSES[cause][0] in error["message"] and "Traceback" not in error["message"]
    assert r.headers["Retry-After"] == str(TRANSIENT_CAUSES[cause][1])


def every_kind_of_route(client: Any) -> list[Any]:
    """A submission, a route that writes before it submits (encode stores its texts first), a read."""
    return [
        client.post("/v1/datasets", json={"path": "ml-latest-small"}),
        client.post("/v1/jobs/encode", json={"texts": ["war", "drama"]}),
    ]


def test_out_of_memory_is_503_naming_it(client: Any, server: EmbeddedRedis) -> None:
    assert client.get("/v1/jobs").status_code == 200
    connect(server.url).config_set("maxmemory", 1)  # noeviction: every write is refused with OOM
    for r in every_kind_of_route(client):
        assert_unavailable(r, "redis_out_of_memory")
    assert client.get("/v1/jobs").status_code == 200  # reads still work
    connect(server.url).config_set("maxmemory", 0)
    assert client.post("/v1/datasets", json={"path": "ml-latest-small"}).status_code == 202  # and it passes


def test_a_read_only_redis_is_503_naming_it(client: Any, server: EmbeddedRedis) -> None:
    admin = connect(server.url)
    admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica of nothing: it refuses writes
    try:
        for r in every_kind_of_route(client):
            assert_unavailable(r, "redis_read_only")
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")


def test_redis_away_is_503_naming_it(client: Any, server: EmbeddedRedis) -> None:
    server.stop()
    for r in [*every_kind_of_route(client), client.get("/v1/jobs"), client.delete("/v1/models/m-1")]:
        assert_unavailable(r, "redis_down")


def test_transient_causes_are_found_through_wrappers() -> None:
    oom = redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")
    wrapped = OperationalError("kombu wrapped it")
    wrapped.__cause__ = oom  # as `raise OperationalError(...) from oom` leaves it
    assert transient_cause(wrapped) == "redis_out_of_memory"
    assert transient_cause(redis.exceptions.BusyLoadingError("LOADING Redis is loading")) == "redis_loading"
    assert transient_cause(redis.ConnectionError("refused")) == "redis_down"
    assert transient_cause(redis.ResponseError("MISCONF Redis is configured to save RDB snapshots")) == (
        "redis_read_only"
    )
    assert transient_cause(redis.exceptions.ReadOnlyError("READONLY You can't write")) == "redis_read_only"
    assert transient_cause(redis.ResponseError("WRONGTYPE Operation against a key")) is None  # a bug: not retried
    assert transient_cause(ValueError("x")) is None
