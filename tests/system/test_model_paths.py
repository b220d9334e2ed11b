"""Issue #14 finding 6: hosts without a shared disk. The API and a GPU-queue worker see different data roots;
a local model is named relative to the data root and each host resolves it against its own."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from api import create_app
from shared.infra.settings import Settings
from tests.conftest import delete_prefix
from tests.helpers import REPO, running, wait_job


@pytest.fixture
def hosts(settings: Settings, redis_client: redis.Redis, tiny_bert: str, tmp_path: Path) -> Iterator[Any]:
    """A test client of an API whose data root holds no model, and one GPU-queue worker (on a key prefix of their
    own) whose data root holds the tiny BERT at ``models/tiny``: a test client of the API."""
    api_root, worker_root = tmp_path / "api-host", tmp_path / "worker-host"
    api_root.mkdir()
    shutil.copytree(tiny_bert, worker_root / "models" / "tiny")
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-mp{uuid.uuid4().hex[:6]}",
                                      "data_root": api_root})  # fmt: skip
    env = own.model_copy(update={"data_root": worker_root}).child_env()
    command = [sys.executable, "-m", "cli.main", "worker", "--queues", "gpu"]
    try:
        with running(command, tmp_path / "gpu-worker.log", env=env, cwd=REPO):
            yield create_app({"TESTING": True}, settings=own).test_client()
    finally:
        delete_prefix(redis_client, own.key_prefix)


def encode(client: Any, model: str, *, timeout_s: float) -> dict[str, Any]:
    r = client.post("/v1/jobs/encode", json={"texts": ["Drama", "pixar"], "model": model})
    assert r.status_code == 202, r.get_json()
    job: dict[str, Any] = wait_job(lambda: client.get(f"/v1/jobs/{r.get_json()['id']}").get_json(),
                                   timeout_s=timeout_s)  # fmt: skip
    return job


def test_a_local_model_is_named_relative_to_each_hosts_data_root(hosts: Any, tmp_path: Path) -> None:
    for model in ("models/tiny", "./models/tiny"):  # without "./" it is a directory all the same
        job = encode(hosts, model, timeout_s=120)  # the first one waits for the worker to start
        assert job["status"] == "succeeded", job
        result = hosts.get(job["result_url"]).get_json()
        assert result["model"] == model and result["dim"] == 32 and len(result["vectors"]) == 2
    for model in ("models/missing", "./models/missing"):
        job = encode(hosts, model, timeout_s=30)  # before: ~46 s of DNS retries for "models/missing", then failed
        assert job["status"] == "failed" and job["error"]["code"] == "invalid_request", job
        message = job["error"]["message"]
        assert message.startswith(f"model {model!r} could not be loaded here: it is not a directory under the data")
        assert str(tmp_path) not in message
