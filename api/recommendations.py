"""``/v1/recommendations``: a query answered by a CPU worker with the active model; optionally waited for."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import jsonify

from shared.errors import Conflict

from . import accepted, services, submit_job
from .schemas import JobOut, RecommendationsOut, RecommendIn, WaitQuery

bp = APIBlueprint("recommendations", __name__, url_prefix="/v1/recommendations", tag="recommendations")

_RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {
        "description": "the result, ready within ?wait",
        "content": {"application/json": {"schema": RecommendationsOut}},
    },
    400: {"description": "invalid request"},
    404: {"description": "unknown user or movie id"},
    409: {"description": "no model is active"},
}


@bp.post("")
@bp.input(RecommendIn, arg_name="body", example={"keywords": ["war", "violence", "drama"], "k": 5})
@bp.input(WaitQuery, location="query", arg_name="query", unknown=None)
@bp.output(JobOut, status_code=202, description="the recommendation job, when not ready within ?wait")
@bp.doc(responses=_RESPONSES)
def recommend(body: dict[str, Any], query: dict[str, Any]) -> Any:
    """Movies for a user, for keywords, or like some movies and unlike others."""
    version = services().models.active()
    if version is None:
        raise Conflict("no model is active: train one, index it and activate it (or run a pipeline)")
    dataset = services().models.servable_dataset(version)
    if dataset is None:
        raise Conflict(f"the active model {version!r} cannot serve")
    # Unknown ids are 404 here, before anything is queued; only the dataset's id arrays are needed for that.
    services().datasets.check_ids(
        dataset,
        user_id=body.get("user_id"),
        movie_ids=[*(body.get("liked") or []), *(body.get("disliked") or [])],
    )
    job = submit_job(kind="recommend", params={**body, "model": version})
    finished = services().jobs.wait_finished(job.id, query["wait"], just_submitted=True)
    if finished is not None and finished.status == "succeeded":
        return jsonify(finished.result)  # a Response: not reshaped by the 202 schema
    return accepted(finished or job)
