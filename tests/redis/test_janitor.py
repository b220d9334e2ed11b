"""The janitor's sweep on a real Redis, with a real Celery app sending into its queues (no worker runs)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from shared.infra.keys import Keys, shard_id
from shared.infra.settings import Settings
from shared.jobs.celery_app import TENANT_HEADER, make_celery
from shared.jobs.kinds import (
    BATCH_PRIORITY,
    INGEST,
    INTERACTIVE_QUEUE,
    JOIN_TRIPLETS,
    MINE,
    MINE_SHARD,
    PIPELINE_STEP,
)
from shared.jobs.sharded import PLAN_FIELD, ShardPlan
from shared.logic.ingest import DatasetOptions, ingest
from shared.logic.services import Services
from tests.conftest import delete_prefix
from tests.helpers import SMALL
from workers.janitor import MAX_RESENDS, Janitor


@pytest.fixture
def svc(settings: Settings, redis_client: redis.Redis) -> Iterator[Services]:
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-j{uuid.uuid4().hex[:6]}"})
    yield Services.from_settings(own)
    delete_prefix(redis_client, own.key_prefix)


@pytest.fixture
def janitor(svc: Services) -> Janitor:
    return Janitor(svc, make_celery(svc.settings), worker="test")


def sent(svc: Services, queue: str = "cpu") -> list[tuple[str, list[Any]]]:
    """The (task, args) of the messages waiting in a queue, taken in the order a worker takes them."""
    out = []
    with make_celery(svc.settings).connection_for_read() as conn:
        channel = conn.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            args, _kwargs, _embed = message.decode()
            out.append((message.headers["task"], args))
    return out


def clear(svc: Services, queue: str = "cpu") -> None:
    with make_celery(svc.settings).connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def someone_elses_message(svc: Services) -> None:
    """A message that no worker here takes, so the queue stays busy."""
    make_celery(svc.settings).send_task(OTHER_TASK, args=[], queue="cpu", priority=BATCH_PRIORITY)


OTHER_TASK = "elsewhere.task"


def test_an_idle_job_is_resent_on_the_second_sweep_only(svc: Services, janitor: Janitor) -> None:
    job = svc.jobs.create("ingest", {"path": "p"})
    assert janitor.sweep()["resent"] == 0  # first sighting
    assert sent(svc) == []
    assert janitor.sweep()["resent"] == 1
    assert sent(svc) == [(INGEST.name, [job.id, {"path": "p"}])]
    clear(svc)
    assert janitor.sweep()["resent"] == 0  # idle again: counted from scratch


def test_each_tenant_s_lost_job_is_resent_naming_its_tenant(svc: Services, janitor: Janitor) -> None:
    acme = svc.for_tenant("acme")
    theirs, ours = acme.jobs.create("ingest", {"path": "a"}), svc.jobs.create("ingest", {"path": "d"})
    assert svc.tenants() == ["acme", "default"]  # the job made acme known to the sweep
    assert janitor.sweep()["resent"] == 0  # first sighting, each in its tenant's keyspace
    assert svc.redis.exists(acme.keys.janitor_idle(theirs.id), svc.keys.janitor_idle(ours.id)) == 2
    assert not svc.redis.exists(svc.keys.janitor_idle(theirs.id))
    assert janitor.sweep()["resent"] == 2
    with make_celery(svc.settings).connection_for_read() as conn:
        messages = []
        while (message := conn.default_channel.basic_get("cpu", no_ack=True)) is not None:
            messages.append((message.decode()[0][0], message.headers.get(TENANT_HEADER)))
    assert sorted(messages) == sorted([(theirs.id, "acme"), (ours.id, "default")])


def test_a_leased_job_is_left_alone(svc: Services, janitor: Janitor) -> None:
    job = svc.jobs.create("ingest", {"path": "p"})
    svc.redis.set(svc.units.lease_key(job.id, "main"), "elsewhere|1|t", ex=30)
    for _ in range(3):
        assert janitor.sweep()["resent"] == 0


def test_a_job_whose_message_waits_is_never_resent_and_is_told_its_place(svc: Services) -> None:
    # No time bound: however many sweeps (each standing for an interval of a busy cluster), a job whose message
    # is still in its queue is waiting, not lost.
    app = make_celery(svc.settings)
    janitor = Janitor(svc, app, worker="test")
    for _ in range(3):
        someone_elses_message(svc)  # older, so taken before it
    job = svc.jobs.create("ingest", {"path": "p"})
    app.send_task(INGEST.name, args=[job.id, {"path": "p"}])
    for _ in range(2 * MAX_RESENDS + 2):
        report = janitor.sweep()
        assert report["resent"] == 0 and report["failed"] == 0 and report["waiting"] == 1
    record = svc.jobs.get(job.id)
    assert record is not None and record.status == "queued"
    assert record.message == "waiting in the cpu queue: 3 messages ahead"
    # Two messages were taken meanwhile: the place moves, with an ETA from how fast it moved.
    with app.connection_for_read() as conn:
        for _ in range(2):
            conn.default_channel.basic_get("cpu", no_ack=True)
    janitor.sweep()
    record = svc.jobs.get(job.id)
    assert record is not None and record.message.startswith("waiting in the cpu queue: 1 messages ahead; ETA ")


def test_a_lost_job_behind_a_busy_queue_is_resent_on_the_second_sweep(svc: Services, janitor: Janitor) -> None:
    # Other jobs' messages waiting say nothing of this one: its message is in no queue and it holds no lease.
    job = svc.jobs.create("ingest", {"path": "p"})
    someone_elses_message(svc)
    assert janitor.sweep()["resent"] == 0  # first sighting
    assert janitor.sweep()["resent"] == 1
    assert sent(svc) == [(OTHER_TASK, []), (INGEST.name, [job.id, {"path": "p"}])]  # the other one is older


def test_a_pipeline_whose_step_waits_is_alive(svc: Services, janitor: Janitor) -> None:
    # Between two stages a pipeline has no child: its step's message waiting behind a storm keeps it alive.
    job = svc.jobs.create("pipeline", {})
    svc.jobs.start(job.id, stage="s")
    make_celery(svc.settings).send_task(PIPELINE_STEP.name, args=[job.id])
    for _ in range(4):
        assert janitor.sweep()["resent"] == 0
    clear(svc, INTERACTIVE_QUEUE)  # where steps go: behind answers, never behind a CPU process's long task
    janitor.sweep()
    assert janitor.sweep()["resent"] == 1


def test_a_mining_job_gets_its_missing_shards_then_its_join(svc: Services, janitor: Janitor) -> None:
    record, _ = ingest(svc.datasets, SMALL, DatasetOptions(tags_per_movie=5), source="s", progress=lambda *_: None)
    params = {"dataset": record["id"], "shard_size": 4000, "seed": 1, "negatives": "uniform-min"}
    job = svc.jobs.create("triplets", params)
    svc.jobs.start(job.id, stage="mining")
    janitor.sweep()
    janitor.sweep()
    assert sent(svc) == [(MINE.name, [job.id, params])]  # nothing came back yet: plan again
    clear(svc)
    planned = ShardPlan(items=record["counts"]["movies"], size=4000, payload=params)  # as the planning task stores it
    svc.jobs.annotate(job.id, **{PLAN_FIELD: planned.to_json()})
    shards = planned.ranges
    assert len(shards) == 3
    svc.jobs.shard_done(job.id, shard_id(shards[0][0]), {"anchors": list(shards[0])}, total=3)
    janitor.sweep()
    janitor.sweep()
    assert sent(svc) == [(MINE_SHARD.name, [job.id, params, lo, hi, 3]) for lo, hi in shards[1:]]
    clear(svc)
    for lo, hi in shards[1:]:
        svc.jobs.shard_done(job.id, shard_id(lo), {"anchors": [lo, hi]}, total=3)
    janitor.sweep()
    janitor.sweep()
    assert sent(svc) == [(JOIN_TRIPLETS.name, [job.id, params])]


def test_a_job_lost_too_often_fails_with_the_reason(svc: Services, janitor: Janitor) -> None:
    job = svc.jobs.create("ingest", {"path": "p"})
    for _ in range(MAX_RESENDS):
        janitor.sweep()
        assert janitor.sweep()["resent"] == 1
        clear(svc)
    janitor.sweep()
    assert janitor.sweep()["failed"] == 1
    final = svc.jobs.get(job.id)
    assert final is not None and final.status == "failed" and final.error is not None
    assert final.error["code"] == "lost" and "lost 5 times" in final.error["message"]
    assert svc.jobs.active_ids() == ()


def test_expired_ids_leave_the_indexes(svc: Services, janitor: Janitor) -> None:
    job = svc.jobs.create("ingest", {"path": "p"})
    svc.jobs.start(job.id, stage="s")
    svc.jobs.succeed(job.id, {}, ttl_s=1)
    time.sleep(1.1)
    assert janitor.sweep()["pruned"] == 1
    prefix = svc.settings.key_prefix
    assert svc.redis.zcard(f"{prefix}:jobs") == 0 and svc.redis.zcard(f"{prefix}:jobs:expiry") == 0


def test_a_mark_written_just_after_its_job_finished_is_dropped(
    svc: Services, janitor: Janitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = svc.jobs.create("ingest", {"path": "p"})
    seen_active = svc.jobs.get(job.id)
    svc.jobs.start(job.id, stage="s")
    assert svc.jobs.succeed(job.id, {})
    # The sweep read the job as active a moment before it finished, and marks it idle after the finish.
    monkeypatch.setattr(svc.jobs, "active_ids", lambda: (job.id,))
    monkeypatch.setattr(svc.jobs, "get", lambda _: seen_active)
    janitor.sweep()
    assert not svc.redis.exists(*Keys(svc.settings.key_prefix).janitor_marks(job.id))
