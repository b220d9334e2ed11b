"""``/v1/events``: what users did with what was served (impressions, clicks, plays, ratings), each credited to the
answer it cites (shared/logic/online.py).

A batch is validated whole (its movies in the active model's catalogue, a rating on its dataset's scale, each
cited ``recommendation_id`` made by this tenant for that user and showing that movie), then logged and counted in
one round trip to Redis; a bad event is 400 naming it, and nothing of the batch is stored. The answer path reads
nothing of this: events never slow a recommendation but by the CPU they take.
"""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import request

from shared.logic.online import attribute, record

from .context import active_model, cooperate, refuse_rows, services
from .schemas import EventsHeaders, EventsIn, EventsOut, EventsQuery, EventsStoredOut

bp = APIBlueprint("events", __name__, url_prefix="/v1/events", tag="events")


@bp.post("")
@bp.input(EventsHeaders, location="headers", arg_name="headers")
@bp.input(EventsIn, arg_name="body", example={"events": [{"type": "click", "user_id": 1, "movie_id": 1}]})
@bp.output(EventsStoredOut, description="every event logged; those citing an experiment's answer counted")
@bp.doc(responses={400: "an event names a movie the active model does not know, a rating off the scale, or an "
                        "answer this tenant did not make, made for another user or that did not show the movie "
                        "(details.rows names them): nothing of the batch is stored",
                   409: "no model is active, or the Idempotency-Key came with another batch within a day"})  # fmt: skip
def post_events(headers: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Up to 1,000 events a request. An event citing a ``recommendation_id`` is credited to that answer: to its
    experiment's variant, at the position the answer showed the movie, within MOVIEREC_ATTRIBUTION_WINDOW_S. A
    client that may send a batch twice (a retry after a timeout) names it with an ``Idempotency-Key``."""
    svc = services()
    dataset = active_model()[1]
    base = svc.catalogue.feedback_base(dataset)
    low, high, _ = svc.catalogue.rating_scale(base)
    events, bad = attribute(svc, body["events"], movie_ids=svc.catalogue.movie_ids(base), scale=(low, high),
                            pause=cooperate)  # fmt: skip
    if bad:
        refuse_rows(bad, total=len(body["events"]), what="events")
    key = headers.get("idempotency_key")
    return record(svc, events, pause=cooperate, once=(key, request.get_data(cache=True)) if key else None)


@bp.get("")
@bp.input(EventsQuery, location="query", arg_name="query", unknown=None)
@bp.output(EventsOut)
@bp.doc(responses={400: "limit outside 1..1000, or before not an event's id"})
def list_events(query: dict[str, Any]) -> dict[str, Any]:
    """The event log, newest first, as posted with what attribution found. Bounded by MOVIEREC_EVENTS_MAX_ENTRIES
    and MOVIEREC_EVENTS_RETENTION_S."""
    log = services().events
    events, cursor = log.read(limit=query["limit"], before=query.get("before"))
    return {"events": events, "next": cursor, "kept": {"max_entries": log.max_entries, "retention_s": log.retention_s}}
