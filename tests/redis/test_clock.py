"""One clock: Redis TIME read locally, so hosts whose clocks disagree write timestamps that agree."""

from __future__ import annotations

import time
import types
from typing import Any, cast

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


def test_the_offset_is_the_shortest_probe_s_and_bounded_by_half_its_round_trip(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loaded machine: the first round trip waits 80 ms for a core, the others do not. The offset is the
    quick probe's, within half of its round trip of Redis TIME, and says so (``uncertainty_s``)."""
    calls = []
    real = redis_client.time

    def slow_first() -> Any:
        calls.append(1)
        if len(calls) == 1:
            answer = real()  # Redis answers at once ...
            time.sleep(0.08)  # ... and this process gets a core 80 ms later
            return answer
        return real()

    monkeypatch.setattr(redis_client, "time", slow_first)
    clk = RedisClock(redis_client)
    assert clk.uncertainty_s == float("inf")
    seconds, micros = cast(tuple[int, int], real())
    before = seconds + micros / 1e6
    now = clk.now()
    seconds, micros = cast(tuple[int, int], real())
    after = seconds + micros / 1e6
    assert len(calls) == clock.PROBES
    assert clk.uncertainty_s < 0.04  # not the slow probe's 40 ms and more
    assert before - clk.uncertainty_s - 0.005 <= now <= after + clk.uncertainty_s + 0.005
