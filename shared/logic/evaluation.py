"""The evaluation job: a dataset split by time, every row tuned on validation, refitted, scored once on test.

Like the pipeline (shared/logic/pipeline.py), an evaluation is a job of its own that moves through stages in
short steps (``workers.evaluation.evaluation_step``), none of which waits for another:

    POST /v1/jobs/evaluate ──> evaluation job ──> step
      ingest          child job ``ingest``: the path's or the named dataset,  ─┐ a finished child, the split
                      with its feedback (a feedback version if it has any)    │ task or the join sends the
      split           task ``evaluation_split``: the training dataset, the test │ step again, which moves on
                      part and the new-user cohort (shared/logic/scoring.py)   │
      validate        child job ``evaluate`` in grid mode on the training      │
                      dataset, cut again by ``Protocol.validation`` (each      │
                      user's last 20 % of it, a cohort of its users held out   │
                      as new users): every setting of every grid, recipes and  │
                      baselines alike (a recipe's serve-time settings too),    │
                      scored on validation and its new-user slices; the best   │
                      setting of each row is chosen there (``objective``), or  │
                      a cold boost that ties it (``reach_cold``)               │
      train:<recipe>  per recipe, its chosen setting: child job ``pipeline`` ──┘
                      {"dataset": training dataset, "recipe", overrides, "seed", "activate": false,
                      "index": false}: scored from its vectors, never indexed; an ``ials`` recipe
                      whose factorisation is the job's iALS setting also {"store_fit"}: its training
                      stores that fit for the iALS row (``factorised_by``, shared/logic/fits.py);
                      as the first of these stages begins, every recipe's child is submitted at once and
                      the scoring is planned: the baselines' cells are sent then (at ``IDLE_PRIORITY``),
                      so the CPU workers score them while the pipelines train on the gpu queue; as each
                      pipeline finishes, the cells that waited for it (its recipe's; the iALS row it
                      fitted) are sent, and score while the later ones train
      score           the cells not sent yet (each recipe's cell looks its model up in the job's state).
                      A shard per cell, a row by a chunk of ``shard_users`` users of every
                      segment (the test part's users, then each new-user slice's), the cells of the first
                      chunk first; each baseline is fitted once for the cluster, by the first cell that
                      wants it, and stored for the others (shared/logic/scoring.py); the shard that
                      completes the set sends ``evaluation_join``: metrics per row and segment, each row's
                      paired bootstrap interval against the baseline chosen on validation, the table as the
                      job's result

A grid-mode job (the ``validate`` child) has no ingest and no validate stage: it trains ``train:<variant>``
for every setting of every recipe's grid and scores one shard per row of the table, every validation user in
one chunk, each fitting its baseline setting itself (an iALS setting that an ``ials`` variant's training fitted
is loaded); item-kNN's and RP3beta's settings that share a similarity build share a shard and the build
(``baselines.fit_many``). ``"tune": false`` skips validation: every row at its
default setting.

Only the training dataset reaches a recipe's pipeline and a baseline; the test part and the cohort are read by
the shards and the join alone. Every output is content addressed (the splits, the pipelines' stages), so a
rerun trains nothing again.

The job's ``evaluation`` field holds its ``EvaluationState``; only the step writes it, under the job's lock.
Progress is one fraction over the stages, each weighted by its usual share of the time (``WEIGHTS``); a child
job's progress is reported into its stage's share (``parent``), with an ETA, as the pipeline does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from celery import Celery

from shared.infra.settings import DEFAULT_TAGS_PER_MOVIE
from shared.jobs.kinds import EVALUATE_SPLIT, EVALUATE_STEP, Task
from shared.jobs.progress import Position, report
from shared.jobs.sharded import ShardPlan, send_shards, stored_plan
from shared.jobs.store import Job, JobStore
from shared.jobs.submit import submit
from shared.logic import fits
from shared.logic.scoring import RowScores, cell_stage, plan_items, segments, stored_split, trained_cell
from shared.logic.services import Services
from shared.ml import baselines, intervals
from shared.ml.evaluate import EASE_MAX_BYTES
from shared.ml.fitting import TrainConfig
from shared.ml.protocol import DEFAULT_SEED, DEFAULT_SHARD_USERS, Protocol, baselines_of, recipes_of
from shared.ml.recipes import GRIDS, SERVE_GRIDS, grid_points, recipe_options, variant_label

STATE_FIELD = "evaluation"
"""The evaluation job's record field that holds its ``EvaluationState``."""

WEIGHTS = {"ingest": 1.0, "split": 0.5, "validate": 12.0, "train": 4.0, "score": 6.0}
"""Each stage's share of the progress bar, roughly its share of the time on ml-latest-small with the default
recipes (2 cores: ingest 2 s, split 1 s, validation two minutes, the seed recipe's pipeline 30 s, the hybrid
one's 7 s, scoring 45 s of which fitting the baselines in each worker process is most)."""


def stages(params: dict[str, Any]) -> list[str]:
    """The job's stages, in order: ``ingest``, ``split``, ``validate`` (unless ``tune`` is false),
    ``train:<recipe>`` each, ``score``; in grid mode ``split``, ``train:<variant>`` each, ``score``."""
    if params.get("grid"):
        return ["split", *(f"train:{label}" for label, _, _ in recipe_variants(params)), "score"]
    tune = ["validate"] if params.get("tune", True) else []
    return ["ingest", "split", *tune, *(f"train:{r}" for r in recipes_of(params)), "score"]


def recipe_variants(params: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """A grid-mode job's recipe rows: (label, recipe, overrides) for every setting of every recipe's grid."""
    return [(variant_label(r, v), r, v) for r in recipes_of(params) for v in grid_points(GRIDS.get(r, {}))]


def baseline_settings(name: str, *, grid: bool) -> list[dict[str, Any]]:
    """A baseline's settings: every point of its tuning grid (those that share a build side by side), or its
    default alone (random and most-popular have no setting)."""
    if name in baselines.GRIDS:
        return [s for group in baselines.grid_groups(name) for s in group] if grid else [baselines.DEFAULTS[name]]
    return [{}]


def fit_groups(rows: list[dict[str, Any]]) -> list[list[int]]:
    """A grid's rows as [start, end) ranges, one per scoring shard: the baseline settings that share a build
    (``baselines.build_key``, side by side in ``table_rows``) together, a recipe's serve-time settings of one
    trained setting together (its scores made once: ``scoring._score_settings``), every other row alone."""
    groups: list[list[int]] = []
    last: tuple[Any, ...] | None = None
    for i, row in enumerate(rows):
        shared = row["kind"] == "baseline" and row["family"] in baselines.SHARED_BUILD
        key = (row["family"], baselines.build_key(row["family"], row["params"])) if shared else None
        if row["kind"] == "recipe" and "serve" in row:  # a trained setting's serve-time settings: scored together
            key = ("recipe", row["stage"])
        if key is not None and key == last:
            groups[-1][1] = i + 1
        else:
            groups.append([i, i + 1])
        last = key
    return groups


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
        if kind == "train" and TRAINING not in state.sent:
            _start_training(svc, celery, job, state)
        step = {"split": _split_stage, "score": _score_stage}.get(kind, _child_stage)
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
        _submit_child(svc, celery, job, state, stage)
        return False
    finished = svc.jobs.get(child_id)
    if finished is not None and not finished.finished:
        return False  # a later notification moves it on
    if finished is None or finished.status != "succeeded":
        reason = (finished.error or {}).get("message", finished.status) if finished else "its job expired"
        what = {"train": f"recipe {recipe}", "validate": "validation"}.get(kind, kind)
        svc.jobs.fail(job.id, code="stage_failed", message=f"{what} failed: {reason}",
                      details={"stage": stage, "job": child_id})  # fmt: skip
        return False
    state.results[stage] = _child_result(kind, finished)
    if kind == "train":
        _send_trained_cells(svc, celery, job, state, stage)
    return True


def _submit_child(svc: Services, celery: Celery, job: Job, state: EvaluationState, stage: str) -> None:
    child_kind, child_params = _child_job(job, state, stage)
    where = parent(job.id, job.params, stage)
    # A child belongs to whoever owns the evaluation, so the key that started it can follow every stage.
    child = submit(celery, svc.jobs, kind=child_kind, params={**child_params, "parent": where}, owner=job.owner)
    state.children[stage] = child.id
    state.write(svc.jobs, job.id)
    report(svc.jobs, job, where, 0.0, f"{stage} queued")


def _child_job(job: Job, state: EvaluationState, stage: str) -> tuple[str, dict[str, Any]]:
    """The kind and params of the child job that does ``stage``."""
    kind, _, recipe = stage.partition(":")
    if kind == "ingest":  # the path's dataset, or the one named, with its feedback (as a pipeline's)
        if job.params.get("path"):
            return "ingest", {"path": job.params["path"], "tags_per_movie": DEFAULT_TAGS_PER_MOVIE,
                              "genres_fix_csv": None, "feedback": True}  # fmt: skip
        return "ingest", {"dataset": job.params.get("dataset"), "feedback": True}
    training = state.results["split"]["training_dataset"]
    seed = int(job.params.get("seed", DEFAULT_SEED))
    if kind == "validate":  # the same rows, every setting of their grids, on the training part cut again
        keep = ("recipes", "baselines", "seed", "shard_users")
        return "evaluate", {"dataset": training, "grid": True, "tune": False,
                            **Protocol.of(job.params).validation().describe(),
                            **{key: job.params[key] for key in keep if job.params.get(key) is not None}}  # fmt: skip
    if job.params.get("grid"):
        _, name, overrides = next(v for v in recipe_variants(job.params) if v[0] == recipe)
    else:
        name, overrides = recipe, chosen(state).get(recipe, {})
    fixed = job.params.get("options") or {}  # an auto pipeline's client values: every candidate trains with them
    shares = factorised_by(job.params, state).get(stage)
    store = {"store_fit": fits.setting_fit_id("iALS", shares, seed)} if shares else {}
    return "pipeline", {"dataset": training, "recipe": name, **overrides, **fixed, "seed": seed, "activate": False,
                        "index": False, **store}  # fmt: skip


def chosen(state: EvaluationState) -> dict[str, dict[str, Any]]:
    """Each row's setting chosen on validation ({} before validation, or without it: the defaults)."""
    return dict(state.results.get("validate", {}).get("chosen", {}))


def factorised_by(params: dict[str, Any], state: EvaluationState) -> dict[str, dict[str, Any]]:
    """The iALS rows a recipe's training fits: {training stage: the iALS setting} for each ``ials`` pipeline whose
    factorisation (factors = its hidden_dim, its regularization and alpha; the job's seed, the same training
    dataset) is one of the job's iALS settings (the chosen one, or every one of a grid). Its pipeline stores
    that factorisation (``store_fit``) and the iALS row loads it (shared/logic/fits.py): one fit for both."""
    if "iALS" not in baselines_of(params):
        return {}
    grid, picked, fixed = bool(params.get("grid")), chosen(state), params.get("options") or {}
    settings = [picked["iALS"]] if "iALS" in picked else baseline_settings("iALS", grid=grid)
    labels = {baselines.label("iALS", setting): setting for setting in settings}
    if grid:
        pipelines = [(f"train:{label}", recipe, overrides) for label, recipe, overrides in recipe_variants(params)]
    else:
        pipelines = [(f"train:{recipe}", recipe, picked.get(recipe, {})) for recipe in recipes_of(params)]
    out: dict[str, dict[str, Any]] = {}
    for stage, recipe, overrides in pipelines:
        options = recipe_options(recipe, {**overrides, **fixed})
        if options.get("architecture") != "ials":
            continue
        factorisation = {
            "factors": options.get("hidden_dim", TrainConfig.hidden_dim),
            "regularization": options.get("regularization", TrainConfig.regularization),
            "alpha": options.get("alpha", TrainConfig.alpha),
        }
        setting = labels.pop(baselines.label("iALS", factorisation), None)  # each iALS row fitted by one at most
        if setting is not None:
            out[stage] = setting
    return out


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


TRAINING = "train"
"""``EvaluationState.sent``'s mark of the training phase started: every recipe's pipeline, and the baselines'
scoring cells (they need no model)."""

SCORING = "score"
"""``EvaluationState.sent``'s mark of the scoring cells sent (every cell, for a job with no recipe); with
``:<training stage>`` after it, of the cells that waited for that training, sent as it finished."""


def _start_training(svc: Services, celery: Celery, job: Job, state: EvaluationState) -> None:
    """Once, as the first ``train:`` stage begins: submit every recipe's pipeline at once, and plan the scoring
    and send its baselines' cells, at a lower priority than the pipelines' own CPU work. The pipelines train on
    the gpu queue while the CPU workers score the baselines; the stages still finish in order, each waiting
    on its own child (``_child_stage``), and the recipes' cells are sent by ``_score_stage``."""
    for stage in stages(job.params):
        if stage.startswith("train:") and stage not in state.children:
            _submit_child(svc, celery, job, state, stage)
    plan = _plan(job.params, state)
    send_shards(svc.jobs, celery, job.id, "evaluate", plan, only=lambda lo: not trained_cell(plan.payload, lo))
    state.sent.append(TRAINING)
    state.write(svc.jobs, job.id)


def _send_trained_cells(svc: Services, celery: Celery, job: Job, state: EvaluationState, stage: str) -> None:
    """The cells that waited for training ``stage`` (its recipe's rows; an iALS row it fitted), sent as soon as
    it is done, so that they score while the later pipelines train; once (``EvaluationState.sent``)."""
    plan = stored_plan(svc.jobs, job.id)
    mark = f"{SCORING}:{stage}"
    if plan is None or mark in state.sent:
        return  # no plan yet: ``_score_stage`` sends every cell
    state.write(svc.jobs, job.id)  # the stage's result first: a cell reads its model there (else NotTrained)
    send_shards(svc.jobs, celery, job.id, "evaluate", plan, only=lambda lo: cell_stage(plan.payload, lo) == stage)
    state.sent.append(mark)


def _score_stage(svc: Services, celery: Celery, job: Job, state: EvaluationState, stage: str) -> bool:
    """Send the scoring cells not sent yet (those of a training whose cells did not go when it finished; all of
    them, for a job with no recipe), once; the shards and the join finish the job."""
    if SCORING not in state.sent:
        early = stored_plan(svc.jobs, job.id)  # planned as the training began: its baselines' cells are sent
        plan = early or _plan(job.params, state)

        def unsent(lo: int) -> bool:
            waits = cell_stage(plan.payload, lo)
            return waits is not None and f"{SCORING}:{waits}" not in state.sent

        done = len(svc.jobs.shards_done(job.id))  # the cells scored while the recipes trained
        where = parent(job.id, job.params, stage)
        report(svc.jobs, job, where, done / max(1, len(plan.ranges)), f"{done} of {len(plan.ranges)} shards scored")
        send_shards(svc.jobs, celery, job.id, "evaluate", plan, only=unsent if early is not None else None)
        state.sent.append(SCORING)
        state.write(svc.jobs, job.id)
    return False


def _plan(params: dict[str, Any], state: EvaluationState) -> ShardPlan:
    payload = _scoring(params, state)
    return ShardPlan(items=plan_items(payload), size=1, payload=payload)


def trained_models(state: EvaluationState) -> dict[str, str]:
    """Each trained recipe's model, by its training stage (``train:<recipe>``, a grid's ``train:<variant>``)."""
    return {stage: str(result["model"]) for stage, result in state.results.items() if stage.startswith("train:")}


def _child_result(kind: str, child: Job) -> dict[str, Any]:
    result = child.result or {}
    if kind == "ingest":
        return {"dataset": result["dataset"], "job": child.id}
    if kind == "validate":
        return {"job": child.id, **choose(result)}
    return {"model": result["model"], "job": child.id, "seconds": _wall_seconds(child)}


def _wall_seconds(job: Job) -> float:
    if not (job.started_at and job.finished_at):
        return 0.0
    start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (job.started_at, job.finished_at))
    return round((end - start).total_seconds(), 3)


def table_rows(params: dict[str, Any], state: EvaluationState) -> list[dict[str, Any]]:
    """The rows a job scores: {"name", "kind", "family", "params"} of every baseline and recipe, at every setting
    of their grids (grid mode), at the setting chosen on validation, or at their defaults; a recipe's also its
    training ``stage``, whose result in the job's state names its model (the scoring is planned while the
    recipes train: a recipe's cells look their model up when they run, the join when it builds the table); an
    iALS row whose fit a recipe's training makes (``factorised_by``), that training's ``stage``."""
    grid, picked = bool(params.get("grid")), chosen(state)
    fitted_by = {baselines.label("iALS", setting): stage for stage, setting in factorised_by(params, state).items()}
    rows = []
    for b in baselines_of(params):
        for setting in [picked[b]] if b in picked else baseline_settings(b, grid=grid):
            row = {"name": variant_label(b, setting), "kind": "baseline", "family": b, "params": setting}
            stage = fitted_by.get(baselines.label(b, setting)) if b == "iALS" else None
            rows.append({**row, "stage": stage} if stage else row)  # its fit: the recipe's (``factorised_by``)
    if not grid:
        for recipe in recipes_of(params):
            setting = picked.get(recipe, {})
            rows.append({"name": variant_label(recipe, setting), "kind": "recipe", "family": recipe,
                         "params": setting, "stage": f"train:{recipe}"})  # fmt: skip
        return rows
    for stage, recipe, overrides in recipe_variants(params):
        for serve in SERVE_GRIDS.get(recipe, [{}]):  # each scores the trained setting: no training of its own
            setting = {**overrides, **serve}
            rows.append({"name": variant_label(recipe, setting), "kind": "recipe", "family": recipe,
                         "params": setting, "stage": f"train:{stage}", "serve": serve})  # fmt: skip
    return rows


def _scoring(params: dict[str, Any], state: EvaluationState) -> dict[str, Any]:
    """What every scoring shard and the join work from (small JSON, the shard plan's payload)."""
    split = state.results["split"]
    protocol = Protocol.of(params)
    rows = table_rows(params, state)
    grid = bool(params.get("grid"))
    max_evaluated = 0 if grid else protocol.max_evaluated
    scored = segments(split, max_evaluated)
    return {
        "dataset": split["dataset"],
        "training_dataset": split["training_dataset"],
        "relevant_at": protocol.relevant_at,
        "k": protocol.k,
        "seed": int(params.get("seed", DEFAULT_SEED)),
        "ease_max_bytes": EASE_MAX_BYTES,
        "rows": rows,
        "grid": grid,
        "groups": fit_groups(rows),
        "segments": scored,
        "max_evaluated": max_evaluated,
        # a grid's cell is a group of settings by every user of every segment: each cell fits its own settings
        "chunk": max(1, sum(int(s["users"]) for s in scored))
        if grid
        else int(params.get("shard_users", DEFAULT_SHARD_USERS)),
    }


def choose(table: dict[str, Any]) -> dict[str, Any]:
    """From a grid-mode table: each row family's setting, the recipe to make the default (the best recipe by its
    best setting), the baseline to measure against (the best baseline but random), every setting's validation
    figures, and for a family served with a cold boost its best setting did not have, why (``cold``).

    A family's setting is its best on validation by ``objective`` (ties: the first in grid order), or the setting
    that reaches cold movies in its place (``reach_cold``)."""
    scored = [{**row, "objective": objective(row, table["users"])} for row in table["rows"]]
    best = {family: scored[i] for family, i in best_of_families(scored).items()}
    served = {family: reach_cold(row, scored) or row for family, row in best.items()}
    kinds = {row["family"]: row["kind"] for row in scored}

    def top(kind: str, *, but: tuple[str, ...] = ()) -> str | None:
        named = [f for f in best if kinds[f] == kind and f not in but]
        return max(named, key=lambda f: best[f]["objective"]) if named else None  # ties: the first named

    return {
        "chosen": {family: row["params"] for family, row in served.items()},
        "default": top("recipe"),
        "reference": top("baseline", but=("random",)),
        "grid": [{key: row.get(key) for key in GRID_KEYS} for row in scored],
        "users": table["users"],
        "cold": {family: cold_reason(best[family], row) for family, row in served.items() if row is not best[family]},
    }


def best_of_families(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Each family's row with the highest ``objective`` (ties: the first), by its position; None never wins."""
    best: dict[str, int] = {}
    for i, row in enumerate(rows):
        family, value = row["family"], row["objective"]
        if value is not None and (family not in best or value > rows[best[family]]["objective"]):
            best[family] = i
    return best


def reach_cold(best: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The setting to serve in place of a family's ``best`` so that new films reach someone, or None.

    Only when ``best`` reaches no cold movie on validation (a cold-start recall of 0): then the smallest cold boost
    of the same setting (the same model, served with a boost) that ties it there (``vs_best``, the paired interval
    of its objective minus best's, holds 0: the grid job computes it, ``cold_intervals``) and reaches some. A boost
    that costs no measurable objective and brings new films to users who like them is worth serving; one that
    loses significantly is not, however many cold movies it finds. A best that already reaches cold movies is
    kept: a higher cold-start recall among ties is not chased, since it is read on the few validation users who
    liked a cold movie (9 on ml-latest-small's global split) and a larger boost fills more of every answer.
    """
    if float(best.get("cold_recall") or 0.0) > 0:
        return None
    ties = [
        row for row in rows
        if row["family"] == best["family"] and (vs := row.get("vs_best")) is not None and vs["best"] == best["name"]
        and vs["high"] >= 0 and float(row.get("cold_recall") or 0.0) > 0
    ]  # fmt: skip
    return min(ties, key=lambda row: float(row["params"].get("cold_boost", 0.0))) if ties else None  # ties: the first


def cold_reason(best: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    """Why a family is served with ``served``'s cold boost rather than as ``best``: both settings, the paired
    interval of the objective between them and their cold-start recall on validation; ``text`` in words."""
    vs, was = served["vs_best"], float(best.get("cold_recall") or 0.0)
    difference, low, high = intervals.signed(vs["difference"], vs["low"], vs["high"])
    text = (f"{served['name']} in place of {best['name']}: it ties it on validation (objective "
            f"{difference}, 95 % CI [{low}, {high}]) and reaches cold movies "
            f"(cold-start recall {float(served['cold_recall']):.4f} against {was:.4f})")  # fmt: skip
    return {"best": best["name"], "served": served["name"], "vs_best": vs, "cold_recall": served["cold_recall"],
            "best_cold_recall": best.get("cold_recall"), "text": text}  # fmt: skip


def cold_intervals(rows: list[dict[str, Any]], scores: dict[str, list[RowScores | None]], *, users: int,
                   seed: int) -> dict[int, dict[str, Any]]:  # fmt: skip
    """For a grid-mode table's ``rows`` (``build_table``'s, with their metrics): the paired bootstrap interval
    of each row that differs from its family's best (``objective``) in its cold boost alone, its objective minus
    the best's, by position, with the best's name (``reach_cold`` reads it).

    The objective is the mean NDCG over every user of every segment, so the pairs are the per-user NDCG of all
    segments laid end to end; a held-out user counted in three new-user slices is resampled as three users, which
    narrows the interval (a boost is then kept out sooner, not let in sooner)."""
    scored = [{**row, "objective": objective(row, users)} for row in rows]
    best = best_of_families(scored)
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    which: list[tuple[int, int]] = []
    for i, row in enumerate(scored):
        b = best.get(row["family"])
        if b is None or b == i or row["objective"] is None or not _cold_boost_alone(row["params"], rows[b]["params"]):
            continue
        pairs.append((_per_user_ndcg(scores, i), _per_user_ndcg(scores, b)))
        which.append((i, b))
    found = intervals.paired_bootstraps(pairs, seed=seed) if pairs else []
    return {i: {**interval.to_json(), "best": rows[b]["name"]} for (i, b), interval in zip(which, found, strict=True)}


def _cold_boost_alone(params: dict[str, Any], other: dict[str, Any]) -> bool:
    """Two settings that differ in their cold boost and nothing else."""
    rest, others = ({k: v for k, v in p.items() if k != "cold_boost"} for p in (params, other))
    return rest == others and params.get("cold_boost", 0.0) != other.get("cold_boost", 0.0)


def _per_user_ndcg(scores: dict[str, list[RowScores | None]], i: int) -> np.ndarray:
    """Row ``i``'s NDCG of every user of every segment, the segments in name order."""
    parts = [scored[i] for _, scored in sorted(scores.items())]
    return np.concatenate([p.ndcg for p in parts if p is not None]) if parts else np.zeros(0)


def objective(row: dict[str, Any], users: int) -> float | None:
    """What validation maximises: NDCG@k over every validation user and every new-user slice's user, each user
    of each segment counted once (the mean of the segments' NDCG weighted by their users). The new users are the
    validation cohort brought back with 1, 3 and 10 ratings, so a setting is chosen for light users as well as
    for those with a long history; None for a skipped row."""
    if row["ndcg"] is None:
        return None
    total, weight = float(row["ndcg"]) * users, users
    slices = row.get("new_users") or {}
    for _, scored in sorted(slices.items()):  # one order, however the table's JSON was stored
        if scored is not None and scored.get("users"):
            total, weight = total + float(scored["ndcg"]) * int(scored["users"]), weight + int(scored["users"])
    return total / weight if weight else None


GRID_KEYS = ("name", "family", "params", "ndcg", "recall", "cold_recall", "objective", "vs_best", "skipped")
"""What validation keeps of each setting it scored."""

NOTES = (
    "every choice (each row's setting, the default recipe, the reference baseline) was made on the validation "
    "split, the last 20 % of the training part, by NDCG@10 over its users and its held-out new users at 1, 3 "
    "and 10 ratings; the test part was scored once",
    "descriptors hold only tags that training users wrote before their cut (their own, or the global one); "
    "genome scores carry no time and stay",
)
"""The table's notes on the protocol, printed under it."""


def build_table(
    params: dict[str, Any],
    state: EvaluationState,
    plan: dict[str, Any],
    scores: dict[str, list[RowScores | None]],
    shard_stats: list[dict[str, Any]],
) -> dict[str, Any]:
    """The job's result: one row per baseline and recipe of ``plan`` (the scoring's) with its metrics on the test
    part, on each new-user slice, and its paired bootstrap interval against the reference baseline; how each row
    was tuned; the protocol and where it ran."""
    split = state.results["split"]
    validation = state.results.get("validate", {})
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for stats in shard_stats:
        skipped.update(stats.get("skipped", {}))
        for name, sec in stats.get("seconds", {}).items():
            seconds[name] = seconds.get(name, 0.0) + float(sec)
    reference = validation.get("reference")
    ref_index = next((i for i, r in enumerate(plan["rows"]) if r["family"] == reference), None)
    seed = int(plan["seed"])
    versus = _versus(scores, len(plan["rows"]), ref_index, seed=seed) if ref_index is not None else {}
    rows = []
    for i, row in enumerate(plan["rows"]):
        name = row["name"]
        main = scores["all"][i]
        trained = state.results.get(row["stage"], {}) if row["kind"] == "recipe" else {}
        took = seconds.get(name, 0.0) + float(trained.get("seconds", 0.0))
        out = {
            "name": name,
            "kind": row["kind"],
            "family": row["family"],
            "params": row["params"],
            "model": trained.get("model"),
            **{key: (None if main is None else main.metrics[key]) for key in METRIC_KEYS},
            "seconds": round(took, 2),
            "skipped": skipped.get(name) if main is None else None,
        }
        slices = {seg: _slice(scored[i]) for seg, scored in scores.items() if seg != "all"}
        if slices:
            out["new_users"] = slices
        if ref_index is not None and i != ref_index:
            out["vs_reference"] = versus[i]
        if validation:
            out["tuning"] = _tuning(validation, row["family"])
        rows.append(out)
    scored = {str(s["name"]): int(s["users"]) for s in plan.get("segments", segments(split))}  # sampled or not
    if params.get("grid"):  # the evidence ``choose`` needs to serve a cold boost in place of a best setting
        for i, vs in cold_intervals(rows, scores, users=scored["all"], seed=seed).items():
            rows[i]["vs_best"] = vs
    if int(plan.get("max_evaluated", 0)) and scored["all"] < int(split["evaluated"]):
        notes = [
            f"evaluated: a hashed sample of {scored['all']:,} of the {int(split['evaluated']):,} test users"
            f" (max_evaluated), and of each new-user slice's; every model trained on the whole training part"
        ]
    else:
        notes = []
    default = validation.get("default")  # None without validation: nothing is chosen on a test part
    table = {
        "protocol": {**Protocol.of(params).describe(), "seed": seed, "tuned": bool(validation)},
        "dataset": split["dataset"],
        "training_dataset": split["training_dataset"],
        "users": scored["all"],
        "cold_users": int(split["cold_users"]),
        "new_users": {seg: scored.get(f"new-{seg}", 0) for seg in split.get("new_user_slices", {})},
        "rows": rows,
        "best": default,
        "reference": reference,
        "jobs": {stage: child for stage, child in state.children.items()},
    }
    if validation:
        table["validation"] = {"users": validation.get("users")}  # its job: jobs["validate"]
        table["notes"] = list(NOTES)
        table["verdict"] = _verdict(rows, default, reference)
    if notes:
        table["notes"] = [*table.get("notes", []), *notes]
    return table


METRIC_KEYS = ("recall", "ndcg", "hr", "coverage", "cold_recall", "cold_share")


def _slice(scored: RowScores | None) -> dict[str, Any] | None:
    return None if scored is None else {key: scored.metrics[key] for key in ("recall", "ndcg", "hr", "users")}


def _versus(
    scores: dict[str, list[RowScores | None]], n_rows: int, ref: int, *, seed: int
) -> dict[int, dict[str, Any]]:
    """Each row's paired bootstrap intervals against row ``ref`` per segment and metric (same users, paired):
    {row: {segment: {"ndcg", "recall"}}}, every row but ``ref``; one draw of the users per segment."""
    out: dict[int, dict[str, Any]] = {i: {} for i in range(n_rows) if i != ref}
    for seg, scored in scores.items():
        b = scored[ref]
        rows = [(i, a) for i in out if (a := scored[i]) is not None]
        if b is None or not rows:
            continue
        pairs = [pair for _, a in rows for pair in ((a.ndcg, b.ndcg), (a.recall, b.recall))]
        found = intervals.paired_bootstraps(pairs, seed=seed)
        for j, (i, _) in enumerate(rows):
            out[i][seg] = {"ndcg": found[2 * j].to_json(), "recall": found[2 * j + 1].to_json()}
    return out


def _tuning(validation: dict[str, Any], family: str) -> dict[str, Any]:
    """What a row was tuned over and what was chosen: the grid's settings with their validation ``objective``."""
    grid = [g for g in validation.get("grid", []) if g["family"] == family]
    return {
        "grid": {g["name"]: g.get("objective", g["ndcg"]) for g in grid},
        "chosen": validation.get("chosen", {}).get(family),
        "settings": len(grid),
        "cold": validation.get("cold", {}).get(family),  # why it serves a cold boost its best setting had not
    }


def _verdict(rows: list[dict[str, Any]], default: str | None, reference: str | None) -> str | None:
    """One line: does the default recipe lead the reference baseline significantly on the test part?"""
    row = next((r for r in rows if r["family"] == default and r["kind"] == "recipe"), None)
    ref = next((r for r in rows if r["family"] == reference), None)
    if row is None or ref is None or "all" not in row.get("vs_reference", {}):
        return None
    iv = row["vs_reference"]["all"]["ndcg"]
    interval = intervals.Interval(**{k: iv[k] for k in ("difference", "low", "high", "level", "resamples")})
    return intervals.verdict(row["name"], ref["name"], interval)


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
