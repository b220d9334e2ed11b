"""``/metrics``: Prometheus text exposition of the API's requests, the jobs, queues, workers and the model.

What each metric is and how it reaches the scrape (a histogram per API process, job metrics pushed through
Redis, state read at scrape time): shared/infra/metrics.py. ``install`` adds the request hooks to an app.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

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

from .auth import sees_deployment
from .context import celery, deployment, services

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
    """Request durations, finished jobs and their durations, queue lengths, live workers, the active model.

    Every metric of a tenant's data has a ``tenant`` label. A key that sees the deployment (an operator's:
    api/auth.py ``sees_deployment``) gets every tenant's and the queues' lengths; any other key, its own
    tenant's only. The request durations are the API processes', by route and status: they name no tenant."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # every gunicorn worker's requests, summed
    else:
        registry.register(_OWN)
    whole = sees_deployment()
    tenants = [deployment().for_tenant(name) for name in deployment().tenants()] if whole else [services()]
    registry.register(RedisCollector(tenants, celery(), queues=whole))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class RedisCollector:
    """A prometheus_client collector that reads the tenants' state and their pushed job metrics from Redis when
    scraped (per tenant: a pipeline and its active model's record; then the worker heartbeats and, with
    ``queues``, the queues' lengths)."""

    def __init__(self, tenants: list[Services], celery: MovierecCelery, *, queues: bool) -> None:
        self._tenants = tenants
        self._celery = celery
        self._queues = queues

    def describe(self) -> list[Metric]:
        return []  # not known before a scrape; a registry then takes our names as unchecked

    def collect(self) -> Iterator[Metric]:
        yield from self._cluster()
        states = [TenantState.read(tenant) for tenant in self._tenants]
        yield from self._stores(states)
        yield from self._jobs(states)
        yield from self._experiments()

    def _cluster(self) -> Iterator[Metric]:
        """The deployment's: live workers, and with ``queues`` the queues' lengths."""
        if self._queues:
            queues = queue_lengths(self._celery, QUEUES)
            g = GaugeMetricFamily("movierec_queue_length", "Messages waiting in a Celery queue.", labels=["queue"])
            for queue in QUEUES:
                g.add_metric([queue], queues.get(queue, 0))
            yield g
        live = self._tenants[0].live_queues()
        g = GaugeMetricFamily("movierec_workers", "Live workers consuming a queue.", labels=["queue"])
        for queue in QUEUES:
            g.add_metric([queue], live.get(queue, 0))
        yield g

    def _stores(self, states: list[TenantState]) -> Iterator[Metric]:
        """Each tenant's job index, active model and stores."""
        label = ["tenant"]
        g = GaugeMetricFamily("movierec_jobs_indexed", "Job records in the listing index (finished ones expire).",
                              labels=label)  # fmt: skip
        for state in states:
            g.add_metric([state.tenant], state.jobs)
        yield g
        g = GaugeMetricFamily(
            "movierec_active_model", "1 for the version recommendations use.", labels=["tenant", "version"]
        )
        for state in states:
            if state.active:
                g.add_metric([state.tenant, state.active], 1)
        yield g
        g = GaugeMetricFamily(
            "movierec_index_items", "Movies in the active model version's index.", labels=["tenant", "version"]
        )
        for state in states:
            index = (state.record or {}).get("index") or {}
            if state.active and "n" in index:
                g.add_metric([state.tenant, state.active], index["n"])
        yield g
        for name, doc, attr in (("datasets", "Datasets stored.", "datasets"), ("models", "Model versions stored.",
                                                                               "models")):  # fmt: skip
            g = GaugeMetricFamily(f"movierec_{name}", doc, labels=label)
            for state in states:
                g.add_metric([state.tenant], getattr(state, attr))
            yield g

    def _jobs(self, states: list[TenantState]) -> Iterator[Metric]:
        """Each tenant's finished jobs and their durations (pushed by every process: shared/infra/metrics.py)."""
        c = CounterMetricFamily(
            "movierec_jobs_finished", "Jobs finished, by kind and final status.", labels=["tenant", "kind", "status"]
        )
        for state in states:
            for field, value in sorted(cells(state.finished).items()):
                if len(field) == 2:
                    c.add_metric([state.tenant, *field], value)
        yield c

        for name, doc in (
            ("run", "Seconds a job ran: started (first time) to finished."),
            ("latency", "Seconds from a job's creation to its finish, the wait in the queue included."),
        ):
            h = HistogramMetricFamily(f"movierec_job_{name}_seconds", doc, labels=["tenant", "kind"])
            for state in states:
                seconds = cells(state.seconds)
                for kind in sorted({field[0] for field in seconds}):
                    if (kind, name, "count") in seconds:
                        buckets, total = histogram(seconds, name, [kind])
                        h.add_metric([state.tenant, kind], buckets, total)
            yield h
        h = HistogramMetricFamily(
            "movierec_recommendation_latency_seconds",
            f"Seconds from a recommendation's request to its answer (jobs of kind {', '.join(SERVING_KINDS)}).",
            labels=["tenant"],
        )
        for state in states:
            buckets, total = histogram(cells(state.seconds), "latency", list(SERVING_KINDS))
            h.add_metric([state.tenant], buckets, total)
        yield h

    def _experiments(self) -> Iterator[Metric]:
        """Each tenant's experiments' counters (their intervals need every user's counts: GET /v1/experiments)."""
        state = GaugeMetricFamily("movierec_experiment_state", "1 for an experiment's state.",
                                  labels=["tenant", "experiment", "kind", "state"])  # fmt: skip
        events = CounterMetricFamily(
            "movierec_experiment_events",
            "Events credited to an experiment, by variant (interleaved: both) and type.",
            labels=["tenant", "experiment", "variant", "type"],
        )
        ctr = GaugeMetricFamily("movierec_experiment_ctr", "Clicks per impression at positions <= the experiment's k.",
                                labels=["tenant", "experiment", "variant"])  # fmt: skip
        team = CounterMetricFamily("movierec_experiment_team_clicks", "An interleaving's clicks credited to each "
                                   "variant's items.", labels=["tenant", "experiment", "variant"])  # fmt: skip
        for svc in self._tenants:
            records = svc.experiments.all()
            for record, totals in zip(
                records, svc.experiments.totals([int(r["number"]) for r in records]), strict=True
            ):
                labels = [svc.tenant, record["name"]]
                state.add_metric([*labels, record["kind"], record["state"]], 1)
                names = [v["name"] for v in record["variants"]]
                served = [("x", "interleaved")] if record["kind"] == "interleave" else list(enumerate(names))
                for key, name in served:
                    for kind in ("impressions", "clicks", "plays", "ratings"):
                        events.add_metric([*labels, name, kind.rstrip("s")], totals.get(f"{key}:{kind}", 0))
                    shown = totals.get(f"{key}:impressions@k", 0)
                    ctr.add_metric([*labels, name], totals.get(f"{key}:clicks@k", 0) / shown if shown else 0.0)
                if record["kind"] == "interleave":
                    for t, name in enumerate(names):
                        team.add_metric([*labels, name], totals.get(f"t{t}:clicks@k", 0))
        yield from (state, events, ctr, team)


@dataclass(frozen=True)
class TenantState:
    """What a scrape reads of one tenant: one pipeline, and its active model's record."""

    tenant: str
    jobs: int
    datasets: int
    models: int
    active: str | None
    record: dict[str, Any] | None
    finished: Mapping[bytes, bytes]
    seconds: Mapping[bytes, bytes]

    @classmethod
    def read(cls, svc: Services) -> TenantState:
        keys = svc.keys
        pipe = svc.redis.pipeline(transaction=False)
        pipe.zcard(keys.jobs)
        pipe.zcard(keys.datasets)
        pipe.zcard(keys.models)
        pipe.get(keys.active_model)
        pipe.hgetall(keys.metrics_jobs)
        pipe.hgetall(keys.metrics_job_seconds)
        jobs, datasets, models, active_raw, finished, seconds = pipe.execute()
        active = active_raw.decode() if active_raw else None
        record = svc.models.get(active) if active else None
        return cls(svc.tenant, jobs, datasets, models, active, record, finished, seconds)
