"""The errors movierec raises on purpose, and what a client sees of them.

    MovierecError                 500 internal_error     (base; never shown with its text unless public)
    ├── InvalidRequest            400 invalid_request
    │   └── PathNotAllowed        400 path_not_allowed
    ├── NotFound                  404 not_found
    ├── PayloadTooLarge           413 payload_too_large
    ├── Conflict                  409 conflict
    │   ├── JobNotFinished        409 job_not_finished
    │   ├── ResultFormUnavailable 409 no_such_form
    │   └── QuotaExceeded         409 quota_exceeded
    ├── ServiceUnavailable        503 unavailable
    └── DataError                 400 data_error       (a job fails with it: a file is missing or malformed)

Each class carries its HTTP status and a stable ``code``; the API maps them once, in ``api.errors``.
A worker turns a ``MovierecError`` into the failed job's ``{code, message}``; any other exception becomes
``internal_error`` with a generic message, so no traceback or exception text reaches a client.
"""

from __future__ import annotations

from typing import Any


class MovierecError(Exception):
    """Base class; ``message`` is safe to show to a client."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidRequest(MovierecError):
    status = 400
    code = "invalid_request"


class PathNotAllowed(InvalidRequest):
    code = "path_not_allowed"


class NotFound(MovierecError):
    status = 404
    code = "not_found"


class PayloadTooLarge(MovierecError):
    """A body past its configured limit (an upload past ``MOVIEREC_MAX_UPLOAD_BYTES``); the message names it."""

    status = 413
    code = "payload_too_large"


class Conflict(MovierecError):
    status = 409
    code = "conflict"


class JobNotFinished(Conflict):
    code = "job_not_finished"


class ResultFormUnavailable(Conflict):
    """A job's result asked for in a form it has not (``?format=npy`` of a job that produced no array): which forms
    exist depends on the job, not on the request, so it is the job's state that refuses."""

    code = "no_such_form"


class QuotaExceeded(Conflict):
    """A configured cap (``MOVIEREC_MAX_DATASETS``, ``MOVIEREC_MAX_MODELS``) is reached; the message names it
    and how to free room."""

    code = "quota_exceeded"


class ServiceUnavailable(MovierecError):
    status = 503
    code = "unavailable"


class DataError(MovierecError):
    """Input data is missing or malformed; the message names the file, the line where it applies, the problem."""

    status = 400
    code = "data_error"

    def __init__(self, file: str, problem: str, *, line: int | None = None) -> None:
        where = f"{file}, line {line}" if line is not None else file
        super().__init__(f"{where}: {problem}", details={"file": file, "line": line})
        self.file = file
        self.line = line
