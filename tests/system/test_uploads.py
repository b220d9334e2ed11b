"""Uploaded datasets end to end: files and a zip sent over HTTP (and by the CLI) to an API whose only CPU worker
runs in an empty directory of its own with no data root set, so nothing but Redis carries the files."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from cli.client import MultipartBody
from cli.stack import Stack
from shared.infra.keys import Keys, upload_artifacts
from shared.infra.settings import Settings
from shared.logic.ingest import DatasetOptions, dataset_id
from tests.conftest import delete_prefix
from tests.helpers import REPO, SMALL, wait_job

LIMIT = 8 << 20
"""ml-latest-small's files are 3.2 MB."""


@pytest.fixture
def upload_stack(
    settings: Settings, redis_client: redis.Redis, make_stack: Any, tmp_path: Path
) -> Iterator[tuple[Stack, Settings]]:
    """A stack on a prefix of its own whose data root is empty, its CPU worker replaced by one started in a
    fresh directory with MOVIEREC_DATA_ROOT unset."""
    (tmp_path / "api-root").mkdir()
    own = settings.model_copy(
        update={
            "key_prefix": f"{settings.key_prefix}-u{uuid.uuid4().hex[:6]}",
            "data_root": tmp_path / "api-root",
            "max_upload_bytes": LIMIT,
        }
    )
    stack = make_stack(own)
    stack.kill("cpu-worker")
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()
    env = {k: v for k, v in own.child_env().items() if k != "MOVIEREC_DATA_ROOT"}
    env["PYTHONPATH"] = str(REPO)
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--queues", "cpu", "--concurrency", "1"],
            cwd=elsewhere,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield stack, own
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        assert list(elsewhere.iterdir()) == []  # the worker wrote nothing where it ran
        delete_prefix(redis_client, own.key_prefix)


def upload_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=Keys(prefix).artifacts_under(upload_artifacts(""))))


def post(api_url: str, files: dict[str, Path], fields: dict[str, str] | None = None) -> requests.Response:
    body = MultipartBody(files, fields=fields or {})
    return requests.post(f"{api_url}/v1/datasets", data=body, headers={"Content-Type": body.content_type}, timeout=60)


def result_of(api_url: str, job_id: str) -> dict[str, Any]:
    done = wait_job(api_url, job_id, timeout_s=180)
    assert done["status"] == "succeeded", done
    return dict(requests.get(f"{api_url}/v1/jobs/{job_id}/result", timeout=10).json())


def test_uploads_ingest_on_a_worker_without_the_files(
    upload_stack: tuple[Stack, Settings], api_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    stack, own = upload_stack
    # The CLI streams the directory's files; the id is the one a path ingest of the same files gets.
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "submit", "dataset", "--upload", str(SMALL), "--api", stack.api_url],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[1]
    uploaded = result_of(stack.api_url, job_id)
    by_path = requests.post(f"{api_url}/v1/datasets", json={"path": "ml-latest-small"}, timeout=10).json()
    assert uploaded["dataset"] == result_of(api_url, by_path["id"])["dataset"]
    assert uploaded["dataset"] == dataset_id(SMALL, DatasetOptions(tags_per_movie=5))
    assert uploaded["counts"]["movies_total"] == 9742 and uploaded["counts"]["ratings"] == 100_836
    assert uploaded["source"] == "upload: movies.csv, ratings.csv, tags.csv, links.csv"
    assert upload_keys(redis_client, own.key_prefix) == []

    # The zip as GroupLens ships it (one top folder, a README beside the files), with a form field.
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ("movies.csv", "ratings.csv", "tags.csv", "links.csv", "README.txt"):
            zf.write(SMALL / name, f"ml-latest-small/{name}")
    r = post(stack.api_url, {"archive": archive}, {"tags_per_movie": "3"})
    assert r.status_code == 202, r.text
    zipped = result_of(stack.api_url, r.json()["id"])
    assert zipped["dataset"] == dataset_id(SMALL, DatasetOptions(tags_per_movie=3)) != uploaded["dataset"]
    record = requests.get(f"{stack.api_url}/v1/datasets/{zipped['dataset']}", timeout=10).json()
    assert record["source"] == "upload: ml-latest-small.zip" and record["options"]["tags_per_movie"] == 3
    assert upload_keys(redis_client, own.key_prefix) == []


def test_a_bad_archive_fails_its_job_and_a_big_upload_is_refused(
    upload_stack: tuple[Stack, Settings], redis_client: redis.Redis, tmp_path: Path
) -> None:
    stack, own = upload_stack
    archive = tmp_path / "no-movies.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(SMALL / "ratings.csv", "ml/ratings.csv")
    r = post(stack.api_url, {"archive": archive})
    assert r.status_code == 202, r.text
    done = wait_job(stack.api_url, r.json()["id"], timeout_s=120)
    assert done["status"] == "failed" and done["error"]["code"] == "data_error", done
    assert "holds no movies.csv" in done["error"]["message"]
    assert upload_keys(redis_client, own.key_prefix) == []

    big = tmp_path / "ratings.csv"
    big.write_bytes((SMALL / "ratings.csv").read_bytes() * 4)  # 9.5 MB > LIMIT
    r = post(stack.api_url, {"movies.csv": SMALL / "movies.csv", "ratings.csv": big})
    assert r.status_code == 413 and "MOVIEREC_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]

    streamed = MultipartBody({"movies.csv": SMALL / "movies.csv", "ratings.csv": big}, fields={})
    r = requests.post(  # a generator has no length: sent chunked, refused once the stream passes the limit
        f"{stack.api_url}/v1/datasets",
        data=(block for block in streamed),
        headers={"Content-Type": streamed.content_type},
        timeout=60,
    )
    assert r.status_code == 413, r.text
    assert upload_keys(redis_client, own.key_prefix) == []
