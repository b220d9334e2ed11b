"""The job registry on a real Redis."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from redis.exceptions import LockError, LockNotOwnedError

from shared.infra.keys import Keys
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.jobs.store import JobStore
from shared.jobs.submit import submit
from shared.logic.pipeline import advance
from shared.logic.services import Services
from tests.conftest import delete_prefix


@pytest.fixture
def jobs(redis_client: redis.Redis, fresh_prefix: str) -> JobStore:
    return JobStore(redis_client, prefix=fresh_prefix, result_ttl_s=50)


def test_create_then_lifecycle(jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str) -> None:
    job = jobs.create("ingest", {"path": "x"})
    assert (job.status, job.progress, job.params, job.started_at) == ("queued", 0.0, {"path": "x"}, None)
    started = jobs.start(job.id, stage="reading")
    assert started is not None and (started.status, started.stage, started.params) == (
        "running",
        "reading",
        {"path": "x"},
    )
    assert jobs.progress(job.id, 0.5, stage="ratings", message="half")
    mid = jobs.get(job.id)
    assert mid is not None
    assert (mid.status, mid.progress, mid.stage, mid.message) == ("running", 0.5, "ratings", "half")
    assert redis_client.ttl(f"{fresh_prefix}:job:{job.id}") == -1  # kept while active
    assert jobs.succeed(job.id, {"dataset": "ds-1"})
    done = jobs.get(job.id)
    assert done is not None
    assert (done.status, done.progress, done.result) == ("succeeded", 1.0, {"dataset": "ds-1"})
    assert done.finished_at is not None and done.started_at == mid.started_at
    assert 0 < redis_client.ttl(f"{fresh_prefix}:job:{job.id}") <= 50


def test_finished_jobs_do_not_move(jobs: JobStore) -> None:
    job = jobs.create("ingest", {})
    assert jobs.cancel(job.id)
    assert not jobs.start(job.id, stage="late")
    assert not jobs.progress(job.id, 0.9, stage="late")
    assert not jobs.succeed(job.id, {"late": True})
    assert not jobs.fail(job.id, code="x", message="late")
    final = jobs.get(job.id)
    assert final is not None
    assert (final.status, final.result, final.error) == ("cancelled", None, None)


def test_redelivery_restarts_a_running_job_but_keeps_its_start(jobs: JobStore) -> None:
    job = jobs.create("ingest", {})
    jobs.start(job.id, stage="a")
    first = jobs.get(job.id)
    time.sleep(0.01)
    assert jobs.start(job.id, stage="b")
    again = jobs.get(job.id)
    assert first is not None and again is not None
    assert again.started_at == first.started_at and again.stage == "b"


def test_wait_finished_blocks_until_the_finish_signal(jobs: JobStore) -> None:
    job = jobs.create("recommend", {})
    assert jobs.wait_finished(job.id, 0.05) is None  # still queued: times out
    assert jobs.wait_finished(job.id, 0.05, just_submitted=True) is None
    jobs.start(job.id, stage="s")
    jobs.succeed(job.id, {"items": []})
    done = jobs.wait_finished(job.id, 5, just_submitted=True)  # the signal is taken at once
    assert done is not None and done.result == {"items": []}
    again = jobs.wait_finished(job.id, 5)  # signal consumed: the record says finished
    assert again is not None and again.status == "succeeded"
    assert jobs.wait_finished("no-such-job", 0.05) is None


def test_fail_records_code_and_message(jobs: JobStore) -> None:
    job = jobs.create("ingest", {})
    jobs.start(job.id, stage="s")
    jobs.fail(job.id, code="data_error", message="ratings.csv, line 3: bad", details={"file": "ratings.csv"})
    failed = jobs.get(job.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error == {
        "code": "data_error",
        "message": "ratings.csv, line 3: bad",
        "details": {"file": "ratings.csv"},
    }


def test_list_newest_first_with_filters_and_expiry(
    jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    made = []
    for i in range(6):
        made.append(jobs.create("ingest" if i % 2 else "train", {"i": i}))
        time.sleep(0.002)
    jobs.start(made[1].id, stage="s")
    assert [j.id for j in jobs.list(limit=10)] == [j.id for j in reversed(made)]
    assert [j.id for j in jobs.list(kind="train", limit=10)] == [made[4].id, made[2].id, made[0].id]
    assert [j.id for j in jobs.list(status="running")] == [made[1].id]
    assert len(jobs.list(limit=2)) == 2
    redis_client.delete(f"{fresh_prefix}:job:{made[5].id}")  # as if its TTL ran out
    assert made[5].id not in [j.id for j in jobs.list(limit=10)]
    assert redis_client.zscore(f"{fresh_prefix}:jobs", made[5].id) is None
    assert jobs.get(made[5].id) is None


def test_active_set_and_expiry_index_follow_the_status(
    jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    a, b = jobs.create("ingest", {}), jobs.create("ingest", {})
    assert set(jobs.active_ids()) == {a.id, b.id}
    jobs.start(a.id, stage="s")
    jobs.succeed(a.id, {}, ttl_s=1)
    assert jobs.active_ids() == (b.id,)
    expires_at = redis_client.zscore(f"{fresh_prefix}:jobs:expiry", a.id)
    assert expires_at is not None and abs(expires_at - (time.time() + 1)) < 2
    assert jobs.prune_expired(now=time.time() - 10) == 0  # not due yet
    time.sleep(1.1)
    assert jobs.get(a.id) is None  # the record expired
    assert jobs.prune_expired() == 1
    assert redis_client.zscore(f"{fresh_prefix}:jobs", a.id) is None
    assert redis_client.zcard(f"{fresh_prefix}:jobs:expiry") == 0
    assert [j.id for j in jobs.list()] == [b.id]


def test_count_is_the_listing_index(jobs: JobStore) -> None:
    assert jobs.count() == 0
    a = jobs.create("ingest", {})
    jobs.create("train", {})
    assert jobs.count() == 2
    jobs.cancel(a.id)
    assert jobs.count() == 2  # finished jobs stay listed until they expire


@pytest.mark.parametrize("finish", ["succeed", "fail", "cancel"])
def test_finishing_a_job_drops_the_janitor_marks(
    jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str, finish: str
) -> None:
    keys = Keys(fresh_prefix)
    job = jobs.create("ingest", {})
    jobs.start(job.id, stage="s")
    marks = keys.janitor_marks(job.id)
    for mark in marks:  # as a janitor leaves them on a job it watches (workers/janitor.py)
        redis_client.set(mark, "1", ex=3600)
    assert jobs.progress(job.id, 0.5, stage="s")
    assert redis_client.exists(*marks) == 3  # only a finish drops them
    if finish == "succeed":
        assert jobs.succeed(job.id, {})
    elif finish == "fail":
        assert jobs.fail(job.id, code="x", message="broken")
    else:
        assert jobs.cancel(job.id)
    assert redis_client.exists(*marks) == 0
    left = {k.decode() for k in redis_client.scan_iter(match=keys.everything)}
    finished = {keys.job(job.id), keys.job_finished(job.id), keys.jobs, keys.jobs_expiry}
    assert left == finished | {keys.metrics_jobs, keys.metrics_job_seconds}  # a finish is counted (metrics)


def test_a_finish_queued_on_a_pipeline_drops_the_janitor_marks(
    jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    keys = Keys(fresh_prefix)
    job = jobs.create("recommend", {})
    jobs.start(job.id, stage="s")
    redis_client.set(keys.janitor_queued(job.id), "1", ex=3600)
    pipe = redis_client.pipeline(transaction=False)
    jobs.succeed(job.id, {"items": []}, pipe=pipe)
    pipe.execute()
    assert not redis_client.exists(keys.janitor_queued(job.id))


def test_lock_is_exclusive_and_only_its_holder_releases_it(
    jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    key = Keys(fresh_prefix).lock("pipeline:p1")
    first = jobs.lock("pipeline:p1", ttl_s=0.3)
    assert first.acquire()
    assert 0 < redis_client.pttl(key) <= 300
    second = jobs.lock("pipeline:p1")
    started = time.monotonic()
    assert not second.acquire()  # held: answered at once, never waited for
    assert time.monotonic() - started < 0.1
    assert jobs.lock("pipeline:p2").acquire()  # another name is another claim
    with pytest.raises(LockError):
        second.release()  # never acquired
    time.sleep(0.4)  # the holder died: its claim expired
    assert second.acquire()
    with pytest.raises(LockNotOwnedError):
        first.release()  # late: it must not free the new holder's claim
    assert redis_client.exists(key)
    second.release()
    assert not redis_client.exists(key)


def test_lock_as_a_context_manager(jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str) -> None:
    key = Keys(fresh_prefix).lock("pipeline:p1")
    with jobs.lock("pipeline:p1") as held:
        assert held.owned() and redis_client.exists(key)
        with pytest.raises(LockError), jobs.lock("pipeline:p1"):
            pass  # held above: entering fails at once
    assert not redis_client.exists(key)


def test_owner_is_recorded_and_filters_the_listing(
    jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    mine = jobs.create("ingest", {}, owner="k-mine")
    theirs = jobs.create("ingest", {}, owner="k-theirs")
    nobody = jobs.create("ingest", {})
    assert (mine.owner, theirs.owner, nobody.owner) == ("k-mine", "k-theirs", None)
    assert redis_client.hgetall(f"{fresh_prefix}:job:{mine.id}")[b"owner"] == b"k-mine"
    assert not redis_client.hexists(f"{fresh_prefix}:job:{nobody.id}", "owner")
    assert [j.id for j in jobs.list(owner="k-mine")] == [mine.id]
    assert [j.id for j in jobs.list(owner="k-theirs", kind="ingest")] == [theirs.id]
    assert {j.id for j in jobs.list()} == {mine.id, theirs.id, nobody.id}  # None: every owner
    jobs.start(mine.id, stage="a")
    jobs.succeed(mine.id, {"ok": True})
    done = jobs.get(mine.id)
    assert done is not None and done.owner == "k-mine"  # moves keep it
    assert "owner" not in done.public(result_url=None)  # never shown


def test_owner_filter_pages_past_other_owners(jobs: JobStore) -> None:
    mine = [jobs.create("ingest", {}, owner="k-mine").id for _ in range(3)]
    for _ in range(250):  # more than one page of the index between them
        jobs.create("ingest", {}, owner="k-theirs")
    newest = jobs.create("ingest", {}, owner="k-mine").id
    assert [j.id for j in jobs.list(owner="k-mine", limit=10)] == [newest, *reversed(mine)]


def test_submit_and_pipeline_stages_carry_the_owner(settings: Settings, redis_client: redis.Redis) -> None:
    """A stage job is created by a worker (shared.pipeline.advance) with the pipeline job's owner."""
    prefix = f"{settings.key_prefix}-owner-{uuid.uuid4().hex[:8]}"  # no worker consumes it: messages wait
    svc = Services.from_settings(settings.model_copy(update={"key_prefix": prefix}))
    celery = make_celery(svc.settings)
    try:
        pipeline = submit(celery, svc.jobs, kind="pipeline", params={"path": "x"}, owner="k-mine")
        assert pipeline.owner == "k-mine"
        advance(svc, celery, pipeline.id)  # what workers.cpu.pipeline_step runs
        state = json.loads(svc.jobs.field(pipeline.id, "pipeline") or "{}")
        child = svc.jobs.get(state["children"]["ingest"])
        assert child is not None and child.owner == "k-mine" and child.params["parent"]["id"] == pipeline.id
    finally:
        celery.close()
        delete_prefix(redis_client, prefix)
