"""Schemathesis against the app's own /openapi.json: no 5xx, and every answer is what the spec says.

The app runs in process (WSGI, not in TESTING mode, so an exception is a 500 as in production) on the
session's real Redis (tests/conftest.py), under a key prefix of its own that no worker consumes, with API
keys on, so every request also passes the key check. Each operation gets generated cases of two kinds:

    positive (valid by the spec)     a 2xx, or a documented 4xx (an id that does not exist, a path outside
                                     the data root, no active model, ...)
    negative (invalid by the spec)   a documented 4xx, never a 5xx

and each answer goes through schemathesis' not_a_server_error, status_code_conformance,
content_type_conformance and response_schema_conformance. Random ids only ever reach the 404 branch, so
the operations with ids in their path run again with ids that exist: a dataset ingested from
ml-latest-small, jobs queued, succeeded (with a JSON and with an array result) and failed, a model version.

Every request is counted; the default run sends at least ``MIN_REQUESTS`` with a fixed seed (the same
cases each run, so a failure reproduces). ``pytest -m fuzz_long tests/fuzz`` sends many more with fresh
seeds (``MOVIEREC_FUZZ_EXAMPLES`` cases per operation and mode, default 500).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.store.datasets import DatasetOptions
from tests.fuzz.conftest import AUTH, Seeded

MIN_REQUESTS = 1000
EXAMPLES = 30
"""Cases per operation and mode in the default run; path-only operations have no negative mode."""
LONG_EXAMPLES = int(os.environ.get("MOVIEREC_FUZZ_EXAMPLES", "500"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class Tally:
    """What the run sent and got: requests by (operation, mode, status), and the failures by case."""

    sent: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def report(self) -> str:
        lines = [f"{n:5d}  {op} [{mode}] -> {status}" for (op, mode, status), n in sorted(self.sent.items())]
        return "\n".join([f"{self.total} requests", *lines])


def _run_operation(
    operation: Any,
    mode: GenerationMode,
    tally: Tally,
    *,
    examples: int,
    derandomize: bool,
    path_parameters: dict[str, Any] | None = None,
    label: str = "",
) -> None:
    name = f"{operation.label} [{mode.value}{label}]"
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=examples,
        derandomize=derandomize,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def check(case: Case[Any]) -> None:
        response = case.call(headers=AUTH)
        tally.sent[(operation.label, mode.value + label, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        check()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        tally.skipped.append(name)  # nothing to negate: its only parameter is a free string in the path
    except (Exception, FailureGroup) as exc:  # collected, so one run reports every operation that fails
        parts = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
        tally.failures[name] = "\n".join(f"{type(e).__name__}: {e}" for e in parts)[:4000]


def fuzz(app: Any, seeded: Seeded, *, examples: int, derandomize: bool) -> Tally:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=AUTH)
    tally = Tally()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run_operation(operation, mode, tally, examples=examples, derandomize=derandomize)
    # Existing ids, so the answers of the found branch are checked too. Activation comes after every
    # recommendation case: with an active model, a recommendation would wait ?wait seconds for a worker.
    known: dict[str, list[dict[str, Any]]] = {
        "dataset_id": [{"dataset_id": seeded.dataset}],
        "job_id": [{"job_id": j} for j in seeded.jobs],
        "version": [{"version": seeded.model}],
    }
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        for name in sorted(names & set(known)):
            for values in known[name]:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    _run_operation(
                        operation,
                        mode,
                        tally,
                        examples=max(5, examples // 3),
                        derandomize=derandomize,
                        path_parameters=values,
                        label=", known id",
                    )
    # Title search is answered in process, so it runs again with a model active (the seeded version, over the
    # seeded dataset) to reach its found branch; similar movies would only queue jobs that no worker runs.
    svc = app.extensions["movierec"]
    if svc.datasets.get(seeded.dataset) is None:  # a fuzzed DELETE of the known dataset took it: ingest it again
        root = svc.settings.data_root / "ml-latest-small"
        svc.datasets.ingest(root, DatasetOptions(tags_per_movie=5), source="ml-latest-small", progress=lambda *_: None)
    if svc.models.get(seeded.model) is None:  # ... and its model with it, or a DELETE of the model
        svc.models.put({"version": seeded.model, "dataset": seeded.dataset, "metrics": {}, "index": {"name": "fuzz"}})
    svc.models.activate(seeded.model)
    for operation in operations:
        if operation.label == "GET /v1/movies":
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _run_operation(
                    operation, mode, tally, examples=examples, derandomize=derandomize, label=", active model"
                )
    return tally


def _assert_clean(tally: Tally, started: float) -> None:
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {tally.total} requests in {elapsed:.1f} s\n{tally.report()}")
    print("nothing to negate:", ", ".join(tally.skipped))
    assert not tally.failures, "\n\n".join(f"== {name}\n{text}" for name, text in tally.failures.items())
    assert tally.total >= MIN_REQUESTS, tally.report()
    statuses = {status for (_, _, status) in tally.sent}
    assert not {s for s in statuses if s >= 500}
    assert {200, 202, 400, 401, 404, 409} <= statuses, statuses  # the cases reached past validation


def test_fuzz_openapi(fuzz_app: tuple[Any, Seeded]) -> None:
    app, seeded = fuzz_app
    started = time.monotonic()
    _assert_clean(fuzz(app, seeded, examples=EXAMPLES, derandomize=True), started)


@pytest.mark.fuzz_long
@pytest.mark.timeout(3600)
def test_fuzz_openapi_long(fuzz_app: tuple[Any, Seeded]) -> None:
    app, seeded = fuzz_app
    started = time.monotonic()
    _assert_clean(fuzz(app, seeded, examples=LONG_EXAMPLES, derandomize=False), started)
