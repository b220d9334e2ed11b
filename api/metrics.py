"""``/metrics``: Prometheus text exposition of the API's requests, the jobs, queues, workers and the model.

What each metric is and how it reaches the scrape (a histogram per API process, job metrics pushed through
Redis, state read at scrape time): shared/infra/metrics.py. ``install`` adds the request hooks to an app.
"""

from __future__ import annotations

import os
import time

from apiflask import APIBlueprint, APIFlask
from flask import Flask, Response, g, request, request_started
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from shared.infra.metrics import MULTIPROC_ENV, RedisCollector

from . import celery, services

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
