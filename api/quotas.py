"""``/v1/quotas``: each cap this deployment enforces, with what is held against it now (an admin's view).

    datasets, models           MOVIEREC_MAX_DATASETS / _MODELS against the stored count (api/context.py
                               ``require_room`` refuses a job that would pass them: 409 quota_exceeded)
    feedback_rows              MOVIEREC_MAX_FEEDBACK_ROWS (a dataset's) and _PER_USER, with each dataset's rows
    uploads_in_flight_bytes    MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES against the bytes uploads hold right now

A refusal by any of them is an entry of the audit trail (api/audit.py). One deployment is one tenant so far,
so these are the tenant's quotas.
"""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from .context import services
from .schemas import QuotasOut
from .uploads import in_flight_budget

bp = APIBlueprint("quotas", __name__, url_prefix="/v1/quotas", tag="quotas")


def _cap(value: int) -> int | None:
    return value or None  # 0 in the settings: no cap


@bp.get("")
@bp.output(QuotasOut)
def quotas() -> dict[str, Any]:
    """Every cap (null where none is set) with its setting's name and what the caller's tenant holds against it
    now: each cap is per tenant."""
    svc = services()
    settings = svc.settings
    budget, in_flight_cap = in_flight_budget()
    feedback = [{"dataset": r["id"], "used": svc.feedback.rows(r["id"])} for r in svc.datasets.records()]
    return {
        "datasets": {"used": svc.datasets.count(), "limit": _cap(settings.max_datasets),
                     "setting": "MOVIEREC_MAX_DATASETS"},
        "models": {"used": svc.models.count(), "limit": _cap(settings.max_models), "setting": "MOVIEREC_MAX_MODELS"},
        "feedback_rows": {
            "limit": _cap(settings.max_feedback_rows),
            "setting": "MOVIEREC_MAX_FEEDBACK_ROWS",
            "per_user_limit": _cap(settings.max_feedback_rows_per_user),
            "per_user_setting": "MOVIEREC_MAX_FEEDBACK_ROWS_PER_USER",
            "datasets": [f for f in feedback if f["used"]],
        },
        "stored_bytes": {"used": svc.usage.held(max_age_s=0), "limit": _cap(settings.max_stored_bytes),
                         "setting": "MOVIEREC_MAX_STORED_BYTES"},
        "jobs_in_flight": {"used": svc.jobs.active_count(), "limit": _cap(settings.max_jobs_in_flight),
                           "setting": "MOVIEREC_MAX_JOBS_IN_FLIGHT"},
        "uploads_in_flight_bytes": {
            "used": budget.held(),
            "limit": in_flight_cap,
            "setting": "MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES",
        },
    }  # fmt: skip
