"""Job metrics pushed through Redis by the transition script, and the collector that exports them."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import RedisCollector
from shared.infra.keys import Keys
from shared.infra.metrics import JOB_BUCKETS
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.jobs.store import JobStore
from shared.logic.services import Services


@pytest.fixture
def jobs(redis_client: redis.Redis, fresh_prefix: str) -> JobStore:
    return JobStore(redis_client, prefix=fresh_prefix, result_ttl_s=50)


def counters(client: redis.Redis, prefix: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(Keys(prefix).metrics_jobs).items()}


CLOCK_SLACK_S = 0.01
"""How far the RedisClock's reading may be from Redis TIME's in this test: this, or the clock's own bound when
a loaded machine made its shortest round trip longer (``RedisClock.uncertainty_s``, half of it)."""


def cells(client: redis.Redis, prefix: str) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in client.hgetall(Keys(prefix).metrics_job_seconds).items()}


def bucket_of(seconds: float) -> str:
    return repr(next(b for b in JOB_BUCKETS if seconds <= b))


def test_a_finished_job_counts_its_outcome_and_both_spans(
    jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    job = jobs.create("ingest", {})
    time.sleep(0.03)  # queued
    assert jobs.start(job.id, stage="s") is not None
    time.sleep(0.06)  # running
    assert jobs.start(job.id, stage="again") is not None  # a redelivery: the first start counts
    assert jobs.progress(job.id, 0.5, stage="s")
    assert counters(redis_client, fresh_prefix) == {} and cells(redis_client, fresh_prefix) == {}
    assert jobs.succeed(job.id, {})
    assert counters(redis_client, fresh_prefix) == {"ingest\tsucceeded": 1}
    got = cells(redis_client, fresh_prefix)
    run, latency = got["ingest\trun\tsum"], got["ingest\tlatency\tsum"]
    # t_created is the RedisClock's (Redis time to within half a round trip, a few ms on a loaded machine:
    # shared/infra/clock.py), t_started Redis TIME itself: the queued span is 0.03 s give or take that.
    slack = max(CLOCK_SLACK_S, jobs.clock.uncertainty_s)
    assert 0.06 <= run < 5 and run + 0.03 - slack <= latency < 5
    assert got == {
        f"ingest\trun\t{bucket_of(run)}": 1,
        "ingest\trun\tcount": 1,
        "ingest\trun\tsum": run,
        f"ingest\tlatency\t{bucket_of(latency)}": 1,
        "ingest\tlatency\tcount": 1,
        "ingest\tlatency\tsum": latency,
    }


def test_fail_cancel_and_moves_that_do_not_apply(jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str) -> None:
    failed, cancelled, queued = (jobs.create(kind, {}) for kind in ("train", "train", "recommend"))
    jobs.start(failed.id, stage="s")
    jobs.start(cancelled.id, stage="s")
    assert jobs.fail(failed.id, code="x", message="broken")
    assert jobs.cancel(cancelled.id)
    assert jobs.cancel(queued.id)  # never started: a latency, no run
    before = (counters(redis_client, fresh_prefix), cells(redis_client, fresh_prefix))
    assert not jobs.succeed(failed.id, {})  # finished already: nothing more is counted
    assert not jobs.fail(queued.id, code="x", message="late")
    assert jobs.start(queued.id, stage="s") is None
    assert (counters(redis_client, fresh_prefix), cells(redis_client, fresh_prefix)) == before
    assert before[0] == {"train\tfailed": 1, "train\tcancelled": 1, "recommend\tcancelled": 1}
    got = before[1]
    assert (got["train\trun\tcount"], got["train\tlatency\tcount"]) == (2, 2)
    assert got["recommend\tlatency\tcount"] == 1 and "recommend\trun\tcount" not in got
    assert sum(v for k, v in got.items() if k.startswith("train\trun\t") and k[-3:] not in ("unt", "sum")) == 2


def test_clock_skew_counts_as_zero(jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str) -> None:
    job = jobs.create("index", {})
    redis_client.hset(Keys(fresh_prefix).job(job.id), "t_created", f"{time.time() + 3600:.6f}")  # a clock ahead
    assert jobs.cancel(job.id)
    assert cells(redis_client, fresh_prefix) == {
        f"index\tlatency\t{JOB_BUCKETS[0]!r}": 1,
        "index\tlatency\tcount": 1,
        "index\tlatency\tsum": 0,
    }


def test_a_finish_queued_on_a_pipeline_counts(jobs: JobStore, redis_client: redis.Redis, fresh_prefix: str) -> None:
    job = jobs.create("recommend", {})
    pipe = redis_client.pipeline(transaction=False)
    jobs.start_on(pipe, job.id, stage="s")
    jobs.succeed(job.id, {"items": []}, pipe=pipe)
    pipe.execute()
    assert counters(redis_client, fresh_prefix) == {"recommend\tsucceeded": 1}
    assert cells(redis_client, fresh_prefix)["recommend\trun\tcount"] == 1


@pytest.fixture
def own_services(settings: Settings, fresh_prefix: str) -> tuple[Services, Any]:
    own = settings.model_copy(update={"key_prefix": fresh_prefix})
    return Services.from_settings(own), make_celery(own)


def scrape(svc: Services, celery: Any) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(RedisCollector([svc], celery, queues=True))
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def samples(family: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A family's samples by name and labels, less the tenant label, which must name the default tenant."""
    assert all(s.labels.pop("tenant") == "default" for s in family.samples if "tenant" in s.labels)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_the_collector_exports_the_pushed_cells_as_cumulative_histograms(
    own_services: tuple[Services, Any], redis_client: redis.Redis, fresh_prefix: str
) -> None:
    svc, celery = own_services
    families = scrape(svc, celery)
    types = {name: f.type for name, f in families.items()}
    assert types == {
        "movierec_queue_length": "gauge",
        "movierec_workers": "gauge",
        "movierec_jobs_indexed": "gauge",
        "movierec_active_model": "gauge",
        "movierec_index_items": "gauge",
        "movierec_datasets": "gauge",
        "movierec_models": "gauge",
        "movierec_jobs_finished": "counter",
        "movierec_job_run_seconds": "histogram",
        "movierec_job_latency_seconds": "histogram",
        "movierec_recommendation_latency_seconds": "histogram",
        "movierec_experiment_state": "gauge",
        "movierec_experiment_events": "counter",
        "movierec_experiment_ctr": "gauge",
        "movierec_experiment_team_clicks": "counter",
    }
    serving = samples(families["movierec_recommendation_latency_seconds"])
    assert serving[("movierec_recommendation_latency_seconds_count", ())] == 0

    key = Keys(fresh_prefix).metrics_job_seconds
    redis_client.hset(
        key,
        mapping={"recommend\tlatency\t0.01": 2, "recommend\tlatency\t1.0": 1, "recommend\tlatency\tcount": 4,
                 "recommend\tlatency\tsum": 7.52, "train\trun\t7200.0": 1, "train\trun\tcount": 1,
                 "train\trun\tsum": 3000},
    )  # fmt: skip
    redis_client.hset(Keys(fresh_prefix).metrics_jobs, mapping={"recommend\tsucceeded": 4, "train\tfailed": 1})
    svc.models.put({"version": "m-x", "dataset": "ds-x", "index": {"n": 9742}})
    svc.models.activate("m-x")
    families = scrape(svc, celery)
    latency = samples(families["movierec_job_latency_seconds"])
    rec = ("kind", "recommend")
    assert latency[("movierec_job_latency_seconds_bucket", (rec, ("le", "0.005")))] == 0
    assert latency[("movierec_job_latency_seconds_bucket", (rec, ("le", "0.01")))] == 2
    assert latency[("movierec_job_latency_seconds_bucket", (rec, ("le", "0.5")))] == 2
    assert latency[("movierec_job_latency_seconds_bucket", (rec, ("le", "1.0")))] == 3
    assert latency[("movierec_job_latency_seconds_bucket", (rec, ("le", "7200.0")))] == 3
    assert latency[("movierec_job_latency_seconds_bucket", (rec, ("le", "+Inf")))] == 4  # one past the last
    assert latency[("movierec_job_latency_seconds_count", (rec,))] == 4
    assert latency[("movierec_job_latency_seconds_sum", (rec,))] == 7.52
    serving = samples(families["movierec_recommendation_latency_seconds"])
    assert serving[("movierec_recommendation_latency_seconds_count", ())] == 4
    assert serving[("movierec_recommendation_latency_seconds_bucket", (("le", "1.0"),))] == 3
    run = samples(families["movierec_job_run_seconds"])
    assert run[("movierec_job_run_seconds_bucket", (("kind", "train"), ("le", "3600.0")))] == 0
    assert run[("movierec_job_run_seconds_bucket", (("kind", "train"), ("le", "+Inf")))] == 1
    assert not any(labels == (("kind", "recommend"),) for _, labels in run)  # only kinds with observations
    assert samples(families["movierec_jobs_finished"]) == {
        ("movierec_jobs_finished_total", (("kind", "recommend"), ("status", "succeeded"))): 4,
        ("movierec_jobs_finished_total", (("kind", "train"), ("status", "failed"))): 1,
    }
    assert samples(families["movierec_active_model"]) == {("movierec_active_model", (("version", "m-x"),)): 1}
    assert samples(families["movierec_index_items"]) == {("movierec_index_items", (("version", "m-x"),)): 9742}
    assert samples(families["movierec_models"]) == {("movierec_models", ()): 1}
    assert samples(families["movierec_datasets"]) == {("movierec_datasets", ()): 0}
