"""``/v1/pipelines``: ingest, mine, encode, train, index and activate, as one job."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from shared.errors import NotFound
from shared.logic.ingest import confine

from .context import accepted, has_feedback, require_room, services, submit_job
from .jobs import model_source
from .schemas import JobOut, PipelineIn

bp = APIBlueprint("pipelines", __name__, url_prefix="/v1/pipelines", tag="pipelines")


@bp.post("")
@bp.input(PipelineIn, arg_name="body", example={"path": "ml-latest-small", "epochs": 10})
@bp.output(JobOut, status_code=202, description="the pipeline job, queued")
@bp.doc(
    responses={
        400: "invalid request, or a path or local model outside the data root",
        404: "unknown dataset",
        409: "quota_exceeded: MOVIEREC_MAX_DATASETS datasets (with a path) or MOVIEREC_MAX_MODELS models are stored",
    }
)
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
    if body.get("path") or has_feedback(body["dataset"]):  # a new dataset, or a feedback version of one
        require_room("datasets")
    require_room("models")
    return accepted(submit_job(kind="pipeline", params=body))
