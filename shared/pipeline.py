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

from dataclasses import dataclass
from typing import Any

from .triplets import DEFAULT_SEED, DEFAULT_SHARD_SIZE, TripletSpec

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
    from .submit import ENCODE_TASK, INDEX_TASK, INGEST_TASK, MINE_TASK, TRAIN_TASK

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
