"""Encoding over HTTP with the GPU-queue worker (on the CPU here) and the bundled real model."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import requests

from tests.helpers import wait_job


def run(api_url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{api_url}/v1/jobs/encode", json=body, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_job(api_url, job_id, timeout_s=300)
    assert job["status"] == "succeeded", job
    return job


def result(api_url: str, job: dict[str, Any], fmt: str = "json") -> Any:
    r = requests.get(f"{api_url}{job['result_url']}", params={"format": fmt}, timeout=60)
    assert r.status_code == 200
    return np.load(io.BytesIO(r.content), allow_pickle=False) if fmt == "npy" else r.json()


@pytest.fixture(scope="module")
def dataset(api_url: str) -> str:
    r = requests.post(f"{api_url}/v1/datasets", json={"path": "ml-latest-small"}, timeout=10)
    job = wait_job(api_url, r.json()["id"])
    return str(requests.get(f"{api_url}{job['result_url']}", timeout=10).json()["dataset"])


def test_dataset_encoding_and_the_cache(api_url: str, dataset: str) -> None:
    job = run(api_url, {"dataset": dataset})
    summary = result(api_url, job)
    assert summary["model"] == "all-MiniLM-L6-v2" and summary["pooling"] == "cls" and summary["dim"] == 384
    assert summary["count"] == 9709 and summary["descriptor_strings"] == 24_884 and summary["unique"] == 1_218
    matrix = result(api_url, job, "npy")
    assert matrix.dtype == np.float32 and matrix.shape == (9709, 384)

    movies = requests.get(f"{api_url}/v1/datasets/{dataset}/movies", params={"limit": 2}, timeout=10).json()
    assert movies["total"] == 9709 and movies["movies"][0]["title"] == "Toy Story (1995)"
    descriptors = movies["movies"][0]["descriptors"]
    vectors = result(api_url, run(api_url, {"texts": descriptors}), "npy")
    np.testing.assert_allclose(matrix[0], vectors.mean(axis=0), rtol=1e-5, atol=1e-6)  # a movie is its mean

    again = result(api_url, run(api_url, {"dataset": dataset}))
    assert (again["encoded"], again["cache_hits"], again["forward_passes"]) == (0, 1_218, 0)


def test_texts_and_items(api_url: str) -> None:
    texts = ["Children", "family", "animation", "war", "violence", "drama"]
    job = run(api_url, {"texts": texts, "pooling": "mean"})
    body = result(api_url, job)
    assert set(body) >= {"model", "pooling", "dim", "vectors"} and body["pooling"] == "mean"
    vectors = np.array(body["vectors"], dtype=np.float32)
    assert vectors.shape == (6, 384)
    np.testing.assert_array_equal(vectors, result(api_url, job, "npy"))

    items = run(api_url, {"items": [texts[:3], texts[3:]], "pooling": "mean"})
    means = result(api_url, items, "npy")
    np.testing.assert_allclose(means, np.stack([vectors[:3].mean(0), vectors[3:].mean(0)]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"texts": []}, 400),
        ({"texts": ["ok", 3]}, 400),
        ({"texts": [""]}, 400),
        ({"texts": ["x" * 1001]}, 400),
        ({"texts": ["x"] * 5001}, 400),
        ({"items": [[]]}, 400),
        ({"texts": ["a"], "items": [["b"]]}, 400),
        ({}, 400),
        ({"texts": ["a"], "pooling": "max"}, 400),
        ({"texts": ["a"], "model": "/etc"}, 400),
        ({"dataset": "ds-nope"}, 404),
    ],
)
def test_bad_requests(api_url: str, body: dict[str, Any], status: int) -> None:
    r = requests.post(f"{api_url}/v1/jobs/encode", json=body, timeout=10)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_a_model_that_cannot_load_fails_the_job_with_a_reason(api_url: str) -> None:
    r = requests.post(f"{api_url}/v1/jobs/encode", json={"texts": ["a"], "model": "./no-such-model"}, timeout=10)
    job = wait_job(api_url, r.json()["id"])
    assert job["status"] == "failed", job
    # Named as the client gave it, never the worker's or the API's absolute path (issue #14, finding 6).
    message = job["error"]["message"]
    assert message == "model './no-such-model' could not be loaded here: it is not a directory under the data root"


def test_movie_paging_is_validated(api_url: str, dataset: str) -> None:
    url = f"{api_url}/v1/datasets/{dataset}/movies"
    page = requests.get(url, params={"offset": 9700, "limit": 50}, timeout=10).json()
    assert len(page["movies"]) == 9 and page["offset"] == 9700
    assert requests.get(url, params={"limit": 0}, timeout=10).status_code == 400
    assert requests.get(f"{api_url}/v1/datasets/ds-nope/movies", timeout=10).status_code == 404
