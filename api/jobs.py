"""``/v1/jobs``: read, list, cancel jobs and fetch their results.

With API keys a caller sees only the jobs its key created (``api.auth``): another key's job answers 404,
exactly as an unknown id does, so ids cannot be probed.

A job id is a UUID, and its routes say so (``<uuid:job_id>``): ``/v1/jobs/encode`` is then the encode route
alone, whose ``Allow`` (an OPTIONS, a 405) lists POST only, not also the GET and DELETE of a job.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import Response, jsonify, stream_with_context, url_for

from shared.errors import Conflict, JobNotFinished, NotFound, ResultFormUnavailable
from shared.infra.keys import encode_input_artifact
from shared.jobs.store import Job
from shared.jobs.submit import cancel
from shared.logic import batch
from shared.logic.ingest import confine
from shared.logic.mining import DEFAULT_SEED, TripletSpec
from shared.ml import protocol

from .auth import current_owner, visible
from .context import accepted, active_model, celery, has_feedback, require_room, services, submit_job
from .schemas import (
    EncodeIn,
    EvaluateIn,
    IndexIn,
    JobListOut,
    JobListQuery,
    JobOut,
    RecommendBatchIn,
    ResultQuery,
    TrainIn,
    TripletsIn,
)

bp = APIBlueprint("jobs", __name__, url_prefix="/v1/jobs", tag="jobs")

_RESULT_RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {
        "description": "the job's result: JSON (?format=json, every kind), the array it produced (?format=npy: "
        "encode, triplets, recommend-batch) or CSV rows (?format=csv: recommend-batch)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    },
    404: {"description": "unknown or expired job"},
    409: {
        "description": "job_not_finished: the job is queued or running; conflict: it failed or was cancelled, or a "
        "recommend-batch job's rows have expired; no_such_form: its result has no such form (npy: the job produced "
        "no array, as only encode, triplets and recommend-batch jobs do; csv: not a recommend-batch job)"
    },
}


def _job_or_404(job_id: uuid.UUID) -> Job:
    job = services().jobs.get(str(job_id))
    if job is None or not visible(job.owner):
        raise NotFound(f"job {str(job_id)!r} does not exist or has expired")
    return job


def _public(job: Job) -> dict[str, Any]:
    return job.public(result_url=url_for("jobs.get_result", job_id=job.id))


_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
"""A Hugging Face model id: ``name`` or ``owner/name``, no "..", nothing a path could climb with."""


def model_source(name: str) -> str:
    """A model name as the workers get it: exactly as given, never rewritten to this host's path.

    Each worker resolves it against its own data root (shared/ml/encoder.py), which may be mounted elsewhere
    than the API's or not at all here. A name that only a path can mean must lie inside the data root
    (``confine``, ``PathNotAllowed``), whatever its spelling: absolute, ``./x``, ``a/../../b``.
    """
    if _HUB_NAME.match(name) and ".." not in name:
        return name
    confine(name, root=services().settings.data_root)
    return name


def _require_dataset(dataset_id: str) -> None:
    if services().datasets.get(dataset_id) is None:
        raise NotFound(f"dataset {dataset_id!r} does not exist")


@bp.post("/triplets")
@bp.input(TripletsIn, arg_name="body")
@bp.output(JobOut, status_code=202, description="the mining job, queued")
@bp.doc(responses={400: "invalid request", 404: "unknown dataset", 413: "body too large", 415: "not JSON"})
def create_triplets(body: dict[str, Any]) -> Any:
    """Mine (anchor, positive, negative) triplets of a dataset, sharded over the CPU workers."""
    _require_dataset(body["dataset"])
    return accepted(submit_job(kind="triplets", params=body))


@bp.post("/encode")
@bp.input(EncodeIn, arg_name="body", example={"texts": ["Children", "family", "animation"], "pooling": "cls"})
@bp.output(JobOut, status_code=202, description="the encoding job, queued (gpu queue)")
@bp.doc(
    responses={400: "invalid request, limits exceeded or a local model outside the data root", 404: "unknown dataset"}
)
def create_encode(body: dict[str, Any]) -> Any:
    """Encode a dataset's movies, or texts / items (lists of strings), with a BERT-family model."""
    if body.get("model"):
        body["model"] = model_source(body["model"])
    params = {k: body[k] for k in ("model", "pooling") if body.get(k)}
    if "dataset" in body:
        _require_dataset(body["dataset"])
        params["dataset"] = body["dataset"]
    else:
        shape = "texts" if "texts" in body else "items"
        name = encode_input_artifact(str(uuid.uuid4()))  # the strings travel through Redis, not in the message
        services().artifacts.put_json(name, body[shape], ttl_s=services().settings.result_ttl_s)
        params |= {"input": name, "shape": shape, "count": len(body[shape])}
    return accepted(submit_job(kind="encode", params=params))


@bp.post("/train")
@bp.input(TrainIn, arg_name="body")
@bp.output(JobOut, status_code=202, description="the training job, queued (gpu queue)")
@bp.doc(
    responses={
        400: "invalid request or a local model outside the data root",
        404: "unknown dataset",
        409: "no triplets mined for it yet, or quota_exceeded: MOVIEREC_MAX_MODELS models are stored",
    }
)
def create_train(body: dict[str, Any]) -> Any:
    """Train the Siamese projection of a dataset's movie embeddings on its triplets."""
    if body.get("model"):
        body["model"] = model_source(body["model"])
    _require_dataset(body["dataset"])
    body.setdefault("triplets", TripletSpec(dataset=body["dataset"], seed=DEFAULT_SEED, strategy="uniform-min").name)
    if not services().artifacts.exists(body["triplets"]):
        raise Conflict(f"no triplets {body['triplets']!r}: mine them first with POST /v1/jobs/triplets")
    require_room("models")
    return accepted(submit_job(kind="train", params=body))


@bp.post("/index")
@bp.input(IndexIn, arg_name="body")
@bp.output(JobOut, status_code=202, description="the index job, queued (cpu queue)")
@bp.doc(responses={400: "invalid request", 404: "unknown model version"})
def create_index(body: dict[str, Any]) -> Any:
    """Build the hnswlib index of a trained model version (needed before it can be activated)."""
    if services().models.get(body["version"]) is None:
        raise NotFound(f"model {body['version']!r} does not exist")
    return accepted(submit_job(kind="index", params=body))


@bp.post("/evaluate")
@bp.input(EvaluateIn, arg_name="body", example={"path": "ml-latest-small", "recipes": ["seed"], "seed": 42})
@bp.output(JobOut, status_code=202, description="the evaluation job, queued (cpu queue)")
@bp.doc(responses={400: "invalid request, or a path outside the data root", 404: "unknown dataset"})
def create_evaluate(body: dict[str, Any]) -> Any:
    """Split a dataset's ratings by time, train recipes on the training part, score them and the baselines:
    the result is one table (Recall, NDCG, HR, coverage and cold-start recall at k, seconds per row)."""
    if body.get("path"):
        confine(body["path"], root=services().settings.data_root)
    else:
        _require_dataset(body["dataset"])
    # What it may store: the ingested dataset (a path given), its feedback version, the training part; a model
    # per recipe.
    with_feedback = bool(body.get("dataset")) and has_feedback(body["dataset"])
    require_room("datasets", needed=1 + bool(body.get("path")) + with_feedback)
    require_room("models", needed=len(protocol.recipes_of(body)))
    return accepted(submit_job(kind="evaluate", params=body))


@bp.post("/recommend-batch")
@bp.input(RecommendBatchIn, arg_name="body", example={"users": [1, 2, 3], "k": 10})
@bp.output(JobOut, status_code=202, description="the batch job, queued (cpu queue, sharded)")
@bp.doc(responses={400: "invalid request", 409: "no model is active"})
def create_recommend_batch(body: dict[str, Any]) -> Any:
    """Recommendations for many users (or "all") with the active model, each user's the single-user answer
    (with the same serve-time rules, when given); the rows as CSV or .npy from the job's result."""
    version, dataset = active_model()
    return accepted(submit_job(kind="recommend-batch", params={**body, "model": version, "dataset": dataset}))


@bp.get("")
@bp.input(JobListQuery, location="query", arg_name="query", unknown=None)  # None: the schema raises
@bp.output(JobListOut)
def list_jobs(query: dict[str, Any]) -> dict[str, Any]:
    """Jobs, newest first, filtered by status and kind (with API keys: the caller's jobs only)."""
    jobs = services().jobs.list(status=query["status"], kind=query["kind"], owner=current_owner(), limit=query["limit"])
    return {"jobs": [_public(j) for j in jobs]}


@bp.get("/<uuid:job_id>")
@bp.output(JobOut)
@bp.doc(responses={404: "unknown or expired job"})
def get_job(job_id: uuid.UUID) -> dict[str, Any]:
    """A job's status, progress, stage and timing."""
    return _public(_job_or_404(job_id))


@bp.delete("/<uuid:job_id>")
@bp.output(JobOut, description="the job, now cancelled")
@bp.doc(
    description="Cancels the job; it does not delete it. A queued job never runs and a running one is stopped; "
    "the record stays readable at GET /v1/jobs/{job_id} with status cancelled (and its result answers 409) until it "
    "expires after MOVIEREC_RESULT_TTL_S, as every finished job does. A second DELETE answers 409.",
    responses={404: "unknown or expired job", 409: "the job had already finished (succeeded, failed or cancelled)"},
)
def cancel_job(job_id: uuid.UUID) -> dict[str, Any]:
    """Cancel a queued or running job (the job stays readable)."""
    job = _job_or_404(job_id)
    if not cancel(celery(), services().jobs, job.id):
        raise Conflict(f"job {job.id!r} has already finished ({job.status})")
    return _public(_job_or_404(job_id))


@bp.get("/<uuid:job_id>/result")
@bp.input(ResultQuery, location="query", arg_name="query", unknown=None)
@bp.doc(responses=_RESULT_RESPONSES)
def get_result(job_id: uuid.UUID, query: dict[str, Any]) -> Response:
    """The result of a succeeded job."""
    job = _job_or_404(job_id)
    if job.status in ("queued", "running"):
        raise JobNotFinished(f"job {job.id!r} is {job.status}; poll /v1/jobs/{job.id}")
    if job.status != "succeeded":
        raise Conflict(f"job {job.id!r} {job.status}; it has no result", details={"status": job.status})
    if job.kind == "recommend-batch" and query["format"] in ("csv", "npy"):
        return _batch_rows(job, query["format"])
    if query["format"] == "csv":
        raise ResultFormUnavailable(f"the result of a {job.kind} job has no CSV form; omit ?format=csv",
                                    details={"kind": job.kind, "format": "csv"})  # fmt: skip
    if query["format"] == "npy":
        if job.result_artifact is None:
            raise ResultFormUnavailable(f"the result of a {job.kind} job has no array form; omit ?format=npy",
                                        details={"kind": job.kind, "format": "npy"})  # fmt: skip
        data = services().artifacts.get_bytes(job.result_artifact)
        headers = {"Content-Disposition": f'attachment; filename="{job.id}.npy"'}
        return Response(data, mimetype="application/octet-stream", headers=headers)
    if job.result_inline and job.result_artifact:
        array = services().artifacts.get_array(job.result_artifact)
        return jsonify({**job.result, job.result_inline: array.tolist()})
    return jsonify(job.result)


def _batch_rows(job: Job, fmt: str) -> Response:
    """A batch job's rows, streamed part by part (never all in memory): CSV, or one .npy structured array."""
    artifacts, result = services().artifacts, job.result
    if not batch.parts_stored(artifacts, job.id, result):  # checked first: a stream cannot turn into an error
        raise Conflict(f"the rows of job {job.id!r} have expired", details={"status": job.status})
    headers = {"Content-Disposition": f'attachment; filename="{job.id}.{fmt}"'}
    if fmt == "csv":
        rows = batch.csv_stream(artifacts, job.id, result, secret=services().events.secret())
        return Response(stream_with_context(rows), mimetype="text/csv", headers=headers)
    headers["Content-Length"] = str(batch.npy_size(result))
    return Response(stream_with_context(batch.npy_stream(artifacts, job.id, result)),
                    mimetype="application/octet-stream", headers=headers)  # fmt: skip
