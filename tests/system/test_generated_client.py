"""A client generated from the live server's /openapi.json by openapi-python-client (issue #15) drives the session's
stack the way a user's generated client would: it submits a pipeline, polls it to the end and asks for
recommendations, through the generated functions and models only.

The client is generated here, from what ``GET /openapi.json`` answers, into a temporary package; nothing
generated is checked in, so the test follows the spec as the code makes it.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from cli.stack import Stack, free_port
from shared.infra.settings import Settings
from tests.helpers import answers, running

pytestmark = pytest.mark.system

PACKAGE = "movierec_client"


def _generate(spec: dict[str, Any], where: Path, package: str) -> Iterator[str]:
    """Generate ``package`` from ``spec`` under ``where``; its import name is on ``sys.path`` while the caller
    holds it."""
    (where / "openapi.json").write_text(json.dumps(spec))
    bin_dir = Path(sys.executable).parent
    generated = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", str(where / "openapi.json"),
         "--output-path", str(where / package), "--meta", "none"],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},  # its ruff post-hooks
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    # The spec generates cleanly: no operation or model skipped for something the generator cannot read.
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout + generated.stderr
    sys.path.insert(0, str(where))
    try:
        yield package
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def client_package(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Generate the client from the running server's spec."""
    spec = requests.get(f"{api_url}/openapi.json", timeout=10).json()
    yield from _generate(spec, tmp_path_factory.mktemp("generated"), PACKAGE)


ROLE_KEYS = {role: f"{role}-gen-" + role[0] * 20 for role in ("reader", "admin")}


@pytest.fixture(scope="module")
def keyed_api(settings: Settings, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``movierec api`` with a reader's and an admin's key."""
    entries = tuple(f"default:{role}:{key}" for role, key in ROLE_KEYS.items())
    port, log = free_port(), tmp_path_factory.mktemp("keyed-gen") / "api.log"
    command = [sys.executable, "-m", "cli.main", "api", "--port", str(port), "--workers", "1"]
    env = settings.model_copy(update={"api_keys": entries}).child_env()
    with running(command, log, env=env, ready=answers(f"http://127.0.0.1:{port}/healthz")):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def keyed_package(keyed_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The client generated from the keyed server's spec, which documents each operation's 401 and 403."""
    headers = {"Authorization": f"Bearer {ROLE_KEYS['reader']}"}
    spec = requests.get(f"{keyed_api}/openapi.json", headers=headers, timeout=10).json()
    yield from _generate(spec, tmp_path_factory.mktemp("generated-keyed"), f"{PACKAGE}_keyed")


def _module(package: str, name: str) -> ModuleType:
    return importlib.import_module(f"{package}.{name}")


def test_a_generated_client_runs_a_pipeline_and_gets_recommendations(client_package: str, api_url: str) -> None:
    client = _module(client_package, "client").Client(base_url=api_url, raise_on_unexpected_status=True)
    models = _module(client_package, "models")
    submit = _module(client_package, "api.pipelines.post_v1_pipelines")
    get_job = _module(client_package, "api.jobs.get_v1_jobs_job_id")
    recommend = _module(client_package, "api.recommendations.post_v1_recommendations")

    body = models.PipelineInPath(path="ml-latest-small", epochs=2, seed=11)
    with client as c:
        accepted = submit.sync_detailed(client=c, body=body)
        assert accepted.status_code == 202, accepted.content
        job: Any = accepted.parsed
        assert isinstance(job, models.JobOut)
        deadline = time.monotonic() + 600
        while str(job.status) not in {"succeeded", "failed", "cancelled"} and time.monotonic() < deadline:
            time.sleep(0.5)
            job = get_job.sync(client=c, job_id=job.id)
        # The error's message whole (pytest cuts a model's repr short): which stage failed, and its job's reason.
        assert str(job.status) == "succeeded", job.to_dict().get("error") or job

        query = models.RecommendInUserId(user_id=1, k=5)
        answered = recommend.sync_detailed(client=c, body=query, wait=30.0)
        assert answered.status_code == 200, answered.content
        result: Any = answered.parsed
        assert len(result.items) == 5
        assert all(isinstance(item.movie_id, int) and item.title for item in result.items)


def test_a_generated_client_carries_its_key_and_reads_a_403(keyed_package: str, keyed_api: str) -> None:
    """The generated client sends its token and parses a role's refusal into the error model: what it says is
    what the API said (the role needed), not an unexpected status."""
    package = importlib.import_module(f"{keyed_package}.client")
    models = _module(keyed_package, "models")
    delete = _module(keyed_package, "api.datasets.delete_v1_datasets_dataset_id")
    reader = package.AuthenticatedClient(base_url=keyed_api, token=ROLE_KEYS["reader"],
                                         raise_on_unexpected_status=True)  # fmt: skip
    with reader as c:
        refused = delete.sync_detailed(client=c, dataset_id="ds-no-such")
    assert refused.status_code == 403
    error: Any = refused.parsed
    assert isinstance(error, models.ErrorOut) and error.error.code == "forbidden"
    assert "needs the admin role" in error.error.message
    admin = package.AuthenticatedClient(base_url=keyed_api, token=ROLE_KEYS["admin"], raise_on_unexpected_status=True)
    with admin as c:
        assert delete.sync_detailed(client=c, dataset_id="ds-no-such").status_code == 404  # past the role check
