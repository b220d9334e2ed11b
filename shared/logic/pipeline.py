"""The one-job pipeline: ingest -> mine -> encode -> train -> index -> activate.

The ingest stage ingests the path given, or takes the dataset id given, and adds the feedback posted to it
(``shared/store/feedback.py``): a pipeline trains on every rating known when it starts.

A pipeline's options are a named recipe's (shared/ml/recipes.py; the default one when none is named) with
the client's values over them; ``activate: false`` trains and indexes without activating (an evaluation's
pipelines). A pipeline is a job of its own that runs each stage as an ordinary child job (so every stage
keeps its own record, progress and result), one after the other:

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
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from shared.jobs.store import JobStore
from shared.jobs.submit import submit
from shared.logic.mining import DEFAULT_SEED, DEFAULT_SHARD_SIZE
from shared.logic.services import Services
from shared.ml.recipes import recipe_options

STAGES = ("ingest", "mine", "encode", "train", "index")
"""Activation follows the last stage, inside the step that sees the index built."""


@dataclass(frozen=True)
class StageJob:
    stage: str
    kind: str
    params: dict[str, Any]


def stage_job(stage: str, options: dict[str, Any], results: dict[str, Any]) -> StageJob:
    """The child job that runs ``stage``, from the pipeline's options and the earlier stages' results."""
    dataset = str(results.get("ingest", {}).get("dataset") or options.get("dataset") or "")

    def pick(*keys: str) -> dict[str, Any]:
        return {k: options[k] for k in keys if options.get(k) is not None}

    if stage == "ingest":  # with the dataset's feedback (workers.cpu: a feedback version when it has any)
        if not options.get("path"):
            return StageJob(stage, "ingest", {"dataset": options["dataset"], "feedback": True})
        params = {"path": options["path"], "tags_per_movie": options.get("tags_per_movie", 5), "feedback": True}
        params["genres_fix_csv"] = options.get("genres_fix_csv")
        return StageJob(stage, "ingest", params)
    if stage == "mine":
        params = {
            "dataset": dataset,
            "shard_size": options.get("shard_size", DEFAULT_SHARD_SIZE),
            "seed": options.get("seed", DEFAULT_SEED),
            "negatives": options.get("negatives", "uniform-min"),
            **pick("source", "positives", "liked_at"),
        }
        return StageJob(stage, "triplets", params)
    if stage == "encode":
        return StageJob(stage, "encode", {"dataset": dataset, **pick("model", "pooling")})
    if stage == "train":
        knobs = pick(*TRAIN_OPTIONS)
        return StageJob(stage, "train", {"dataset": dataset, "triplets": results["mine"]["triplets"], **knobs})
    if stage == "index":
        params = {"version": results["train"]["version"], **pick("m", "ef_construction", "ef")}
        return StageJob(stage, "index", params)
    raise ValueError(f"unknown stage {stage!r}")


TRAIN_OPTIONS = (
    "epochs", "hidden_dim", "margin", "lr", "batch_size", "model", "pooling", "architecture", "liked_at", "profile",
    "recency_days", "prior", "prior_until", "regularization", "alpha", "seed", "layers", "dropout",
)  # fmt: skip
"""Pipeline options the train stage takes (a recipe's and the client's)."""

STATE_FIELD = "pipeline"
"""The pipeline job's record field that holds its ``PipelineState``."""


@dataclass
class PipelineState:
    """Where a pipeline is: its current stage, each started stage's job, each finished stage's result.

    Stored as JSON in the pipeline job's ``pipeline`` field: written by ``advance``, read by the janitor.
    """

    stage: int
    children: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, jobs: JobStore, pipeline_id: str) -> PipelineState | None:
        """The stored state; None before the first step has stored one."""
        raw = jobs.field(pipeline_id, STATE_FIELD)
        if raw is None:
            return None
        fields = json.loads(raw)
        return cls(stage=int(fields["stage"]), children=fields["children"], results=fields["results"])

    def write(self, jobs: JobStore, pipeline_id: str) -> None:
        state = {"stage": self.stage, "children": self.children, "results": self.results}
        jobs.annotate(pipeline_id, **{STATE_FIELD: json.dumps(state)})

    @property
    def current(self) -> str | None:
        """The stage running now; None once every stage is done."""
        return STAGES[self.stage] if self.stage < len(STAGES) else None

    @property
    def current_child(self) -> str | None:
        """The job of the current stage, once started."""
        return self.children.get(self.current) if self.current else None


def first_stage(options: dict[str, Any]) -> int:
    """Every pipeline starts with ingestion: a pipeline given a dataset id ingests its feedback."""
    return 0


def advance(svc: Services, celery: Celery, pipeline_id: str) -> None:
    """One step: start the pipeline, or look at its current stage's job and start the next, finish or fail.

    The caller holds the pipeline's lock.
    """
    job = svc.jobs.get(pipeline_id)
    if job is not None and job.status == "queued":
        job = svc.jobs.start(pipeline_id, stage="starting")  # the first step: the API's message
    if job is None or job.status != "running":
        return
    options = recipe_options(job.params.get("recipe"), job.params)
    state = PipelineState.read(svc.jobs, pipeline_id) or PipelineState(stage=first_stage(options))
    stage = STAGES[state.stage]
    child_id = state.current_child
    if child_id is not None:
        child = svc.jobs.get(child_id)
        if child is not None and not child.finished:
            return  # not finished yet: a later notification moves it on
        if child is None or child.status != "succeeded":
            reason = (child.error or {}).get("message", child.status) if child is not None else "its job expired"
            svc.jobs.fail(pipeline_id, code="stage_failed", message=f"stage {stage} failed: {reason}",
                          details={"stage": stage, "job": child_id})  # fmt: skip
            return
        state.results[stage] = child.result
        state.stage += 1
        if state.current is None:
            _finish(svc, pipeline_id, state, activate=options.get("activate", True), recipe=options["recipe"])
            return
        stage = state.current
    plan = stage_job(stage, options, state.results)
    parent = {"id": pipeline_id, "stage": stage, "index": state.stage, "stages": len(STAGES)}
    # A stage job belongs to whoever owns the pipeline, so the key that started it can follow every stage.
    child = submit(celery, svc.jobs, kind=plan.kind, params={**plan.params, "parent": parent}, owner=job.owner)
    state.children[stage] = child.id
    state.write(svc.jobs, pipeline_id)
    svc.jobs.progress(pipeline_id, state.stage / len(STAGES), stage=stage, message=f"{stage} queued")


def _finish(svc: Services, pipeline_id: str, state: PipelineState, *, activate: bool, recipe: str) -> None:
    """Activate the trained version (unless asked not to: an evaluation's pipelines) and succeed with a summary
    of every stage."""
    results = state.results
    version = results["train"]["version"]
    previous = svc.models.activate(version) if activate else svc.models.active()
    summary = {
        "dataset": results["ingest"]["dataset"],
        "triplets": results["mine"]["triplets"],
        "embeddings": results["encode"]["embeddings"],
        "model": version,
        "metrics": results["train"]["metrics"],
        "index": results["index"]["index"],
        "recipe": recipe,
        "activated": version if activate else None,
        "previous": previous,
        "stage_jobs": state.children,
    }
    svc.jobs.succeed(pipeline_id, summary, message=f"model {version} {'active' if activate else 'trained'}")
