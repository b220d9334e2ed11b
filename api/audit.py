"""``/v1/audit``: who changed what and when (issue #26, item 4); and the hook that writes it.

    every request ──> after it is answered, ``record``: an audited route (one that changes state: every
                      admin route, and a job's cancellation) answered 2xx or 403, or any route refused by a
                      quota (409 quota_exceeded) ──> one entry in the trail (shared/store/audit.py)
    GET /v1/audit?limit&before ──> the newest entries first (an admin's route: api/auth.py)

Feedback (a writer's posts) is not recorded when it is stored: it is the users' ratings, kept with their user
id by the feedback store, and at its rate it would push the trail's state changes out. Its refusals by quota
are recorded. A failure to write the trail is logged and the answer goes out: the change already happened.
"""

from __future__ import annotations

import logging
from typing import Any

from apiflask import APIBlueprint, APIFlask
from flask import Response, request

from .auth import ROUTE_ROLES, current_caller, openapi_path
from .context import services
from .schemas import AuditOut, AuditQuery

log = logging.getLogger(__name__)

bp = APIBlueprint("audit", __name__, url_prefix="/v1/audit", tag="audit")

AUDITED = frozenset({endpoint for endpoint, role in ROUTE_ROLES.items() if role == "admin"} | {"jobs.cancel_job"})
"""The routes whose every accepted request is a change of state someone may have to answer for."""


@bp.get("")
@bp.input(AuditQuery, location="query", arg_name="query", unknown=None)
@bp.output(AuditOut)
@bp.doc(responses={400: "limit outside 1..1000, or before not an entry's id"})
def audit(query: dict[str, Any]) -> dict[str, Any]:
    """The audit trail, newest first: every ingest, upload, training, evaluation, activation, deletion and
    cancellation the API accepted, every request a role refused on those routes, and every quota refusal;
    who (the key's owner id, never the key), what, when, and the outcome. Bounded by MOVIEREC_AUDIT_MAX_ENTRIES
    and MOVIEREC_AUDIT_RETENTION_S."""
    trail = services().audit
    entries, cursor = trail.read(limit=query["limit"], before=query.get("before"))
    kept = {"max_entries": trail.max_entries, "retention_s": trail.retention_s}
    return {"entries": entries, "next": cursor, "kept": kept}


def _outcome(response: Response) -> str | None:
    """What the trail says of this answer, or None when it records nothing."""
    endpoint, status = str(request.endpoint), response.status_code
    code = None
    if status >= 400 and response.is_json:
        code = ((response.get_json(silent=True) or {}).get("error") or {}).get("code")
    if code == "quota_exceeded":
        return "refused: quota_exceeded"
    if endpoint not in AUDITED or request.method in ("GET", "HEAD", "OPTIONS"):  # a read changes nothing
        return None
    if status == 403:
        return "forbidden"
    if 200 <= status < 300:
        return "accepted" if status == 202 else "done"
    return None


def _route() -> str:
    """The request's route as /openapi.json writes it: /v1/models/{version}/activate."""
    return openapi_path(request.url_rule.rule) if request.url_rule is not None else request.path


def install(app: APIFlask) -> None:
    """Record each answered request the trail keeps (``_outcome``)."""

    @app.after_request
    def record(response: Response) -> Response:
        outcome = _outcome(response)
        if outcome is None:
            return response
        caller = current_caller()
        job = None
        if response.status_code == 202 and response.is_json:
            job = (response.get_json(silent=True) or {}).get("id")
        entry = {
            "owner": caller.owner if caller else "open",
            "role": caller.role if caller else None,
            "action": f"{request.method} {_route()}",
            "target": {k: str(v) for k, v in (request.view_args or {}).items()},
            "status": response.status_code,
            "outcome": outcome,
            "job": job,
        }
        try:
            services().audit.record(entry)
        except Exception:  # the change happened; a lost trail entry must not fail its answer
            log.exception("could not write the audit trail (%s %s)", entry["action"], outcome)
        return response
