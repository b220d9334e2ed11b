"""``/metrics``: every family a dashboard reads, request counts summed over gunicorn's workers, and job
metrics pushed by the real workers through Redis."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_job

FAMILIES = {
    "movierec_http_request_duration_seconds": "histogram",
    "movierec_jobs_finished": "counter",  # its samples are movierec_jobs_finished_total
    "movierec_job_run_seconds": "histogram",
    "movierec_job_latency_seconds": "histogram",
    "movierec_recommendation_latency_seconds": "histogram",
    "movierec_queue_length": "gauge",
    "movierec_workers": "gauge",
    "movierec_jobs_indexed": "gauge",
    "movierec_active_model": "gauge",
    "movierec_index_items": "gauge",
    "movierec_datasets": "gauge",
    "movierec_models": "gauge",
}


def scrape(client: Any) -> dict[str, Any]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """A sample's value, 0 when absent (a series appears with its first observation)."""
    return float(sum(s.value for f in families.values() for s in f.samples if s.name == sample and s.labels == labels))


def test_every_family_is_exposed_with_its_type(client: Any) -> None:
    families = scrape(client)
    assert {name: families[name].type for name in FAMILIES if name in families} == FAMILIES
    assert all(value(families, "movierec_workers", queue=queue) >= 1 for queue in ("interactive", "cpu", "gpu"))


def test_request_count_grows_by_exactly_the_requests_made(client: Any) -> None:
    """Over HTTP the requests spread over gunicorn's two worker processes: the count is their sum."""
    route = "/v1/jobs/<uuid:job_id>"
    labels = {"method": "GET", "route": route, "status": "404"}
    before = value(scrape(client), "movierec_http_request_duration_seconds_count", **labels)
    n = 12
    for _ in range(n):
        assert client.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get("/no/such/route").status_code == 404
    after = scrape(client)
    assert value(after, "movierec_http_request_duration_seconds_count", **labels) == before + n
    assert value(after, "movierec_http_request_duration_seconds_bucket", **labels, le="+Inf") == before + n
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "movierec_http_request_duration_seconds_count", **unmatched) >= 1


def test_a_real_job_counts_in_the_job_metrics(client: Any) -> None:
    """An ingest run by the session stack's real CPU worker, counted by the transition script in Redis."""
    before = scrape(client)
    r = client.post("/v1/datasets", json={"path": "ml-latest-small"})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    job = wait_job(lambda: client.get(f"/v1/jobs/{job_id}").get_json(), job_id, timeout_s=300)
    assert job["status"] == "succeeded", job
    after = scrape(client)
    # The open API is one tenant, "default", and every tenant metric names it.
    finished = ("movierec_jobs_finished_total", {"tenant": "default", "kind": "ingest", "status": "succeeded"})
    assert value(after, finished[0], **finished[1]) >= value(before, finished[0], **finished[1]) + 1
    ingest = {"tenant": "default", "kind": "ingest"}
    for histogram in ("movierec_job_run_seconds", "movierec_job_latency_seconds"):
        count = f"{histogram}_count"
        assert value(after, count, **ingest) >= value(before, count, **ingest) + 1
        assert value(after, f"{histogram}_bucket", **ingest, le="+Inf") == value(after, count, **ingest)
    assert value(after, "movierec_datasets", tenant="default") >= 1
