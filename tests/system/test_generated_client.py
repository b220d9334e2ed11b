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

pytestmark = pytest.mark.system

PACKAGE = "movierec_client"


@pytest.fixture(scope="module")
def client_package(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Generate the client from the running server's spec; its import name is on ``sys.path`` while the module runs."""
    where = tmp_path_factory.mktemp("generated")
    spec = requests.get(f"{api_url}/openapi.json", timeout=10).json()
    (where / "openapi.json").write_text(json.dumps(spec))
    bin_dir = Path(sys.executable).parent
    generated = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", str(where / "openapi.json"),
         "--output-path", str(where / PACKAGE), "--meta", "none"],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},  # its ruff post-hooks
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    # The spec generates cleanly: no operation or model skipped for something the generator cannot read.
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout + generated.stderr
    sys.path.insert(0, str(where))
    try:
        yield PACKAGE
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


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
        assert str(job.status) == "succeeded", job

        query = models.RecommendInUserId(user_id=1, k=5)
        answered = recommend.sync_detailed(client=c, body=query, wait=30.0)
        assert answered.status_code == 200, answered.content
        result: Any = answered.parsed
        assert len(result.items) == 5
        assert all(isinstance(item.movie_id, int) and item.title for item in result.items)
