"""DELETE /v1/models/<version> and DELETE /v1/datasets/<id> free every key they own, and the caps on stored
datasets and models (MOVIEREC_MAX_DATASETS, MOVIEREC_MAX_MODELS) answer 409 quota_exceeded until a delete
frees room. Each test runs an app on a key prefix of its own, on the session's Redis; no worker consumes that
prefix, so an accepted job stays queued."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis

from api import create_app
from shared.infra.keys import dataset_artifact, embeddings_artifact, meta_of, model_artifact
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from tests.conftest import delete_prefix

MakeApp = Callable[..., Any]


@pytest.fixture
def make_app(settings: Settings) -> Iterator[MakeApp]:
    """``make_app(**settings)``: an app on a fresh prefix, with tiny artifact chunks so artifacts have several."""
    prefixes: list[str] = []

    def make(**update: Any) -> Any:
        prefix = f"{settings.key_prefix}-del-{uuid.uuid4().hex[:8]}"
        prefixes.append(prefix)
        return create_app(
            {"TESTING": True}, settings=settings.model_copy(update={"key_prefix": prefix, "chunk_bytes": 64} | update)
        )

    yield make
    client = connect(settings.redis_url)
    for prefix in prefixes:
        delete_prefix(client, prefix)


def svc_of(app: Any) -> Any:
    return app.extensions["movierec"]


def keys_of(app: Any) -> set[bytes]:
    """Every key of the app's prefix but the audit trail, which records the deletions and is bounded by its own
    limits (shared/store/audit.py; tests/api/test_audit.py)."""
    r: redis.Redis = svc_of(app).redis
    trail = svc_of(app).keys.audit.encode()
    return set(r.scan_iter(match=svc_of(app).keys.everything, count=1000)) - {trail}


def artifact_keys(app: Any, name_prefix: str) -> list[bytes]:
    svc = svc_of(app)
    return list(svc.redis.scan_iter(match=svc.keys.artifacts_under(name_prefix), count=1000))


def redis_bytes(app: Any) -> int:
    r: redis.Redis = svc_of(app).redis
    sizes: list[Any] = [r.memory_usage(k, samples=0) for k in keys_of(app)]
    return sum(int(size or 0) for size in sizes)


def seed_model(app: Any, version: str, dataset: str) -> None:
    svc = svc_of(app)
    rng = np.random.default_rng(0)
    for part in ("weights", "embeddings", "index", "index/group"):
        name = model_artifact(version, part)
        svc.artifacts.put_bytes(name, rng.bytes(300))  # several 64-byte chunks
        svc.artifacts.put_json(meta_of(name), {"part": part})
    svc.models.put({"version": version, "dataset": dataset, "index": {"name": model_artifact(version, "index")}})


def seed_dataset(app: Any, ds_id: str, **fields: Any) -> None:
    svc = svc_of(app)
    a = svc.artifacts
    a.put_array(dataset_artifact(ds_id, "movie_ids"), np.array([10, 20, 30], dtype=np.int32))
    a.put_json(dataset_artifact(ds_id, "titles"), ["A (1990)", "B (1991)", "C (1992)"])
    a.put_json(dataset_artifact(ds_id, "vocabulary"), ["Drama", "war"])
    a.put_array(dataset_artifact(ds_id, "desc_indptr"), np.array([0, 1, 2, 3], dtype=np.int64))
    a.put_array(dataset_artifact(ds_id, "desc_indices"), np.array([0, 1, 0], dtype=np.int32))
    a.put_array(dataset_artifact(ds_id, "user_ids"), np.array([1, 2], dtype=np.int32))
    svc.datasets.put({"id": ds_id, "source": "seeded", **fields})


def test_delete_model(make_app: MakeApp) -> None:
    app = make_app()
    client, svc = app.test_client(), svc_of(app)
    seed_model(app, "m-a", "ds-x")
    seed_model(app, "m-ab", "ds-x")  # a name that starts like m-a's: not touched
    seed_model(app, "m-b", "ds-x")
    svc.models.activate("m-b")
    neighbour = sorted(artifact_keys(app, "models/m-ab/"))

    r = client.delete("/v1/models/m-b")
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["error"]["code"] == "conflict" and "active" in r.get_json()["error"]["message"]
    assert svc.models.get("m-b") is not None and artifact_keys(app, "models/m-b/")

    before = artifact_keys(app, "models/m-a/")
    assert len(before) > 8  # manifests, chunks, metas
    r = client.delete("/v1/models/m-a")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["deleted"] == "m-a" and body["keys"] == len(before) + 1 and body["bytes"] > 300 * 4
    assert artifact_keys(app, "models/m-a/") == []
    assert svc.models.get("m-a") is None
    assert "m-a" not in [m["version"] for m in client.get("/v1/models").get_json()["models"]]
    assert sorted(artifact_keys(app, "models/m-ab/")) == neighbour

    r = client.delete("/v1/models/m-a")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    assert client.post("/v1/models/m-a/activate").status_code == 404


def test_delete_dataset_with_its_models_and_triplets(make_app: MakeApp) -> None:
    app = make_app()
    client, svc = app.test_client(), svc_of(app)
    # The state to come back to: a derived dataset with the active model on it.
    seed_dataset(app, "ds-y", derived={"from": "ds-x", "protocol": {}})
    seed_model(app, "m-y", "ds-y")
    svc.models.activate("m-y")
    keys_before, bytes_before = keys_of(app), redis_bytes(app)

    seed_dataset(app, "ds-x")
    seed_model(app, "m-1", "ds-x")
    seed_model(app, "m-2", "ds-x")
    a = svc.artifacts
    a.put_array("triplets/ds-x/uniform-min-42", np.zeros((40, 3), dtype=np.int32))
    a.put_array(embeddings_artifact("ds-x", "f" * 64, "cls"), np.zeros((3, 8), dtype=np.float32))
    a.put_json(meta_of(embeddings_artifact("ds-x", "f" * 64, "cls")), {"dim": 8})
    a.put_array("evaluations/ds-x/test-r4.0/summary", np.zeros(4, dtype=np.float64))
    assert client.get("/v1/datasets/ds-x/movies").status_code == 200  # caches the catalogue in this process
    assert "ds-x" in svc.catalogue._catalogues
    grown = redis_bytes(app)
    assert grown > bytes_before

    svc.models.activate("m-1")
    r = client.delete("/v1/datasets/ds-x")
    assert r.status_code == 409, r.get_json()
    assert "m-1" in r.get_json()["error"]["message"]
    assert svc.datasets.get("ds-x") is not None and svc.models.get("m-1") is not None

    svc.models.activate("m-y")
    r = client.delete("/v1/datasets/ds-x")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["deleted"] == "ds-x" and sorted(body["models"]) == ["m-1", "m-2"]
    assert body["keys"] > 0 and body["bytes"] > 0
    assert keys_of(app) == keys_before  # the same set of keys as before ds-x was created
    after = redis_bytes(app)
    assert after == bytes_before, (bytes_before, grown, after)
    # The answer counts the keys deleted; the index entries removed from the sorted sets are the rest.
    assert 0.95 * (grown - after) <= body["bytes"] <= grown - after
    for head in ("dataset/ds-x/", "triplets/ds-x/", "embeddings/ds-x/", "evaluations/ds-x/", "models/m-1/"):
        assert artifact_keys(app, head) == [], head
    assert "ds-x" not in svc.catalogue._catalogues
    assert svc.datasets.get("ds-y") is not None and svc.models.get("m-y") is not None
    assert [d["id"] for d in client.get("/v1/datasets").get_json()["datasets"]] == ["ds-y"]
    assert client.delete("/v1/datasets/ds-x").status_code == 404
    assert client.get("/v1/datasets/ds-x/movies").status_code == 404


def test_a_glob_character_in_a_version_matches_only_itself(make_app: MakeApp) -> None:
    app = make_app()
    seed_model(app, "m-1", "ds-x")
    seed_model(app, "m-2", "ds-x")
    svc_of(app).models.put({"version": "m-*", "dataset": "ds-x"})
    before = artifact_keys(app, "models/")
    assert app.test_client().delete("/v1/models/m-*").get_json()["keys"] == 1  # its record only
    assert sorted(artifact_keys(app, "models/")) == sorted(before)


def test_quotas(make_app: MakeApp) -> None:
    app = make_app(max_datasets=1, max_models=1)
    client, svc = app.test_client(), svc_of(app)
    ingest = {"path": "ml-latest-small"}
    assert client.post("/v1/datasets", json=ingest).status_code == 202  # none stored: room

    seed_dataset(app, "ds-q")
    for route in ("/v1/datasets", "/v1/pipelines"):
        r = client.post(route, json=ingest)
        assert r.status_code == 409, (route, r.get_json())
        err = r.get_json()["error"]
        assert err["code"] == "quota_exceeded"
        assert "MOVIEREC_MAX_DATASETS" in err["message"] and "DELETE /v1/datasets/" in err["message"]
        assert err["details"] == {"kind": "datasets", "limit": 1, "stored": 1, "needed": 1,
                                  "setting": "MOVIEREC_MAX_DATASETS"}  # fmt: skip

    seed_model(app, "m-q", "ds-q")
    r = client.post("/v1/pipelines", json={"dataset": "ds-q"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "quota_exceeded"
    assert "MOVIEREC_MAX_MODELS" in r.get_json()["error"]["message"]

    assert client.delete("/v1/models/m-q").status_code == 200
    assert client.post("/v1/pipelines", json={"dataset": "ds-q"}).status_code == 202
    # An evaluation stores its training part (a dataset) and a model per recipe.
    r = client.post("/v1/jobs/evaluate", json={"dataset": "ds-q", "recipes": ["seed"]})
    assert r.status_code == 409 and r.get_json()["error"]["details"]["kind"] == "datasets", r.get_json()
    models_capped = make_app(max_models=1)
    seed_dataset(models_capped, "ds-e")
    r = models_capped.test_client().post("/v1/jobs/evaluate", json={"dataset": "ds-e", "recipes": ["seed", "hybrid"]})
    assert r.status_code == 409 and r.get_json()["error"]["details"]["needed"] == 2, r.get_json()
    # Feedback on a dataset: a pipeline over it stores a feedback version, a dataset more.
    svc.feedback.add("ds-q", [(1, 1, 4.0, 0)])
    r = client.post("/v1/pipelines", json={"dataset": "ds-q"})
    assert r.status_code == 409 and r.get_json()["error"]["details"]["kind"] == "datasets"
    assert client.delete("/v1/datasets/ds-q").status_code == 200
    assert svc.datasets.count() == 0
    assert client.post("/v1/datasets", json=ingest).status_code == 202


def test_no_cap_by_default(make_app: MakeApp) -> None:
    app = make_app()
    for i in range(3):
        seed_dataset(app, f"ds-{i}")
    assert app.test_client().post("/v1/datasets", json={"path": "ml-latest-small"}).status_code == 202
