"""Sharded mining end to end: HTTP, the cpu worker's two processes, shard tasks, the join."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import requests

from shared.logic.mining import TripletSpec, load_incidence
from shared.ml.mining import mine_range
from tests.helpers import wait_job


def post(api_url: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{api_url}{path}", json=body, timeout=10)


def finish(api_url: str, response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    return wait_job(api_url, job_id)


@pytest.fixture(scope="module")
def dataset(api_url: str) -> str:
    done = finish(api_url, post(api_url, "/v1/datasets", {"path": "ml-latest-small"}))
    return str(requests.get(f"{api_url}{done['result_url']}", timeout=10).json()["dataset"])


def npy(api_url: str, job: dict[str, Any]) -> np.ndarray:
    r = requests.get(f"{api_url}{job['result_url']}", params={"format": "npy"}, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
    array: np.ndarray = np.load(io.BytesIO(r.content), allow_pickle=False)
    return array


def test_shard_sizes_and_process_counts_give_identical_bytes(api_url: str, app: Any, dataset: str) -> None:
    store = app.extensions["movierec"].artifacts
    spec = TripletSpec(dataset=dataset, seed=42, strategy="uniform-min")
    arrays = {}
    for shard_size in (100, 777, 5000):
        store.delete(spec.name)  # force mining again rather than answering the stored array
        job = finish(api_url, post(api_url, "/v1/jobs/triplets", {"dataset": dataset, "shard_size": shard_size}))
        assert job["status"] == "succeeded", job
        summary = requests.get(f"{api_url}{job['result_url']}", timeout=10).json()
        assert summary["count"] == 9709 and summary["strategy"] == "uniform-min" and summary["seed"] == 42
        assert len(summary["shards"]) == -(-9709 // shard_size)
        assert [s["anchors"][0] for s in summary["shards"]] == list(range(0, 9709, shard_size))
        arrays[shard_size] = npy(api_url, job)
    first = arrays[100]
    assert first.dtype == np.int32 and first.shape == (9709, 3)
    assert all(a.tobytes() == first.tobytes() for a in arrays.values())

    # One process, in this test, gives the same bytes as the worker's two processes.
    inc = load_incidence(store, dataset)
    rows = mine_range(inc, 0, inc.n, seed=42, strategy="uniform-min").triplets
    movie_ids = store.get_array(f"dataset/{dataset}/movie_ids")
    assert movie_ids[rows].astype(np.int32).tobytes() == first.tobytes()
    assert (first[:, 0] == movie_ids).all()  # anchors in catalogue order


def test_same_request_again_is_answered_from_the_stored_array(api_url: str, dataset: str) -> None:
    body = {"dataset": dataset, "negatives": "notebook", "seed": 3}
    first = finish(api_url, post(api_url, "/v1/jobs/triplets", body))
    again = finish(api_url, post(api_url, "/v1/jobs/triplets", {**body, "shard_size": 300}))
    assert again["status"] == "succeeded" and again["message"] == "triplets already mined"
    assert npy(api_url, again).tobytes() == npy(api_url, first).tobytes()


def test_a_failing_shard_fails_the_job_and_names_the_shard(api_url: str, app: Any) -> None:
    datasets = app.extensions["movierec"].datasets
    datasets.put({"id": "ds-without-arrays", "counts": {"movies": 250}})  # a record whose arrays are gone
    job = finish(api_url, post(api_url, "/v1/jobs/triplets", {"dataset": "ds-without-arrays", "shard_size": 100}))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "not_found"
    assert job["error"]["message"].startswith("shard ")
    assert job["error"]["details"]["where"] in {"shard 0-100", "shard 100-200", "shard 200-250"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"dataset": "ds-nope"}, 404),
        ({"dataset": "x", "shard_size": 5}, 400),
        ({"dataset": "x", "negatives": "hardest"}, 400),
        ({"dataset": "x", "seed": -1}, 400),
        ({"dataset": "x", "extra": 1}, 400),
        ({}, 400),
    ],
)
def test_bad_requests_are_refused(api_url: str, body: dict[str, Any], status: int) -> None:
    r = post(api_url, "/v1/jobs/triplets", body)
    assert r.status_code == status and "error" in r.json()
