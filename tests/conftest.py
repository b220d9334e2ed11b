"""Fixtures shared by every layer of tests.

- ``redis_url``: the Redis at ``REDIS_URL`` when set, else a private embedded redis-server.
- ``settings``: a key prefix of this session's own (every key we and Celery write carries it), a data
  root holding a copy of ml-latest-small, short time limits. Keys under the prefix are deleted before
  and after the session, so a shared Redis is left as it was found.
- ``stack``: one session-scoped set of real processes: ``movierec api`` (gunicorn), a CPU worker
  (prefork, 2 processes) and a GPU-queue worker (solo), as ``movierec up`` runs them. Every system test that
  breaks nothing shares it; under pytest-xdist (``make test``: two processes, whole files each) each process
  has its own, on its own key prefix.
- ``make_stack``: a factory of stacks of a test's own (``make_stack(settings, embedded_redis=True)``), ready
  when it answers and stopped after the test.
- ``app`` / ``client``: the Flask app on the same Redis, for tests that need no HTTP server of their own.
- ``sample``: a sample of ml-latest-small under the data root (``tests.helpers.SAMPLE``), for the tests that
  need real ratings but not their scale: a pipeline or an evaluation on it costs a fraction of the whole.
- ``tiny_bert``: a tiny random BERT on disk (no Redis), for the encoder's tests.

Scheduling: ``make test`` hands whole files to its xdist processes in collection order
(``--no-loadscope-reorder``), and ``pytest_collection_modifyitems`` puts ``LONGEST_FILES`` first, longest
first: each process starts on a long file and the short ones fill in at the end, so no process is left
running a long file alone while the others have finished.

Polling (``wait_job``, ``wait_jobs``, ``wait_until``) and ``new_stack`` are plain functions in tests/helpers.py.
Layout: tests/unit needs neither Redis nor processes (its conftest refuses a test that asks for Redis);
tests/redis talks to the session's Redis; tests/api, tests/system and tests/fuzz use the running stack.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from cli.stack import EmbeddedRedis, Stack
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from tests.helpers import REPO, SAMPLE, SMALL, new_stack, write_sample

LONGEST_FILES = (
    "tests/system/test_evaluate.py",
    "tests/system/test_chaos.py",
    "tests/system/test_demo.py",
    "tests/system/test_footprint.py",
    "tests/system/test_sentinel.py",
    "tests/fuzz/test_openapi_fuzz.py",
    "tests/system/test_recommend.py",
    "tests/system/test_pipeline.py",
    "tests/system/test_tls.py",
    "tests/system/test_tenants.py",
    "tests/system/test_cli.py",
    "tests/system/test_generated_client.py",
    "tests/unit/test_index.py",
    "tests/system/test_embedded_redis.py",
    "tests/system/test_upload_budget.py",
    "tests/system/test_bench_online.py",
    "tests/ui/test_dashboard.py",
)
"""The test files that took 25 s or more in the suite, longest first (session 24's first runs of the day, before
the sample: 201 s the evaluation's, 28 s the dashboard's). Only the order of a run depends on it: a file missing
here runs after them, in collection order."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``LONGEST_FILES`` first, in their order; the others after, as collected (a stable sort: each file's own
    tests keep their order)."""
    rank = {name: n for n, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(Path(item.path).relative_to(REPO).as_posix(), len(rank)))


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
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SMALL.is_dir():
        pytest.fail(f"the real MovieLens sample is expected at {SMALL}")
    root = tmp_path_factory.mktemp("data-root")
    shutil.copytree(SMALL, root / "ml-latest-small")
    return root


@pytest.fixture(scope="session")
def sample(data_root: Path) -> str:
    """``SAMPLE`` written under the data root: what a test ingests when it needs real ratings, not their scale."""
    return write_sample(data_root, SAMPLE)


@pytest.fixture(scope="session")
def settings(redis_url: str, data_root: Path) -> Iterator[Settings]:
    settings = Settings(
        redis_url=redis_url,
        key_prefix=f"test-{uuid.uuid4().hex[:10]}",
        data_root=data_root,
        result_ttl_s=3600,
        task_time_limit_s=300,
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
    with new_stack(settings, tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """``make_stack(settings, **new_stack_options)``: a started, ready stack of this test's own (data and logs
    under ``tmp_path``), stopped when the test ends."""
    made: list[Stack] = []
    with contextlib.ExitStack() as running:

        def make(settings: Settings, **options: Any) -> Stack:
            stack = running.enter_context(new_stack(settings, tmp_path / f"stack-{len(made)}", **options))
            made.append(stack)
            return stack

        yield make


@pytest.fixture(scope="session")
def api_url(stack: Stack) -> str:
    return stack.api_url


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT built from a config, with the bundled model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from shared.ml.encoder import resolve_model

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


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
