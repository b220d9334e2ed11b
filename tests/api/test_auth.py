"""API keys: every route but /healthz needs one, and a job is visible only to the key that created it.

The keyed API runs twice, as the other API tests do: in process (Flask's client) and as a real ``movierec
api`` (gunicorn) started with ``MOVIEREC_API_KEYS``. Both share the session's Redis prefix with the stack's
real workers, so the jobs they create really run, pipelines' stage jobs included.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import requests

from api import create_app
from api.auth import MIN_KEY_CHARS, KeyRing, bearer_token, owner_id
from api.auth import Caller as KeyCaller
from cli.stack import Stack, free_port
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from tests.conftest import delete_prefix
from tests.helpers import answers, running, wait_job, wait_until

KEY_A = "key-a-" + "a" * 20
KEY_B = "key-b-" + "b" * 20
KEYS = (KEY_A, KEY_B)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Caller:
    """One keyed API, in process or over HTTP; ``key=None`` sends no Authorization header."""

    def __init__(self, app: Any = None, url: str | None = None) -> None:
        self._client = app.test_client() if app is not None else None
        self._url = url
        self._http = requests.Session()

    def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = KEY_A,
        json: Any = None,
        data: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        headers = dict(headers or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if self._client is not None:
            r = self._client.open(path, method=method, json=json, data=data, headers=headers)
            body = r.get_json(silent=True)
            return Reply(r.status_code, body, dict(r.headers))
        response = self._http.request(method, f"{self._url}{path}", json=json, data=data, headers=headers, timeout=30)
        try:
            body = response.json()
        except ValueError:
            body = None
        return Reply(response.status_code, body, dict(response.headers))

    def job(self, job_id: str, *, key: str = KEY_A) -> dict[str, Any]:
        reply = self.call("GET", f"/v1/jobs/{job_id}", key=key)
        assert reply.status == 200, reply
        return dict(reply.body)


@pytest.fixture(scope="module")
def keyed_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": KEYS})


@pytest.fixture(scope="module")
def keyed_app(keyed_settings: Settings, stack: Stack) -> Any:
    return create_app({"TESTING": True}, settings=keyed_settings)


@pytest.fixture(scope="module")
def keyed_url(keyed_settings: Settings, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``movierec api`` with MOVIEREC_API_KEYS in its environment (as ``Settings.child_env`` hands it)."""
    port = free_port()
    log = tmp_path_factory.mktemp("keyed-api") / "api.log"
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cli.main", "api", "--port", str(port), "--workers", "1"]
    with running(command, log, env=keyed_settings.child_env(), ready=answers(f"{url}/healthz")):  # the open route
        yield url


@pytest.fixture(params=["flask", "http"])
def keyed(request: pytest.FixtureRequest, keyed_app: Any, keyed_url: str) -> Caller:
    return Caller(app=keyed_app) if request.param == "flask" else Caller(url=keyed_url)


def assert_401(reply: Reply) -> None:
    assert reply.status == 401, reply
    assert reply.body["error"]["code"] == "unauthorized" and set(reply.body["error"]) == {"code", "message", "details"}
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/some-id"),
        ("GET", "/v1/jobs/some-id/result"),
        ("DELETE", "/v1/jobs/some-id"),
        ("GET", "/v1/datasets"),
        ("GET", "/v1/models"),
        ("POST", "/v1/datasets"),
        ("POST", "/v1/pipelines"),
        ("POST", "/v1/recommendations"),
        ("GET", "/v1/no-such-route"),
    ],
)
def test_every_route_but_healthz_needs_a_key(keyed: Caller, method: str, path: str) -> None:
    body = {"path": "ml-latest-small"} if method == "POST" else None
    assert_401(keyed.call(method, path, key=None, json=body))
    assert_401(keyed.call(method, path, key="not-a-key-" + "x" * 20, json=body))


def test_healthz_is_open_and_a_key_opens_the_rest(keyed: Caller) -> None:
    assert keyed.call("GET", "/healthz", key=None).status == 200
    assert keyed.call("GET", "/v1/jobs", key=KEY_A).status == 200
    assert keyed.call("GET", "/v1/jobs", key=KEY_B).status == 200
    assert keyed.call("GET", "/openapi.json", key=KEY_B).status == 200


def test_the_key_is_checked_before_anything_else(keyed: Caller) -> None:
    """No key: 401, not the 415 or 400 the body would get, so a caller without a key learns nothing."""
    r = keyed.call("POST", "/v1/datasets", key=None, data="path=x", headers={"Content-Type": "text/plain"})
    assert_401(r)
    nan = keyed.call(
        "POST", "/v1/jobs/train", key=None, data='{"lr": NaN}', headers={"Content-Type": "application/json"}
    )
    assert_401(nan)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {KEY_A}", True),
        (f"bearer {KEY_A}", True),  # the scheme is case-insensitive (RFC 7235)
        (f"Bearer   {KEY_A}  ", True),
        (f"Bearer {KEY_A}x", False),
        (f"Bearer {KEY_A[:-1]}", False),
        (f"Basic {KEY_A}", False),
        (KEY_A, False),
        ("Bearer", False),
        ("Bearer ", False),
        ("", False),
    ],
)
def test_authorization_header_forms(keyed: Caller, header: str, ok: bool) -> None:
    r = keyed.call("GET", "/v1/jobs", key=None, headers={"Authorization": header})
    if ok:
        assert r.status == 200, r
    else:
        assert_401(r)


def test_an_unknown_key_is_told_invalid_token(keyed: Caller) -> None:
    r = keyed.call("GET", "/v1/jobs", key="unknown-key-0123456789")
    assert_401(r)
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert "invalid_token" not in keyed.call("GET", "/v1/jobs", key=None).headers["WWW-Authenticate"]


def test_a_job_is_visible_only_to_the_key_that_created_it(keyed: Caller, keyed_app: Any) -> None:
    r = keyed.call("POST", "/v1/datasets", key=KEY_A, json={"path": "ml-latest-small"})
    assert r.status == 202, r
    job_id = r.body["id"]
    job = wait_job(lambda: keyed.job(job_id, key=KEY_A))  # a real worker ran it
    assert job["status"] == "succeeded", job

    assert keyed.call("GET", f"/v1/jobs/{job_id}/result", key=KEY_A).status == 200
    for method, path in [("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/result")]:
        other = keyed.call(method, path, key=KEY_B)
        assert other.status == 404 and other.body["error"]["code"] == "not_found", other
        # the same answer as an id that never existed, so ids cannot be probed
        assert other.body["error"]["message"] == f"job {job_id!r} does not exist or has expired"

    listed_a = {j["id"] for j in keyed.call("GET", "/v1/jobs?kind=ingest&limit=500", key=KEY_A).body["jobs"]}
    listed_b = {j["id"] for j in keyed.call("GET", "/v1/jobs?kind=ingest&limit=500", key=KEY_B).body["jobs"]}
    assert job_id in listed_a and job_id not in listed_b

    # The record carries a hash of the key, never the key.
    raw = connect(keyed_app.extensions["movierec"].settings.redis_url).hgetall(
        f"{keyed_app.extensions['movierec'].settings.key_prefix}:job:{job_id}"
    )
    assert raw[b"owner"].decode() == owner_id(KEY_A)
    assert not any(KEY_A.encode() in v or KEY_B.encode() in v for v in raw.values())

    # Datasets stay shared: key B reads the dataset key A ingested.
    dataset = keyed.call("GET", f"/v1/jobs/{job_id}/result", key=KEY_A).body["dataset"]
    assert keyed.call("GET", f"/v1/datasets/{dataset}", key=KEY_B).status == 200


def test_another_key_cannot_cancel_a_job(keyed: Caller, keyed_app: Any) -> None:
    with keyed_app.app_context():
        job = keyed_app.extensions["movierec"].jobs.create("ingest", {"path": "never-sent"}, owner=owner_id(KEY_A))
    r = keyed.call("DELETE", f"/v1/jobs/{job.id}", key=KEY_B)
    assert r.status == 404 and r.body["error"]["code"] == "not_found"
    assert keyed.job(job.id, key=KEY_A)["status"] == "queued"
    r = keyed.call("DELETE", f"/v1/jobs/{job.id}", key=KEY_A)
    assert r.status == 200 and r.body["status"] == "cancelled"


def test_pipeline_stage_jobs_inherit_the_pipeline_owner(keyed: Caller, keyed_app: Any) -> None:
    """The stage jobs are created by a worker (shared.logic.pipeline), not by the API, with the pipeline's owner."""
    r = keyed.call("POST", "/v1/pipelines", key=KEY_A, json={"path": "ml-latest-small"})
    assert r.status == 202, r
    pipeline_id = r.body["id"]
    jobs = keyed_app.extensions["movierec"].jobs
    state = wait_until(
        lambda: jobs.field(pipeline_id, "pipeline"), timeout_s=60, failure=lambda: keyed.job(pipeline_id)
    )
    # Stop the pipeline here: its first stage is enough, and the shared workers have other tests to run.
    assert keyed.call("DELETE", f"/v1/jobs/{pipeline_id}", key=KEY_A).status == 200
    child_id = json.loads(state)["children"]["ingest"]
    child = jobs.get(child_id)
    assert child is not None and child.owner == owner_id(KEY_A) and child.params["parent"]["id"] == pipeline_id
    assert keyed.call("GET", f"/v1/jobs/{child_id}", key=KEY_A).status == 200
    assert keyed.call("GET", f"/v1/jobs/{child_id}", key=KEY_B).status == 404
    listed_b = {j["id"] for j in keyed.call("GET", "/v1/jobs?limit=500", key=KEY_B).body["jobs"]}
    assert not {pipeline_id, child_id} & listed_b
    keyed.call("DELETE", f"/v1/jobs/{child_id}", key=KEY_A)  # 200, or 409 if it already finished
    assert keyed.job(child_id)["status"] in ("cancelled", "succeeded")


@pytest.fixture
def serving_app(settings: Settings) -> Iterator[Any]:
    """A keyed app on a prefix of its own with an active model (a record and its dataset's id arrays), so a
    recommendation is queued; no worker consumes that prefix, so the job stays queued."""
    prefix = f"{settings.key_prefix}-serving-{uuid.uuid4().hex[:8]}"
    app = create_app({"TESTING": True}, settings=settings.model_copy(update={"key_prefix": prefix, "api_keys": KEYS}))
    svc = app.extensions["movierec"]
    svc.artifacts.put_array("dataset/ds-x/user_ids", np.array([1, 2, 3], dtype=np.int32))
    svc.artifacts.put_array("dataset/ds-x/movie_ids", np.array([10, 20, 30], dtype=np.int32))
    svc.models.put({"version": "m-x", "dataset": "ds-x", "index": {"name": "i"}})
    svc.models.activate("m-x")
    yield app
    delete_prefix(connect(settings.redis_url), prefix)


def test_recommendation_jobs_belong_to_their_key(serving_app: Any) -> None:
    caller = Caller(app=serving_app)
    r = caller.call("POST", "/v1/recommendations?wait=0", key=KEY_A, json={"user_id": 2, "k": 3})
    assert r.status == 202, r
    job_id = r.body["id"]
    assert caller.call("GET", f"/v1/jobs/{job_id}", key=KEY_A).status == 200
    assert caller.call("GET", f"/v1/jobs/{job_id}", key=KEY_B).status == 404
    assert [j["id"] for j in caller.call("GET", "/v1/jobs?kind=recommend", key=KEY_A).body["jobs"]] == [job_id]
    assert caller.call("GET", "/v1/jobs?kind=recommend", key=KEY_B).body["jobs"] == []
    assert serving_app.extensions["movierec"].jobs.get(job_id).owner == owner_id(KEY_A)


def test_an_open_api_accepts_and_ignores_a_key(app: Any) -> None:
    client = app.test_client()
    assert client.get("/v1/jobs").status_code == 200
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer whatever-it-is-0123"}).status_code == 200
    with app.app_context():
        job = app.extensions["movierec"].jobs.create("ingest", {"path": "never-sent"}, owner=owner_id(KEY_A))
    assert client.get(f"/v1/jobs/{job.id}").status_code == 200  # open: no owners to tell apart
    client.delete(f"/v1/jobs/{job.id}")


def test_owner_id_is_a_stable_hash_of_the_key() -> None:
    assert owner_id(KEY_A) == owner_id(KEY_A) != owner_id(KEY_B)
    assert KEY_A not in owner_id(KEY_A) and owner_id(KEY_A).startswith("k-") and len(owner_id(KEY_A)) == 34


@pytest.mark.parametrize("bad", ["short", "x" * (MIN_KEY_CHARS - 1), "has space " + "y" * 20, 'quote"' + "z" * 20])
def test_weak_or_unsendable_keys_are_refused_without_being_echoed(bad: str) -> None:
    with pytest.raises(ValueError, match="MOVIEREC_API_KEYS") as caught:
        KeyRing([KEY_A, bad])
    assert bad not in str(caught.value)


def test_keys_come_from_the_environment_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_API_KEYS", f" {KEY_A} ,,{KEY_B}")
    settings = Settings()
    assert settings.api_keys == KEYS
    assert KEY_A not in repr(settings)
    assert settings.child_env()["MOVIEREC_API_KEYS"] == f"{KEY_A},{KEY_B}"
    monkeypatch.setenv("MOVIEREC_API_KEYS", "")
    assert Settings().api_keys == ()


def test_keyring_identifies_each_key() -> None:
    ring = KeyRing(KEYS)
    assert ring.enabled and not KeyRing([]).enabled
    assert ring.identify(KEY_A) == KeyCaller(owner=owner_id(KEY_A), tenant="default", role="admin")  # a plain KEY
    assert ring.identify(KEY_B) == KeyCaller(owner=owner_id(KEY_B), tenant="default", role="admin")
    assert ring.identify(KEY_A + "x") is None and ring.identify("") is None
    assert bearer_token(f"Bearer {KEY_A}") == KEY_A and bearer_token("Basic abc") is None
