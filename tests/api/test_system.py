"""GET /v1/system (the overview a dashboard polls) and GET /v1/models/<version>/map (a model's movies on a
plane), against the session stack (a pipeline on ml-latest-small with the tiny BERT, one epoch) and, where
counts must be exact, an app on a key prefix of its own that no worker consumes."""

from __future__ import annotations

import collections
import io
import itertools
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from api import create_app
from api.auth import owner_id
from shared.errors import Conflict
from shared.infra.keys import dataset_artifact, model_artifact
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from shared.jobs.kinds import QUEUES
from shared.jobs.submit import submit
from shared.logic.maps import build_map
from shared.ml.projection import GENRES, MAIN_GENRES, NO_MAIN_GENRE
from tests.conftest import delete_prefix
from tests.helpers import run_job, wait_job

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
KEY_A, KEY_B = "system-key-a-0123456789", "system-key-b-0123456789"


@pytest.fixture(scope="module")
def trained(api_url: str, data_root: Path, tiny_bert: str) -> dict[str, str]:
    """The hybrid pipeline on ml-latest-small with the tiny BERT (copied into the data root), one epoch,
    activated by the pipeline."""
    model_dir = data_root / "tiny-bert-system"
    if not model_dir.exists():
        shutil.copytree(tiny_bert, model_dir)
    body = {"path": "ml-latest-small", "model": str(model_dir), "epochs": 1, "recipe": "hybrid"}
    result = run_job(api_url, "/v1/pipelines", body, timeout_s=600)
    return {"version": result["model"], "dataset": result["dataset"]}


@pytest.fixture
def own_app(settings: Settings) -> Iterator[Any]:
    """An app with API keys on a key prefix of its own: nothing consumes its queues, so counts stay put."""
    prefix = f"{settings.key_prefix}-sys-{uuid.uuid4().hex[:8]}"
    yield create_app({"TESTING": True}, settings=settings.model_copy(update={"key_prefix": prefix,
                                                                           "api_keys": (KEY_A, KEY_B)}))  # fmt: skip
    delete_prefix(connect(settings.redis_url), prefix)


def get_ok(client: Any, path: str, **kw: Any) -> Any:
    r = client.get(path, **kw)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


# -- /v1/system ------------------------------------------------------------------------------------------
def test_system_overview(client: Any, trained: dict[str, str]) -> None:
    body = get_ok(client, "/v1/system")
    keys = {"tenant", "queues", "jobs", "active_model", "latest_evaluation", "datasets", "models", "tenants"}
    assert set(body) == keys and body["tenant"] == "default"
    own = next(row for row in body["tenants"] if row["tenant"] == "default")  # open: the whole deployment's view
    assert (own["datasets"], own["models"]) == (body["datasets"], body["models"])
    assert [q["name"] for q in body["queues"]] == list(QUEUES)
    for queue in body["queues"]:
        assert set(queue) == {"name", "depth", "workers"} and queue["workers"] >= 1 and queue["depth"] >= 0
    assert set(body["jobs"]) == set(JOB_STATUSES)
    assert all(isinstance(n, int) and n >= 0 for n in body["jobs"].values())
    assert body["jobs"]["succeeded"] >= 1  # the pipeline at least
    models = get_ok(client, "/v1/models")
    active = next(m for m in models["models"] if m["version"] == models["active"])
    assert body["active_model"] == active and models["active"] == trained["version"]
    assert body["models"] == len(models["models"])
    assert body["datasets"] == len(get_ok(client, "/v1/datasets")["datasets"])
    evaluated = [m for m in models["models"] if m.get("evaluation")]
    if evaluated:
        assert body["latest_evaluation"]["model"] == evaluated[0]["version"]
    else:
        assert body["latest_evaluation"] is None


def test_a_finished_job_is_counted(client: Any, api_url: str, trained: dict[str, str]) -> None:
    before = get_ok(client, "/v1/system")["jobs"]
    r = requests.post(f"{api_url}/v1/datasets", json={"path": "ml-latest-small"}, timeout=30)  # stored: reused
    assert r.status_code == 202, r.text
    assert wait_job(api_url, r.json()["id"], timeout_s=120)["status"] == "succeeded"
    after = get_ok(client, "/v1/system")["jobs"]
    assert after["succeeded"] >= before["succeeded"] + 1
    assert after["failed"] >= before["failed"] and after["cancelled"] >= before["cancelled"]


def test_job_counts_are_exact_and_take_in_every_owner(own_app: Any) -> None:
    svc, client = own_app.extensions["movierec"], own_app.test_client()
    auth = {"Authorization": f"Bearer {KEY_A}"}
    empty = get_ok(client, "/v1/system", headers=auth)
    assert empty["jobs"] == dict.fromkeys(JOB_STATUSES, 0)
    assert [(q["depth"], q["workers"]) for q in empty["queues"]] == [(0, 0)] * len(QUEUES)
    assert empty["active_model"] is None and empty["latest_evaluation"] is None
    assert (empty["datasets"], empty["models"]) == (0, 0)
    assert client.get("/v1/system").status_code == 401

    sent = submit(own_app.extensions["celery"], svc.jobs, kind="ingest", params={"path": "x"}, owner=owner_id(KEY_B))
    other = svc.jobs.create("train", {"dataset": "ds-x"}, owner=owner_id(KEY_B))
    svc.jobs.create("index", {"version": "m-x"}, owner=owner_id(KEY_A))
    assert svc.jobs.start(other.id, stage="training") is not None
    svc.redis.sadd(svc.keys.jobs_active, "j-gone")  # an id whose record vanished counts for nothing
    counters = {"train\tfailed": 2, "ingest\tfailed": 1, "recommend\tcancelled": 4, "ingest\tsucceeded": 5,
                "encode\tsucceeded": 1, "odd\tqueued": 9}  # fmt: skip
    for field, n in counters.items():
        svc.redis.hincrby(svc.keys.metrics_jobs, field, n)
    body = get_ok(client, "/v1/system", headers=auth)
    assert body["jobs"] == {"queued": 2, "running": 1, "succeeded": 6, "failed": 3, "cancelled": 4}
    depth = {q["name"]: q["depth"] for q in body["queues"]}
    assert depth == {"interactive": 0, "cpu": 1, "gpu": 0}  # the ingest's message waits: no worker on this prefix
    assert sent.status == "queued"


TENANT_KEYS = {"acme": "acme-admin-key-0123456789", "globex": "globex-reader-0123456789",
               "globex-admin": "globex-admin-key-0123456789", "ops": "ops-operator-key-0123456789"}  # fmt: skip


@pytest.fixture
def tenants_app(settings: Settings) -> Iterator[Any]:
    """An app whose keys are of two tenants and an operator's, on a key prefix of its own (no worker)."""
    prefix = f"{settings.key_prefix}-ten-{uuid.uuid4().hex[:8]}"
    entries = (f"acme:admin:{TENANT_KEYS['acme']}", f"globex:reader:{TENANT_KEYS['globex']}",
               f"globex:admin:{TENANT_KEYS['globex-admin']}", f"default:operator:{TENANT_KEYS['ops']}")  # fmt: skip
    own = settings.model_copy(update={"key_prefix": prefix, "api_keys": entries, "max_jobs_in_flight": 2})
    yield create_app({"TESTING": True}, settings=own)
    delete_prefix(connect(settings.redis_url), prefix)


def test_each_tenant_sees_its_own_counts_and_an_operator_sees_every_tenant(tenants_app: Any) -> None:
    deployment, client = tenants_app.extensions["movierec"], tenants_app.test_client()
    acme, globex = deployment.for_tenant("acme"), deployment.for_tenant("globex")
    celery = tenants_app.extensions["celery"]
    for _ in range(2):
        submit(celery, acme.jobs, kind="ingest", params={"path": "x"}, owner=owner_id(TENANT_KEYS["acme"]))
    submit(celery, globex.jobs, kind="train", params={"dataset": "ds-x"}, owner=owner_id(TENANT_KEYS["globex"]))
    acme.redis.hincrby(acme.keys.metrics_jobs, "ingest\tsucceeded", 7)
    acme.models.put({"version": "m-acme", "dataset": "ds-a", "index": {"name": "i"}})
    acme.models.activate("m-acme")

    def system(tenant: str) -> dict[str, Any]:
        return dict(get_ok(client, "/v1/system", headers={"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}))

    mine = system("acme")
    assert mine["tenant"] == "acme" and mine["tenants"] is None  # no other tenant's name or count
    assert mine["jobs"] == {"queued": 2, "running": 0, "succeeded": 7, "failed": 0, "cancelled": 0}
    assert {q["name"]: q["depth"] for q in mine["queues"]} == {"interactive": 0, "cpu": 2, "gpu": 0}
    assert mine["active_model"]["version"] == "m-acme" and mine["models"] == 1
    theirs = system("globex")
    assert theirs["tenant"] == "globex" and theirs["tenants"] is None
    assert theirs["jobs"] == {"queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert {q["name"]: q["depth"] for q in theirs["queues"]} == {"interactive": 0, "cpu": 0, "gpu": 1}
    assert theirs["active_model"] is None and theirs["models"] == 0
    whole = system("ops")
    assert whole["tenant"] == "default" and whole["jobs"]["queued"] == 0  # its own tenant's figures
    assert {q["name"]: q["depth"] for q in whole["queues"]} == {"interactive": 0, "cpu": 2, "gpu": 1}  # the broker's
    rows = {row["tenant"]: row for row in whole["tenants"]}
    assert set(rows) == {"acme", "default", "globex"}
    assert rows["acme"] == {"tenant": "acme", "jobs": mine["jobs"], "datasets": 0, "models": 1,
                            "active_model": "m-acme"}  # fmt: skip
    assert rows["globex"]["jobs"] == theirs["jobs"] and rows["globex"]["active_model"] is None

    def tenants_in_metrics(tenant: str) -> set[str]:
        r = client.get("/metrics", headers={"Authorization": f"Bearer {TENANT_KEYS[tenant]}"})
        assert r.status_code == 200
        text = r.get_data(as_text=True)
        return {line.split('tenant="', 1)[1].split('"', 1)[0] for line in text.splitlines() if 'tenant="' in line}

    assert tenants_in_metrics("acme") == {"acme"} and tenants_in_metrics("globex") == {"globex"}
    assert tenants_in_metrics("ops") == {"acme", "default", "globex"}
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {TENANT_KEYS['globex']}"})
    assert "movierec_queue_length" not in metrics.get_data(as_text=True)  # every tenant's messages: not a tenant's


def test_jobs_in_flight_are_capped_per_tenant(tenants_app: Any) -> None:
    client = tenants_app.test_client()

    def ingest(key: str) -> Any:
        headers = {"Authorization": f"Bearer {TENANT_KEYS[key]}"}
        return client.post("/v1/datasets", json={"path": "ml-latest-small"}, headers=headers)

    assert [ingest("acme").status_code for _ in range(2)] == [202, 202]  # no worker here: both stay queued
    refused = ingest("acme")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "quota_exceeded"
    assert refused.get_json()["error"]["details"] == {"kind": "jobs_in_flight", "limit": 2, "held": 2,
                                                      "setting": "MOVIEREC_MAX_JOBS_IN_FLIGHT"}  # fmt: skip
    assert ingest("globex-admin").status_code == 202  # another tenant's cap is its own
    quotas = client.get("/v1/quotas", headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}"}).get_json()
    assert quotas["jobs_in_flight"] == {"used": 2, "limit": 2, "setting": "MOVIEREC_MAX_JOBS_IN_FLIGHT"}
    trail = client.get("/v1/audit", headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}"}).get_json()
    assert [e["outcome"] for e in trail["entries"]] == ["refused: quota_exceeded", "accepted", "accepted"]
    theirs = client.get("/v1/audit", headers={"Authorization": f"Bearer {TENANT_KEYS['globex-admin']}"}).get_json()
    assert [e["outcome"] for e in theirs["entries"]] == ["accepted"]  # each tenant's trail is its own


def test_stored_bytes_are_capped_per_tenant(settings: Settings) -> None:
    prefix = f"{settings.key_prefix}-bytes-{uuid.uuid4().hex[:8]}"
    entries = (f"acme:admin:{TENANT_KEYS['acme']}", f"globex:admin:{TENANT_KEYS['globex-admin']}")
    own = settings.model_copy(update={"key_prefix": prefix, "api_keys": entries, "max_stored_bytes": 100_000})
    app = create_app({"TESTING": True}, settings=own)
    try:
        client, acme = app.test_client(), app.extensions["movierec"].for_tenant("acme")
        acme.artifacts.put_array("blob/x", np.zeros(50_000, dtype=np.float32))  # 200 kB in acme's keyspace
        as_acme = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}
        as_globex = {"Authorization": f"Bearer {TENANT_KEYS['globex-admin']}"}
        held = client.get("/v1/quotas", headers=as_acme).get_json()["stored_bytes"]
        assert held["limit"] == 100_000 and 200_000 <= held["used"] < 300_000, held
        assert client.get("/v1/quotas", headers=as_globex).get_json()["stored_bytes"]["used"] < 10_000
        refused = client.post("/v1/datasets", json={"path": "ml-latest-small"}, headers=as_acme)
        assert refused.status_code == 409 and refused.get_json()["error"]["details"]["kind"] == "stored_bytes"
        assert client.post("/v1/datasets", json={"path": "ml-latest-small"}, headers=as_globex).status_code == 202
        acme.artifacts.delete("blob/x")
        acme.redis.delete(acme.keys.usage_stored_bytes)  # the minute's measurement, made again now
        assert client.post("/v1/datasets", json={"path": "ml-latest-small"}, headers=as_acme).status_code == 202
    finally:
        delete_prefix(connect(settings.redis_url), prefix)


def test_active_model_and_latest_evaluation(own_app: Any) -> None:
    svc, client = own_app.extensions["movierec"], own_app.test_client()
    auth = {"Authorization": f"Bearer {KEY_B}"}
    table = {"dataset": "ds-eval", "training_dataset": "ds-train", "rows": [], "best": None}
    svc.models.put({"version": "m-1", "dataset": "ds-train", "index": {"name": "i"}, "evaluation": table})
    time.sleep(0.01)  # the index orders by creation time
    svc.models.put({"version": "m-2", "dataset": "ds-other", "index": {"name": "i"}})
    svc.models.activate("m-2")
    body = get_ok(client, "/v1/system", headers=auth)
    assert body["active_model"] == svc.models.get("m-2") and body["models"] == 2
    assert body["latest_evaluation"] == {"model": "m-1", "dataset": "ds-eval", "table": table}
    time.sleep(0.01)
    newer = {**table, "dataset": "ds-eval-2"}
    svc.models.put({"version": "m-3", "dataset": "ds-train-2", "evaluation": newer})
    assert get_ok(client, "/v1/system", headers=auth)["latest_evaluation"]["model"] == "m-3"


# -- /v1/models/<version>/map ----------------------------------------------------------------------------
def test_map_of_the_trained_model(client: Any, app: Any, trained: dict[str, str]) -> None:
    svc = app.extensions["movierec"]
    version, dataset = trained["version"], trained["dataset"]
    body = get_ok(client, f"/v1/models/{version}/map")
    assert svc.artifacts.exists(model_artifact(version, "map"))  # kept for the next request
    assert set(body) == {"version", "dataset", "method", "explained_variance", "genres", "movies"}
    assert (body["version"], body["dataset"], body["method"]) == (version, dataset, "pca")
    first, second = body["explained_variance"]
    assert 0 < second <= first < 1 and first + second <= 1

    catalogue = svc.catalogue.movies(dataset)
    movies = body["movies"]
    assert set(movies) == {"movie_id", "x", "y", "genre", "title"}
    assert all(len(column) == len(catalogue) for column in movies.values())
    assert movies["movie_id"] == [m["movie_id"] for m in catalogue]
    assert movies["title"] == [m["title"] for m in catalogue]
    assert all(round(v, 4) == v for v in movies["x"] + movies["y"])
    assert np.std(movies["x"]) >= np.std(movies["y"]) > 0

    genres = body["genres"]
    assert genres == [g for g in MAIN_GENRES if g in genres]  # the fixed order
    assert sorted(set(movies["genre"])) == list(range(len(genres)))  # each named genre is some movie's
    # The main genre is the rarest (fewest movies) of the genres a movie's descriptors begin with.
    leading = [list(itertools.takewhile(GENRES.__contains__, m["descriptors"])) for m in catalogue]
    movies_with = collections.Counter(g for of_movie in leading for g in set(of_movie))
    for of_movie, g in zip(leading, movies["genre"], strict=True):
        expected = min(of_movie, key=lambda name: (movies_with[name], name)) if of_movie else NO_MAIN_GENRE
        assert genres[g] == expected
    assert movies["genre"][movies["title"].index("Toy Story (1995)")] == genres.index("Animation")

    assert get_ok(client, f"/v1/models/{version}/map") == body  # the second answer comes from the artifact


def test_map_is_read_from_its_artifact(app: Any, trained: dict[str, str]) -> None:
    """A changed artifact changes the answer (so it is read, not recomputed); once deleted the request answers
    409 naming the index job, which builds it again, the same as before. Times the build against a request."""
    svc, client = app.extensions["movierec"], app.test_client()
    version, name = trained["version"], model_artifact(trained["version"], "map")
    before = get_ok(client, f"/v1/models/{version}/map")
    svc.artifacts.delete(name)
    r = client.get(f"/v1/models/{version}/map")
    assert r.status_code == 409 and "POST /v1/jobs/index" in r.get_json()["error"]["message"]
    started = time.perf_counter()
    build_map(svc.artifacts, svc.datasets, svc.models, version)  # what the index job does
    computed_s = time.perf_counter() - started
    fresh = get_ok(client, f"/v1/models/{version}/map")
    assert fresh == before
    cached_s = float("inf")
    for _ in range(3):  # the fastest of three: the machine may be busy
        started = time.perf_counter()
        assert get_ok(client, f"/v1/models/{version}/map") == fresh
        cached_s = min(cached_s, time.perf_counter() - started)
    n = len(fresh["movies"]["x"])
    print(f"\nmap of {n} movies: built {computed_s * 1000:.0f} ms, read {cached_s * 1000:.0f} ms")

    with np.load(io.BytesIO(svc.artifacts.get_bytes(name)), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    assert arrays["x"].dtype == np.float32 and arrays["genre"].dtype == np.int16
    mirrored = io.BytesIO()
    np.savez(mirrored, allow_pickle=False, **{**arrays, "x": -arrays["x"]})
    svc.artifacts.put_bytes(name, mirrored.getvalue())
    assert get_ok(client, f"/v1/models/{version}/map")["movies"]["x"] == [-x for x in fresh["movies"]["x"]]

    build_map(svc.artifacts, svc.datasets, svc.models, version)
    assert get_ok(client, f"/v1/models/{version}/map") == fresh


def test_map_limit_keeps_the_most_rated(client: Any, app: Any, trained: dict[str, str]) -> None:
    svc = app.extensions["movierec"]
    version, dataset = trained["version"], trained["dataset"]
    whole = get_ok(client, f"/v1/models/{version}/map")
    full = whole["movies"]
    counts = np.bincount(svc.datasets.ratings(dataset).movie_index, minlength=len(full["movie_id"]))
    limited = get_ok(client, f"/v1/models/{version}/map?limit=25")
    movies = limited["movies"]
    assert all(len(column) == 25 for column in movies.values())
    rows = [full["movie_id"].index(m) for m in movies["movie_id"]]
    assert rows == sorted(rows)  # catalogue order
    assert counts[rows].min() >= np.delete(counts, rows).max()  # the most rated
    assert movies["x"] == [full["x"][i] for i in rows] and movies["title"] == [full["title"][i] for i in rows]
    assert [limited["genres"][g] for g in movies["genre"]] == [whole["genres"][full["genre"][i]] for i in rows]
    assert sorted(set(movies["genre"])) == list(range(len(limited["genres"])))
    assert get_ok(client, f"/v1/models/{version}/map?limit=100000") == whole
    for bad in ("0", "100001", "-1", "ten"):
        r = client.get(f"/v1/models/{version}/map?limit={bad}")
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "validation_error", (bad, r.get_json())
    assert client.get(f"/v1/models/{version}/map?top=3").status_code == 400


def test_map_errors(client: Any, app: Any, trained: dict[str, str]) -> None:
    r = client.get("/v1/models/m-nosuchversion/map")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    svc = app.extensions["movierec"]
    version = f"m-novectors{uuid.uuid4().hex[:6]}"
    svc.models.put({"version": version, "dataset": trained["dataset"], "metrics": {}})
    try:
        r = client.get(f"/v1/models/{version}/map")
        assert r.status_code == 409 and r.get_json()["error"]["code"] == "conflict"
        assert "vectors" in r.get_json()["error"]["message"]
        with pytest.raises(Conflict, match="vectors"):  # the index job fails the same way, naming them
            build_map(svc.artifacts, svc.datasets, svc.models, version)
        assert not svc.artifacts.exists(model_artifact(version, "map"))
    finally:
        svc.models.delete(version, svc.artifacts)


def test_map_of_a_small_model_goes_with_it(own_app: Any) -> None:
    """Three movies, no ratings stored: every limit ties, so the first ones are kept; deleting the version
    deletes its map, which lies under models/<version>/."""
    svc, client = own_app.extensions["movierec"], own_app.test_client()
    auth = {"Authorization": f"Bearer {KEY_A}"}
    a = svc.artifacts
    a.put_array(dataset_artifact("ds-s", "movie_ids"), np.array([10, 20, 30], dtype=np.int32))
    a.put_json(dataset_artifact("ds-s", "titles"), ["A (1990)", "B (1991)", "C (1992)"])
    a.put_json(dataset_artifact("ds-s", "vocabulary"), ["Drama", "war", "Western"])
    a.put_array(dataset_artifact("ds-s", "desc_indptr"), np.array([0, 2, 3, 4], dtype=np.int64))
    a.put_array(dataset_artifact("ds-s", "desc_indices"), np.array([0, 1, 1, 2], dtype=np.int32))
    svc.datasets.put({"id": "ds-s", "source": "seeded"})
    a.put_array(model_artifact("m-s", "embeddings"), np.array([[1, 0], [0, 0], [0, 3]], dtype=np.float32))
    svc.models.put(
        {"version": "m-s", "dataset": "ds-s", "artifacts": {"embeddings": model_artifact("m-s", "embeddings")}}
    )

    build_map(svc.artifacts, svc.datasets, svc.models, "m-s")  # what the index job does
    body = get_ok(client, "/v1/models/m-s/map", headers=auth)
    assert body["genres"] == ["Drama", "Western", NO_MAIN_GENRE]
    assert body["movies"]["genre"] == [0, 2, 1] and body["movies"]["title"] == ["A (1990)", "B (1991)", "C (1992)"]
    assert body["explained_variance"][0] > body["explained_variance"][1] > 0
    two = get_ok(client, "/v1/models/m-s/map?limit=2", headers=auth)
    assert two["movies"]["movie_id"] == [10, 20] and two["genres"] == ["Drama", NO_MAIN_GENRE]
    assert two["movies"]["genre"] == [0, 1]

    assert a.exists(model_artifact("m-s", "map"))
    assert client.delete("/v1/models/m-s", headers=auth).status_code == 200
    assert not a.exists(model_artifact("m-s", "map"))
    assert client.get("/v1/models/m-s/map", headers=auth).status_code == 404
