"""The one-job pipeline over HTTP: every stage as a child job, the model activated, reruns answered from store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from shared.logic.evaluation import objective
from shared.ml.recipes import AUTO_RECIPES, FALLBACK_RECIPE
from tests.helpers import SAMPLE, wait_job


def submit(api_url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{api_url}/v1/pipelines", json=body, timeout=10)
    assert r.status_code == 202, r.text
    return wait_job(api_url, r.json()["id"], timeout_s=600)


def model_record(api_url: str, version: str) -> dict[str, Any]:
    models = requests.get(f"{api_url}/v1/models", timeout=10).json()["models"]
    record: dict[str, Any] = next(m for m in models if m["version"] == version)
    return record


def test_pipeline_from_path_to_recommendations(api_url: str, sample: str) -> None:
    """The default recipe, auto: the recipe and its setting chosen on a validation split of the dataset, the
    winner trained on all of it, the model saying what it chose and why. (On a sample of ml-latest-small: the
    demo's test runs auto on the whole of it.)"""
    job = submit(api_url, {"path": sample, "epochs": 2, "seed": 11})
    assert job["status"] == "succeeded", job
    result = requests.get(f"{api_url}{job['result_url']}", timeout=10).json()
    assert set(result["stage_jobs"]) == {"ingest", "choose", "mine", "encode", "train", "index"}
    assert result["recipe"] in AUTO_RECIPES and "scored the best validation objective" in result["chosen"]["why"]
    table = requests.get(f"{api_url}/v1/jobs/{result['chosen']['job']}/result", timeout=10).json()
    assert {r["family"] for r in table["rows"]} == set(AUTO_RECIPES) and table["new_users"]
    assert table["training_dataset"] != result["dataset"]  # the validation split's training part, not the data
    scores = {r["name"]: objective(r, table["users"]) for r in table["rows"]}
    best = max(scores, key=lambda name: scores[name] or -1.0)
    row = next(r for r in table["rows"] if r["name"] == best)
    assert (row["family"], row["params"]) == (result["recipe"], result["chosen"]["setting"])  # dicts: any order
    record = model_record(api_url, result["model"])
    assert record["chosen"]["recipe"] == result["recipe"] and record["chosen"]["grid"][0]["name"] == best
    assert record["config"]["epochs"] == 2  # the client's value, over the chosen recipe's
    assert requests.get(f"{api_url}/v1/models", timeout=10).json()["active"] == result["model"]
    for stage_job in result["stage_jobs"].values():
        assert requests.get(f"{api_url}/v1/jobs/{stage_job}", timeout=10).json()["status"] == "succeeded"
    recs = requests.post(f"{api_url}/v1/recommendations?wait=30", json={"user_id": 1}, timeout=60)
    assert recs.status_code == 200 and recs.json()["model"] == result["model"]

    again = submit(api_url, {"dataset": result["dataset"], "epochs": 2, "seed": 11})
    assert again["status"] == "succeeded"
    second = requests.get(f"{api_url}{again['result_url']}", timeout=10).json()
    assert second["model"] == result["model"]  # content-addressed: nothing retrained
    train_job = requests.get(f"{api_url}/v1/jobs/{second['stage_jobs']['train']}/result", timeout=10).json()
    assert train_job["reused"] is True

    # Feedback posted since: the next pipeline over the dataset trains on a new version that includes it.
    rows = [{"user_id": 700_000, "movie_id": m, "rating": 4.5} for m in (1, 2, 3)]
    posted = requests.post(f"{api_url}/v1/datasets/{result['dataset']}/ratings", json={"ratings": rows}, timeout=10)
    assert posted.status_code == 200, posted.text
    third = submit(api_url, {"dataset": result["dataset"], "epochs": 2, "seed": 11, "recipe": "hybrid"})
    assert third["status"] == "succeeded", third
    version = requests.get(f"{api_url}{third['result_url']}", timeout=10).json()
    assert version["dataset"] != result["dataset"] and version["model"] != result["model"]
    record = requests.get(f"{api_url}/v1/datasets/{version['dataset']}", timeout=10).json()
    # (Other modules of this session's stack may have posted feedback to the same sample already.)
    base = posted.json()["dataset"]
    assert record["derived"]["from"] == base and record["derived"]["feedback"]["ratings"] >= 3
    assert record["counts"]["users"] >= SAMPLE.users + 1
    listed = requests.get(f"{api_url}/v1/users/700000/ratings", params={"dataset": version["dataset"]}, timeout=10)
    assert [r["movie_id"] for r in listed.json()["ratings"]] == [1, 2, 3]
    # Posting to the version posts to its base.
    again_rows = [{"user_id": 700_000, "movie_id": 1, "rating": 4.5}]
    to_version = requests.post(f"{api_url}/v1/datasets/{version['dataset']}/ratings", json={"ratings": again_rows},
                               timeout=10)  # fmt: skip
    assert to_version.json()["dataset"] == base


def test_a_failing_stage_fails_the_pipeline_and_names_it(api_url: str) -> None:
    job = submit(api_url, {"path": "no-such-directory"})
    assert job["status"] == "failed"
    assert job["error"]["code"] == "stage_failed"
    assert job["error"]["message"].startswith("stage ingest failed: no-such-directory")


def test_pipeline_requests_are_validated(api_url: str) -> None:
    post = lambda body: requests.post(f"{api_url}/v1/pipelines", json=body, timeout=10)  # noqa: E731
    assert post({}).status_code == 400
    assert post({"path": "a", "dataset": "b"}).status_code == 400
    assert post({"path": "../.."}).status_code == 400
    assert post({"dataset": "ds-nope"}).status_code == 404
    assert post({"path": "ml-latest-small", "epochs": 0}).status_code == 400


def test_auto_on_data_it_cannot_validate_on_trains_the_fallback_and_says_why(api_url: str, data_root: Path) -> None:
    """Every user with two ratings: each one's last 20 % is nothing, so nobody can be evaluated on validation."""
    directory = data_root / "two-ratings-each"
    directory.mkdir(exist_ok=True)
    (directory / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{m},Movie {m} (2000),Drama|Comedy\n" for m in range(1, 13))
    )
    ratings = "".join(f"{u},{1 + u % 12},5.0,{1000 + u}\n{u},{1 + (u + 1) % 12},4.5,{2000 + u}\n" for u in range(1, 41))
    (directory / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    job = submit(api_url, {"path": directory.name, "epochs": 1})
    assert job["status"] == "succeeded", job
    result = requests.get(f"{api_url}{job['result_url']}", timeout=10).json()
    assert result["recipe"] == FALLBACK_RECIPE and result["chosen"]["why"].startswith("no validation split: nobody")
    assert model_record(api_url, result["model"])["chosen"]["recipe"] == FALLBACK_RECIPE


def test_the_sequence_recipe_serves_a_users_last_movies_in_order(api_url: str, sample: str) -> None:
    """SASRec through the whole service: trained on the gpu queue, indexed by inner product, a user's query the
    network's state after their ratings in time order, so feedback counts at once and its order matters; the
    batch answers as the single query does."""
    job = submit(api_url, {"path": sample, "recipe": "sequence", "epochs": 2, "seed": 11})
    assert job["status"] == "succeeded", job
    result = requests.get(f"{api_url}{job['result_url']}", timeout=10).json()
    record = model_record(api_url, result["model"])
    assert record["config"]["architecture"] == "sequence" and record["index"]["params"]["space"] == "ip"
    activated = requests.post(f"{api_url}/v1/models/{result['model']}/activate", timeout=10)
    assert activated.status_code == 200, activated.text

    def answer(user_id: int) -> dict[str, Any]:
        r = requests.post(f"{api_url}/v1/recommendations?wait=30", json={"user_id": user_id, "k": 10}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == result["model"]
        return dict(r.json())

    # Two new users rate the same three movies, in opposite orders: a sequence model answers them apart.
    movies = [1, 2571, 318]  # Toy Story, The Matrix, The Shawshank Redemption
    forward, backward = 1_600_000_001, 1_600_000_002
    rows = [{"user_id": forward, "movie_id": m, "rating": 4.0, "timestamp": 1_700_000_000 + i}
            for i, m in enumerate(movies)] + [{"user_id": backward, "movie_id": m, "rating": 4.0,
            "timestamp": 1_700_000_000 + i} for i, m in enumerate(reversed(movies))]  # fmt: skip
    posted = requests.post(f"{api_url}/v1/datasets/{result['dataset']}/ratings", json={"ratings": rows}, timeout=10)
    assert posted.status_code == 200, posted.text
    first, second = answer(forward), answer(backward)
    assert first["strategy"] == second["strategy"] == "profile"
    assert not set(movies) & {i["movie_id"] for i in first["items"] + second["items"]}
    assert [i["movie_id"] for i in first["items"]] != [i["movie_id"] for i in second["items"]]

    r = requests.post(f"{api_url}/v1/jobs/recommend-batch", json={"users": [1, forward, backward], "k": 10},
                      timeout=30)  # fmt: skip
    assert r.status_code == 202, r.text
    batch = wait_job(api_url, r.json()["id"], timeout_s=300)
    assert batch["status"] == "succeeded", batch
    csv_text = requests.get(f"{api_url}{batch['result_url']}", params={"format": "csv"}, timeout=30).text
    got: dict[int, list[tuple[int, float]]] = {}
    for line in csv_text.splitlines()[1:]:
        who, _, movie, score, _ = line.split(",")
        got.setdefault(int(who), []).append((int(movie), float(score)))
    for user in (1, forward, backward):
        assert got[user] == [(i["movie_id"], i["score"]) for i in answer(user)["items"]]  # the same text
