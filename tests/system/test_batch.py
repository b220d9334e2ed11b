"""Batch recommendations over HTTP and the CLI, through real workers: each user's rows are the single-user
endpoint's answer (movie ids and scores), the popular fallback and feedback included; CSV and .npy agree."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from shared.ml.batch import ROW
from tests.helpers import REPO, wait_job
from tests.helpers import run_job as run

UNKNOWN_USER = 2_000_000_000
"""A user id nobody rated anything with: the popular fallback."""
NEW_USER = 1_500_000_000
"""A user who exists only through feedback."""


@pytest.fixture(scope="module")
def model(api_url: str) -> dict[str, str]:
    """The hybrid pipeline on ml-latest-small, activated; feedback for a known user and a new one."""
    result = run(api_url, "/v1/pipelines", {"path": "ml-latest-small", "recipe": "hybrid"})
    version, dataset = result["model"], result["dataset"]
    r = requests.post(f"{api_url}/v1/models/{version}/activate", timeout=10)
    assert r.status_code == 200, r.text
    feedback = [
        {"user_id": 5, "movie_id": 1, "rating": 0.5, "timestamp": 2_000_000_000},
        {"user_id": 5, "movie_id": 2571, "rating": 5.0, "timestamp": 2_000_000_001},
        {"user_id": NEW_USER, "movie_id": 1, "rating": 5.0, "timestamp": 2_000_000_000},
        {"user_id": NEW_USER, "movie_id": 260, "rating": 4.0, "timestamp": 2_000_000_001},
    ]
    r = requests.post(f"{api_url}/v1/datasets/{dataset}/ratings", json={"ratings": feedback}, timeout=30)
    assert r.status_code == 200, r.text
    return {"version": version, "dataset": dataset}


def single(api_url: str, user_id: int, k: int) -> dict[str, Any]:
    r = requests.post(f"{api_url}/v1/recommendations", params={"wait": 30}, json={"user_id": user_id, "k": k},
                      timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    return dict(r.json())


def batch(api_url: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the finished job's record, its JSON result)."""
    r = requests.post(f"{api_url}/v1/jobs/recommend-batch", json=body, timeout=30)
    assert r.status_code == 202, r.text
    assert r.headers["Location"].endswith(f"/v1/jobs/{r.json()['id']}") and r.json()["kind"] == "recommend-batch"
    job = wait_job(api_url, r.json()["id"], timeout_s=300)
    assert job["status"] == "succeeded", job
    return job, dict(requests.get(f"{api_url}{job['result_url']}", timeout=30).json())


def csv_rows(api_url: str, job_id: str) -> list[tuple[int, int, int, float]]:
    r = requests.get(f"{api_url}/v1/jobs/{job_id}/result", params={"format": "csv"}, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv"), r.text[:200]
    lines = list(csv.reader(io.StringIO(r.text)))
    assert lines[0] == ["user_id", "rank", "movie_id", "score", "recommendation_id"]
    return [(int(u), int(k), int(m), float(s)) for u, k, m, s, _ in lines[1:]]


def npy_rows(api_url: str, job_id: str) -> np.ndarray:
    r = requests.get(f"{api_url}/v1/jobs/{job_id}/result", params={"format": "npy"}, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
    assert int(r.headers["Content-Length"]) == len(r.content)
    array: np.ndarray = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert array.dtype == ROW
    return array


def by_user(rows: list[tuple[int, int, int, float]]) -> dict[int, list[tuple[int, int, float]]]:
    out: dict[int, list[tuple[int, int, float]]] = {}
    for user, rank, movie, score in rows:
        out.setdefault(user, []).append((rank, movie, score))
    return out


def test_batch_rows_are_the_single_user_answers(api_url: str, model: dict[str, str]) -> None:
    users = [1, 5, 2, UNKNOWN_USER, NEW_USER, 1, 610]  # 1 twice: answered once, at its first place
    job, result = batch(api_url, {"users": users, "k": 7, "shard_users": 2})
    assert result["model"] == model["version"] and result["users"] == 6 and result["k"] == 7
    assert len(result["parts"]) == 3 and result["popular"] == 1
    rows = csv_rows(api_url, job["id"])
    assert len(rows) == result["rows"] == 6 * 7
    assert list(dict.fromkeys(u for u, *_ in rows)) == [1, 5, 2, UNKNOWN_USER, NEW_USER, 610]
    strategies = {}
    for user, answer in by_user(rows).items():
        expected = single(api_url, user, 7)
        strategies[user] = expected["strategy"]
        assert [(r, m) for r, m, _ in answer] == [(i + 1, it["movie_id"]) for i, it in enumerate(expected["items"])]
        assert [s for *_, s in answer] == [it["score"] for it in expected["items"]]  # exactly: the same text
    assert strategies[UNKNOWN_USER] == "popular" and strategies[NEW_USER] == "profile"
    assert strategies[1] == strategies[5] == "profile"

    array = npy_rows(api_url, job["id"])
    assert array["user_id"].tolist() == [u for u, *_ in rows] and array["rank"].tolist() == [k for _, k, *_ in rows]
    assert array["movie_id"].tolist() == [m for *_, m, _ in rows]
    assert np.allclose(array["score"], [s for *_, s in rows], atol=1e-6)


def test_a_batch_keeps_the_serve_time_rules_as_each_single_answer_does(api_url: str, model: dict[str, str]) -> None:
    plain = [item["movie_id"] for item in single(api_url, 1, 5)["items"]]
    rules = {"genres": ["Comedy", "Drama"], "year_min": 1990, "year_max": 2010, "exclude": plain[:2],
             "diversity": 0.4}  # fmt: skip
    users = [1, 5, UNKNOWN_USER, NEW_USER]
    job, result = batch(api_url, {"users": users, "k": 5, **rules})
    assert result["rules"] == rules and result["popular"] == 1
    rows = by_user(csv_rows(api_url, job["id"]))
    assert list(rows) == users
    for user in users:
        r = requests.post(f"{api_url}/v1/recommendations", params={"wait": 30},
                          json={"user_id": user, "k": 5, **rules}, timeout=60)  # fmt: skip
        expected = r.json()["items"]
        assert [(rank, movie) for rank, movie, _ in rows[user]] == [(i + 1, it["movie_id"]) for i, it in
                                                                    enumerate(expected)]  # fmt: skip
        assert [s for *_, s in rows[user]] == [it["score"] for it in expected]
        assert not set(plain[:2]) & {movie for _, movie, _ in rows[user]}
        for item in expected:
            year = int(item["title"].rstrip(") ")[-4:])
            assert 1990 <= year <= 2010 and {"comedy", "drama"} & {d.lower() for d in item["descriptors"]}, item


def test_feedback_reaches_the_batch(api_url: str, model: dict[str, str]) -> None:
    """User 5 rated movie 2571 after ingest: it is seen now, so it is excluded from their batch rows."""
    job, _ = batch(api_url, {"users": [5], "k": 100})
    movies = {m for _, _, m, _ in csv_rows(api_url, job["id"])}
    assert 2571 not in movies and 1 not in movies


def test_all_users_with_progress_and_every_format(api_url: str, model: dict[str, str]) -> None:
    job, result = batch(api_url, {"users": "all", "k": 3, "shard_users": 100})
    # ml-latest-small's 610 users and those feedback created (NEW_USER, and any another test module posted)
    assert result["users"] >= 611 and len(result["parts"]) == -(-result["users"] // 100)
    assert job["progress"] == 1.0 and result["users_per_second"] > 0
    rows = csv_rows(api_url, job["id"])
    users = [u for u, *_ in rows]
    assert users == sorted(users) and len(set(users)) == result["users"]
    assert set(range(1, 611)) | {NEW_USER} <= set(users)
    assert all(len(a) == 3 and [r for r, *_ in a] == [1, 2, 3] for a in by_user(rows).values())
    assert len(npy_rows(api_url, job["id"])) == len(rows) == result["rows"]
    for user in (3, 300, 609):  # a few users of "all" against the single-user answer
        expected = [(it["movie_id"], it["score"]) for it in single(api_url, user, 3)["items"]]
        assert [(m, s) for _, m, s in by_user(rows)[user]] == expected


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"users": "some"},
        {"users": []},
        {"users": [0]},
        {"users": [1, True]},
        {"users": [1.5]},
        {"users": ["1"]},
        {"users": [2**31]},
        {"users": list(range(1, 50_002))},
        {"users": "all", "k": 0},
        {"users": "all", "k": 101},
        {"users": "all", "shard_users": 0},
        {"users": "all", "diversity": 2},
        {"users": "all", "year_min": 0},
    ],
)
def test_bad_requests_are_400(api_url: str, model: dict[str, str], body: dict[str, Any]) -> None:
    r = requests.post(f"{api_url}/v1/jobs/recommend-batch", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"]


def test_formats_apply_to_their_kinds(api_url: str, model: dict[str, str]) -> None:
    pipeline = requests.get(f"{api_url}/v1/jobs", params={"kind": "pipeline", "limit": 1}, timeout=10).json()
    job_id = pipeline["jobs"][0]["id"]
    for fmt in ("csv", "npy"):  # forms this job has not: the job's state refuses them (issue #15)
        r = requests.get(f"{api_url}/v1/jobs/{job_id}/result", params={"format": fmt}, timeout=10)
        assert r.status_code == 409 and r.json()["error"]["code"] == "no_such_form", r.text
    r = requests.get(f"{api_url}/v1/jobs/{job_id}/result", params={"format": "xml"}, timeout=10)
    assert r.status_code == 400  # a form no job has: the request is invalid


def test_cli_recommend_batch(api_url: str, model: dict[str, str], tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cli.main", "recommend-batch", *args, "--api", api_url, "--quiet"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, check=False)

    done = cli("--users", "1,2,3", "--k", "4", "--out", str(tmp_path / "three.csv"))
    assert done.returncode == 0, done.stderr
    assert "12 rows for 3 users" in done.stdout
    lines = (tmp_path / "three.csv").read_text().splitlines()
    assert lines[0] == "user_id,rank,movie_id,score,recommendation_id" and len(lines) == 13
    expected = [f"2,{i + 1},{it['movie_id']},{it['score']!r}" for i, it in enumerate(single(api_url, 2, 4)["items"])]
    assert [line.rsplit(",", 1)[0] for line in lines[5:9]] == expected
    assert len({line.rsplit(",", 1)[1] for line in lines[5:9]}) == 1  # user 2's answer's recommendation id
    done = cli("--users", "all", "--k", "2", "--out", str(tmp_path / "all.npy"))
    assert done.returncode == 0, done.stderr
    array = np.load(tmp_path / "all.npy", allow_pickle=False)
    assert f"{len(array):,} rows for {len(set(array['user_id'].tolist())):,} users" in done.stdout
    bad = cli("--users", "1,x", "--out", str(tmp_path / "x.csv"))
    assert bad.returncode == 2 and "--users" in bad.stderr
    refused = cli("--users", "1", "--k", "0", "--out", str(tmp_path / "x.csv"))
    assert refused.returncode == 1 and "400" in refused.stderr
