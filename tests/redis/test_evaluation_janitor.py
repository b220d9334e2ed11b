"""The janitor and an evaluation job: alive while its child job is, else its lost step, split, shards or join
sent again; the scoring's two waves of cells, the baselines' beside the pipelines and the recipes' once trained
(a real Redis and Celery app; no worker runs)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from shared.infra.keys import shard_id
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.jobs.kinds import (
    EVALUATE_JOIN,
    EVALUATE_SHARD,
    EVALUATE_SPLIT,
    EVALUATE_STEP,
    INTERACTIVE_QUEUE,
    PIPELINE_STEP,
)
from shared.jobs.sharded import PLAN_FIELD, Deferred, ShardPlan, stored_plan
from shared.logic.evaluation import EvaluationState, advance, trained_models
from shared.logic.scoring import NotTrained, score_shard, trained_cell
from shared.logic.services import Services
from shared.ml.protocol import Protocol
from tests.conftest import delete_prefix
from tests.redis.test_janitor import sent
from workers.janitor import Janitor


@pytest.fixture
def svc(settings: Settings, redis_client: redis.Redis) -> Iterator[Services]:
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-e{uuid.uuid4().hex[:6]}"})
    yield Services.from_settings(own)
    delete_prefix(redis_client, own.key_prefix)


@pytest.fixture
def janitor(svc: Services) -> Janitor:
    return Janitor(svc, make_celery(svc.settings), worker="test")


PARAMS = {"dataset": "ds-a", "recipes": ["seed"], "baselines": ["random"], "shard_users": 10, "tune": False}


def running(svc: Services, state: EvaluationState) -> str:
    job = svc.jobs.create("evaluate", PARAMS)
    svc.jobs.start(job.id, stage="score")
    state.write(svc.jobs, job.id)
    return job.id


def twice(janitor: Janitor) -> int:
    return janitor.sweep()["resent"] + janitor.sweep()["resent"]


def test_alive_while_its_child_is_then_the_step_is_sent_again(svc: Services, janitor: Janitor) -> None:
    child = svc.jobs.create("pipeline", {"dataset": "ds-t"})
    job_id = running(svc, EvaluationState(stage=2, children={"train:seed": child.id}))  # ingest, split, train
    for _ in range(3):
        janitor.sweep()
    assert all(task != EVALUATE_STEP.name for task, _ in sent(svc, INTERACTIVE_QUEUE))  # (the child gets its own)
    svc.jobs.fail(child.id, code="x", message="gone")  # the child finished, and its notification was lost
    assert twice(janitor) >= 1
    assert (EVALUATE_STEP.name, [job_id]) in sent(svc, INTERACTIVE_QUEUE)  # steps: milliseconds, never behind cells


def test_a_lost_split_is_sent_again(svc: Services, janitor: Janitor) -> None:
    job_id = running(svc, EvaluationState(stage=1, sent=["split"]))
    assert twice(janitor) == 1
    assert sent(svc) == [(EVALUATE_SPLIT.name, [job_id, "ds-a", {**Protocol().__dict__}])]


def test_the_missing_shards_then_the_join(svc: Services, janitor: Janitor) -> None:
    plan: dict[str, Any] = {"rows": []}
    job_id = running(svc, EvaluationState(stage=3))
    svc.jobs.annotate(job_id, **{PLAN_FIELD: ShardPlan(items=25, size=10, payload=plan).to_json()})  # as scoring does
    svc.jobs.shard_done(job_id, shard_id(10), {"users": [10, 20]}, total=3)
    assert twice(janitor) == 1
    assert sent(svc) == [(EVALUATE_SHARD.name, [job_id, plan, lo, hi, 3]) for lo, hi in ((0, 10), (20, 25))]
    for lo in (0, 20):
        svc.jobs.shard_done(job_id, shard_id(lo), {}, total=3)
    assert twice(janitor) == 1
    assert sent(svc) == [(EVALUATE_JOIN.name, [job_id, plan])]


# -- scoring beside training: the baselines' cells go out as the recipes' pipelines start ------------------
SPLIT = {"dataset": "ds-a", "training_dataset": "ds-t", "evaluated": 25, "cold_users": 0}


def test_the_baselines_cells_are_sent_with_the_pipelines_and_the_recipes_once_trained(svc: Services) -> None:
    job_id = running(svc, EvaluationState(stage=2, results={"split": SPLIT}))  # ingest, split: at train:seed
    celery = make_celery(svc.settings)
    advance(svc, celery, job_id)
    state = EvaluationState.read(svc.jobs, job_id)
    assert state is not None and list(state.children) == ["train:seed"]
    plan = stored_plan(svc.jobs, job_id)
    assert plan is not None and [r["name"] for r in plan.payload["rows"]] == ["random", "seed"]
    assert plan.payload["rows"][1]["stage"] == "train:seed" and "model" not in plan.payload["rows"][1]
    cells = sent(svc)  # random's three chunks of 10 users, not seed's: its model is not trained
    assert [(task, args[2]) for task, args in cells if task == EVALUATE_SHARD.name] == [
        (EVALUATE_SHARD.name, lo) for lo in range(plan.items) if not trained_cell(plan.payload, lo)
    ]
    assert len(cells) == 3 and [task for task, _ in sent(svc, INTERACTIVE_QUEUE)] == [PIPELINE_STEP.name]  # the child's
    advance(svc, celery, job_id)  # the child still runs: nothing new
    assert sent(svc) == []
    svc.jobs.start(state.children["train:seed"], stage="train")
    svc.jobs.succeed(state.children["train:seed"], {"model": "mv-1"})
    advance(svc, celery, job_id)  # trained: seed's cells now, with the same plan (the cells look the model up)
    recipes = [lo for lo in range(plan.items) if trained_cell(plan.payload, lo)]
    assert sent(svc) == [(EVALUATE_SHARD.name, [job_id, plan.payload, lo, lo + 1, plan.items]) for lo in recipes]
    state = EvaluationState.read(svc.jobs, job_id)
    assert state is not None and trained_models(state) == {"train:seed": "mv-1"}


def test_a_trained_cell_before_its_model_is_deferred(svc: Services) -> None:
    plan = {"rows": [{"name": "seed", "kind": "recipe", "family": "seed", "stage": "train:seed"}],
            "groups": [[0, 1]], "segments": [{"name": "all", "users": 5}], "chunk": 5}  # fmt: skip
    assert trained_cell(plan, 0)
    with pytest.raises(NotTrained, match="seed is not trained yet"):
        score_shard(svc.artifacts, svc.models, plan, 0, 1, trained={})
    assert issubclass(NotTrained, Deferred)  # the frame counts it not done and publishes nothing
