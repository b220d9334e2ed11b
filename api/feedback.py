"""Feedback: ``POST /v1/datasets/<id>/ratings`` stores ratings given after ingest; ``GET /v1/users/<id>/ratings``
lists a user's ratings. Answered here: a batch is validated whole, then checked against the caps and stored in one
Lua script (see ``shared/store/feedback.py`` for where it lives and who reads it): past
MOVIEREC_MAX_FEEDBACK_ROWS (rows of the dataset) or MOVIEREC_MAX_FEEDBACK_ROWS_PER_USER (rows of a user in it),
409 ``quota_exceeded`` and nothing of the batch stored."""

from __future__ import annotations

import time
from typing import Any

from apiflask import APIBlueprint

from shared.errors import Conflict, NotFound
from shared.logic.online import attribute, record
from shared.store.feedback import FeedbackCaps, problems

from .context import active_model, refuse_rows, services
from .schemas import RatingsIn, RatingsStoredOut, UserRatingsOut, UserRatingsQuery

bp = APIBlueprint("feedback", __name__, tag="feedback")


@bp.post("/v1/datasets/<dataset_id>/ratings")
@bp.input(RatingsIn, arg_name="body", example={"ratings": [{"user_id": 1, "movie_id": 1, "rating": 4.5}]})
@bp.output(RatingsStoredOut, description="every rating stored, durably; the next recommendation sees them")
@bp.doc(responses={400: "a row names an unknown movie or a rating off the dataset's scale (details.rows names "
                        "them): nothing of the batch is stored", 404: "unknown dataset",
                   409: "the dataset holds no rating (an evaluation's split that kept no user): it has no rating "
                        "scale to check feedback against; or quota_exceeded: the batch would pass "
                        "MOVIEREC_MAX_FEEDBACK_ROWS (the dataset's rows) or MOVIEREC_MAX_FEEDBACK_ROWS_PER_USER "
                        "(a user's; details.cap says which): nothing of the batch is stored"})  # fmt: skip
def post_ratings(dataset_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Ratings given after ingest, up to 10,000 a request. The last rating of a (user, movie) wins; a user the
    dataset does not know is created by their first rating. Posting to a feedback version (a pipeline's
    dataset) posts to the dataset it was made from. A rating citing the ``recommendation_id`` of the answer that
    showed its movie is also a rating event credited to that answer (POST /v1/events)."""
    svc = services()
    catalogue = svc.catalogue
    base = catalogue.feedback_base(dataset_id)
    rows = body["ratings"]
    scale = catalogue.rating_scale(base)
    if scale[2] == []:
        raise Conflict(f"dataset {base!r} holds no rating, so it has no rating scale to check feedback against; "
                       "post ratings to a dataset that has some")  # fmt: skip
    bad = problems(rows, catalogue.movie_ids(base), scale)
    if bad:
        refuse_rows(bad, total=len(rows), what="ratings")
    now = int(time.time())
    cited = [i for i, r in enumerate(rows) if "recommendation_id" in r]
    events, bad = attribute(svc, [_event(rows[i], now) for i in cited], movie_ids=catalogue.movie_ids(base),
                            scale=scale[:2]) if cited else ([], [])  # fmt: skip
    if bad:
        refuse_rows([{**b, "row": cited[b["row"]]} for b in bad], total=len(rows), what="ratings",
                    why="cite an answer they cannot be credited to")  # fmt: skip
    stored = [(r["user_id"], r["movie_id"], float(r["rating"]), r.get("timestamp", now)) for r in rows]
    caps = FeedbackCaps(rows=svc.settings.max_feedback_rows, rows_per_user=svc.settings.max_feedback_rows_per_user)
    svc.feedback.add(base, stored, caps=caps)
    if events:
        record(svc, events)  # after the ratings: a refused batch credits nothing
    users = sorted({r[0] for r in stored})
    known = catalogue.user_ids(base)
    new_users = [u for u in users if u not in known]
    return {"dataset": base, "stored": len(stored), "users": len(users), "new_users": new_users}


def _event(row: dict[str, Any], now: int) -> dict[str, Any]:
    """A rating that cites the answer that showed its movie, as the event it is credited as."""
    return {"type": "rating", "user_id": row["user_id"], "movie_id": row["movie_id"], "rating": float(row["rating"]),
            "timestamp": row.get("timestamp", now), "recommendation_id": row["recommendation_id"]}  # fmt: skip


@bp.get("/v1/users/<int:user_id>/ratings")
@bp.input(UserRatingsQuery, location="query", arg_name="query", unknown=None)
@bp.output(UserRatingsOut)
@bp.doc(responses={404: "unknown dataset, or a user with no rating in it", 409: "no dataset given and no model "
                        "is active"})  # fmt: skip
def user_ratings(user_id: int, query: dict[str, Any]) -> dict[str, Any]:
    """A user's ratings in a dataset (the active model's if none is named): those ingested with the feedback
    posted since over them, by time."""
    svc = services()
    dataset = query.get("dataset") or active_model()[1]
    base = svc.catalogue.feedback_base(dataset)
    movies = svc.catalogue.movies(base)
    stored = svc.catalogue.user_ratings(base, user_id)
    rated: dict[int, dict[str, Any]] = {}
    times = stored.timestamps.tolist() if stored.timestamps is not None else [None] * len(stored.values)
    for r, v, t in zip(stored.movie_index.tolist(), stored.values.tolist(), times, strict=True):
        movie = movies[r]
        rated[movie["movie_id"]] = {"movie_id": movie["movie_id"], "title": movie["title"], "rating": v,
                                    "timestamp": t, "source": "ingest"}  # fmt: skip
    feedback = svc.feedback.user(base, user_id)
    for m, v, t in zip(feedback.movie_ids.tolist(), feedback.values.tolist(), feedback.times.tolist(), strict=True):
        rated.pop(m, None)
        title = movies[svc.catalogue.movie_row(base, m)]["title"]
        rated[m] = {"movie_id": m, "title": title, "rating": v, "timestamp": t, "source": "feedback"}
    if not rated:
        raise NotFound(f"user {user_id} has no rating in dataset {base!r}")
    ordered = sorted(rated.values(), key=lambda x: (x["timestamp"] is None, x["timestamp"] or 0))
    return {"user_id": user_id, "dataset": base, "ratings": ordered}
