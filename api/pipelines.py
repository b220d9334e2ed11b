"""``/v1/pipelines``: ingest, mine, encode, train, index and activate, as one job."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import url_for

from shared.errors import NotFound
from shared.jobs.submit import PIPELINE_STEP_TASK
from shared.store.datasets import confine

from . import services, submit_job
from .jobs import model_source
from .schemas import JobOut, PipelineIn

bp = APIBlueprint("pipelines", __name__, url_prefix="/v1/pipelines", tag="pipelines")


@bp.post("")
@bp.input(PipelineIn, arg_name="body", example={"path": "ml-latest-small", "epochs": 10})
@bp.output(JobOut, status_code=202, description="the pipeline job, queued")
@bp.doc(responses={400: "invalid request, or a path or local model outside the data root", 404: "unknown dataset"})
def create_pipeline(body: dict[str, Any]) -> Any:
    """Run every stage from a MovieLens directory (or an ingested dataset) to an active model."""
    root = services().settings.data_root
    for key in ("path", "genres_fix_csv"):
        if body.get(key):
            confine(body[key], root=root)
    if body.get("model"):
        body["model"] = model_source(body["model"])
    if body.get("dataset") and services().datasets.get(body["dataset"]) is None:
        raise NotFound(f"dataset {body['dataset']!r} does not exist")
    job = submit_job(kind="pipeline", task=PIPELINE_STEP_TASK, params=body)
    return job.public(result_url=None), 202, {"Location": url_for("jobs.get_job", job_id=job.id)}
