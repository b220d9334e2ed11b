"""One place where errors become responses: ``{"error": {"code", "message", "details"}}``.

``shared.errors`` draws the tree; here each class meets its HTTP status. Framework errors (validation,
404, 405, 413, 415) get the same envelope. Nothing else escapes: an unexpected exception is logged and
answered 500 with a generic message. A Redis failure that should pass (the server away, loading, read-only or
out of memory: ``shared.infra.redisconn.transient_cause``) is 503 ``unavailable`` naming the cause in
``details.cause``, with a ``Retry-After``; any other Redis error is a bug, answered 500.

A refusal names what was wrong and the limit it broke: a validation error's message is its first field
error (``json.k: Must be greater than or equal to 1 and less than or equal to 100.``), its details all of
them; a 413 names ``MOVIEREC_MAX_BODY_BYTES``. ``document_errors`` writes the answers every operation can
give (400 for a malformed body, 413, 415, 503) into /openapi.json, each with an example of the envelope, so the
spec lists what the app answers; the 400s of a body's cross-field rules are in its schema (api/schemas.py).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from apiflask import APIFlask, HTTPError
from flask import Response, jsonify, request

from shared.errors import MovierecError
from shared.infra.redisconn import TRANSIENT_CAUSES, transient_cause

log = logging.getLogger(__name__)

_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "unavailable",
}


DRAIN_MAX_BYTES = 16 << 20
"""A refused body (413) up to this size is read and dropped before the answer: a server that answers and closes
with the body's bytes still unread makes the kernel reset the connection, and the client may see no answer."""


def drain_refused_body() -> None:
    """Read what is left of a body the request is refused for (a 413), up to ``DRAIN_MAX_BYTES``. gunicorn's
    input ends at the Content-Length, so this never waits for bytes that are not coming."""
    length = request.content_length
    stream = request.environ.get("wsgi.input")
    if length is None or length > DRAIN_MAX_BYTES or stream is None:
        return
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(1 << 16, remaining))
        if not chunk:
            return
        remaining -= len(chunk)


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def first_problem(details: Any, path: tuple[str, ...] = ()) -> str | None:
    """``"json.texts.3: Length must be between 1 and 1000."``: the first leaf of marshmallow's error tree."""
    if isinstance(details, list):
        if details and all(isinstance(m, str) for m in details):
            where = ".".join(p for p in path if p != "_schema")
            return f"{where}: {details[0]}" if where else str(details[0])
        for item in details:
            found = first_problem(item, path)
            if found:
                return found
    if isinstance(details, dict):
        for key, value in details.items():
            found = first_problem(value, (*path, str(key)))
            if found:
                return found
    return None


def _count_problems(details: Any) -> int:
    if isinstance(details, list):
        return 1 if details and all(isinstance(m, str) for m in details) else sum(map(_count_problems, details))
    if isinstance(details, dict):
        return sum(_count_problems(v) for v in details.values())
    return 0


def register_error_handlers(app: APIFlask) -> None:
    @app.error_processor
    def http_error(error: HTTPError) -> tuple[dict[str, Any], int, Any]:
        status = error.status_code
        details = error.detail if isinstance(error.detail, dict) else {}
        code = "validation_error" if status == 400 and details else _CODES.get(status, "error")
        message = error.message
        if code == "validation_error":
            first, count = first_problem(details), _count_problems(details)
            if first:
                message = first + (f" (and {count - 1} more in details)" if count > 1 else "")
        if status == 400 and not details and request.is_json and request.get_json(silent=True) is None:
            code, message = "malformed_json", "the body is not valid JSON"
        if status == 413:
            drain_refused_body()
            limit = app.config["MAX_CONTENT_LENGTH"]
            message = f"the body is larger than {limit} bytes (MOVIEREC_MAX_BODY_BYTES)"
            details = {"limit_bytes": limit}
        if status >= 500:
            message = "internal error" if status == 500 else message
        body = {"error": {"code": code, "message": message, "details": details}}
        return body, status, error.headers

    @app.errorhandler(MovierecError)
    def movierec_error(exc: MovierecError) -> Response:
        if exc.status == 413:
            drain_refused_body()
        if exc.status >= 500 and exc.status != 503:
            log.error("internal error: %s", exc.message)
            return error_response(500, "internal_error", "internal error")
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        cause = (exc.details or {}).get("cause")
        if exc.status == 503 and cause in TRANSIENT_CAUSES:
            response.headers["Retry-After"] = str(TRANSIENT_CAUSES[cause][1])
        return response

    @app.errorhandler(redis.RedisError)
    def redis_failed(exc: redis.RedisError) -> Response:
        cause = transient_cause(exc)
        if cause is None:
            log.exception("Redis error", exc_info=exc)
            return error_response(500, "internal_error", "internal error")
        log.warning("Redis unavailable (%s): %s", cause, exc)
        return unavailable(cause)


def unavailable(cause: str, doing: str = "") -> Response:
    """503 for a Redis failure that should pass: ``{"code": "unavailable", "details": {"cause"}}`` with the
    cause in words and a ``Retry-After`` (shared.infra.redisconn.TRANSIENT_CAUSES)."""
    reason, retry_after = TRANSIENT_CAUSES[cause]
    message = f"{doing}: {reason}; try again shortly" if doing else f"{reason}; try again shortly"
    response = error_response(503, "unavailable", message, {"cause": cause})
    response.headers["Retry-After"] = str(retry_after)
    return response


ERROR_SCHEMA_REF = "#/components/schemas/ErrorOut"
"""Where /openapi.json keeps the envelope (``schemas.ErrorOut``, the app's HTTP_ERROR_SCHEMA)."""

_EVERY_BODY = {
    "400": "invalid request: malformed JSON, an unknown or invalid field, a limit exceeded (named)",
    "413": "body larger than MOVIEREC_MAX_BODY_BYTES",
    "415": "body not sent as application/json",
}
_EVERY_QUERY = {"400": "invalid query parameter"}
_EVERY_OPERATION = {
    "503": "Redis unreachable (or not over TLS), loading, read-only, out of memory, or its replicas did not "
    "confirm (details.cause; Retry-After says when to retry)"
}
_NO_REDIS = frozenset({"/healthz"})


_EXAMPLE_DETAILS: dict[int, dict[str, Any]] = {
    400: {"json": {"k": ["Must be greater than or equal to 1 and less than or equal to 100."]}},
    413: {"limit_bytes": 1048576},
    503: {"cause": "redis_down"},
}
"""What ``details`` holds in each status's example, where it holds something."""


def _error(status: int, description: str) -> dict[str, Any]:
    """An error answer in /openapi.json: the envelope, with an example of it (the code the status maps to here,
    the description as its message)."""
    code = "validation_error" if status == 400 else _CODES.get(status, "error")
    example = {"error": {"code": code, "message": description, "details": _EXAMPLE_DETAILS.get(status, {})}}
    content = {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}, "example": example}}
    return {"description": description, "content": content}


def document_errors(spec: dict[Any, Any]) -> dict[Any, Any]:
    """The answers any operation of a kind can give, added to /openapi.json where a view did not say them."""
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            responses = operation.setdefault("responses", {})
            extra = dict(_EVERY_OPERATION) if path not in _NO_REDIS else {}
            if "requestBody" in operation:
                extra |= _EVERY_BODY
            if any(p.get("in") == "query" for p in operation.get("parameters", [])):
                extra |= _EVERY_QUERY
            for status, description in extra.items():
                responses.setdefault(status, _error(int(status), description))
            for status, response in responses.items():
                if str(status)[0] not in "45":
                    continue
                documented = _error(int(status), response.get("description", ""))["content"]
                if not response.get("content"):  # a view's bare description
                    response["content"] = documented
                elif "example" not in response["content"].get("application/json", {"example": None}):
                    response["content"]["application/json"]["example"] = documented["application/json"]["example"]
    return spec
