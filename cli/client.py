"""A small HTTP client of the movierec API, used by ``movierec submit``, ``status``, ``recommend``, ``search``,
``similar``, ``events``, ``experiment`` and ``demo``."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

DEFAULT_API_URL = "http://127.0.0.1:8000"
POLL_INTERVAL_S = 0.5
API_KEY_ENV = "MOVIEREC_API_KEY"
"""The bearer key a client sends, when the API has ``MOVIEREC_API_KEYS`` set."""


class ApiError(Exception):
    """The API answered with an error envelope (or not at all)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, base_url: str = DEFAULT_API_URL, *, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = requests.Session()
        if api_key:
            self._http.headers["Authorization"] = f"Bearer {api_key}"

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, self.base_url + path, timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError:
            raise ApiError(0, "unreachable", f"no API answers at {self.base_url}") from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise ApiError(response.status_code, error["code"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(response.status_code, "http_error", response.text[:200]) from None
        return response.json()

    def submit_dataset(self, path: str, **options: Any) -> dict[str, Any]:
        body = {"path": path, **{k: v for k, v in options.items() if v is not None}}
        job: dict[str, Any] = self._request("POST", "/v1/datasets", json=body)
        return job

    def upload_dataset(
        self, path: Path, *, tags_per_movie: int | None = None, genres_fix_csv: Path | None = None
    ) -> dict[str, Any]:
        """Send a MovieLens directory's files, or a MovieLens .zip, to be ingested (streamed from disk)."""
        files = upload_parts(path)
        if genres_fix_csv is not None:
            files["genres_fix_csv"] = genres_fix_csv
        body = MultipartBody(files, fields={} if tags_per_movie is None else {"tags_per_movie": str(tags_per_movie)})
        headers = {"Content-Type": body.content_type}
        job: dict[str, Any] = self._request("POST", "/v1/datasets", data=body, headers=headers)
        return job

    def submit_pipeline(self, **body: Any) -> dict[str, Any]:
        job: dict[str, Any] = self._request("POST", "/v1/pipelines", json=body)
        return job

    def submit_evaluation(self, **body: Any) -> dict[str, Any]:
        job: dict[str, Any] = self._request("POST", "/v1/jobs/evaluate", json=body)
        return job

    def submit_batch(self, **body: Any) -> dict[str, Any]:
        """``POST /v1/jobs/recommend-batch``: {"users": "all" | [ids], "k"?, "exclude_seen"?, "shard_users"?}."""
        job: dict[str, Any] = self._request("POST", "/v1/jobs/recommend-batch", json=body)
        return job

    def download(self, job_id: str, out: Path, *, fmt: str) -> int:
        """Write a job's result in ``fmt`` (csv, npy) to ``out`` as it streams in; answers the bytes written."""
        url = f"{self.base_url}/v1/jobs/{job_id}/result"
        try:
            response = self._http.get(url, params={"format": fmt}, stream=True, timeout=self.timeout_s)
        except requests.ConnectionError:
            raise ApiError(0, "unreachable", f"no API answers at {self.base_url}") from None
        with response:
            if response.status_code >= 400:
                error = response.json().get("error", {})
                raise ApiError(response.status_code, error.get("code", "http_error"), error.get("message", ""))
            written = 0
            with out.open("wb") as f:
                for block in response.iter_content(chunk_size=1 << 20):
                    written += f.write(block)
        return written

    def recommend(self, *, wait_s: float = 30.0, **body: Any) -> dict[str, Any]:
        """Ask and wait for recommendations (polling the job if ``?wait`` ran out first)."""
        return self._finished(self._request("POST", f"/v1/recommendations?wait={wait_s}", json=body))

    def post_ratings(self, dataset: str, ratings: list[dict[str, Any]]) -> dict[str, Any]:
        """Store ratings given after ingest (one batch, at most 10,000: the API refuses it whole or stores it)."""
        stored: dict[str, Any] = self._request("POST", f"/v1/datasets/{dataset}/ratings", json={"ratings": ratings})
        return stored

    def user_ratings(self, user_id: int, *, dataset: str | None = None) -> dict[str, Any]:
        """A user's ratings, ingested and posted since (the active model's dataset unless one is named)."""
        params = {"dataset": dataset} if dataset else {}
        listed: dict[str, Any] = self._request("GET", f"/v1/users/{user_id}/ratings", params=params)
        return listed

    def post_events(self, events: list[dict[str, Any]], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """``POST /v1/events``: up to 1,000 events; with a key, a retry of the batch is stored once."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        stored: dict[str, Any] = self._request("POST", "/v1/events", json={"events": events}, headers=headers)
        return stored

    def experiments(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self._request("GET", "/v1/experiments")["experiments"]
        return listed

    def experiment(self, name: str, action: str | None = None, **query: Any) -> dict[str, Any]:
        """An experiment's report, or ``action`` (pause, resume, end, promote) taken on it."""
        if action is None:
            found: dict[str, Any] = self._request("GET", f"/v1/experiments/{name}")
            return found
        done: dict[str, Any] = self._request("POST", f"/v1/experiments/{name}/{action}",
                                             params={k: v for k, v in query.items() if v is not None})  # fmt: skip
        return done

    def start_experiment(self, **body: Any) -> dict[str, Any]:
        started: dict[str, Any] = self._request("POST", "/v1/experiments", json=body)
        return started

    def delete(self, what: str, name: str) -> dict[str, Any]:
        """Delete a dataset (``what="datasets"``) or a model version (``"models"``) and every key it owns."""
        deleted: dict[str, Any] = self._request("DELETE", f"/v1/{what}/{name}")
        return deleted

    def search(self, q: str, *, limit: int = 10) -> dict[str, Any]:
        """Movies of the active model's catalogue whose title matches ``q``, best first."""
        found: dict[str, Any] = self._request("GET", "/v1/movies", params={"q": q, "limit": limit})
        return found

    def similar(self, movie_id: int, *, k: int = 10, wait_s: float = 30.0) -> dict[str, Any]:
        """The movies nearest to ``movie_id`` (polling the job if ``?wait`` ran out first)."""
        params = {"k": k, "wait": wait_s}
        return self._finished(self._request("GET", f"/v1/movies/{movie_id}/similar", params=params))

    def _finished(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A recommendation answer, or the answer of the job it was (waited for)."""
        if "items" in answer:
            return answer
        final = self.wait(answer["id"], progress=False)
        if final["status"] != "succeeded":
            raise ApiError(200, "job_failed", str((final.get("error") or {}).get("message")))
        result: dict[str, Any] = self.result(answer["id"])
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._request("GET", f"/v1/jobs/{job_id}")
        return job

    def result(self, job_id: str) -> Any:
        return self._request("GET", f"/v1/jobs/{job_id}/result")

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self._request("GET", f"/v1/datasets/{dataset_id}")
        return record

    def wait(self, job_id: str, *, timeout_s: float = 3600.0, progress: bool = True) -> dict[str, Any]:
        """Poll until the job finishes, drawing a progress bar on stderr; answers the final record."""
        deadline = time.monotonic() + timeout_s
        bar = tqdm(
            total=100,
            desc=job_id[:8],
            file=sys.stderr,
            disable=not progress,
            bar_format="{desc}: {percentage:3.0f}% |{bar:30}| {elapsed}{postfix}",
        )
        try:
            while True:
                job = self.job(job_id)
                bar.n = round(100 * job["progress"])
                bar.set_postfix_str(str(job["message"] or job["stage"] or "")[:60])
                bar.refresh()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    return job
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
                time.sleep(POLL_INTERVAL_S)
        finally:
            bar.close()


def upload_parts(path: Path) -> dict[str, Path]:
    """The parts of an upload: a .zip as ``archive``, else the MovieLens files a directory holds."""
    from shared.logic.ingest import INPUT_FILES

    if path.is_file():
        return {"archive": path}
    if not path.is_dir():
        raise ApiError(0, "not_found", f"{path} is neither a directory nor a file")
    return {name: path / name for name in INPUT_FILES if (path / name).is_file()}


class MultipartBody:
    """A multipart/form-data body read from disk as it is sent: ``requests`` iterates it and sends ``len`` of
    it as the Content-Length, so the API can refuse it before a byte arrives, and no file is held in memory."""

    BLOCK_BYTES = 1 << 20

    def __init__(self, files: dict[str, Path], *, fields: dict[str, str]) -> None:
        self.boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self._fields = {name: value.encode() for name, value in fields.items()}
        self._files = files

    def _head(self, name: str, filename: str | None = None) -> bytes:
        if filename:
            filename = "".join("_" if c in '"\\\r\n' else c for c in filename)
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "\r\nContent-Type: application/octet-stream" if filename else ""
        return f"--{self.boundary}\r\nContent-Disposition: {disposition}{kind}\r\n\r\n".encode()

    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def __len__(self) -> int:
        fields = sum(len(self._head(n)) + len(v) + 2 for n, v in self._fields.items())
        files = sum(len(self._head(n, p.name)) + p.stat().st_size + 2 for n, p in self._files.items())
        return fields + files + len(self._tail())

    def __iter__(self) -> Iterator[bytes]:
        for name, value in self._fields.items():
            yield self._head(name) + value + b"\r\n"
        for name, path in self._files.items():
            yield self._head(name, path.name)
            with path.open("rb") as f:
                while block := f.read(self.BLOCK_BYTES):
                    yield block
            yield b"\r\n"
        yield self._tail()
