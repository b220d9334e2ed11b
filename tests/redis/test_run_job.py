"""``run_job``'s frame on a real Redis, its speculative form included; and ``sent_ahead`` under it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import redis

from shared.errors import NotFound
from shared.infra.process import clear_process_caches
from shared.infra.redisconn import sent_ahead
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.logic.services import Services
from tests.conftest import delete_prefix
from workers.base import JobContext, Outcome, run_job, services


@pytest.fixture
def svc(settings: Settings, redis_client: redis.Redis) -> Iterator[Services]:
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-r{uuid.uuid4().hex[:6]}"})
    app = make_celery(own)
    app.set_current()
    clear_process_caches()  # the process's services are built once: build this test's
    yield services()
    clear_process_caches()
    delete_prefix(redis_client, own.key_prefix)


def eventually(read: Callable[[], bytes | None]) -> bytes | None:
    """What ``read`` answers once it answers something (another connection may be a moment behind)."""
    deadline = time.monotonic() + 2
    while (value := read()) is None and time.monotonic() < deadline:
        time.sleep(0.001)
    return value


class Body:
    """A body that answers ``result`` (or raises ``error``) and remembers that it ran."""

    def __init__(self, result: dict[str, int] | None = None, error: Exception | None = None) -> None:
        self.result, self.error, self.runs = result or {"answer": 42}, error, 0

    def __call__(self, ctx: JobContext) -> Outcome:
        self.runs += 1
        if self.error is not None:
            raise self.error
        return Outcome(self.result, message="done")


@pytest.mark.parametrize("speculative", [False, True])
def test_a_job_runs_once_admitted_and_its_lease_goes(svc: Services, speculative: bool) -> None:
    job = svc.jobs.create("recommend", {})
    body = Body()
    assert run_job(job.id, stage="recommending", body=body, speculative=speculative) is not None
    record = svc.jobs.get(job.id)
    assert record is not None and record.status == "succeeded" and record.result == {"answer": 42}
    assert body.runs == 1 and not svc.redis.exists(svc.units.lease_key(job.id, "main"))


@pytest.mark.parametrize("speculative", [False, True])
def test_an_error_fails_the_job_with_its_code(svc: Services, speculative: bool) -> None:
    job = svc.jobs.create("recommend", {})
    run_job(job.id, stage="recommending", body=Body(error=NotFound("no such user")), speculative=speculative)
    record = svc.jobs.get(job.id)
    assert record is not None and record.status == "failed" and record.error is not None
    assert record.error["code"] == "not_found" and "no such user" in record.error["message"]


def test_a_speculative_answer_is_dropped_when_another_worker_holds_the_unit(svc: Services) -> None:
    job = svc.jobs.create("recommend", {})
    svc.redis.set(svc.units.lease_key(job.id, "main"), "elsewhere|1|x", px=30_000)  # a live holder elsewhere
    body = Body()
    assert run_job(job.id, stage="recommending", body=body, speculative=True) is None
    record = svc.jobs.get(job.id)
    assert body.runs == 1 and record is not None and record.status == "running" and record.result is None


def test_a_speculative_answer_is_dropped_for_a_cancelled_job(svc: Services) -> None:
    job = svc.jobs.create("recommend", {})
    assert svc.jobs.cancel(job.id)
    assert run_job(job.id, stage="recommending", body=Body(), speculative=True) is None
    record = svc.jobs.get(job.id)
    assert record is not None and record.status == "cancelled" and record.result is None
    assert not svc.redis.exists(svc.units.lease_key(job.id, "main"))


def test_a_speculative_body_runs_once_even_when_later_tasks_finish_its_job(svc: Services) -> None:
    job = svc.jobs.create("triplets", {})
    runs: list[str] = []

    def body(ctx: JobContext) -> None:
        runs.append(ctx.job_id)  # as a planning task: sends the rest, returns None

    assert run_job(job.id, stage="mining", body=body, speculative=True) == {"job": job.id, "status": "running"}
    record = svc.jobs.get(job.id)
    assert runs == [job.id] and record is not None and record.status == "running"


def test_a_speculative_start_is_counted_before_anything_is_recorded(svc: Services) -> None:
    job = svc.jobs.create("recommend", {})
    starts = svc.units.starts_key(job.id, "main")
    seen: list[bytes | None] = []

    def body(ctx: JobContext) -> Outcome:
        # Read on another connection: the admission was sent before the body ran.
        seen.append(eventually(lambda: cast("bytes | None", svc.redis.get(starts))))
        return Outcome({})

    run_job(job.id, stage="recommending", body=body, speculative=True)
    assert seen == [b"1"]


def test_sent_ahead_reads_replies_later_and_leaves_the_pool_clean(redis_client: redis.Redis, fresh_prefix: str) -> None:
    key = f"{fresh_prefix}:n"
    pipe = redis_client.pipeline(transaction=False)
    pipe.incr(key)
    pipe.hgetall(f"{fresh_prefix}:nothing")
    with sent_ahead(pipe) as replies:
        assert eventually(lambda: cast("bytes | None", redis_client.get(key))) == b"1"  # applied while this block runs
        assert replies() == [1, {}]
    pipe.incr(key)
    pipe.hset(key, "f", "v")  # WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"), sent_ahead(pipe) as replies:
        replies()
    with pytest.raises(RuntimeError), sent_ahead(pipe) as replies:
        raise RuntimeError("the caller failed before reading")
    assert redis_client.incr(key) == 3  # the pool's connections still answer in step
