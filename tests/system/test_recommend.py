"""From a mined, encoded, trained and indexed model to recommendations over HTTP; activation and rollback;
title search and similar movies over the active model."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
import requests

from tests.helpers import SMALL, two_versions, wait_job, wait_until


@pytest.fixture(scope="module")
def versions(api_url: str) -> list[str]:
    """Two trained, indexed versions of ml-latest-small (seeds 1 and 2), the first one active."""
    return two_versions(api_url)


def recommend(api_url: str, body: dict[str, Any], wait: float = 30) -> requests.Response:
    return requests.post(f"{api_url}/v1/recommendations", params={"wait": wait}, json=body, timeout=60)


def test_user_recommendations_exclude_what_they_rated(api_url: str, versions: list[str]) -> None:
    import pandas as pd

    r = recommend(api_url, {"user_id": 1, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == versions[0] and body["query"] == {"user_id": 1} and body["strategy"] == "profile"
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


def test_serve_time_rules_over_http(api_url: str, versions: list[str]) -> None:
    """Years, excluded ids and genres through the API, the fast lane and the job (``?wait=0``) alike."""
    import pandas as pd

    movies = pd.read_csv(SMALL / "movies.csv").set_index("movieId")
    year = movies.title.str.extract(r"\((\d{4})\)\s*$")[0].astype("Int64")
    plain = recommend(api_url, {"user_id": 1, "k": 20}).json()
    first = [i["movie_id"] for i in plain["items"]]
    rules = {"user_id": 1, "k": 10, "year_min": 1990, "year_max": 1999, "exclude": first[:3], "genres": ["Drama"]}
    ruled = recommend(api_url, rules).json()
    ids = [i["movie_id"] for i in ruled["items"]]
    assert len(ids) == 10 and not set(ids) & set(first[:3])
    assert all(1990 <= year[m] <= 1999 and "Drama" in movies.genres[m] for m in ids)
    assert ruled["query"] == {"user_id": 1, "year_min": 1990, "year_max": 1999, "exclude": first[:3],
                              "genres": ["Drama"]}  # fmt: skip
    queued = requests.post(f"{api_url}/v1/recommendations", params={"wait": 0}, json=rules, timeout=30)
    assert queued.status_code == 202
    job = wait_job(api_url, queued.json()["id"], timeout_s=60)
    result = requests.get(f"{api_url}{job['result_url']}", timeout=30).json()
    assert [i["movie_id"] for i in result["items"]] == ids  # the durable path answers the same
    # Pages: each next page holds none of the movies answered before it, by the fast lane and by a job alike.
    page1 = recommend(api_url, {"user_id": 1, "k": 10}).json()
    page2 = recommend(api_url, {"user_id": 1, "k": 10, "cursor": page1["next_cursor"]}).json()
    page3 = recommend(api_url, {"user_id": 1, "k": 10, "cursor": page2["next_cursor"]}).json()
    assert [i["movie_id"] for i in page1["items"]] == first[:10]
    assert len({i["movie_id"] for p in (page1, page2, page3) for i in p["items"]}) == 30
    queued = requests.post(f"{api_url}/v1/recommendations", params={"wait": 0}, timeout=30,
                           json={"user_id": 1, "k": 10, "cursor": page2["next_cursor"]})  # fmt: skip
    job = wait_job(api_url, queued.json()["id"], timeout_s=60)
    as_job = requests.get(f"{api_url}{job['result_url']}", timeout=30).json()
    assert as_job["items"] == page3["items"] and as_job["next_cursor"] == page3["next_cursor"]
    damaged = recommend(api_url, {"user_id": 1, "cursor": page1["next_cursor"][:-4] + "AAAA"})
    assert damaged.status_code == 400 and "cursor" in damaged.json()["error"]["message"]
    # A movie's neighbours take the same rules, in the query string.
    near = requests.get(f"{api_url}/v1/movies/1/similar", params={"k": 10, "wait": 30}, timeout=60).json()
    nearest = [i["movie_id"] for i in near["items"]]
    ruled_near = requests.get(f"{api_url}/v1/movies/1/similar", timeout=60, params={
        "k": 5, "wait": 30, "year_min": 1990, "year_max": 1999, "exclude": nearest[:2], "genres": ["Children"],
        "diversity": 0.3})  # fmt: skip
    assert ruled_near.status_code == 200, ruled_near.text
    near_ids = [i["movie_id"] for i in ruled_near.json()["items"]]
    assert near_ids and not set(near_ids) & set(nearest[:2]) and 1 not in near_ids
    assert all(1990 <= year[m] <= 1999 and "Children" in movies.genres[m] for m in near_ids)
    assert ruled_near.json()["query"] == {"similar_to": 1, "genres": ["Children"], "year_min": 1990,
                                          "year_max": 1999, "exclude": nearest[:2], "diversity": 0.3}  # fmt: skip
    refused = requests.get(f"{api_url}/v1/movies/1/similar", params={"year_min": 0}, timeout=30)
    assert refused.status_code == 400 and "year_min" in refused.json()["error"]["message"]
    diverse = recommend(api_url, {"user_id": 1, "k": 10, "diversity": 0.5}).json()
    assert len(diverse["items"]) == 10 and diverse["items"][0]["movie_id"] == first[0]  # MMR's first: the best
    assert "maximal marginal relevance" in diverse["explanation"] and diverse["query"]["diversity"] == 0.5
    for bad in ({"year_min": 0}, {"year_max": 10_000}, {"exclude": list(range(1, 1002))}, {"exclude": [0]},
                {"diversity": 1.5}, {"diversity": -0.1}):  # fmt: skip
        r = recommend(api_url, {"user_id": 1, **bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "validation_error", bad


@pytest.mark.parametrize(
    ("body", "status"),
    [
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

    from tests.helpers import REPO

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cli.main", "recommend", *args, "--api", api_url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)

    done = cli("--keywords", "war,violence,drama", "--k", "3")
    assert done.returncode == 0, done.stderr
    assert "recommendations for keywords ['war', 'violence', 'drama']" in done.stdout
    assert done.stdout.count("\n  0.") == 3
    assert cli("--user", "1").returncode == 0
    new_user = cli("--user", "999999")  # no ratings: the most popular movies
    assert new_user.returncode == 0 and "recommendations for user 999999 (popular)" in new_user.stdout
    missing = cli("--liked", "99999999")
    assert missing.returncode == 1 and "404 not_found" in missing.stderr
    ruled = cli("--user", "1", "--k", "4", "--year-min", "1990", "--year-max", "1999", "--diversity", "0.3")
    assert ruled.returncode == 0, ruled.stderr
    cursor = ruled.stdout.split("next page: --cursor ", 1)[1].split()[0]
    following = cli("--user", "1", "--k", "4", "--year-min", "1990", "--year-max", "1999", "--diversity", "0.3",
                    "--cursor", cursor)  # fmt: skip
    assert following.returncode == 0, following.stderr
    first = {line for line in ruled.stdout.splitlines() if line.startswith("  0.")}
    second = {line for line in following.stdout.splitlines() if line.startswith("  0.")}
    assert len(first) == len(second) == 4 and not first & second  # a page holds none of the one before
    assert all(re.search(r"\((199\d)\)  \[", line) for line in first | second)  # each of the 1990s
    bad = cli("--user", "1", "--year-min", "0")
    assert bad.returncode == 1 and "400" in bad.stderr and "year_min" in bad.stderr


def active(api_url: str) -> str:
    return str(requests.get(f"{api_url}/v1/models", timeout=10).json()["active"])


def test_search_titles_of_the_active_catalogue(api_url: str, versions: list[str]) -> None:
    r = requests.get(f"{api_url}/v1/movies", params={"q": "toy story"}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == active(api_url) and body["query"] == "toy story"
    first = body["movies"][0]
    assert first["movie_id"] == 1 and first["title"] == "Toy Story (1995)" and first["year"] == 1995
    assert "Animation" in first["descriptors"]
    assert [m["title"] for m in body["movies"][:3]] == ["Toy Story (1995)", "Toy Story 2 (1999)", "Toy Story 3 (2010)"]

    def titles(q: str, limit: int = 10) -> list[str]:
        r = requests.get(f"{api_url}/v1/movies", params={"q": q, "limit": limit}, timeout=10)
        assert r.status_code == 200, r.text
        return [m["title"] for m in r.json()["movies"]]

    assert titles("toy story (1995)") == ["Toy Story (1995)"]
    assert titles("TOY STO", limit=1) == ["Toy Story (1995)"]
    assert titles("the matrix")[0] == "Matrix, The (1999)"
    assert titles("amélie")[0].startswith("Amelie (Fabuleux destin")
    assert len(titles("the", limit=100)) == 100
    assert titles("no such film anywhere") == []


def test_similar_movies_share_descriptors(api_url: str, versions: list[str]) -> None:
    toy_story = requests.get(f"{api_url}/v1/movies", params={"q": "toy story 1995"}, timeout=10).json()["movies"][0]
    own = {d.lower() for d in toy_story["descriptors"]}
    r = requests.get(f"{api_url}/v1/movies/1/similar", params={"k": 7, "wait": 30}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == active(api_url) and body["strategy"] == "similar" and body["query"] == {"similar_to": 1}
    assert len(body["items"]) == 7 and 1 not in {i["movie_id"] for i in body["items"]}
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    for item in body["items"]:
        assert item["shared_descriptors"] == [d for d in item["descriptors"] if d.lower() in own], item
    assert any(item["shared_descriptors"] for item in body["items"])
    queued = requests.get(f"{api_url}/v1/movies/1/similar", params={"k": 7}, timeout=10)  # wait 0: the job
    assert queued.status_code == 202 and queued.json()["kind"] == "recommend"
    job = wait_job(api_url, queued.json()["id"], timeout_s=60)
    assert job["status"] == "succeeded"
    assert requests.get(f"{api_url}{job['result_url']}", timeout=10).json()["items"] == body["items"]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/movies/99999999/similar", {"wait": 5}, 404),
        ("/v1/movies/0/similar", {}, 404),
        ("/v1/movies/1/similar", {"k": 0}, 400),
        ("/v1/movies/1/similar", {"k": 101}, 400),
        ("/v1/movies/1/similar", {"wait": 31}, 400),
        ("/v1/movies/1/similar", {"colour": "red"}, 400),  # no such rule
        ("/v1/movies/1/similar", {"diversity": 2}, 400),
        ("/v1/movies", {}, 400),
        ("/v1/movies", {"q": ""}, 400),
        ("/v1/movies", {"q": "?!"}, 400),
        ("/v1/movies", {"q": "x" * 201}, 400),
        ("/v1/movies", {"q": "toy", "limit": 0}, 400),
        ("/v1/movies", {"q": "toy", "limit": 101}, 400),
        ("/v1/movies", {"q": "toy", "offset": 3}, 400),
    ],
)
def test_movie_routes_refuse_bad_requests(
    api_url: str, versions: list[str], path: str, params: dict[str, Any], status: int
) -> None:
    r = requests.get(f"{api_url}{path}", params=params, timeout=30)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_cli_search_and_similar(api_url: str, versions: list[str]) -> None:
    import subprocess
    import sys

    from tests.helpers import REPO

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cli.main", *args, "--api", api_url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)

    found = cli("search", "toy story", "--limit", "2")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[:3] == ["1", "Toy", "Story"]
    near = cli("similar", "1", "--k", "4")
    assert near.returncode == 0, near.stderr
    assert len(near.stdout.splitlines()) == 4 and "shares:" in near.stdout and "Toy Story (1995)" not in near.stdout
    missing = cli("similar", "99999999")
    assert missing.returncode == 1 and "404 not_found" in missing.stderr


def dataset_of(api_url: str, version: str) -> str:
    models = requests.get(f"{api_url}/v1/models", timeout=10).json()["models"]
    return str(next(m["dataset"] for m in models if m["version"] == version))


def test_feedback_reaches_the_next_recommendation_without_retraining(api_url: str, versions: list[str]) -> None:
    dataset = dataset_of(api_url, versions[0])
    new_user = 900_001
    before = recommend(api_url, {"user_id": new_user, "k": 5}).json()
    assert before["strategy"] == "popular" and len(before["items"]) == 5
    counts = before["items"][0]["score"] == 1.0  # the most-rated movie first, scored 1
    assert counts
    # Toy Story and two more children's films, posted as a brand-new user.
    liked = [{"user_id": new_user, "movie_id": m, "rating": 5.0, "timestamp": 1_700_000_000 + i}
             for i, m in enumerate([1, 2355, 3114])]  # fmt: skip
    r = requests.post(f"{api_url}/v1/datasets/{dataset}/ratings", json={"ratings": liked}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"dataset": dataset, "stored": 3, "users": 1, "new_users": [new_user]}
    after = recommend(api_url, {"user_id": new_user, "k": 5}).json()
    assert after["strategy"] == "profile" and not {1, 2355, 3114} & {i["movie_id"] for i in after["items"]}
    assert any("Children" in i["descriptors"] for i in after["items"])
    listed = requests.get(f"{api_url}/v1/users/{new_user}/ratings", timeout=10).json()
    assert [(x["movie_id"], x["source"]) for x in listed["ratings"]] == [(1, "feedback"), (2355, "feedback"),
                                                                         (3114, "feedback")]  # fmt: skip

    # An existing user rates a movie again: the last rating wins, in the listing and in the profile.
    mine = requests.get(f"{api_url}/v1/users/1/ratings", params={"dataset": dataset}, timeout=10).json()
    assert len(mine["ratings"]) == 232 and {x["source"] for x in mine["ratings"]} == {"ingest"}
    profile_before = recommend(api_url, {"user_id": 1, "k": 10}).json()
    again = [{"user_id": 1, "movie_id": x["movie_id"], "rating": 0.5} for x in mine["ratings"][:150]]
    assert requests.post(f"{api_url}/v1/datasets/{dataset}/ratings", json={"ratings": again}, timeout=10).ok
    mine = requests.get(f"{api_url}/v1/users/1/ratings", timeout=10).json()
    assert len(mine["ratings"]) == 232 and [x["source"] for x in mine["ratings"]].count("feedback") == 150
    assert mine["ratings"][-1]["rating"] == 0.5
    profile_after = recommend(api_url, {"user_id": 1, "k": 10}).json()
    assert profile_after["items"] != profile_before["items"]


@pytest.mark.parametrize(
    ("rows", "status", "needle"),
    [
        ([{"user_id": 5, "movie_id": 99_999_999, "rating": 4.0}], 400, "unknown movie id"),
        ([{"user_id": 5, "movie_id": 1, "rating": 4.0}, {"user_id": 5, "movie_id": 2, "rating": 4.2}], 400,
         "row 1: rating 4.2 is not one of"),
        ([{"user_id": 5, "movie_id": 1, "rating": 6.0}], 400, "not one of"),
        ([{"user_id": 0, "movie_id": 1, "rating": 4.0}], 400, "user_id"),
        ([{"user_id": 5, "movie_id": 1, "rating": 4.0, "extra": 1}], 400, "extra"),
        ([], 400, "ratings"),
    ],
)  # fmt: skip
def test_a_bad_feedback_batch_is_refused_whole(
    api_url: str, versions: list[str], rows: list[dict[str, Any]], status: int, needle: str
) -> None:
    dataset = dataset_of(api_url, versions[0])
    r = requests.post(f"{api_url}/v1/datasets/{dataset}/ratings", json={"ratings": rows}, timeout=10)
    assert r.status_code == status and needle in r.text, r.text
    assert requests.get(f"{api_url}/v1/users/5/ratings", timeout=10).json()["ratings"][0]["source"] == "ingest"
    assert requests.post(f"{api_url}/v1/datasets/ds-nope/ratings", json={"ratings": rows or [{}]},
                         timeout=10).status_code in (400, 404)  # fmt: skip
    assert requests.get(f"{api_url}/v1/users/2000000/ratings", timeout=10).status_code == 404


def test_cli_rate_ratings_and_delete(api_url: str, versions: list[str], tmp_path: Any) -> None:
    """Last in this module: it deletes the inactive version."""
    import subprocess
    import sys

    from tests.helpers import REPO

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cli.main", *args, "--api", api_url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)

    assert requests.post(f"{api_url}/v1/models/{versions[0]}/activate", timeout=10).status_code == 200
    dataset = dataset_of(api_url, versions[0])
    rated = cli("rate", dataset, "910000", "1=5", "2355=4.5")
    assert rated.returncode == 0 and f"stored 2 ratings in {dataset}" in rated.stdout, rated.stderr
    table = tmp_path / "more.csv"
    table.write_text("userId,movieId,rating,timestamp\n910000,3114,4.0,1700000000\n910001,1,3.0,\n")
    assert cli("rate", dataset, "--csv", str(table)).returncode == 0
    listed = cli("ratings", "910000")
    assert listed.returncode == 0 and f"user 910000 in {dataset}: 3 ratings" in listed.stdout
    assert "Toy Story (1995)  (feedback)" in listed.stdout
    bad = cli("rate", dataset, "910000", "1=4.3")
    assert bad.returncode == 1 and "400" in bad.stderr and "not one of" in bad.stderr
    assert cli("rate", dataset, "1=4").returncode != 0  # the user id comes first

    refused = cli("delete", "dataset", dataset)  # the active model's dataset
    assert refused.returncode == 1 and "409" in refused.stderr
    assert active(api_url) == versions[0]
    deleted = cli("delete", "model", versions[1])
    assert deleted.returncode == 0 and f"deleted {versions[1]}" in deleted.stdout and "MiB freed" in deleted.stdout
    assert cli("delete", "model", versions[1]).returncode == 1  # gone: 404


def test_the_fast_lane_answers_without_a_job_and_the_durable_path_answers_the_same(
    api_url: str, versions: list[str]
) -> None:
    # While the caller waits, an interactive worker answers over pub/sub and no job is recorded; a caller who
    # does not wait gets a job on the interactive queue, whose result is the same answer.
    listed = requests.get(f"{api_url}/v1/jobs", params={"kind": "recommend", "limit": 500}, timeout=10).json()
    before = {job["id"] for job in listed["jobs"]}
    counted = answered_by(api_url)
    fast = recommend(api_url, {"user_id": 3, "k": 5})
    assert fast.status_code == 200, fast.text
    listed = requests.get(f"{api_url}/v1/jobs", params={"kind": "recommend", "limit": 500}, timeout=10).json()
    assert {job["id"] for job in listed["jobs"]} == before
    now = answered_by(api_url)  # the fast lane's answer is no job: /metrics counts it (other tests may ask too)
    assert now["fast_lane"] >= counted["fast_lane"] + 1
    queued = recommend(api_url, {"user_id": 3, "k": 5}, wait=0)
    assert queued.status_code == 202
    job = wait_job(api_url, queued.json()["id"])
    assert job["status"] == "succeeded"
    durable = requests.get(f"{api_url}/v1/jobs/{job['id']}/result", timeout=10).json()
    assert durable["items"] == fast.json()["items"] and durable["model"] == fast.json()["model"]


def answered_by(api_url: str) -> dict[str, float]:
    """``movierec_recommendations_answered_total`` by path, summed over the API's processes."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{api_url}/metrics", timeout=10).text
    found = {"fast_lane": 0.0, "job": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "movierec_recommendations_answered_total":
                found[sample.labels["path"]] += sample.value
    return found
