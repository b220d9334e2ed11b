"""The one-job pipeline: ingest -> mine -> encode -> train -> index -> activate.

A pipeline is a job of its own that runs each stage as an ordinary child job (so every stage keeps its
own record, progress and result), one after the other:

    POST /v1/pipelines ──> pipeline job ──> workers.cpu.pipeline_step
                                               │ starts the next stage's child job (params carry "parent")
                                               ▼
                            child job finishes (succeeded or failed) ──> sends pipeline_step again
                                               │ succeeded: next stage, or activate and finish
                                               │ failed:    the pipeline fails, naming the stage

No task waits for another: each step is a short task that looks at the record and moves it on, so a
pipeline never holds a worker process while its stages need one. Every stage's output is content
addressed (dataset id, triplet name, embedding name, model version, index parameters), so resubmitting a
pipeline answers finished stages from what is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.store.triplets import DEFAULT_SEED, DEFAULT_SHARD_SIZE, TripletSpec

if TYPE_CHECKING:
    from celery import Celery

    from shared.services import Services

STAGES = ("ingest", "mine", "encode", "train", "index")
"""Activation follows the last stage, inside the step that sees the index built."""


@dataclass(frozen=True)
class StageJob:
    stage: str
    kind: str
    task: str
    params: dict[str, Any]


def stage_job(stage: str, options: dict[str, Any], results: dict[str, Any]) -> StageJob:
    """The child job that runs ``stage``, from the pipeline's options and the earlier stages' results."""
    from shared.jobs.submit import ENCODE_TASK, INDEX_TASK, INGEST_TASK, MINE_TASK, TRAIN_TASK

    dataset = str(results.get("ingest", {}).get("dataset") or options.get("dataset") or "")

    def pick(*keys: str) -> dict[str, Any]:
        return {k: options[k] for k in keys if options.get(k) is not None}

    if stage == "ingest":
        params = {"path": options["path"], "tags_per_movie": options.get("tags_per_movie", 5)}
        params["genres_fix_csv"] = options.get("genres_fix_csv")
        return StageJob(stage, "ingest", INGEST_TASK, params)
    if stage == "mine":
        params = {
            "dataset": dataset,
            "shard_size": options.get("shard_size", DEFAULT_SHARD_SIZE),
            "seed": options.get("seed", DEFAULT_SEED),
            "negatives": options.get("negatives", "uniform-min"),
        }
        return StageJob(stage, "triplets", MINE_TASK, params)
    if stage == "encode":
        return StageJob(stage, "encode", ENCODE_TASK, {"dataset": dataset, **pick("model", "pooling")})
    if stage == "train":
        spec = TripletSpec(
            dataset=dataset, seed=options.get("seed", DEFAULT_SEED), strategy=options.get("negatives", "uniform-min")
        )
        knobs = pick("epochs", "hidden_dim", "margin", "lr", "batch_size", "model", "pooling")
        return StageJob(stage, "train", TRAIN_TASK, {"dataset": dataset, "triplets": spec.name, **knobs})
    if stage == "index":
        params = {"version": results["train"]["version"], **pick("m", "ef_construction", "ef")}
        return StageJob(stage, "index", INDEX_TASK, params)
    raise ValueError(f"unknown stage {stage!r}")


def first_stage(options: dict[str, Any]) -> int:
    """A pipeline given a dataset id starts after ingestion."""
    return 0 if options.get("path") else 1


def advance(svc: Services, celery: Celery, pipeline_id: str) -> None:
    """One step: start the pipeline, or look at its current stage's job and start the next, finish or fail.

    The caller holds the pipeline's lock. State lives in the pipeline job's ``pipeline`` field:
    {"stage": index into STAGES, "children": {stage: job id}, "results": {stage: that job's result}}.
    """
    from shared.jobs.submit import submit

    job = svc.jobs.get(pipeline_id)
    if job is not None and job.status == "queued":
        job = svc.jobs.start(pipeline_id, stage="starting")  # the first step: the API's message
    if job is None or job.status != "running":
        return
    raw = svc.jobs.field(pipeline_id, "pipeline")
    state: dict[str, Any] = (
        json.loads(raw) if raw else {"stage": first_stage(job.params), "children": {}, "results": {}}
    )
    stage = STAGES[state["stage"]]
    child_id = state["children"].get(stage)
    if child_id is not None:
        child = svc.jobs.get(child_id)
        if child is not None and child.status in ("queued", "running"):
            return  # not finished yet: a later notification moves it on
        if child is None or child.status != "succeeded":
            reason = (child.error or {}).get("message", child.status) if child is not None else "its job expired"
            svc.jobs.fail(pipeline_id, code="stage_failed", message=f"stage {stage} failed: {reason}",
                          details={"stage": stage, "job": child_id})  # fmt: skip
            return
        state["results"][stage] = child.result
        state["stage"] += 1
        if state["stage"] == len(STAGES):
            _finish(svc, pipeline_id, state)
            return
        stage = STAGES[state["stage"]]
    plan = stage_job(stage, job.params, state["results"])
    parent = {"id": pipeline_id, "stage": stage, "index": state["stage"], "stages": len(STAGES)}
    # A stage job belongs to whoever owns the pipeline, so the key that started it can follow every stage.
    child = submit(
        celery, svc.jobs, kind=plan.kind, task=plan.task, params={**plan.params, "parent": parent}, owner=job.owner
    )
    state["children"][stage] = child.id
    svc.jobs.annotate(pipeline_id, pipeline=json.dumps(state))
    svc.jobs.progress(pipeline_id, state["stage"] / len(STAGES), stage=stage, message=f"{stage} queued")


def _finish(svc: Services, pipeline_id: str, state: dict[str, Any]) -> None:
    """Activate the trained version and succeed with a summary of every stage."""
    results = state["results"]
    version = results["train"]["version"]
    previous = svc.models.activate(version)
    summary = {
        "dataset": results["ingest"]["dataset"] if "ingest" in results else results["mine"]["dataset"],
        "triplets": results["mine"]["triplets"],
        "embeddings": results["encode"]["embeddings"],
        "model": version,
        "metrics": results["train"]["metrics"],
        "index": results["index"]["index"],
        "activated": version,
        "previous": previous,
        "stage_jobs": state["children"],
    }
    svc.jobs.succeed(pipeline_id, summary, message=f"model {version} active")
