"""``schemathesis run <api>/openapi.json`` (every check: schemathesis' default) against a live stack with a finished
pipeline (issue #15).

The stack is the test's own (``movierec`` API under gunicorn, real CPU and GPU workers, the session's Redis under
a prefix of its own), since the fuzzer deletes, activates and uploads at will. A pipeline on a sample of
ml-latest-small (the ``sample`` fixture; recipe ``hybrid``: the fuzzer needs a model, not ``auto``'s validation
tuning) runs to the end first, so recommendations, similar movies, maps and results reach their found branches.
The command line is the one a user would type, run from the repository so it reads ``schemathesis.toml``; keys
are off, so the auth check is the one excluded. No ``--checks all``: a check named on the command line overrides
every per-operation setting of schemathesis.toml (GET /v1/jobs/{job_id} after a DELETE, which cancels).

The default suite sends a few cases per operation through the examples and the stateful phase (test_openapi_fuzz.py
runs coverage and fuzzing with every check in process); ``pytest -m fuzz_long tests/fuzz`` runs all four phases
here with ``MOVIEREC_FUZZ_EXAMPLES`` (default 100) cases and a fresh seed.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from shared.infra.settings import Settings
from tests.conftest import delete_prefix
from tests.helpers import new_stack, wait_job

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]


def _schemathesis(api: str, *, examples: int, seed: int, phases: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{api}/openapi.json",
        "--exclude-checks", "ignored_auth", "--phases", phases,
        "--max-examples", str(examples), "--seed", str(seed), "--no-color",
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3000, check=False)


@pytest.fixture
def live(settings: Settings, redis_client: redis.Redis, tmp_path: Path, sample: str) -> Iterator[str]:
    """The API of a stack of the test's own on a key prefix of its own, with a finished pipeline; the prefix is
    deleted once the stack has stopped."""
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-live-{uuid.uuid4().hex[:6]}"})
    try:
        with new_stack(own, tmp_path / "stack") as stack:
            body = {"path": sample, "recipe": "hybrid", "epochs": 2}
            r = requests.post(f"{stack.api_url}/v1/pipelines", json=body, timeout=10)
            assert r.status_code == 202, r.text
            assert wait_job(stack.api_url, r.json()["id"], timeout_s=600)["status"] == "succeeded"
            yield stack.api_url
    finally:
        delete_prefix(redis_client, own.key_prefix)


def _assert_clean(run: subprocess.CompletedProcess[str]) -> None:
    print(run.stdout[-6000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-4000:]


def test_schemathesis_finds_nothing_against_a_live_stack(live: str) -> None:
    # The examples and the stateful chains here; coverage and fuzzing with every check run in process by
    # test_openapi_fuzz.py, and here in the long run.
    _assert_clean(_schemathesis(live, examples=5, seed=1, phases="examples,stateful"))


@pytest.mark.fuzz_long
@pytest.mark.timeout(3600)
def test_schemathesis_finds_nothing_against_a_live_stack_long(live: str) -> None:
    examples = int(os.environ.get("MOVIEREC_FUZZ_EXAMPLES", "100"))
    seed = random.randrange(1 << 30)
    phases = "examples,coverage,fuzzing,stateful"
    _assert_clean(_schemathesis(live, examples=examples, seed=seed, phases=phases))
