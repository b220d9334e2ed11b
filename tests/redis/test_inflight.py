"""The in-flight budget (shared/store/inflight.py) on a real Redis: granted within the cap, refused past it,
renewed, released, and a holder that never releases is dropped once its lease runs out."""

from __future__ import annotations

import time

import redis

from shared.infra.keys import Keys
from shared.store.inflight import InFlightBudget


def budget(client: redis.Redis, prefix: str) -> InFlightBudget:
    keys = Keys(prefix)
    return InFlightBudget(client, key=keys.uploads_in_flight, expiry_key=keys.uploads_in_flight_expiry)


def test_holders_share_the_cap_and_release_gives_it_back(redis_client: redis.Redis, fresh_prefix: str) -> None:
    b = budget(redis_client, fresh_prefix)
    assert b.reserve("a", 600, cap=1000, lease_s=30) == (True, 600)
    assert b.reserve("b", 500, cap=1000, lease_s=30) == (False, 600)  # refused: nothing of b is held
    assert b.reserve("b", 400, cap=1000, lease_s=30) == (True, 1000)
    assert b.reserve("a", 700, cap=1000, lease_s=30) == (False, 1000)  # growing past it: a keeps its 600
    assert b.reserve("a", 600, cap=1000, lease_s=30) == (True, 1000)  # the same: a renewal, always granted
    b.release("a")
    assert b.held() == 400
    assert b.reserve("c", 600, cap=1000, lease_s=30) == (True, 1000)
    b.release("b")
    b.release("c")
    b.release("never-held")
    assert b.held() == 0


def test_a_holder_that_dies_frees_its_bytes_when_its_lease_ends(redis_client: redis.Redis, fresh_prefix: str) -> None:
    b = budget(redis_client, fresh_prefix)
    assert b.reserve("crashed", 900, cap=1000, lease_s=0.5)[0]
    assert b.reserve("alive", 900, cap=1000, lease_s=30) == (False, 900)
    time.sleep(0.7)  # nobody renewed "crashed"
    assert b.reserve("alive", 900, cap=1000, lease_s=30) == (True, 900)
    assert b.held() == 900
    b.release("alive")


def test_renewing_keeps_a_lease_alive(redis_client: redis.Redis, fresh_prefix: str) -> None:
    b = budget(redis_client, fresh_prefix)
    assert b.reserve("slow", 900, cap=1000, lease_s=0.6)[0]
    for _ in range(4):
        time.sleep(0.3)
        assert b.reserve("slow", 900, cap=1000, lease_s=0.6)[0]
    assert b.reserve("other", 200, cap=1000, lease_s=30) == (False, 900)
    b.release("slow")
