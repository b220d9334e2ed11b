"""``/v1/recommendations``: a query answered by an interactive worker with the active model; optionally waited for.

While the caller waits (``?wait`` > 0) the query is first asked over the fast lane (shared/jobs/fastlane.py), which
writes nothing; with no answer from it within ``FAST_LANE_S`` (no interactive worker, or one too busy), or when
the caller does not wait, it becomes a job on the ``interactive`` queue, recorded and answered as every job is.
"""

from __future__ import annotations

import time
from typing import Any

from apiflask import APIBlueprint
from flask import jsonify

from shared.logic.online import assignment

from .context import accepted, active_model, fastlane, services, submit_job
from .metrics import ANSWERED_BY
from .schemas import JobOut, RecommendationsOut, RecommendIn, WaitQuery

bp = APIBlueprint("recommendations", __name__, url_prefix="/v1/recommendations", tag="recommendations")

_RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {
        "description": "the result, ready within ?wait",
        "content": {"application/json": {"schema": RecommendationsOut}},
    },
    400: {"description": "invalid request"},
    404: {"description": "unknown movie id (a user with no ratings is answered with the most popular movies)"},
    409: {"description": "no model is active"},
}


@bp.post("")
@bp.input(RecommendIn, arg_name="body", example={"keywords": ["war", "violence", "drama"], "k": 5})
@bp.input(WaitQuery, location="query", arg_name="query", unknown=None)
@bp.output(JobOut, status_code=202, description="the recommendation job, when not ready within ?wait")
@bp.doc(responses=_RESPONSES)
def recommend(body: dict[str, Any], query: dict[str, Any]) -> Any:
    """Movies for a user (from their ratings, feedback included; the most popular ones for a user with none), for
    keywords, or like some movies and unlike others. Every answer carries a ``recommendation_id`` to cite in the
    events it leads to; while an experiment runs, a user's answer comes from their variant's model (or both
    models, interleaved) and names the experiment."""
    version, dataset = active_model()
    # Unknown movie ids are 404 here, before anything is queued; a user unknown to the dataset is not an error:
    # with feedback they have a profile, without it they get the most popular movies.
    services().catalogue.check_ids(dataset, movie_ids=[*(body.get("liked") or []), *(body.get("disliked") or [])])
    # Every answer is a page: "shown" (what the body's cursor carries; none on a first page) is left out of it,
    # and its next_cursor adds what it answered (shared/ml/pages.py).
    params = {**body, "shown": body.get("shown", []), "model": version}
    if body.get("user_id") is not None and (running := services().experiments.running()) is not None:
        params.update(assignment(running, int(body["user_id"])))  # the user's variant's model, or both of them
    return answer_within(params=params, wait_s=query["wait"])


FAST_LANE_S = 1.0
"""The longest a query waits for the fast lane before it is sent as a job (a cold worker loading a model, a storm)."""


def answer_within(*, params: dict[str, Any], wait_s: float) -> Any:
    """The answer (200) from the fast lane or a recommend job that succeeds within ``wait_s``, else the job (202)."""
    started = time.monotonic()
    answer = fastlane().ask(params, min(wait_s, FAST_LANE_S), tenant=services().tenant)
    if wait_s > 0:
        ANSWERED_BY.labels("fast_lane" if answer is not None else "job").inc()
    if answer is not None:
        return jsonify(answer)
    job = submit_job(kind="recommend", params=params)
    left = max(0.0, wait_s - (time.monotonic() - started))
    finished = services().jobs.wait_finished(job.id, left, just_submitted=True)
    if finished is not None and finished.status == "succeeded":
        return jsonify(finished.result)  # a Response: not reshaped by the 202 schema
    return accepted(finished or job)
