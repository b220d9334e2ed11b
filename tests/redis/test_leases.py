"""Unit leases and start counts on a real Redis (shared/jobs/leases.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis

from shared.infra.keys import evaluation_part
from shared.infra.process import clear_process_caches
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.jobs.leases import Admission, UnitGuard
from shared.logic.scoring import store_part
from shared.logic.services import Services
from tests.conftest import delete_prefix
from workers.base import services, unit
from workers.sharded import shard_admitted


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


@pytest.fixture
def svc(settings: Settings, redis_client: redis.Redis) -> Iterator[Services]:
    """This process's services (what ``unit`` and ``shard_admitted`` use) on a key prefix of the test's own."""
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-l{uuid.uuid4().hex[:6]}"})
    make_celery(own).set_current()
    clear_process_caches()
    yield services()
    clear_process_caches()
    delete_prefix(redis_client, own.key_prefix)


@pytest.mark.parametrize("how", ["expired", "taken"])
def test_a_shard_that_lost_its_lease_writes_nothing(svc: Services, how: str) -> None:
    """Issue #14 finding 7: a shard frozen past its lease (it lapsed, or another delivery took it over) must not
    publish its part when it resumes; a shard that holds its lease writes it as before."""
    job = svc.jobs.create("evaluate", {})
    assert svc.jobs.start(job.id, stage="scoring") is not None
    top = np.arange(4 * 50 * 10, dtype=np.int32).reshape(4, 50, 10)

    def work(lose: bool) -> Callable[[Services], dict[str, Any]]:
        def run(s: Services) -> dict[str, Any]:
            if lose:  # the unit froze here past its TTL
                lease = s.units.lease_key(job.id, "shard-000000000")
                if how == "expired":
                    s.redis.delete(lease)
                else:
                    s.redis.set(lease, "elsewhere|1|other-delivery", px=60_000)
            store_part(s.artifacts, job.id, 0 if lose else 50, top, ttl_s=600)
            return {"users": 50}

        return run

    with unit(job.id, "shard-000000000", where="shard 0-50") as admitted:
        assert admitted
        assert shard_admitted(job.id, 0, 50, 2, work(lose=True)) is None
    part_keys = list(svc.redis.scan_iter(match=svc.keys.artifact(evaluation_part(job.id, 0)) + "*"))
    assert part_keys == [] and svc.jobs.shards_done(job.id) == set()
    with unit(job.id, "shard-000000050", where="shard 50-100") as admitted:
        assert admitted
        assert shard_admitted(job.id, 50, 100, 2, work(lose=False)) == 1
    np.testing.assert_array_equal(svc.artifacts.get_array(evaluation_part(job.id, 50)), top)
    assert svc.redis.ttl(svc.keys.artifact(evaluation_part(job.id, 50))) > 0


def test_the_main_process_keeps_a_live_childs_lease_but_not_a_stopped_or_dead_ones(
    guard: UnitGuard, redis_client: redis.Redis
) -> None:
    # What the worker's lease keeper does for its pool: a child so starved that its own renewer never runs
    # keeps its lease while it exists and runs; a stopped or dead one's lease expires.
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(3)]
    try:
        units = [("j", f"u{i}", child.pid) for i, child in enumerate(children)]
        for job, unit, pid in units:
            redis_client.set(guard.lease_key(job, unit), f"{socket.gethostname()}|{pid}|token", px=600)
        redis_client.set(guard.lease_key("j", "other"), f"{socket.gethostname()}|1|token", px=600)
        os.kill(children[1].pid, signal.SIGSTOP)
        children[2].kill()
        children[2].wait()
        deadline = time.monotonic() + 1.5  # more than twice the TTL
        while time.monotonic() < deadline:
            guard.renew_for_processes([*units, ("j", "other", children[0].pid)])  # "other" is not its lease
            time.sleep(0.2)
        alive = [bool(redis_client.exists(guard.lease_key(job, unit))) for job, unit, _ in units]
        assert alive == [True, False, False]
        assert not redis_client.exists(guard.lease_key("j", "other"))
    finally:
        for child in children:
            child.kill()  # a stopped process too
            child.wait()


def test_a_message_names_the_unit_it_runs() -> None:
    from shared.jobs.kinds import BATCH_JOIN, EVALUATE_SPLIT, EVALUATE_STEP, INGEST, MINE_SHARD, PIPELINE_STEP
    from shared.jobs.sharded import message_unit, shard_unit

    assert message_unit(INGEST.name, ["j", {}]) == "main"
    assert message_unit(MINE_SHARD.name, ["j", {}, 4000, 8000, 3]) == shard_unit(4000)
    assert message_unit(BATCH_JOIN.name, ["j", {}]) == "join"
    assert message_unit(EVALUATE_SPLIT.name, ["j", "d", {}]) == "split"
    assert message_unit(PIPELINE_STEP.name, ["j"]) is None and message_unit(EVALUATE_STEP.name, ["j"]) is None
    assert message_unit("elsewhere.task", []) is None
