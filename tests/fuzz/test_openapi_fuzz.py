"""Schemathesis against the app's own /openapi.json with every check it has: the spec says what the server does.

The app runs in process (not in TESTING mode, so an exception is a 500 as in production) on the session's real
Redis (tests/conftest.py), under a key prefix of its own that no worker consumes, with API keys on, behind a real
HTTP server on a local port: schemathesis' ``ignored_auth`` check re-sends requests with options that its WSGI
transport hands to werkzeug's test client, which refuses them. Heartbeats are written while it serves, as live
workers write them, so /readyz answers 200.

Schemathesis' own engine tests it, as ``schemathesis run <api>/openapi.json`` does, reading the same
``schemathesis.toml`` (each setting there says why it departs from the defaults): every check (``ignored_auth``
only where the app has keys), over the examples, coverage and fuzzing phases. Among the checks, beyond "no 5xx"
and "each answer as documented": a request valid by the spec is not refused (positive_data_acceptance), one
invalid by it is (negative_data_rejection), ``Allow`` lists exactly a path's methods (allow_header_conformance),
and a request without a key gets 401 (ignored_auth). Random ids only ever reach the 404 branch, so the operations
with ids in their path run again with ids that exist: a dataset ingested from ml-latest-small, jobs queued,
succeeded (with a JSON and with an array result) and failed, a model version.

Every request is counted; the default run sends at least ``MIN_REQUESTS`` with deterministic generation (the same
cases each run, so a failure reproduces). ``pytest -m fuzz_long tests/fuzz`` adds the stateful phase (operations
chained by their links: a job created, read, cancelled, read again) and sends many more cases with fresh seeds
(``MOVIEREC_FUZZ_EXAMPLES`` per operation and phase, default 500).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.filters import FilterSet
from schemathesis.schemas import BaseSchema
from werkzeug.serving import make_server

from shared.jobs.kinds import QUEUES
from shared.logic.ingest import DatasetOptions, ingest
from shared.logic.services import HEARTBEAT_TTL_S
from tests.fuzz.conftest import AUTH, Seeded

MIN_REQUESTS = 1000
EXAMPLES = 30
"""Cases per operation and phase in the default run (the coverage phase sends what it needs on top)."""
LONG_EXAMPLES = int(os.environ.get("MOVIEREC_FUZZ_EXAMPLES", "500"))
CONFIG = Path(__file__).resolve().parents[2] / "schemathesis.toml"
PHASES = ["examples", "coverage", "fuzzing"]
AUTH_CHECK = "ignored_auth"
"""The one check that needs API keys on: without keys a request without one is rightly answered."""


@dataclass
class Tally:
    """What the run sent and got: requests by (operation, pass, status), and the first failure of each check."""

    sent: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def report(self) -> str:
        lines = [f"{n:5d}  {op} [{label}] -> {status}" for (op, label, status), n in sorted(self.sent.items())]
        return "\n".join([f"{self.total} requests", *lines])


@contextmanager
def served(app: Any) -> Iterator[str]:
    """The app behind a threaded HTTP server on a free local port, with worker heartbeats while it serves."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    stop = threading.Event()
    svc = app.extensions["movierec"]

    def beat() -> None:
        while not stop.wait(HEARTBEAT_TTL_S / 3):
            for queue in QUEUES:
                svc.beat(f"fuzz-{queue}", [queue])

    threads = [threading.Thread(target=server.serve_forever, daemon=True), threading.Thread(target=beat, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        stop.set()
        server.shutdown()
        for thread in threads:
            thread.join()


def _schema(
    url: str,
    app: Any,
    *,
    phases: list[str],
    examples: int,
    deterministic: bool,
    parameters: dict[str, Any] | None = None,
    include: str | None = None,
    exclude: str | None = None,
) -> BaseSchema:
    """The app's spec with the checks, phases and generation settings of a pass, over the operations whose path
    matches ``include`` and not ``exclude``."""
    config = SchemathesisConfig.from_path(CONFIG)
    config.cache.enabled = False  # no replay of an earlier run's cases (.schemathesis/): every run is the same
    schema: BaseSchema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH, config=config)
    # As the CLI selects operations: schema.include() would OR its filter with the one the loader built from the
    # config's [[operations]] sections, which matches every operation.
    selected, left_out = FilterSet(), FilterSet()
    if include is not None:
        selected.include(path_regex=include)
    if exclude is not None:
        left_out.include(path_regex=exclude)
    schema.filter_set = schema.config.operations.filter_set_with(include=selected, exclude=left_out)
    schema.config.update(headers=AUTH, parameters=parameters)
    # Schemathesis 4 turns every check on by default, which is what --checks all asks for; asking for "all" here
    # would also override the [[operations]] sections that turn one off for one operation.
    load_all_checks()
    if not app.extensions["movierec.keys"].enabled:
        schema.config.checks.update(excluded_check_names=[AUTH_CHECK])
    off = {name for name in CHECKS.get_all_names() if not schema.config.checks.get_by_name(name=name).enabled}
    assert off <= {AUTH_CHECK}, off
    schema.config.phases.update(phases=phases)
    schema.config.generation.update(max_examples=examples, deterministic=deterministic)
    return schema


def _run(schema: BaseSchema, tally: Tally, label: str) -> None:
    """Run schemathesis' engine over ``schema``, counting each answer and keeping each check's first failure."""
    started, before = time.monotonic(), tally.total
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    tally.sent[(recorder.label, label, interaction.response.status_code)] += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        tally.failures.setdefault(
                            f"{check.name}: {recorder.label} [{label}]",
                            f"{failure.title}\n{check.failure_info.code_sample[:2000]}\n{failure.message}",
                        )
        elif isinstance(event, events.NonFatalError):
            tally.errors.append(f"{event.label} [{label}]: {event.info.format()[:4000]}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    print(f"fuzz [{label}]: {tally.total - before} requests in {time.monotonic() - started:.1f} s")


def fuzz(app: Any, seeded: Seeded, *, examples: int, deterministic: bool, stateful: bool = False) -> Tally:
    tally = Tally()
    with served(app) as url:
        phases = [*PHASES, "stateful"] if stateful else PHASES
        # Activation comes after every recommendation case: with an active model, a recommendation waits ?wait
        # seconds for a worker. Schemathesis reuses ids from earlier answers (GET /v1/models lists the seeded
        # version), so activation is left out of the first pass, not only given unknown ids.
        everything = _schema(
            url, app, phases=phases, examples=examples, deterministic=deterministic, exclude="/activate$"
        )
        _run(everything, tally, "all")
        # Existing ids, so the answers of the found branch are checked too.
        known = {"dataset_id": [seeded.dataset], "job_id": list(seeded.jobs), "version": [seeded.model]}
        for name, values in known.items():
            for value in values:
                schema = _schema(
                    url,
                    app,
                    phases=PHASES,
                    examples=max(5, examples // 3),
                    deterministic=deterministic,
                    parameters={name: value},
                    include=rf"\{{{name}\}}",
                )
                _run(schema, tally, f"{name}={value}")
        # Title search is answered in process, so it runs again with a model active (the seeded version, over the
        # seeded dataset) to reach its found branch; similar movies would only queue jobs that no worker runs.
        svc = app.extensions["movierec"]
        if svc.datasets.get(seeded.dataset) is None:  # a fuzzed DELETE of the known dataset took it: ingest it again
            root = svc.settings.data_root / "ml-latest-small"
            options = DatasetOptions(tags_per_movie=5)
            ingest(svc.datasets, root, options, source="ml-latest-small", progress=lambda *_: None)
        if svc.models.get(seeded.model) is None:  # ... and its model with it, or a DELETE of the model
            record = {"version": seeded.model, "dataset": seeded.dataset, "metrics": {}, "index": {"name": "fuzz"}}
            svc.models.put(record)
        svc.models.activate(seeded.model)
        movies = _schema(
            url, app, phases=PHASES, examples=examples, deterministic=deterministic, include="^/v1/movies$"
        )
        _run(movies, tally, "active model")
    return tally


def _assert_clean(tally: Tally, started: float) -> None:
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {tally.total} requests in {elapsed:.1f} s\n{tally.report()}")
    assert not tally.errors, "\n\n".join(tally.errors)
    assert not tally.failures, "\n\n".join(f"== {name}\n{text}" for name, text in tally.failures.items())
    assert tally.total >= MIN_REQUESTS, tally.report()
    statuses = {status for (_, _, status) in tally.sent}
    assert not {s for s in statuses if s >= 500}
    assert {200, 202, 400, 401, 404, 409} <= statuses, statuses  # the cases reached past validation


def test_fuzz_openapi(fuzz_app: tuple[Any, Seeded]) -> None:
    app, seeded = fuzz_app
    started = time.monotonic()
    _assert_clean(fuzz(app, seeded, examples=EXAMPLES, deterministic=True), started)


@pytest.mark.fuzz_long
@pytest.mark.timeout(3600)
def test_fuzz_openapi_long(fuzz_app: tuple[Any, Seeded]) -> None:
    app, seeded = fuzz_app
    started = time.monotonic()
    _assert_clean(fuzz(app, seeded, examples=LONG_EXAMPLES, deterministic=False, stateful=True), started)
