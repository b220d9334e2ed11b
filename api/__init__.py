"""The HTTP front end: ``create_app()`` builds the Flask app; it validates, enqueues and reads, nothing more.

api/health.py     /healthz, /readyz
api/datasets.py   /v1/datasets
api/uploads.py    multipart uploads of MovieLens files to /v1/datasets, streamed into Redis
api/movies.py     /v1/movies: title search (answered here) and similar movies (a recommend job)
api/jobs.py       /v1/jobs
api/pipelines.py  /v1/pipelines
api/recommendations.py  /v1/recommendations
api/feedback.py   /v1/datasets/<id>/ratings (feedback) and /v1/users/<id>/ratings
api/models.py     /v1/models: versions, activation, deletion, a version's map (read; its index job builds it)
api/metrics.py    /metrics: Prometheus text from prometheus_client (shared/infra/metrics.py says what and how)
api/system.py     /v1/system: the overview a dashboard polls (queues, job counts, active model, latest evaluation)
api/audit.py      /v1/audit: who changed what and when, and the hook that records it
api/quotas.py     /v1/quotas: each cap with what is held against it (an admin's view)
api/context.py    what the blueprints share: the app's services and Celery app, submit-and-answer-202, quotas
api/errors.py     every error as {"error": {"code", "message", "details"}}
api/schemas.py    request and response schemas, which also make /openapi.json
api/openapi.py    the apispec machinery: rules across fields, enforced and written into the spec
api/auth.py       optional bearer keys (MOVIEREC_API_KEYS), each route's least role, the owner of a job
api/jsonio.py     strict JSON: no NaN/Infinity, no lone surrogates, bounded depth
api/ui.py         /ui/: the dashboard (templates and static files in api/), a client of the JSON API
api/server.py     ``movierec api``: gunicorn's gevent workers, with deadlines on slow clients (api/connections.py)

The factory imports the blueprints; each blueprint imports api/context.py, never this package.

Every request passes, in this order: the key check (401), the key's role (403), the content type (415), the body's JSON
(400, or 413 over MOVIEREC_MAX_BODY_BYTES), then the view's schema (400 naming the field and limit).
A multipart upload (api/uploads.py) skips the JSON steps and is streamed under MOVIEREC_MAX_UPLOAD_BYTES.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apiflask import APIFlask
from flask import request

from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.logic.services import Services

from . import auth, uploads
from .errors import document_errors, error_response, register_error_handlers
from .jsonio import StrictJSONProvider, check_body
from .openapi import RequestBodies, merge_duplicate_schemas
from .schemas import ErrorOut

API_VERSION = "1.0.0"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def create_app(test_config: Mapping[str, Any] | None = None, *, settings: Settings | None = None) -> APIFlask:
    settings = settings or Settings()
    app = APIFlask("movierec", title="movierec", version=API_VERSION, spec_path="/openapi.json", docs_path="/docs")
    app.json = StrictJSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        VALIDATION_ERROR_STATUS_CODE=400,
        HTTP_ERROR_SCHEMA=ErrorOut,
        VALIDATION_ERROR_SCHEMA=ErrorOut,
        SPEC_FORMAT="json",
        INFO={"description": "Learned movie embeddings and recommendations, computed by Celery workers."},
    )
    if test_config:
        app.config.update(test_config)
    if app.debug and settings.profile != "local":
        raise RuntimeError("debug mode is refused outside the local profile")

    app.extensions["movierec"] = Services.from_settings(settings)
    app.extensions["celery"] = make_celery(settings)
    register_error_handlers(app)
    # A body's cross-field rules and open bounds, stated in /openapi.json from the schemas themselves.
    app.spec_plugins.append(RequestBodies())
    keys = auth.install(app, settings.api_keys)  # first: a caller without a key learns nothing else

    @app.before_request
    def require_json() -> Any:
        has_body = (request.content_length or 0) > 0 or "chunked" in request.headers.get("Transfer-Encoding", "")
        if request.method in _BODY_METHODS and has_body and not request.is_json and not uploads.is_upload():
            return error_response(415, "unsupported_media_type", "send the body as application/json")
        return None

    app.before_request(check_body)

    @app.spec_processor  # APIFlask keeps one spec processor
    def complete_spec(spec: dict[Any, Any] | str) -> dict[Any, Any] | str:
        if isinstance(spec, str):  # only with SPEC_PROCESSOR_PASS_OBJECT, which we do not set
            return spec
        spec = merge_duplicate_schemas(document_errors(uploads.document_uploads(spec)))
        return auth.document_security(spec, required=keys.enabled, roles=auth.spec_roles(app))

    # The blueprints are imported here, not at the top: api/server.py imports this package in gunicorn's master
    # before it sets PROMETHEUS_MULTIPROC_DIR, and prometheus_client (api/metrics.py) fixes its mode on import.
    from . import (
        audit,
        datasets,
        events,
        experiments,
        feedback,
        health,
        jobs,
        metrics,
        models,
        movies,
        pipelines,
        quotas,
        recommendations,
        system,
        ui,
    )

    metrics.install(app)
    for blueprint in (
        health,
        metrics,
        datasets,
        jobs,
        models,
        recommendations,
        movies,
        pipelines,
        feedback,
        events,
        experiments,
        system,
        audit,
        quotas,
        ui,
    ):
        app.register_blueprint(blueprint.bp)
    audit.install(app)
    auth.check_routes(app)  # every route has a role (api/auth.py ROUTE_ROLES), or the app does not start
    return app
