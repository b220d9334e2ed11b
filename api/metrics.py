"""``/metrics``: Prometheus text exposition of the API's requests, the jobs, queues, workers and the model.

What each metric is and how it reaches the scrape (a histogram per API process, job metrics pushed through
Redis, state read at scrape time): shared/infra/metrics.py. ``install`` adds the request hooks to an app.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from apiflask import APIBlueprint, APIFlask
from flask import Flask, Response, g, request, request_started
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from shared.infra.metrics import MULTIPROC_ENV, SERVING_KINDS, cells, histogram
from shared.jobs.celery_app import MovierecCelery, queue_lengths
from shared.jobs.kinds import QUEUES
from shared.logic.services import Services

from .context import celery, services

bp = APIBlueprint("metrics", __name__, tag="metrics")

_TEXT: dict[int | str, dict[str, str | dict[str, dict[str, object]]]] = {
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
}

UNMATCHED = "unmatched"
"""The ``route`` of a request no URL rule matched (404, 405): one value, whatever the path was."""

_OWN = CollectorRegistry()
"""This process's request histogram (read directly when not under gunicorn's multiprocess mode)."""

REQUEST_SECONDS = Histogram(
    "movierec_http_request_duration_seconds",
    "Seconds the API took to answer a request, by method, URL rule and status.",
    ["method", "route", "status"],
    registry=_OWN,
)


ANSWERED_BY = Counter(
    "movierec_recommendations_answered_total",
    "Recommendations asked with ?wait > 0, by what answered them: the fast lane, or a job (no fast-lane answer in "
    "time: no live interactive worker, a busy or cold one, an error).",
    ["path"],
    registry=_OWN,
)
"""A fast-lane answer is no job, so it is in no job metric: this counts it (api/recommendations.py)."""


def install(app: APIFlask) -> None:
    """Time every request of ``app``: from Flask's ``request_started`` (before any ``before_request`` hook,
    so a 401 is timed too) to the response."""
    request_started.connect(_started, app)
    app.after_request(_finished)


def _started(sender: Flask, **_: object) -> None:
    g.metrics_started = time.perf_counter()


def _finished(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    if started is not None:
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        REQUEST_SECONDS.labels(request.method, route, str(response.status_code)).observe(time.perf_counter() - started)
    return response


@bp.get("/metrics")
@bp.doc(responses=_TEXT)
def metrics() -> Response:
    """Request durations, finished jobs and their durations, queue lengths, live workers, the active model."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # every gunicorn worker's requests, summed
    else:
        registry.register(_OWN)
    registry.register(RedisCollector(services(), celery()))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class RedisCollector:
    """A prometheus_client collector that reads the deployment's state and the pushed job metrics from Redis
    when scraped (three round trips and the queues' own: a pipeline, the active model's record, the worker
    heartbeats)."""

    def __init__(self, services: Services, celery: MovierecCelery) -> None:
        self._svc = services
        self._celery = celery

    def describe(self) -> list[Metric]:
        return []  # not known before a scrape; a registry then takes our names as unchecked

    def collect(self) -> Iterator[Metric]:
        svc, keys = self._svc, self._svc.keys
        pipe = svc.redis.pipeline(transaction=False)
        pipe.zcard(keys.jobs)
        pipe.zcard(keys.datasets)
        pipe.zcard(keys.models)
        pipe.get(keys.active_model)
        pipe.hgetall(keys.metrics_jobs)
        pipe.hgetall(keys.metrics_job_seconds)
        jobs, datasets, models, active_raw, finished_raw, seconds_raw = pipe.execute()
        active = active_raw.decode() if active_raw else None
        record = svc.models.get(active) if active else None

        queues = queue_lengths(self._celery, QUEUES)
        g = GaugeMetricFamily("movierec_queue_length", "Messages waiting in a Celery queue.", labels=["queue"])
        for queue in QUEUES:
            g.add_metric([queue], queues.get(queue, 0))
        yield g
        live = svc.live_queues()
        g = GaugeMetricFamily("movierec_workers", "Live workers consuming a queue.", labels=["queue"])
        for queue in QUEUES:
            g.add_metric([queue], live.get(queue, 0))
        yield g
        yield GaugeMetricFamily(
            "movierec_jobs_indexed", "Job records in the listing index (finished ones expire).", value=jobs
        )
        g = GaugeMetricFamily("movierec_active_model", "1 for the version recommendations use.", labels=["version"])
        if active:
            g.add_metric([active], 1)
        yield g
        g = GaugeMetricFamily("movierec_index_items", "Movies in the active model version's index.", labels=["version"])
        index = (record or {}).get("index") or {}
        if active and "n" in index:
            g.add_metric([active], index["n"])
        yield g
        yield GaugeMetricFamily("movierec_datasets", "Datasets stored.", value=datasets)
        yield GaugeMetricFamily("movierec_models", "Model versions stored.", value=models)

        c = CounterMetricFamily(
            "movierec_jobs_finished", "Jobs finished, by kind and final status.", labels=["kind", "status"]
        )
        for field, value in sorted(cells(finished_raw).items()):
            if len(field) == 2:
                c.add_metric(list(field), value)
        yield c

        seconds = cells(seconds_raw)
        kinds = sorted({field[0] for field in seconds})
        for name, doc in (
            ("run", "Seconds a job ran: started (first time) to finished."),
            ("latency", "Seconds from a job's creation to its finish, the wait in the queue included."),
        ):
            h = HistogramMetricFamily(f"movierec_job_{name}_seconds", doc, labels=["kind"])
            for kind in kinds:
                if (kind, name, "count") in seconds:
                    buckets, total = histogram(seconds, name, [kind])
                    h.add_metric([kind], buckets, total)
            yield h
        h = HistogramMetricFamily(
            "movierec_recommendation_latency_seconds",
            f"Seconds from a recommendation's request to its answer (jobs of kind {', '.join(SERVING_KINDS)}).",
        )
        buckets, total = histogram(seconds, "latency", list(SERVING_KINDS))
        h.add_metric([], buckets, total)
        yield h
