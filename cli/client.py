"""A small HTTP client of the movierec API, used by ``movierec submit``, ``status``, ``recommend``, ``search``,
``similar`` and ``demo``."""

from __future__ import annotations

import sys
import time
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

    def submit_pipeline(self, **body: Any) -> dict[str, Any]:
        job: dict[str, Any] = self._request("POST", "/v1/pipelines", json=body)
        return job

    def submit_evaluation(self, **body: Any) -> dict[str, Any]:
        job: dict[str, Any] = self._request("POST", "/v1/jobs/evaluate", json=body)
        return job

    def recommend(self, *, wait_s: float = 30.0, **body: Any) -> dict[str, Any]:
        """Ask and wait for recommendations (polling the job if ``?wait`` ran out first)."""
        return self._finished(self._request("POST", f"/v1/recommendations?wait={wait_s}", json=body))

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
