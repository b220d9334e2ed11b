"""Optional bearer keys (``MOVIEREC_API_KEYS``) and who owns a job.

With no key configured the API is open and jobs have no owner. With keys, every request but ``/healthz``
must carry ``Authorization: Bearer <key>`` (else 401 with ``WWW-Authenticate: Bearer``), and the key it
carries decides what the job routes show:

    key ──sha256──> owner id ("k-" + 32 hex)  stored in each job record it creates (never the key)
    GET /v1/jobs/<id>, .../result, DELETE    another owner's job answers 404, as an unknown id does
    GET /v1/jobs                             lists the caller's jobs only
    pipelines                                each stage job inherits the pipeline's owner (shared.logic.pipeline)

Datasets and models are shared by every key: they are content addressed, and one key's ingest is as
good as another's. Keys are compared as sha256 digests with ``hmac.compare_digest`` against every
configured key, so neither the time taken nor an early exit tells which part of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

from apiflask import APIFlask
from flask import Response, g, request

from .errors import ERROR_SCHEMA_REF, error_response

MIN_KEY_CHARS = 16
"""Shortest key accepted at start-up: a bearer key is the only secret between a client and the jobs."""

SCHEME_NAME = "bearerAuth"
"""The security scheme's name in /openapi.json."""

OPEN_ENDPOINTS = frozenset({"health.healthz", "ui.page", "ui.static"})
"""Answered without a key: the liveness probe (compose's healthcheck, a load balancer) has none, and the
dashboard's pages and scripts hold no data (they ask for a key before calling the API: api/ui.py)."""
OPEN_PATHS = frozenset({"/healthz"})
"""The same, as /openapi.json names them."""

_KEY_SHAPE = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")
"""RFC 6750's b64token: what ``Authorization: Bearer <key>`` carries unquoted."""


def owner_id(key: str) -> str:
    """The id a key's jobs are stored under: a hash, so Redis never holds a key."""
    return "k-" + hashlib.sha256(b"movierec owner\x00" + key.encode()).hexdigest()[:32]


class KeyRing:
    """The configured keys, as digests; ``identify`` answers the owner id of a presented key, or None."""

    def __init__(self, keys: Iterable[str]) -> None:
        keys = tuple(keys)
        for key in keys:  # refuse to start rather than run with a guessable key; never echo the key
            if len(key) < MIN_KEY_CHARS or not _KEY_SHAPE.match(key):
                raise ValueError(
                    f"MOVIEREC_API_KEYS: each key must be at least {MIN_KEY_CHARS} characters of "
                    "A-Z a-z 0-9 . _ ~ + / - (then optional '='), keys separated by commas"
                )
        self._entries = [(hashlib.sha256(k.encode()).digest(), owner_id(k)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def identify(self, presented: str) -> str | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, owner in self._entries:  # no early exit: every key is compared every time
            if hmac.compare_digest(digest, stored):
                found = owner
        return found


def bearer_token(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (the scheme is case-insensitive), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def current_owner() -> str | None:
    """The owner id of this request's key; None when the API is open (every job visible)."""
    owner: str | None = g.get("owner")
    return owner


def visible(job_owner: str | None) -> bool:
    """Whether the caller may see a job with this owner: all jobs when open, its own jobs otherwise."""
    owner = current_owner()
    return owner is None or job_owner == owner


def _unauthorized(message: str, *, error: str | None = None) -> Response:
    response = error_response(401, "unauthorized", message)
    challenge = 'Bearer realm="movierec"' + (f', error="{error}"' if error else "")
    response.headers["WWW-Authenticate"] = challenge
    return response


def install(app: APIFlask, keys: Iterable[str]) -> KeyRing:
    """Check the key on every request (registered first, so a refused caller learns nothing else)."""
    ring = KeyRing(keys)
    app.extensions["movierec.keys"] = ring
    app.config["SECURITY_SCHEMES"] = {
        SCHEME_NAME: {
            "type": "http",
            "scheme": "bearer",
            "description": "One of MOVIEREC_API_KEYS; required only where the server sets keys.",
        }
    }

    @app.before_request
    def authenticate() -> Response | None:
        if not ring.enabled or request.endpoint in OPEN_ENDPOINTS:
            return None
        header = request.headers.get("Authorization")
        token = bearer_token(header)
        if token is None:
            return _unauthorized("send Authorization: Bearer <key>")
        owner = ring.identify(token)
        if owner is None:
            return _unauthorized("the key is not valid", error="invalid_token")
        g.owner = owner
        return None

    return ring


_UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "send Authorization: Bearer <key>", "details": {}}}


def document_security(spec: dict[Any, Any], *, required: bool) -> dict[Any, Any]:
    """The requirement in /openapi.json: with keys, every operation but the open ones needs one and may
    answer 401; an open server accepts and ignores a key, so there the requirement is optional (``{}``)."""
    spec["security"] = [{SCHEME_NAME: []}] if required else [{SCHEME_NAME: []}, {}]
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            if path in OPEN_PATHS:
                operation["security"] = []
            elif required:
                operation.setdefault("responses", {})["401"] = {
                    "description": "missing or unknown API key",
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}, "example": _UNAUTHORIZED}},
                }
    return spec
