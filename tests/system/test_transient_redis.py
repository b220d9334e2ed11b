"""A Redis that is full for a while does not fail the jobs it already accepted (issue #14, finding 3): a job
answered 202 that runs into ``maxmemory`` is tried again, and finishes once memory is freed. A stack of its own
on a Redis of its own, really put over its limit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from cli.stack import EmbeddedRedis, Stack
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from tests.helpers import FAST, wait_job, wait_until


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis", fsync="everysec") as server:
        yield server


def oom_refusals(url: str) -> int:
    stats = connect(url).info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


def test_an_accepted_job_waits_out_redis_out_of_memory(
    settings: Settings, own_redis: EmbeddedRedis, make_stack: Callable[..., Stack]
) -> None:
    own = settings.model_copy(update={"redis_url": own_redis.url, "key_prefix": f"t-{uuid.uuid4().hex[:8]}", **FAST})
    stack = make_stack(own, cpu_workers=1)
    admin = connect(own_redis.url)
    used = int(admin.info("memory")["used_memory"])
    # Room for the job's record and message, not for the dataset's arrays (several MB): the ingest runs into it.
    admin.config_set("maxmemory", used + 1_500_000)
    try:
        r = requests.post(f"{stack.api_url}/v1/datasets", json={"path": "ml-latest-small"}, timeout=30)
        assert r.status_code == 202, r.text
        job_url = f"{stack.api_url}/v1/jobs/{r.json()['id']}"
        wait_until(lambda: oom_refusals(own_redis.url) > 0, timeout_s=60, failure="the ingest never hit maxmemory")
        for _ in range(6):  # while Redis stays full, the job is not failed
            job = requests.get(job_url, timeout=10).json()
            assert job["status"] in ("queued", "running"), job
            time.sleep(1)
    finally:
        admin.config_set("maxmemory", 0)
    job = wait_job(stack.api_url, r.json()["id"], timeout_s=120)
    assert job["status"] == "succeeded", job
    result = requests.get(f"{job_url}/result", timeout=10).json()
    assert result["counts"]["ratings"] == 100_836
