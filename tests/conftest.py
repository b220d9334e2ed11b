"""Fixtures shared by every layer of tests.

- ``redis_url``: the Redis at ``REDIS_URL`` when set, else a private embedded redis-server.
- ``settings``: a key prefix of this session's own (every key we and Celery write carries it), a data
  root holding a copy of ml-latest-small, short time limits. Keys under the prefix are deleted before
  and after the session, so a shared Redis is left as it was found.
- ``stack``: one session-scoped set of real processes: ``movierec api`` (gunicorn), a CPU worker
  (prefork, 2 processes) and a GPU-queue worker (solo), as ``movierec up`` runs them.
- ``app`` / ``client``: the Flask app on the same Redis, for tests that need no HTTP server of their own.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from cli.stack import EmbeddedRedis, Stack, free_port
from shared.infra.redisconn import connect
from shared.infra.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.ConnectionError:
            pytest.fail(f"REDIS_URL={url} is set but does not answer")
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SMALL.is_dir():
        pytest.fail(f"the real MovieLens sample is expected at {SMALL}")
    root = tmp_path_factory.mktemp("data-root")
    shutil.copytree(SMALL, root / "ml-latest-small")
    return root


@pytest.fixture(scope="session")
def settings(redis_url: str, data_root: Path) -> Iterator[Settings]:
    settings = Settings(
        redis_url=redis_url,
        key_prefix=f"test-{uuid.uuid4().hex[:10]}",
        data_root=data_root,
        result_ttl_s=3600,
        task_time_limit_s=300,
        visibility_timeout_s=600,
    )
    client = connect(redis_url)
    delete_prefix(client, settings.key_prefix)
    yield settings
    delete_prefix(client, settings.key_prefix)


@pytest.fixture
def redis_client(settings: Settings) -> redis.Redis:
    return connect(settings.redis_url)


@pytest.fixture
def fresh_prefix(settings: Settings, redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own, emptied afterwards."""
    prefix = f"{settings.key_prefix}:{uuid.uuid4().hex[:8]}"
    yield prefix
    delete_prefix(redis_client, prefix)


@pytest.fixture(scope="session")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("logs")
    stack = Stack(
        settings,
        data_dir=tmp_path_factory.mktemp("stack"),
        port=free_port(),
        cpu_workers=2,
        embedded_redis=False,
        log_dir=logs,
    )
    stack.start()
    try:
        stack.wait_ready(timeout_s=120)
    except Exception:
        stack.stop()
        for log in sorted(logs.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        raise
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def api_url(stack: Stack) -> str:
    return stack.api_url


@pytest.fixture
def app(settings: Settings, stack: Stack) -> Any:
    from api import create_app

    return create_app({"TESTING": True}, settings=settings)


class HttpResponse:
    """A ``requests`` response with the few methods of Flask's test response that the tests use."""

    def __init__(self, response: requests.Response) -> None:
        self._r = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.is_json = response.headers.get("Content-Type", "").startswith("application/json")

    def get_json(self) -> Any:
        return self._r.json()

    def get_data(self, *, as_text: bool = False) -> Any:
        return self._r.text if as_text else self._r.content


class HttpClient:
    """The Flask test client's interface, spoken over real HTTP to the stack's gunicorn."""

    def __init__(self, base_url: str) -> None:
        self._base = base_url
        self._http = requests.Session()

    def open(
        self, method: str, path: str, *, data: Any = None, json: Any = None, content_type: str | None = None
    ) -> HttpResponse:
        headers = {"Content-Type": content_type} if content_type else {}
        body = data.encode() if isinstance(data, str) else data
        return HttpResponse(
            self._http.request(method, self._base + path, data=body, json=json, headers=headers, timeout=30)
        )

    def get(self, path: str, **kw: Any) -> HttpResponse:
        return self.open("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> HttpResponse:
        return self.open("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> HttpResponse:
        return self.open("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> HttpResponse:
        return self.open("DELETE", path, **kw)


@pytest.fixture(params=["flask", "http"])
def client(request: pytest.FixtureRequest, app: Any, api_url: str) -> Any:
    """Each API test runs twice: in-process through Flask's test client, and over HTTP to gunicorn."""
    return app.test_client() if request.param == "flask" else HttpClient(api_url)


def wait_for(fetch: Callable[[], dict[str, Any]], *, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll a job record until it is finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = fetch()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job['status']} after {timeout_s} s: {job}")
        time.sleep(0.1)
