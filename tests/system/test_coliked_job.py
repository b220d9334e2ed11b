"""A mining job with ``source: ratings`` end to end: HTTP, the cpu worker's processes, shards, the join."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests

from shared.infra.keys import dataset_artifact
from shared.logic.mining import TripletSpec, load_likes
from shared.ml.coliked import mine_range
from tests.system.test_triplets import finish, npy, post

RATINGS = {"source": "ratings", "positives": 3, "liked_at": 4.5, "seed": 5}


@pytest.fixture(scope="module")
def dataset(api_url: str) -> str:
    done = finish(api_url, post(api_url, "/v1/datasets", {"path": "ml-latest-small"}))
    return str(requests.get(f"{api_url}{done['result_url']}", timeout=10).json()["dataset"])


def test_a_ratings_job_gives_the_pure_functions_bytes_whatever_the_shards(api_url: str, app: Any, dataset: str) -> None:
    store = app.extensions["movierec"].artifacts
    spec = TripletSpec(dataset=dataset, seed=5, source="ratings", positives=3, liked_at=4.5)
    arrays = {}
    for shard_size in (777, 5000):
        store.delete(spec.name)  # force mining again rather than answering the stored array
        body = {"dataset": dataset, "shard_size": shard_size, **RATINGS}
        job = finish(api_url, post(api_url, "/v1/jobs/triplets", body))
        assert job["status"] == "succeeded", job
        summary = requests.get(f"{api_url}{job['result_url']}", timeout=10).json()
        assert summary["triplets"] == spec.name == f"triplets/{dataset}/coliked-p3-l4.5-a0.75-5"
        assert (summary["source"], summary["positives"], summary["liked_at"]) == ("ratings", 3, 4.5)
        assert [s["anchors"][0] for s in summary["shards"]] == list(range(0, 9709, shard_size))
        assert summary["count"] == sum(s["triplets"] for s in summary["shards"])
        arrays[shard_size] = npy(api_url, job)
        assert summary["count"] == len(arrays[shard_size])
    first = arrays[777]
    assert first.dtype == np.int32 and first.shape[1] == 3 and 9709 < len(first) <= 3 * 9709
    assert arrays[5000].tobytes() == first.tobytes()

    # One process, in this test, gives the same bytes as the worker's processes.
    likes = load_likes(store, dataset, 4.5)
    rows = mine_range(likes, 0, likes.n, seed=5, positives=3).triplets
    movie_ids = store.get_array(dataset_artifact(dataset, "movie_ids"))
    assert movie_ids[rows].astype(np.int32).tobytes() == first.tobytes()

    # Asked again: answered from the stored array, with its true count.
    again = finish(api_url, post(api_url, "/v1/jobs/triplets", {"dataset": dataset, "shard_size": 300, **RATINGS}))
    assert again["status"] == "succeeded" and again["message"] == "triplets already mined"
    reused = requests.get(f"{api_url}{again['result_url']}", timeout=10).json()
    assert reused["reused"] is True and reused["count"] == len(first) and reused["source"] == "ratings"


def test_descriptor_jobs_still_name_and_count_as_before(api_url: str, dataset: str) -> None:
    body = {"dataset": dataset, "seed": 77}
    first = finish(api_url, post(api_url, "/v1/jobs/triplets", body))
    again = finish(api_url, post(api_url, "/v1/jobs/triplets", {**body, "source": "descriptors", "positives": 9}))
    for job in (first, again):
        summary = requests.get(f"{api_url}{job['result_url']}", timeout=10).json()
        assert summary["triplets"] == f"triplets/{dataset}/uniform-min-77"
        assert summary["count"] == 9709 and summary["strategy"] == "uniform-min"
    assert again["message"] == "triplets already mined"


@pytest.mark.parametrize(
    "extra",
    [{"source": "clicks"}, {"positives": 0}, {"positives": 51}, {"liked_at": 0.4}, {"liked_at": 5.5}],
)
def test_bad_ratings_parameters_are_refused(api_url: str, extra: dict[str, Any]) -> None:
    r = post(api_url, "/v1/jobs/triplets", {"dataset": "x", **extra})
    assert r.status_code == 400 and "error" in r.json()
