"""Ingestion end to end: real HTTP to gunicorn, real Celery worker processes, real Redis."""

from __future__ import annotations

import io
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from shared.infra.settings import Settings
from tests.helpers import SMALL, wait_job


def submit(api_url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{api_url}/v1/datasets", json=body, timeout=10)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["kind"] == "ingest"
    return dict(job)


def finish(api_url: str, job_id: str) -> dict[str, Any]:
    return wait_job(api_url, job_id)


def test_ingest_ml_latest_small_matches_an_independent_count(api_url: str) -> None:
    job = submit(api_url, {"path": "ml-latest-small"})
    done = finish(api_url, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0 and done["result_url"] == f"/v1/jobs/{job['id']}/result"
    result = requests.get(f"{api_url}{done['result_url']}", timeout=10).json()

    movies = pd.read_csv(SMALL / "movies.csv")
    ratings = pd.read_csv(SMALL / "ratings.csv")
    tags = pd.read_csv(SMALL / "tags.csv")
    no_genres = movies.genres == "(no genres listed)"
    untagged = ~movies.movieId.isin(tags.movieId)
    dropped = int((no_genres & untagged).sum())
    counts = result["counts"]
    assert counts["movies_total"] == len(movies) == 9742
    assert counts["dropped"] == dropped and counts["movies"] == len(movies) - dropped
    assert counts["users"] == ratings.userId.nunique() == 610
    assert counts["ratings"] == len(ratings) == 100_836
    kept_ids = set(movies.movieId[~(no_genres & untagged)])
    assert counts["ratings_kept"] == int(ratings.movieId.isin(kept_ids).sum())
    assert counts["vocabulary"] == 1_218 and counts["descriptors"] == 24_884

    record = requests.get(f"{api_url}/v1/datasets/{result['dataset']}", timeout=10).json()
    assert record["counts"] == counts and record["source"] == "ml-latest-small"
    listed = requests.get(f"{api_url}/v1/datasets", timeout=10).json()["datasets"]
    assert result["dataset"] in [d["id"] for d in listed]

    again = finish(api_url, submit(api_url, {"path": "ml-latest-small/"})["id"])
    second = requests.get(f"{api_url}{again['result_url']}", timeout=10).json()
    assert second["dataset"] == result["dataset"] and second["reused"] is True
    assert again["message"] == "dataset already ingested"


def test_job_listing_and_npy_refusal(api_url: str) -> None:
    done = finish(api_url, submit(api_url, {"path": "ml-latest-small", "tags_per_movie": 2})["id"])
    jobs = requests.get(f"{api_url}/v1/jobs", params={"kind": "ingest", "status": "succeeded"}, timeout=10).json()
    assert jobs["jobs"][0]["id"] == done["id"]
    r = requests.get(f"{api_url}/v1/jobs/{done['id']}/result", params={"format": "npy"}, timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_such_form"  # a form this job has not


def _broken_copy(root: Path, name: str) -> Path:
    target = root / name
    if not target.exists():
        shutil.copytree(SMALL, target)
    return target


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "ratings.csv").unlink(), "ratings.csv: file not found"),
        (
            lambda d: (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,x,2\n"),
            "ratings.csv, line 3: rating 'x' is not a number",
        ),
        (
            lambda d: (d / "movies.csv").write_text("movieId,title\n1,A\n"),
            "movies.csv, line 1: missing column(s) genres",
        ),
        (
            lambda d: (d / "movies.csv").write_bytes(b"movieId,title,genres\n1,A,Drama\n-1,B,Comedy\n"),
            "movies.csv, line 3: movieId '-1' is not a positive 32-bit integer",
        ),
        (
            lambda d: (d / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2\xff,4.0,2\n"),
            "ratings.csv, line 3: not UTF-8 (byte 0xff at column 4)",
        ),
        (lambda d: (d / "movies.csv").write_text("movieId,title,genres\n"), "movies.csv: has no movie rows"),
        (lambda d: (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"), "ratings.csv: has no rating"),
    ],
    ids=["missing-file", "bad-number", "missing-column", "negative-id", "not-utf8", "no-movie", "no-rating"],
)
def test_missing_or_malformed_files_fail_the_job_with_a_reason(
    api_url: str, settings: Settings, mutate: Any, message: str, request: pytest.FixtureRequest
) -> None:
    directory = _broken_copy(settings.data_root, f"broken-{request.node.callspec.id}")
    mutate(directory)
    done = finish(api_url, submit(api_url, {"path": directory.name})["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "data_error"
    assert done["error"]["message"].startswith(message), done["error"]
    assert "Traceback" not in str(done)
    r = requests.get(f"{api_url}/v1/jobs/{done['id']}/result", timeout=10)
    assert r.status_code == 409


def test_a_path_that_is_not_a_directory_fails_the_job(api_url: str) -> None:
    done = finish(api_url, submit(api_url, {"path": "no-such-directory"})["id"])
    assert done["status"] == "failed" and done["error"]["message"] == "no-such-directory: is not a directory"


def test_artifacts_are_readable_without_pickle(api_url: str, app: Any) -> None:
    done = finish(api_url, submit(api_url, {"path": "ml-latest-small"})["id"])
    ds = requests.get(f"{api_url}{done['result_url']}", timeout=10).json()["dataset"]
    store = app.extensions["movierec"].artifacts
    raw = store.get_bytes(f"dataset/{ds}/ratings_indptr")
    indptr = np.load(io.BytesIO(raw), allow_pickle=False)
    assert indptr[0] == 0 and indptr[-1] == len(store.get_array(f"dataset/{ds}/ratings_value"))
    ids = store.get_array(f"dataset/{ds}/movie_ids")
    assert ids.dtype == np.int32 and ids[0] == 1


def test_a_pipeline_over_a_header_only_movies_csv_fails_at_once(api_url: str, settings: Settings) -> None:
    """Before: the dataset was ingested with 0 movies and its mining waited for "0 of 0 shards" until the janitor
    gave up ("its work was lost 5 times"), minutes later."""
    directory = _broken_copy(settings.data_root, "header-only-movies")
    (directory / "movies.csv").write_text("movieId,title,genres\n")
    r = requests.post(f"{api_url}/v1/pipelines", json={"path": directory.name}, timeout=10)
    assert r.status_code == 202, r.text
    done = wait_job(api_url, r.json()["id"], timeout_s=60)  # before: still waiting on its mining here
    assert done["status"] == "failed" and done["error"]["details"]["stage"] == "ingest", done
    assert "movies.csv: has no movie rows" in done["error"]["message"]
    child = wait_job(api_url, done["error"]["details"]["job"], timeout_s=5)
    assert child["error"]["code"] == "data_error"
    assert child["error"]["details"] == {"file": "movies.csv", "line": None}


def test_a_mining_job_over_a_dataset_with_no_movie_fails_at_once(api_url: str, app: Any) -> None:
    """A dataset stored with 0 movies (ingest refuses one now; an older one may be stored) has no shard to mine:
    the job fails with a reason instead of waiting for a join nothing will send."""
    svc = app.extensions["movierec"]
    ds_id = "ds-" + uuid.uuid4().hex[:24]
    svc.datasets.put({"id": ds_id, "source": "empty", "counts": {"movies": 0}, "format": 2})
    try:
        r = requests.post(f"{api_url}/v1/jobs/triplets", json={"dataset": ds_id}, timeout=10)
        assert r.status_code == 202, r.text
        done = wait_job(api_url, r.json()["id"], timeout_s=60)  # before: still waiting for "0 of 0 shards" here
        assert done["status"] == "failed" and done["error"]["code"] == "data_error", done
        assert done["error"]["message"] == f"dataset {ds_id}: has no movies: there is nothing to mine triplets from"
    finally:
        svc.catalogue.delete(ds_id)


@pytest.mark.parametrize("name", ["movies.csv", "links.csv"])
def test_a_file_linked_outside_the_data_root_is_refused(
    api_url: str, settings: Settings, tmp_path: Path, name: str
) -> None:
    """The directory was confined, its files were not: a movies.csv linking to any file the worker could read
    was ingested. Every input file is checked, before it is hashed or read, and the answer never names the
    link's target."""
    outside = tmp_path / "outside" / "private.csv"
    outside.parent.mkdir()
    shutil.copy(SMALL / name, outside)
    directory = _broken_copy(settings.data_root, f"linked-out-{name}")
    (directory / name).unlink()
    (directory / name).symlink_to(outside)
    done = finish(api_url, submit(api_url, {"path": directory.name})["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "path_not_allowed", done
    assert done["error"]["message"].startswith(f"{name} is a link to a file outside the data root")
    assert done["error"]["details"] == {"file": name}
    assert str(tmp_path) not in str(done) and "private" not in str(done)


def test_a_file_linked_inside_the_data_root_is_ingested(api_url: str, settings: Settings) -> None:
    directory = _broken_copy(settings.data_root, "linked-in")
    (directory / "movies.csv").unlink()
    (directory / "movies.csv").symlink_to(Path("..") / "ml-latest-small" / "movies.csv")
    done = finish(api_url, submit(api_url, {"path": directory.name})["id"])
    assert done["status"] == "succeeded", done
