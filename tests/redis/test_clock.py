"""One clock: Redis TIME read locally, so hosts whose clocks disagree write timestamps that agree."""

from __future__ import annotations

import time
import types
from typing import cast

import pytest
import redis

from shared.infra import clock
from shared.infra.clock import RedisClock, parse_iso
from shared.jobs.store import JobStore


def redis_now(client: redis.Redis) -> float:
    seconds, micros = cast(tuple[int, int], client.time())
    return seconds + micros / 1e6


def test_a_host_ten_minutes_ahead_still_writes_redis_time(
    redis_client: redis.Redis, fresh_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ahead = types.SimpleNamespace(time=lambda: time.time() + 600, monotonic=time.monotonic)
    monkeypatch.setattr(clock, "time", ahead)  # this host's clock runs 10 min fast
    assert abs(RedisClock(redis_client).now() - redis_now(redis_client)) < 0.5
    jobs = JobStore(redis_client, prefix=fresh_prefix, result_ttl_s=60)
    job = jobs.create("ingest", {})
    jobs.start(job.id, stage="s")
    jobs.succeed(job.id, {})
    done = jobs.get(job.id)
    assert done is not None and done.started_at and done.finished_at
    stamps = [parse_iso(t) for t in (done.created_at, done.started_at, done.finished_at)]
    assert all(abs(t - redis_now(redis_client)) < 5 for t in stamps), stamps  # not 600 s off
    assert stamps == sorted(stamps)


def test_the_offset_is_measured_again_after_its_resync(redis_client: redis.Redis) -> None:
    clk = RedisClock(redis_client, resync_s=0.0)
    first = clk.now()
    assert clk.now() >= first - 0.05
