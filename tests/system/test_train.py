"""Training over HTTP on the GPU-queue worker: from a mined dataset to a model version with metrics."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import requests
from safetensors.numpy import load as load_safetensors

from tests.helpers import wait_job


def run(api_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{api_url}{path}", json=body, timeout=30)
    assert r.status_code == 202, r.text
    job = wait_job(api_url, r.json()["id"], timeout_s=300)
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def dataset(api_url: str) -> str:
    job = run(api_url, "/v1/datasets", {"path": "ml-latest-small"})
    return str(requests.get(f"{api_url}{job['result_url']}", timeout=10).json()["dataset"])


def test_train_stores_a_version_with_metrics(api_url: str, dataset: str, app: Any) -> None:
    run(api_url, "/v1/jobs/triplets", {"dataset": dataset})
    job = run(api_url, "/v1/jobs/train", {"dataset": dataset, "epochs": 2})
    record = requests.get(f"{api_url}{job['result_url']}", timeout=10).json()
    assert record["metrics"]["test_auc_after"] >= 0.95
    assert len(record["metrics"]["train_losses"]) == 2 and record["config"]["hidden_dim"] == 50
    assert record["encoder"]["identity"].startswith("53aa5117")
    r = requests.get(f"{api_url}{job['result_url']}", params={"format": "npy"}, timeout=30)
    projected = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert projected.shape == (9709, 50)

    weights = load_safetensors(app.extensions["movierec"].artifacts.get_bytes(record["artifacts"]["weights"]))
    assert weights["proj.weight"].shape == (50, 384)
    models = requests.get(f"{api_url}/v1/models", timeout=10).json()["models"]
    assert record["version"] in [m["version"] for m in models]

    again = run(api_url, "/v1/jobs/train", {"dataset": dataset, "epochs": 2})
    assert requests.get(f"{api_url}{again['result_url']}", timeout=10).json()["reused"] is True


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"dataset": "ds-nope"}, 404),
        ({"dataset": "x", "epochs": 0}, 400),
        ({"dataset": "x", "margin": 0}, 400),
        ({"dataset": "x", "lr": 5}, 400),
        ({"dataset": "x", "batch_size": 0}, 400),
        ({"dataset": "x", "unknown": 1}, 400),
    ],
)
def test_bad_requests(api_url: str, body: dict[str, Any], status: int) -> None:
    r = requests.post(f"{api_url}/v1/jobs/train", json=body, timeout=10)
    assert r.status_code == status and "error" in r.json()


def test_training_needs_triplets(api_url: str, dataset: str) -> None:
    r = requests.post(f"{api_url}/v1/jobs/train", json={"dataset": dataset, "triplets": "triplets/none"}, timeout=10)
    assert r.status_code == 409 and "mine them first" in r.json()["error"]["message"]
