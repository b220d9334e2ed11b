"""Unit leases and start counts on a real Redis (shared/jobs/leases.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import redis

from shared.jobs.leases import Admission, UnitGuard


@pytest.fixture
def guard(redis_client: redis.Redis, fresh_prefix: str) -> UnitGuard:
    return UnitGuard(redis_client, prefix=fresh_prefix, ttl_s=0.6, max_starts=3)


def test_a_unit_runs_once_at_a_time_and_release_forgets_it(guard: UnitGuard, redis_client: redis.Redis) -> None:
    assert guard.admit("j", "main") == (Admission.RUN, 1)
    redis_client.set(guard.lease_key("j", "shard-1"), "elsewhere|1|t", px=600)  # a live worker of another host
    assert guard.admit("j", "shard-1") == (Admission.BUSY, 0)
    assert redis_client.get(guard.starts_key("j", "shard-1")) == b"0"  # a dropped duplicate is not a start
    guard.release("j", "main")
    assert not redis_client.exists(guard.lease_key("j", "main"), guard.starts_key("j", "main"))


def test_the_lease_is_renewed_while_the_unit_runs(guard: UnitGuard, redis_client: redis.Redis) -> None:
    assert guard.admit("j", "main")[0] is Admission.RUN
    time.sleep(1.5)  # 2.5 TTLs: only the renewer keeps it
    assert redis_client.exists(guard.lease_key("j", "main"))
    guard.release("j", "main")
    assert not redis_client.exists(guard.lease_key("j", "main"))


def test_a_dead_holder_on_this_host_is_taken_over_at_once(guard: UnitGuard, redis_client: redis.Redis) -> None:
    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    redis_client.set(guard.lease_key("j", "main"), f"{socket.gethostname()}|{dead.stdout.strip()}|t", px=60_000)
    redis_client.set(guard.starts_key("j", "main"), 1)  # its start was counted and never released
    assert guard.admit("j", "main") == (Admission.RUN, 2)
    holder = redis_client.get(guard.lease_key("j", "main"))
    assert holder is not None and holder.decode().split("|")[1] == str(os.getpid())
    guard.release("j", "main")


def test_a_unit_that_never_finishes_is_poison_after_max_starts(guard: UnitGuard, redis_client: redis.Redis) -> None:
    for n in (1, 2, 3):
        assert guard.admit("j", "main") == (Admission.RUN, n)
        redis_client.delete(guard.lease_key("j", "main"))  # its worker died: the lease lapses, the count stays
    assert guard.admit("j", "main") == (Admission.POISON, 3)
    assert not redis_client.exists(guard.lease_key("j", "main"))
    assert guard.admit("j", "main")[0] is Admission.POISON  # any later copy of its message too
