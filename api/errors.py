"""One place where errors become responses: ``{"error": {"code", "message", "details"}}``.

``shared.errors`` draws the tree; here each class meets its HTTP status. Framework errors (validation,
404, 405, 413, 415) get the same envelope. Nothing else escapes: an unexpected exception is logged and
answered 500 with a generic message, and a Redis outage is 503.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from apiflask import APIFlask, HTTPError
from flask import Response, jsonify, request

from shared.errors import MovierecError

log = logging.getLogger(__name__)

_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def register_error_handlers(app: APIFlask) -> None:
    @app.error_processor
    def http_error(error: HTTPError) -> tuple[dict[str, Any], int, Any]:
        status = error.status_code
        details = error.detail if isinstance(error.detail, dict) else {}
        code = "validation_error" if status == 400 and details else _CODES.get(status, "error")
        message = error.message
        if status == 400 and not details and request.is_json and request.get_json(silent=True) is None:
            code, message = "malformed_json", "the body is not valid JSON"
        if status >= 500:
            message = "internal error" if status == 500 else message
        body = {"error": {"code": code, "message": message, "details": details}}
        return body, status, error.headers

    @app.errorhandler(MovierecError)
    def movierec_error(exc: MovierecError) -> Response:
        if exc.status >= 500 and exc.status != 503:
            log.error("internal error: %s", exc.message)
            return error_response(500, "internal_error", "internal error")
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def redis_down(exc: Exception) -> Response:
        log.warning("Redis unreachable: %s", exc)
        return error_response(503, "unavailable", "the job store is unreachable; try again shortly")
