"""A batch recommendation job's store on a real Redis: its users resolved once, its parts streamed as CSV and
.npy, and the janitor's resends of its lost shards and join (a real Celery app sends; no worker runs)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from shared.infra.keys import batch_part, shard_id
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.jobs.kinds import BATCH, BATCH_JOIN, BATCH_SHARD
from shared.jobs.sharded import PLAN_FIELD, ShardPlan
from shared.logic import batch
from shared.logic.ingest import DatasetOptions, ingest
from shared.logic.services import Services
from shared.ml.attribution import verify
from shared.ml.batch import ROW
from tests.conftest import delete_prefix
from tests.helpers import SMALL
from tests.redis.test_janitor import clear, sent
from workers.janitor import Janitor


@pytest.fixture
def svc(settings: Settings, redis_client: redis.Redis) -> Iterator[Services]:
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-b{uuid.uuid4().hex[:6]}"})
    yield Services.from_settings(own)
    delete_prefix(redis_client, own.key_prefix)


def rows(users: list[int], k: int) -> np.ndarray:
    out = np.zeros(len(users) * k, dtype=ROW)
    out["user_id"] = np.repeat(users, k)
    out["rank"] = np.tile(np.arange(1, k + 1), len(users))
    out["movie_id"] = np.arange(len(out)) + 100
    out["score"] = np.linspace(0.9, -0.3, len(out)).round(6)
    return out


def test_users_are_resolved_once_all_or_listed(svc: Services) -> None:
    record, _ = ingest(svc.datasets, SMALL, DatasetOptions(tags_per_movie=5), source="s", progress=lambda *_: None)
    listed = batch.plan(svc, "j-list", {"users": [7, 3, 7, 9, 3]}, ttl_s=60)
    assert listed == ShardPlan(items=3, size=batch.DEFAULT_SHARD_USERS, payload={"users": [7, 3, 7, 9, 3]})
    svc.feedback.add(record["id"], [(999_999, 1, 4.0, 1), (2, 1, 4.0, 1)])
    params = {"users": "all", "dataset": record["id"], "shard_users": 100}
    everyone = batch.plan(svc, "j-all", params, ttl_s=60)
    assert everyone.items == 611 and len(everyone.ranges) == 7 and everyone.ranges[-1] == (600, 611)
    svc.feedback.add(record["id"], [(888_888, 1, 4.0, 1)])  # after planning: not in this job
    assert batch.plan(svc, "j-all", params, ttl_s=60) == everyone


def test_parts_stream_as_csv_and_as_one_npy(svc: Services) -> None:
    parts = [rows([5, 1], 3), rows([2], 3), rows([], 3)]
    result = {"rows": 9, "parts": [{"range": [0, 2], "rows": 6}, {"range": [2, 3], "rows": 3},
                                   {"range": [3, 3], "rows": 0}]}  # fmt: skip
    for part, lo in zip(parts, (0, 2, 3), strict=True):
        batch.store_part(svc.artifacts, "j1", lo, part, ttl_s=60)
    assert batch.parts_stored(svc.artifacts, "j1", result)
    whole = np.concatenate(parts)
    npy = b"".join(batch.npy_stream(svc.artifacts, "j1", result))
    assert len(npy) == batch.npy_size(result)
    expected = io.BytesIO()
    np.save(expected, whole, allow_pickle=False)
    assert npy == expected.getvalue()
    text = b"".join(batch.csv_stream(svc.artifacts, "j1", result, secret=b"s")).decode()
    lines = text.splitlines()
    assert lines[0] == "user_id,rank,movie_id,score,recommendation_id" and len(lines) == 10
    assert lines[1].startswith("5,1,100,0.9,r1.") and lines[-1].startswith("2,3,102,-0.3,r1.")
    by_user: dict[str, set[str]] = {}
    for line in lines[1:]:
        by_user.setdefault(line.split(",")[0], set()).add(line.split(",")[4])
    assert all(len(ids) == 1 for ids in by_user.values())  # one id per user's answer, on each of its rows
    served = verify(b"s", next(iter(by_user["5"])))
    assert served.user_id == 5 and served.position(100) == 1
    svc.artifacts.delete(batch_part("j1", 2))
    assert not batch.parts_stored(svc.artifacts, "j1", result)


def test_the_janitor_resends_the_planning_then_missing_shards_then_the_join(svc: Services) -> None:
    janitor = Janitor(svc, make_celery(svc.settings), worker="test")
    params = {"users": [1, 2, 3, 4, 5], "k": 3, "shard_users": 2, "model": "m-x", "dataset": "ds-x"}
    job = svc.jobs.create("recommend-batch", params)
    svc.jobs.start(job.id, stage="planning")
    janitor.sweep()
    janitor.sweep()
    assert sent(svc) == [(BATCH.name, [job.id, params])]  # not planned yet: plan again
    clear(svc)
    planned = ShardPlan(items=5, size=2, payload=params)
    svc.jobs.annotate(job.id, **{PLAN_FIELD: planned.to_json()})
    svc.jobs.shard_done(job.id, shard_id(0), {"range": [0, 2]}, total=3)
    janitor.sweep()
    janitor.sweep()
    assert sent(svc) == [(BATCH_SHARD.name, [job.id, params, 2, 4, 3]), (BATCH_SHARD.name, [job.id, params, 4, 5, 3])]
    clear(svc)
    for lo, hi in planned.ranges[1:]:
        svc.jobs.shard_done(job.id, shard_id(lo), {"range": [lo, hi]}, total=3)
    janitor.sweep()
    janitor.sweep()
    assert sent(svc) == [(BATCH_JOIN.name, [job.id, params])]
