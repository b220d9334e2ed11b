"""The evaluation job: a dataset split by time, each recipe trained on the training part, every user scored.

Like the pipeline (shared/logic/pipeline.py), an evaluation is a job of its own that moves through stages in
short steps (``workers.evaluation.evaluation_step``), none of which waits for another:

    POST /v1/jobs/evaluate ──> evaluation job ──> step
      ingest          child job ``ingest``: the path's or the named dataset,  ─┐ a finished child, the split
                      with its feedback (a feedback version if it has any)    │ task or the join sends the
      split           task ``evaluation_split``: the training dataset and the  │ step again, which moves on
                      test part (shared/logic/scoring.py), reused if stored │
      train:<recipe>  per recipe, one after the other: child job ``pipeline`` ─┘
                      {"dataset": training dataset, "recipe", "seed", "activate": false}
      score           shards of ``shard_users`` evaluated users (``evaluation_shard``): every row of the
                      table ranks them; the shard that completes the set sends ``evaluation_join``:
                      metrics per row, the table as the job's result and on each recipe's model record

Only the training dataset reaches a recipe's pipeline; the test part is read by the shards and the join.
Every output is content addressed (the split, the pipelines' stages), so a rerun trains nothing again.

The job's ``evaluation`` field holds its ``EvaluationState``; only the step writes it, under the job's lock.
Progress is one fraction over the stages, each weighted by its usual share of the time (``WEIGHTS``); a child
job's progress is reported into its stage's share (``parent``), with an ETA, as the pipeline does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from celery import Celery

from shared.infra.settings import DEFAULT_TAGS_PER_MOVIE
from shared.jobs.kinds import EVALUATE_SPLIT, EVALUATE_STEP, Task
from shared.jobs.progress import Position, report
from shared.jobs.sharded import ShardPlan, send_shards, stored_plan
from shared.jobs.store import Job, JobStore
from shared.jobs.submit import submit
from shared.logic.scoring import stored_split
from shared.logic.services import Services
from shared.ml.evaluate import EASE_MAX_BYTES
from shared.ml.protocol import DEFAULT_SEED, DEFAULT_SHARD_USERS, Protocol, baselines_of, recipes_of

STATE_FIELD = "evaluation"
"""The evaluation job's record field that holds its ``EvaluationState``."""

WEIGHTS = {"ingest": 1.0, "split": 0.5, "train": 4.0, "score": 6.0}
"""Each stage's share of the progress bar, roughly its share of the time on ml-latest-small with the default
recipes (2 cores: ingest 2 s, split 1 s, the seed recipe's pipeline 30 s, the hybrid one's 7 s, scoring 45 s
of which fitting EASE in each worker process is most)."""


def stages(params: dict[str, Any]) -> list[str]:
    """The job's stages, in order: ``ingest`` (a path given), ``split``, ``train:<recipe>`` each, ``score``."""
    return ["ingest", "split", *(f"train:{r}" for r in recipes_of(params)), "score"]


def parent(job_id: str, params: dict[str, Any], stage: str) -> Position:
    """A child's (or the job's own) view of where ``stage`` sits in the progress bar, as the pipeline's stage
    jobs carry it (``workers.base.report_to_pipeline``): overall = (index + fraction) / stages."""
    names = stages(params)
    weights = [WEIGHTS[s.split(":")[0]] for s in names]
    i = names.index(stage)
    total, before, own = sum(weights), sum(weights[:i]), weights[i]
    return {"id": job_id, "stage": stage, "index": before / own, "stages": total / own, "step": EVALUATE_STEP.name}


@dataclass
class EvaluationState:
    """Where an evaluation is: its current stage, each child job, each finished stage's result, the tasks sent.
    Once scoring starts, its plan is the sharded-job frame's, on the job's record (shared/jobs/sharded.py)."""

    stage: int = 0
    children: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, jobs: JobStore, job_id: str) -> EvaluationState | None:
        raw = jobs.field(job_id, STATE_FIELD)
        return cls(**json.loads(raw)) if raw is not None else None

    def write(self, jobs: JobStore, job_id: str) -> None:
        jobs.annotate(job_id, **{STATE_FIELD: json.dumps(asdict(self))})


def source_dataset(params: dict[str, Any], state: EvaluationState) -> str:
    return str(state.results.get("ingest", {}).get("dataset") or params.get("dataset") or "")


def advance(svc: Services, celery: Celery, job_id: str) -> None:
    """One step: start the job, or look at its current stage and start the next, or fail. The caller holds
    the job's lock."""
    job = svc.jobs.get(job_id)
    if job is not None and job.status == "queued":
        job = svc.jobs.start(job_id, stage="starting")  # the first step: the API's message
    if job is None or job.status != "running":
        return
    names = stages(job.params)
    state = EvaluationState.read(svc.jobs, job_id) or EvaluationState()
    while state.stage < len(names):
        stage = names[state.stage]
        kind = stage.partition(":")[0]
        step = _child_stage if kind in ("ingest", "train") else _split_stage if kind == "split" else _score_stage
        if not step(svc, celery, job, state, stage):
            return  # started, or waiting: a finished child, the split task or the join comes back
        state.stage += 1
        state.write(svc.jobs, job_id)


def _child_stage(svc: Services, celery: Celery, job: Job, state: EvaluationState, stage: str) -> bool:
    """Ingest, or one recipe's pipeline: start its child job, or take its result once it has finished (True),
    or fail the evaluation with the child's reason."""
    kind, _, recipe = stage.partition(":")
    child_id = state.children.get(stage)
    if child_id is None:
        if kind == "ingest":  # the path's dataset, or the one named, with its feedback (as a pipeline's)
            child_kind = "ingest"
            child_params: dict[str, Any] = {"dataset": job.params.get("dataset"), "feedback": True}
            if job.params.get("path"):
                child_params = {"path": job.params["path"], "tags_per_movie": DEFAULT_TAGS_PER_MOVIE,
                                "genres_fix_csv": None, "feedback": True}  # fmt: skip
        else:
            child_kind = "pipeline"
            child_params = {"dataset": state.results["split"]["training_dataset"], "recipe": recipe,
                            "seed": int(job.params.get("seed", DEFAULT_SEED)), "activate": False}  # fmt: skip
        where = parent(job.id, job.params, stage)
        # A child belongs to whoever owns the evaluation, so the key that started it can follow every stage.
        child = submit(celery, svc.jobs, kind=child_kind, params={**child_params, "parent": where}, owner=job.owner)
        state.children[stage] = child.id
        state.write(svc.jobs, job.id)
        report(svc.jobs, job, where, 0.0, f"{stage} queued")
        return False
    finished = svc.jobs.get(child_id)
    if finished is not None and not finished.finished:
        return False  # a later notification moves it on
    if finished is None or finished.status != "succeeded":
        reason = (finished.error or {}).get("message", finished.status) if finished else "its job expired"
        what = f"recipe {recipe}" if kind == "train" else "ingest"
        svc.jobs.fail(job.id, code="stage_failed", message=f"{what} failed: {reason}",
                      details={"stage": stage, "job": child_id})  # fmt: skip
        return False
    state.results[stage] = _child_result(kind, finished)
    return True


def _split_stage(svc: Services, celery: Celery, job: Job, state: EvaluationState, stage: str) -> bool:
    """True once the split is stored (by this job's split task, or found from an earlier evaluation)."""
    source, protocol = source_dataset(job.params, state), Protocol.of(job.params)
    summary = stored_split(svc.datasets, source, protocol)
    if summary is not None and not summary["evaluated"]:
        message = (f"nobody to evaluate in {source}: no user has {protocol.min_ratings} ratings or more with a test "
                   f"rating of {protocol.relevant_at} or more")  # fmt: skip
        svc.jobs.fail(job.id, code="data_error", message=message, details={"split": summary})
        return False
    if summary is not None:
        state.results[stage] = summary
        return True
    if stage not in state.sent:
        celery.send_task(EVALUATE_SPLIT.name, args=[job.id, source, asdict(protocol)])
        state.sent.append(stage)
        state.write(svc.jobs, job.id)
        report(svc.jobs, job, parent(job.id, job.params, stage), 0.0, "splitting ratings by time")
    return False  # the split task sends the step again


def _score_stage(svc: Services, celery: Celery, job: Job, state: EvaluationState, stage: str) -> bool:
    """Plan the scoring shards and send them, once; the shards and the join finish the job."""
    if stored_plan(svc.jobs, job.id) is not None:
        return False
    split = state.results["split"]  # someone to evaluate: a split with nobody failed the job
    shard_users = int(job.params.get("shard_users", DEFAULT_SHARD_USERS))
    plan = ShardPlan(items=int(split["evaluated"]), size=shard_users, payload=_scoring(job.params, state))
    report(svc.jobs, job, parent(job.id, job.params, stage), 0.0, f"0 of {len(plan.ranges)} shards scored")
    send_shards(svc.jobs, celery, job.id, "evaluate", plan)
    return False


def _child_result(kind: str, child: Job) -> dict[str, Any]:
    result = child.result or {}
    if kind == "ingest":
        return {"dataset": result["dataset"], "job": child.id}
    return {"model": result["model"], "job": child.id, "seconds": _wall_seconds(child)}


def _wall_seconds(job: Job) -> float:
    if not (job.started_at and job.finished_at):
        return 0.0
    start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (job.started_at, job.finished_at))
    return round((end - start).total_seconds(), 3)


def _scoring(params: dict[str, Any], state: EvaluationState) -> dict[str, Any]:
    """What every scoring shard and the join work from (small JSON, the shard plan's payload)."""
    split = state.results["split"]
    rows = [{"name": b, "kind": "baseline", "model": None} for b in baselines_of(params)]
    rows += [{"name": r, "kind": "recipe", "model": state.results[f"train:{r}"]["model"]} for r in recipes_of(params)]
    return {
        "dataset": split["dataset"],
        "training_dataset": split["training_dataset"],
        "relevant_at": Protocol.of(params).relevant_at,
        "k": Protocol.of(params).k,
        "seed": int(params.get("seed", DEFAULT_SEED)),
        "ease_max_bytes": EASE_MAX_BYTES,
        "rows": rows,
    }


def build_table(
    params: dict[str, Any],
    state: EvaluationState,
    plan: dict[str, Any],
    metrics: list[dict[str, Any] | None],
    shard_stats: list[dict[str, Any]],
) -> dict[str, Any]:
    """The job's result: one row per baseline and recipe of ``plan`` (the scoring's), with the protocol and where
    it ran."""
    split = state.results["split"]
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for stats in shard_stats:
        skipped.update(stats.get("skipped", {}))
        for name, s in stats.get("seconds", {}).items():
            seconds[name] = seconds.get(name, 0.0) + float(s)
    rows = []
    for row, m in zip(plan["rows"], metrics, strict=True):
        name = row["name"]
        trained = state.results.get(f"train:{name}", {}) if row["kind"] == "recipe" else {}
        took = seconds.get(name, 0.0) + float(trained.get("seconds", 0.0))
        rows.append({
            "name": name,
            "kind": row["kind"],
            "model": row["model"],
            **{key: (None if m is None else m[key]) for key in ("recall", "ndcg", "hr", "coverage", "cold_recall")},
            "seconds": round(took, 2),
            "skipped": skipped.get(name) if m is None else None,
        })  # fmt: skip
    recipes = [r for r in rows if r["kind"] == "recipe" and r["ndcg"] is not None]
    best = max(recipes, key=lambda r: r["ndcg"])["name"] if recipes else None  # ties: the first named
    return {
        "protocol": {**Protocol.of(params).describe(), "seed": int(plan["seed"])},
        "dataset": split["dataset"],
        "training_dataset": split["training_dataset"],
        "users": int(split["evaluated"]),
        "cold_users": int(split["cold_users"]),
        "rows": rows,
        "best": best,
        "jobs": {stage: child for stage, child in state.children.items()},
    }


def janitor_units(svc: Services, job: Job) -> tuple[str | None, list[tuple[str, Task, list[Any]]]]:
    """For the janitor (workers/janitor.py), before the scoring is planned (the sharded-job frame looks after it
    then): the child job the evaluation waits on (alive while it is), and what it still needs run, each as
    (unit name, task, args): the step, or the split. A resent step looks at the stage again; a resent split that
    met its original is dropped."""
    state = EvaluationState.read(svc.jobs, job.id) if job.status == "running" else None
    step = [("step", EVALUATE_STEP, [job.id])]
    if state is None or state.stage >= len(names := stages(job.params)):
        return None, step
    stage = names[state.stage]
    if stage in state.children:
        return state.children[stage], step
    if stage == "split" and "split" in state.sent:
        args = [job.id, source_dataset(job.params, state), asdict(Protocol.of(job.params))]
        return None, [("split", EVALUATE_SPLIT, args)]
    return None, step
