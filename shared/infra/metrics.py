"""What ``/metrics`` exposes, where each number lives, and how it gets there; the names and encodings every
process shares (the job store's transition script pushes with them, the API's collector reads with them).

Three sources, one scrape (``GET /metrics`` on the API, api/metrics.py):

1. **The API's own requests** (``movierec_http_request_duration_seconds{method,route,status}``): a
   prometheus_client histogram in the API process, observed by a Flask hook for every request. ``route`` is
   the URL rule (``/v1/jobs/<uuid:job_id>``) or ``unmatched``, so its cardinality is bounded by the routes.
   Under gunicorn each worker process counts its own requests; prometheus_client's multiprocess mode sums
   them: ``movierec api`` (api/server.py) makes a private directory and sets ``PROMETHEUS_MULTIPROC_DIR``
   before gunicorn forks (an operator's own setting wins), each worker writes its samples to files there,
   gunicorn's ``child_exit`` hook marks a dead worker's files, and the scrape reads them all
   (``MultiProcessCollector``). Without the variable (Flask's test client, one process) the scrape reads
   the process's own registry. The client chooses its mode when it is first imported, so this module
   imports it only inside functions: the job store imports this module, also in gunicorn's master before the
   variable is set. Beside it, ``movierec_recommendations_answered_total{path}``: the recommendations asked
   with ``?wait`` > 0, by what answered them (``fast_lane``, or ``job``). A fast-lane answer is no job, so the
   job metrics of (2) see only the rest; the waiting caller's latency, either way, is the request histogram's
   (``route="/v1/recommendations"``).

2. **Jobs, pushed through Redis** (``movierec_jobs_finished_total{kind,status}``,
   ``movierec_job_run_seconds{kind}``, ``movierec_job_latency_seconds{kind}``): every status move of every
   job, whoever makes it (the API's cancel, a worker's succeed or fail, the janitor), is the job store's
   transition script (shared/jobs/store.py). On the move that finishes a job the script adds, in the same
   atomic step, one to ``Keys.metrics_jobs`` (field ``<kind>\\t<status>``) and one observation to each of
   the job's histograms in ``Keys.metrics_job_seconds`` (fields ``<kind>\\t<run|latency>\\t<bound>``, per
   bucket and not cumulative, and ``...\\tsum`` / ``...\\tcount``). ``run`` is started -> finished (Redis
   ``TIME`` at the first move to running, kept in the record's ``t_started``); ``latency`` is created ->
   finished (``t_created``, the creator's clock, so the queue wait counts); a negative span (clock skew)
   counts as 0; a job finished without starting (cancelled while queued) has no run observation. So a worker
   on any host needs no exporter, and a move that does not apply (a job already finished) counts nothing.
   ``movierec_recommendation_latency_seconds`` is the latency histogram of ``SERVING_KINDS`` summed: the
   kind ``recommend`` answers a user's recommendations, keyword queries and similar movies alike.

3. **State read from Redis at scrape time** by ``RedisCollector`` (api/metrics.py): ``movierec_queue_length{queue}``,
   ``movierec_workers{queue}`` (live heartbeats), ``movierec_jobs_indexed``, ``movierec_active_model{version}``
   (1 for the serving version), ``movierec_index_items{version}`` (movies in the active version's index),
   ``movierec_datasets``, ``movierec_models``, and the two hashes of (2), made cumulative. Redis counters
   never reset, so Prometheus sees them as counters of the whole deployment, however many APIs scrape them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

JOB_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0, 7200.0,
)  # fmt: skip
"""Upper bounds (seconds) of the job histograms: a recommendation's milliseconds to a training's hours. The
transition script is built with them; changing them leaves old cells under bounds no longer exported."""

SERVING_KINDS: tuple[str, ...] = ("recommend",)
"""The job kinds that answer a caller waiting on them (recommendations, keyword queries, similar movies)."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's multiprocess directory: set, every process of the API writes its samples there."""

SEP = "\t"
"""Separates the parts of a field in the pushed hashes (a kind never holds a tab)."""


def lua_buckets() -> str:
    """``JOB_BUCKETS`` as a Lua table literal for the transition script: ``{bound, its field name}`` pairs,
    the name being Python's ``repr`` of the bound, which the collector looks up and exports as ``le``."""
    return "{" + ", ".join(f"{{{b!r}, '{b!r}'}}" for b in JOB_BUCKETS) + "}"


def ensure_multiprocess_dir() -> str:
    """The multiprocess directory of this API: the operator's ``PROMETHEUS_MULTIPROC_DIR`` when set, else a
    fresh private (0700) directory, set in the environment for the processes forked after this call and
    removed when the process that made it exits. Call it before prometheus_client is imported."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        return given
    made = tempfile.mkdtemp(prefix="movierec-prometheus-")  # mode 0700
    os.environ[MULTIPROC_ENV] = made
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # a forked worker that exits runs this too: only the maker removes it
            shutil.rmtree(made, ignore_errors=True)

    atexit.register(remove)
    return made


def mark_process_dead(pid: int) -> None:
    """Tell prometheus_client that an API worker process is gone (gunicorn's ``child_exit``)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def finished_by_status(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    """The job counter hash (``Keys.metrics_jobs``, ``<kind>\\t<status>`` -> count) summed over kinds."""
    totals: dict[str, int] = {}
    for field, count in raw.items():
        status = field.decode().rsplit(SEP, 1)[-1]
        totals[status] = totals.get(status, 0) + int(count)
    return totals


def cells(raw: Mapping[bytes, bytes]) -> dict[tuple[str, ...], float]:
    return {tuple(k.decode().split(SEP)): float(v) for k, v in raw.items()}


def histogram(cells: Mapping[tuple[str, ...], float], name: str, kinds: list[str]) -> tuple[list[Any], float]:
    """Cumulative buckets (``+Inf`` is the count) and the sum of ``name``'s cells over ``kinds``."""
    cumulative, buckets = 0.0, []
    for bound in JOB_BUCKETS:
        cumulative += sum(cells.get((kind, name, repr(bound)), 0.0) for kind in kinds)
        buckets.append((repr(bound), cumulative))
    count = sum(cells.get((kind, name, "count"), 0.0) for kind in kinds)
    total = sum(cells.get((kind, name, "sum"), 0.0) for kind in kinds)
    buckets.append(("+Inf", count))
    return buckets, total
