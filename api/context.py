"""What a view reaches through the running app, and the steps several views share.

``create_app`` (api/__init__.py) keeps the process's ``Services`` and Celery app in ``app.extensions``; the
blueprints reach them here, never through the package that builds the app, so every import in ``api/`` runs
downward: the factory imports the blueprints, the blueprints import this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal, NoReturn

from flask import current_app, url_for

from shared.errors import Conflict, InvalidRequest, QuotaExceeded
from shared.jobs.celery_app import MovierecCelery
from shared.jobs.fastlane import FastLane
from shared.jobs.store import Job
from shared.jobs.submit import submit
from shared.logic.services import Services
from shared.store.feedback import MAX_PROBLEMS

from . import auth


def refuse_rows(bad: list[dict[str, Any]], *, total: int, what: str, why: str = "cannot be stored") -> NoReturn:
    """400 for a batch with bad rows (each ``{"row", "problem"}``): the first in the message, the first
    ``MAX_PROBLEMS`` in ``details.rows``, how many in ``details.bad``; nothing of the batch is stored."""
    first = bad[0]
    raise InvalidRequest(
        f"{len(bad)} of {total} {what} {why} (row {first['row']}: {first['problem']}); nothing of this batch was "
        "stored",
        details={"rows": bad[:MAX_PROBLEMS], "bad": len(bad)},
    )


def cooperate() -> None:
    """Let this worker's other requests run a moment: the API's gevent workers switch between requests only where
    one waits (I/O, a sleep), so a long stretch of work in a view calls this between its slices."""
    time.sleep(0)  # gevent's sleep where gunicorn's gevent worker patched it; a no-op yield of the thread elsewhere


def services() -> Services:
    """The services of the caller's tenant (its key's: api/auth.py), the default tenant's when the API is open:
    every view reaches data through here, so another tenant's ids are not keys in what it reads."""
    svc: Services = current_app.extensions["movierec"]
    caller = auth.current_caller()
    return svc if caller is None else svc.for_tenant(caller.tenant)


def deployment() -> Services:
    """The default tenant's services, whence every tenant's (``Services.for_tenant``): for the views of the whole
    deployment (an operator's ``/v1/system`` and ``/metrics``, ``/readyz``)."""
    svc: Services = current_app.extensions["movierec"]
    return svc


def active_model() -> tuple[str, str]:
    """(version, dataset) of the active model, which can serve; else Conflict (409)."""
    version = services().models.active()
    if version is None:
        raise Conflict("no model is active: train one, index it and activate it (or run a pipeline)")
    dataset = services().models.servable_dataset(version)
    if dataset is None:
        raise Conflict(f"the active model {version!r} cannot serve")
    return version, dataset


def require_room(kind: Literal["datasets", "models"], needed: int = 1) -> None:
    """QuotaExceeded (409 ``quota_exceeded``) unless ``needed`` more datasets / models fit under
    ``MOVIEREC_MAX_DATASETS`` / ``MOVIEREC_MAX_MODELS`` (0: no cap), counted by the ZCARD of their index.
    Checked before a job is queued, for what the job may store (an evaluation: a model per recipe); an ingest
    of a dataset already stored or a training that answers an existing version is refused all the same."""
    svc = services()
    limit = svc.settings.max_datasets if kind == "datasets" else svc.settings.max_models
    if not limit or needed <= 0:
        return
    stored = svc.datasets.count() if kind == "datasets" else svc.models.count()
    if stored + needed > limit:
        setting = f"MOVIEREC_MAX_{kind.upper()}"
        raise QuotaExceeded(
            f"{stored} {kind} are stored, this job may add {needed} and {setting} is {limit}: free room with "
            f"DELETE /v1/{kind}/<id> (GET /v1/{kind} lists them) or raise {setting}",
            details={"kind": kind, "limit": limit, "stored": stored, "needed": needed, "setting": setting},
        )


def require_below(limit: int, held: Callable[[], int], *, kind: str, setting: str, remedy: str) -> None:
    """QuotaExceeded (409 ``quota_exceeded``) when cap ``limit`` is set (0: none) and what the tenant holds,
    ``held()`` (asked only then), has reached it; the message says how much, the cap's setting and ``remedy``."""
    if limit and (now := held()) >= limit:
        raise QuotaExceeded(
            f"the tenant holds {now} {kind.replace('_', ' ')} and {setting} is {limit}: {remedy}, or raise the cap",
            details={"kind": kind, "limit": limit, "held": now, "setting": setting},
        )


def require_storage() -> None:
    """QuotaExceeded when the tenant's keyspace holds ``MOVIEREC_MAX_STORED_BYTES`` or more (measured a minute
    ago at most: shared/store/usage.py); checked before work that stores is accepted."""
    svc = services()
    require_below(svc.settings.max_stored_bytes, svc.usage.held, kind="stored_bytes",
                  setting="MOVIEREC_MAX_STORED_BYTES",
                  remedy="free room with DELETE /v1/datasets/<id> or DELETE /v1/models/<version>")  # fmt: skip


SERVING_KIND = "recommend"
"""The one kind of job that stores nothing lasting (an answer, kept an hour): never refused for storage."""


def has_feedback(ds_id: str) -> bool:
    """Whether feedback was posted to the dataset (its base): a pipeline or an evaluation over it then stores a
    feedback version, one dataset more."""
    svc = services()
    return svc.feedback.count_users(svc.catalogue.feedback_base(ds_id)) > 0


def celery() -> MovierecCelery:
    app: MovierecCelery = current_app.extensions["celery"]
    return app


def fastlane() -> FastLane:
    """This process's fast lane to the interactive workers (shared/jobs/fastlane.py), built on first use in it
    (its listener thread does not survive a fork, so one built before a fork is not the child's)."""
    lanes: dict[int, FastLane] = current_app.extensions.setdefault("movierec.fastlane", {})
    pid = os.getpid()
    if pid not in lanes:
        svc = deployment()  # the lane is the deployment's; each request names its tenant (``FastLane.ask``)
        lanes.clear()
        lanes[pid] = FastLane(svc.redis, prefix=svc.settings.key_prefix)
    return lanes[pid]


def submit_job(*, kind: str, params: dict[str, Any]) -> Job:
    """Record and enqueue a job as the caller: with API keys it belongs to the caller's key (``api.auth``), and
    to its tenant; QuotaExceeded (409) when the tenant has ``MOVIEREC_MAX_JOBS_IN_FLIGHT`` unfinished jobs, or,
    for a job that stores, when it holds ``MOVIEREC_MAX_STORED_BYTES``."""
    svc = services()
    if kind != SERVING_KIND:
        require_storage()
    require_below(svc.settings.max_jobs_in_flight, svc.jobs.active_count, kind="jobs_in_flight",
                  setting="MOVIEREC_MAX_JOBS_IN_FLIGHT",
                  remedy="wait for some to finish (GET /v1/jobs?status=running) or cancel some "
                  "(DELETE /v1/jobs/<id>)")  # fmt: skip
    return submit(celery(), svc.jobs, kind=kind, params=params, owner=auth.current_owner())


def accepted(job: Job) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The answer to a submission: ``202``, the job as queued, and its ``Location``."""
    return job.public(result_url=None), 202, {"Location": url_for("jobs.get_job", job_id=job.id)}
