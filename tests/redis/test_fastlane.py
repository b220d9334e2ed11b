"""The fast lane on a real Redis: an API-side ``FastLane`` and worker-side ``Responder``s in this process."""

from __future__ import annotations

import time
from typing import Any

import redis

from shared.infra.keys import Keys
from shared.jobs.fastlane import FastLane, Responder


def test_a_live_responder_answers_and_writes_nothing(redis_client: redis.Redis, fresh_prefix: str) -> None:
    def answer(tenant: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"twice": params["n"] * 2, "tenant": tenant}

    responder = Responder(redis_client, prefix=fresh_prefix, answer=answer)
    responder.start()
    try:
        lane = FastLane(redis_client, prefix=fresh_prefix)
        _wait_live(lane)
        keys_before = set(redis_client.scan_iter(f"{fresh_prefix}:*"))
        answers = [lane.ask({"n": n}, 5.0, tenant="acme" if n % 2 else "default") for n in range(20)]
        assert answers == [{"twice": n * 2, "tenant": "acme" if n % 2 else "default"} for n in range(20)]
        assert set(redis_client.scan_iter(f"{fresh_prefix}:*")) == keys_before
    finally:
        responder.stop()


def test_no_answer_means_the_durable_path(redis_client: redis.Redis, fresh_prefix: str) -> None:
    lane = FastLane(redis_client, prefix=fresh_prefix)
    started = time.monotonic()
    assert lane.ask({"n": 1}, 5.0, tenant="default") is None  # no responder lives: at once, not after the deadline
    assert time.monotonic() - started < 2.0

    def broken(tenant: str, params: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("no such model")

    failing = Responder(redis_client, prefix=fresh_prefix, answer=broken)
    failing.start()
    try:
        _wait_live(lane)
        # An error: the durable path reports it as every job does.
        assert lane.ask({"n": 1}, 5.0, tenant="default") is None
    finally:
        failing.stop()
    # A responder that beat a moment ago but is gone: its PUBLISH reaches no one, and nobody else lives.
    redis_client.zadd(Keys(fresh_prefix).fastlane_responders, {f"{fresh_prefix}:fastlane:ask:gone:1": time.time()})
    assert FastLane(redis_client, prefix=fresh_prefix).ask({"n": 1}, 5.0, tenant="default") is None


def _wait_live(lane: FastLane) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not lane._responders():
        time.sleep(0.05)
        lane._live_at = float("-inf")
