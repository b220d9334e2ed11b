"""The one-job pipeline: ingest -> choose -> mine -> encode -> train -> index -> activate.

The ingest stage ingests the path given, or takes the dataset id given, and adds the feedback posted to it
(``shared/store/feedback.py``): a pipeline trains on every rating known when it starts.

A pipeline's options are a named recipe's (shared/ml/recipes.py) with the client's values over them; the
default, ``auto``, first chooses the recipe (stage ``choose``: a grid-mode evaluation job over ``AUTO_RECIPES``
on its dataset, cut by ``protocol.choosing``: each user's last 20 % the validation part, a cohort held out as
new users; every setting of every grid, serve-time ones included, scored there and the best objective
chosen, shared/logic/evaluation.py), then trains the winner at its chosen setting on the whole dataset and
records on the model what it chose and why (``chosen``); a dataset that cannot be split so (nobody to
evaluate, no timestamps) trains ``FALLBACK_RECIPE``, saying why. ``activate: false`` trains and indexes
without activating; an evaluation's pipelines also pass ``index: false`` (internal, not an API option): their
models are scored from their vectors (shared/logic/serving.py ``version_scorer``), and one that is to be served
later is indexed then (``POST /v1/jobs/index``, which activation asks for). At the notebook's scale an index
costs 7-20 s of a CPU process, and an evaluation trained ten models it never served.

A pipeline is a job of its own that runs each stage as an ordinary child job (so every stage keeps its own
record, progress and result), one after the other:

    POST /v1/pipelines ──> pipeline job ──> workers.cpu.pipeline_step    (ingest, choose, mine, encode, ...)
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

from shared.jobs.store import Job, JobStore
from shared.jobs.submit import submit
from shared.logic.evaluation import choose
from shared.logic.mining import DEFAULT_SEED, DEFAULT_SHARD_SIZE
from shared.logic.services import Services
from shared.ml.protocol import choosing
from shared.ml.recipes import AUTO, AUTO_RECIPES, DEFAULT_RECIPE, FALLBACK_RECIPE, recipe_options

STAGES = ("ingest", "choose", "mine", "encode", "train", "index")
"""Activation follows the last stage, inside the step that sees the index built. ``choose`` runs a job for the
``auto`` recipe only; a named recipe passes it at once."""


@dataclass(frozen=True)
class StageJob:
    stage: str
    kind: str
    params: dict[str, Any]


def stage_job(stage: str, options: dict[str, Any], results: dict[str, Any]) -> StageJob | None:  # noqa: PLR0911
    """The child job that runs ``stage``, from the pipeline's options and the earlier stages' results; None for
    a stage with nothing to run (``choose`` for a named recipe, ``index`` for ``"index": false``)."""
    dataset = str(results.get("ingest", {}).get("dataset") or options.get("dataset") or "")

    def pick(*keys: str) -> dict[str, Any]:
        return {k: options[k] for k in keys if options.get(k) is not None}

    if stage == "ingest":  # with the dataset's feedback (workers.cpu: a feedback version when it has any)
        if not options.get("path"):
            return StageJob(stage, "ingest", {"dataset": options["dataset"], "feedback": True})
        params = {"path": options["path"], "tags_per_movie": options.get("tags_per_movie", 5), "feedback": True}
        params["genres_fix_csv"] = options.get("genres_fix_csv")
        return StageJob(stage, "ingest", params)
    if stage == "choose":
        if options["recipe"] != AUTO:
            return None
        # Grid mode on the dataset itself, cut by the choosing protocol: every setting of every candidate's grid
        # trained on the validation split's training part and scored on its validation part and new users.
        fixed = {k: v for k, v in options.items() if k not in NOT_CANDIDATE_OPTIONS}
        return StageJob(stage, "evaluate", {"dataset": dataset, "grid": True, "tune": False, "baselines": [],
                                            "recipes": list(AUTO_RECIPES), "seed": options.get("seed", DEFAULT_SEED),
                                            "options": fixed, **choosing().describe()})  # fmt: skip
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
        knobs = pick(*TRAIN_OPTIONS, "store_fit")  # store_fit: an evaluation's (shared/logic/fits.py)
        return StageJob(stage, "train", {"dataset": dataset, "triplets": results["mine"]["triplets"], **knobs})
    if stage == "index":
        if options.get("index") is False:  # an evaluation's model: scored by its vectors, never served
            return None
        params = {"version": results["train"]["version"], **pick("m", "ef_construction", "ef")}
        return StageJob(stage, "index", params)
    raise ValueError(f"unknown stage {stage!r}")


TRAIN_OPTIONS = (
    "epochs", "hidden_dim", "margin", "lr", "batch_size", "model", "pooling", "architecture", "liked_at", "profile",
    "recency_days", "prior", "prior_until", "cold_boost", "regularization", "alpha", "seed", "layers", "dropout",
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


NOT_CANDIDATE_OPTIONS = (
    "path", "dataset", "recipe", "activate", "index", "store_fit", "genres_fix_csv", "tags_per_movie", "seed",
)  # fmt: skip
"""A pipeline's values that are not the candidates' options: what to ingest, whether to activate and index, the
seed (the choosing job's own). Every other value the client gave (an encoder, epochs, ...) trains every candidate."""


def first_stage(options: dict[str, Any]) -> int:
    """Every pipeline starts with ingestion: a pipeline given a dataset id ingests its feedback."""
    return 0


def pipeline_options(params: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """The options every stage reads: the named recipe's with the client's values over them; for ``auto``, once
    chosen, the chosen recipe's at its chosen setting with the client's values over those."""
    choice = results.get("choose")
    if params.get("recipe", DEFAULT_RECIPE) != AUTO or choice is None:
        return recipe_options(params.get("recipe"), params)
    given = {k: v for k, v in params.items() if k != "recipe"}
    return recipe_options(choice["recipe"], {**choice["setting"], **{k: v for k, v in given.items() if v is not None}})


def choice_of(table: dict[str, Any], job_id: str) -> dict[str, Any]:
    """What ``auto`` chose, from its grid job's table: the recipe with the best validation objective and its
    setting (``evaluation.choose``: the best, or one that ties it and reaches cold movies), and why: every
    setting's objective, NDCG@10 and new users' NDCG."""
    chosen = choose(table)
    if chosen["default"] is None:
        raise ValueError("no recipe could be scored on validation")
    recipe = str(chosen["default"])
    grid = sorted((g for g in chosen["grid"] if g["objective"] is not None), key=lambda g: -g["objective"])
    best = grid[0]
    runner = next((g for g in grid if g["family"] != recipe), None)
    why = (f"{best['name']} scored the best validation objective, {best['objective']:.4f} (NDCG@10 over "
           f"{table['users']:,} validation users and the held-out new users at 1, 3 and 10 ratings)")  # fmt: skip
    if runner is not None:
        why += f", against {runner['objective']:.4f} for the best other recipe, {runner['name']}"
    if recipe in chosen["cold"]:  # served with a cold boost that ties its best setting
        why += f"; served as {chosen['cold'][recipe]['text']}"
    keep = ("name", "family", "params", "objective", "ndcg")
    return {"recipe": recipe, "setting": chosen["chosen"][recipe], "why": why, "job": job_id,
            "users": table["users"], "new_users": table.get("new_users", {}),
            "grid": [{key: g[key] for key in keep} for g in grid]}  # fmt: skip


FALLBACK_CODES = ("data_error", "conflict")
"""A choosing job's failures that ``auto`` answers with ``FALLBACK_RECIPE``: its dataset cannot be split for
validation (nobody to evaluate; no timestamps). Any other failure fails the pipeline."""


class StageFailed(Exception):
    """A stage's job did not give the pipeline what it needs: why, in the words of the pipeline's failure."""


def stage_result(stage: str, child: Job | None, child_id: str) -> Any:
    """What a finished stage leaves the pipeline: its job's result; for ``choose``, the choice (``choice_of``), or
    ``FALLBACK_RECIPE`` when the dataset could not be split for validation. ``StageFailed`` otherwise."""
    if child is None:
        raise StageFailed("its job expired")
    error = child.error or {}
    if child.status == "succeeded" and stage == "choose":
        try:
            return choice_of(child.result or {}, child_id)
        except ValueError as why:  # every candidate skipped on validation
            raise StageFailed(str(why)) from None
    if child.status == "succeeded":
        return child.result
    if stage == "choose" and error.get("code") in FALLBACK_CODES:
        reason = f"no validation split: {error.get('message', child.status)}; trained {FALLBACK_RECIPE}"
        return {"recipe": FALLBACK_RECIPE, "setting": {}, "job": child_id, "why": reason}
    raise StageFailed(str(error.get("message", child.status)))


def advance(svc: Services, celery: Celery, pipeline_id: str) -> None:
    """One step: start the pipeline, or look at its current stage's job and start the next, finish or fail.

    The caller holds the pipeline's lock.
    """
    job = svc.jobs.get(pipeline_id)
    if job is not None and job.status == "queued":
        job = svc.jobs.start(pipeline_id, stage="starting")  # the first step: the API's message
    if job is None or job.status != "running":
        return
    state = PipelineState.read(svc.jobs, pipeline_id) or PipelineState(stage=first_stage(job.params))
    child_id = state.current_child
    if child_id is not None:
        stage = STAGES[state.stage]
        child = svc.jobs.get(child_id)
        if child is not None and not child.finished:
            return  # not finished yet: a later notification moves it on
        try:
            state.results[stage] = stage_result(stage, child, child_id)
        except StageFailed as failed:
            svc.jobs.fail(pipeline_id, code="stage_failed", message=f"stage {stage} failed: {failed}",
                          details={"stage": stage, "job": child_id})  # fmt: skip
            return
        state.stage += 1
    while state.current is not None:
        stage = state.current
        options = pipeline_options(job.params, state.results)
        plan = stage_job(stage, options, state.results)
        if plan is not None:
            parent = {"id": pipeline_id, "stage": stage, "index": state.stage, "stages": len(STAGES)}
            # A stage job belongs to whoever owns the pipeline, so the key that started it can follow every stage.
            child = submit(celery, svc.jobs, kind=plan.kind, params={**plan.params, "parent": parent}, owner=job.owner)
            state.children[stage] = child.id
            state.write(svc.jobs, pipeline_id)
            svc.jobs.progress(pipeline_id, state.stage / len(STAGES), stage=stage, message=f"{stage} queued")
            return
        # nothing to run: a named recipe has nothing to choose, an unindexed model no index
        state.results[stage] = {"recipe": options["recipe"]} if stage == "choose" else {"index": None}
        state.stage += 1
    options = pipeline_options(job.params, state.results)
    _finish(svc, pipeline_id, state, activate=options.get("activate", True), recipe=options["recipe"])


def _finish(svc: Services, pipeline_id: str, state: PipelineState, *, activate: bool, recipe: str) -> None:
    """Activate the trained version (unless asked not to: an evaluation's pipelines) and succeed with a summary
    of every stage."""
    results = state.results
    version = results["train"]["version"]
    choice = results.get("choose", {})
    if "why" in choice:  # auto: the model says what its recipe won against, and by how much
        svc.models.update(version, chosen={key: choice[key] for key in ("recipe", "setting", "why", "job", "grid")
                                           if key in choice})  # fmt: skip
    previous = svc.models.activate(version) if activate else svc.models.active()
    summary = {
        "dataset": results["ingest"]["dataset"],
        "triplets": results["mine"]["triplets"],
        "embeddings": results["encode"]["embeddings"],
        "model": version,
        "metrics": results["train"]["metrics"],
        "index": results["index"]["index"],
        "recipe": recipe,
        "chosen": {key: choice[key] for key in ("setting", "why", "job") if key in choice} or None,
        "activated": version if activate else None,
        "previous": previous,
        "stage_jobs": state.children,
    }
    svc.jobs.succeed(pipeline_id, summary, message=f"model {version} {'active' if activate else 'trained'}")
