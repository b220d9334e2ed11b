"""From a mined, encoded, trained and indexed model to recommendations over HTTP; activation and rollback."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from tests.conftest import SMALL
from tests.helpers import wait_job, wait_until


def run(api_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{api_url}{path}", json=body, timeout=30)
    assert r.status_code == 202, r.text
    job = wait_job(api_url, r.json()["id"], timeout_s=300)
    assert job["status"] == "succeeded", job
    return dict(requests.get(f"{api_url}{job['result_url']}", timeout=30).json())


@pytest.fixture(scope="module")
def versions(api_url: str) -> list[str]:
    """Two trained, indexed versions of ml-latest-small (seeds 1 and 2), the first one active."""
    dataset = run(api_url, "/v1/datasets", {"path": "ml-latest-small"})["dataset"]
    run(api_url, "/v1/jobs/triplets", {"dataset": dataset})
    made = []
    for seed in (1, 2):
        version = run(api_url, "/v1/jobs/train", {"dataset": dataset, "epochs": 1, "seed": seed})["version"]
        run(api_url, "/v1/jobs/index", {"version": version})
        made.append(version)
    r = requests.post(f"{api_url}/v1/models/{made[0]}/activate", timeout=10)
    assert r.status_code == 200 and r.json()["active"] == made[0]
    return made


def recommend(api_url: str, body: dict[str, Any], wait: float = 30) -> requests.Response:
    return requests.post(f"{api_url}/v1/recommendations", params={"wait": wait}, json=body, timeout=60)


def test_user_recommendations_exclude_what_they_rated(api_url: str, versions: list[str]) -> None:
    import pandas as pd

    r = recommend(api_url, {"user_id": 1, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == versions[0] and body["query"] == {"user_id": 1}
    assert len(body["items"]) == 10
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    ratings = pd.read_csv(SMALL / "ratings.csv")
    seen = set(ratings[ratings.userId == 1].movieId)
    assert not seen & {i["movie_id"] for i in body["items"]}
    assert len(body["top_descriptors"]) <= 10 and body["history_top_descriptors"]
    unfiltered = recommend(api_url, {"user_id": 1, "k": 10, "exclude_seen": False}).json()
    assert unfiltered["items"][0]["score"] >= body["items"][0]["score"]  # a wider choice is never worse


def test_keywords_examples_and_genres(api_url: str, versions: list[str]) -> None:
    kids = recommend(api_url, {"keywords": ["Children", "family", "animation"], "k": 5}).json()
    assert len(kids["items"]) == 5
    liked = recommend(api_url, {"liked": [1, 2355], "disliked": [296], "k": 5}).json()  # Toy Story, A Bug's Life
    assert not {1, 2355, 296} & {i["movie_id"] for i in liked["items"]}
    westerns = recommend(api_url, {"user_id": 2, "k": 7, "genres": ["Western"]}).json()
    assert westerns["items"] and all("Western" in i["descriptors"] for i in westerns["items"])
    few = recommend(api_url, {"user_id": 2, "k": 100, "genres": ["IMAX", "Film-Noir"]}).json()
    assert 0 < len(few["items"]) <= 100


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"user_id": 999_999}, 404),
        ({"liked": [99_999_999]}, 404),
        ({"keywords": []}, 400),
        ({"keywords": ["x"] * 21}, 400),
        ({"user_id": 1, "keywords": ["war"]}, 400),
        ({}, 400),
        ({"user_id": 1, "k": 0}, 400),
        ({"user_id": 1, "k": 101}, 400),
    ],
)
def test_bad_requests(api_url: str, versions: list[str], body: dict[str, Any], status: int) -> None:
    r = recommend(api_url, body)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_wait_zero_answers_202_with_the_job(api_url: str, versions: list[str]) -> None:
    r = requests.post(f"{api_url}/v1/recommendations", json={"user_id": 3}, timeout=10)
    assert r.status_code == 202 and r.json()["kind"] == "recommend"
    assert requests.post(f"{api_url}/v1/recommendations?wait=31", json={"user_id": 3}, timeout=10).status_code == 400


def test_hot_swap_while_serving(api_url: str, versions: list[str]) -> None:
    failures: list[str] = []
    seen_models: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = recommend(api_url, {"user_id": 5, "k": 5})
            if r.status_code != 200:
                failures.append(r.text)
            else:
                seen_models.add(r.json()["model"])

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for v in (versions[1], versions[0], versions[1]):  # activate, roll back, activate again
        r = requests.post(f"{api_url}/v1/models/{v}/activate", timeout=10)
        assert r.status_code == 200

        def served(version: str = v) -> bool:
            return version in seen_models

        wait_until(served, timeout_s=60, failure=f"{v} never answered")  # until the version just activated answers
    stop.set()
    for t in threads:
        t.join()
    assert not failures and seen_models == set(versions)
    models = requests.get(f"{api_url}/v1/models", timeout=10).json()
    assert models["active"] == versions[1]


def test_activation_errors(api_url: str, versions: list[str]) -> None:
    assert requests.post(f"{api_url}/v1/models/m-nope/activate", timeout=10).status_code == 404


def test_cli_recommend(api_url: str, versions: list[str]) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cli.main", "recommend", *args, "--api", api_url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)

    done = cli("--keywords", "war,violence,drama", "--k", "3")
    assert done.returncode == 0, done.stderr
    assert "recommendations for keywords ['war', 'violence', 'drama']" in done.stdout
    assert done.stdout.count("\n  0.") == 3
    assert cli("--user", "1").returncode == 0
    missing = cli("--user", "999999")
    assert missing.returncode == 1 and "404 not_found" in missing.stderr
