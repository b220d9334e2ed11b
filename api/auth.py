"""Optional bearer keys (``MOVIEREC_API_KEYS``), the role each one has, and who owns a job.

With no key configured the API is open and jobs have no owner. With keys, every request but ``/healthz``
must carry ``Authorization: Bearer <key>`` (else 401 with ``WWW-Authenticate: Bearer``), and the key it
carries decides what the caller may do and see:

    entry KEY | TENANT:ROLE:KEY (shared/infra/apikeys.py) ──> the key's tenant and role
    tenant ──> api/context.py services()      every view reads and writes the tenant's keyspace only, so
                                             another tenant's ids answer 404 as unknown ones do
    key ──sha256──> owner id ("k-" + 32 hex)  stored in each job record it creates (never the key)
    request ──> ROUTE_ROLES[endpoint]         the least role the route needs; a lower one: 403 naming it
    GET /v1/jobs/<id>, .../result, DELETE    another owner's job answers 404, as an unknown id does
    GET /v1/jobs                             lists the caller's jobs only
    pipelines                                each stage job inherits the pipeline's owner (shared.logic.pipeline)

Every route of the app has a row in ``ROUTE_ROLES`` (``check_routes`` refuses to start otherwise), and
/openapi.json names it on each operation (``x-role``) with the 403 a lower role gets. Datasets and models
are shared by every key of one tenant: they are content addressed, and one key's ingest is as good as
another's; jobs are each key's own. Keys are compared as sha256 digests with ``hmac.compare_digest`` against
every configured key, so neither the time taken nor an early exit tells which part of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from apiflask import APIFlask
from flask import Response, current_app, g, request

from shared.infra.apikeys import ROLES, allows, parse_entry

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


ROUTE_ROLES: dict[str, str] = {
    # what any key may do: read, recommend, follow its own jobs
    "health.readyz": "reader",
    "metrics.metrics": "reader",
    "openapi.spec": "reader",
    "openapi.docs": "reader",
    "openapi.swagger_ui_oauth_redirect": "reader",
    "static": "reader",
    "system.system": "reader",
    "datasets.list_datasets": "reader",
    "datasets.get_dataset": "reader",
    "datasets.list_movies": "reader",
    "feedback.user_ratings": "reader",
    "models.list_models": "reader",
    "models.movie_map": "reader",
    "movies.search_movies": "reader",
    "movies.similar_movies": "reader",
    "recommendations.recommend": "reader",
    "jobs.create_recommend_batch": "reader",
    "jobs.list_jobs": "reader",
    "jobs.get_job": "reader",
    "jobs.get_result": "reader",
    "jobs.cancel_job": "reader",
    "experiments.list_experiments": "reader",
    "experiments.get_experiment": "reader",
    # a writer adds to what users rated and did
    "feedback.post_ratings": "writer",
    "events.post_events": "writer",
    # an admin changes what is served: data in, models trained and evaluated, activation, deletion
    "datasets.create_dataset": "admin",
    "datasets.delete_dataset": "admin",
    "jobs.create_triplets": "admin",
    "jobs.create_encode": "admin",
    "jobs.create_train": "admin",
    "jobs.create_index": "admin",
    "jobs.create_evaluate": "admin",
    "pipelines.create_pipeline": "admin",
    "models.activate": "admin",
    "models.delete_model": "admin",
    "audit.audit": "admin",
    "events.list_events": "admin",
    "experiments.create_experiment": "admin",
    "experiments.pause_experiment": "admin",
    "experiments.resume_experiment": "admin",
    "experiments.end_experiment": "admin",
    "experiments.promote_experiment": "admin",
    "experiments.delete_experiment": "admin",
    "quotas.quotas": "admin",
}
"""The least role each endpoint needs (README.md's matrix). A route without a row stops the app from starting
(``check_routes``), so a new route cannot ship open to every role by omission."""


class KeyRing:
    """The configured keys, as digests; ``identify`` answers a presented key's (owner id, tenant, role), or None."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._entries: list[tuple[bytes, Caller]] = []
        for i, entry in enumerate(entries, start=1):
            parsed = parse_entry(entry, i)  # refuse to start rather than guess; never echo the key
            key = parsed.key
            if len(key) < MIN_KEY_CHARS or not _KEY_SHAPE.match(key):
                raise ValueError(
                    f"MOVIEREC_API_KEYS entry {i}: each key must be at least {MIN_KEY_CHARS} characters of "
                    "A-Z a-z 0-9 . _ ~ + / - (then optional '='), entries separated by commas"
                )
            caller = Caller(owner=owner_id(key), tenant=parsed.tenant, role=parsed.role)
            self._entries.append((hashlib.sha256(key.encode()).digest(), caller))
        digests = [digest for digest, _ in self._entries]
        if len(set(digests)) != len(digests):
            raise ValueError("MOVIEREC_API_KEYS: a key appears twice; give each key one tenant and one role")

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    @property
    def tenants(self) -> frozenset[str]:
        """The tenants the keys name."""
        return frozenset(caller.tenant for _, caller in self._entries)

    def identify(self, presented: str) -> Caller | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, caller in self._entries:  # no early exit: every key is compared every time
            if hmac.compare_digest(digest, stored):
                found = caller
        return found


@dataclass(frozen=True)
class Caller:
    """Who a request's key is: the owner id its jobs carry, its tenant, its role."""

    owner: str
    tenant: str
    role: str


def check_routes(app: APIFlask) -> None:
    """Every endpoint of ``app`` but the open ones has a role, and every row names an endpoint: RuntimeError
    otherwise, at start-up."""
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()} - OPEN_ENDPOINTS
    missing, stale = sorted(endpoints - set(ROUTE_ROLES)), sorted(set(ROUTE_ROLES) - endpoints)
    if missing or stale:
        raise RuntimeError(f"api/auth.py ROUTE_ROLES: no role for {missing}; rows for no route: {stale}")


def bearer_token(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (the scheme is case-insensitive), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def current_caller() -> Caller | None:
    """Who this request's key is; None when the API is open."""
    caller: Caller | None = g.get("caller")
    return caller


def current_owner() -> str | None:
    """The owner id of this request's key; None when the API is open (every job visible)."""
    caller: Caller | None = g.get("caller")
    return caller.owner if caller is not None else None


def sees_deployment() -> bool:
    """Whether the caller sees the whole deployment (every tenant's counts, the queues' depth): where the API is
    open, with an ``operator``'s key, and with an ``admin``'s where every key is of one tenant (the deployment is
    that tenant: a deployment's keys from before tenants keep the view they had)."""
    caller = current_caller()
    if caller is None:
        return True
    ring: KeyRing = current_app.extensions["movierec.keys"]
    return allows(caller.role, "operator") or (allows(caller.role, "admin") and len(ring.tenants) == 1)


def visible(job_owner: str | None) -> bool:
    """Whether the caller may see a job with this owner: all jobs when open, its own jobs otherwise."""
    owner = current_owner()
    return owner is None or job_owner == owner


def _unauthorized(message: str, *, error: str | None = None) -> Response:
    response = error_response(401, "unauthorized", message)
    challenge = 'Bearer realm="movierec"' + (f', error="{error}"' if error else "")
    response.headers["WWW-Authenticate"] = challenge
    return response


ROLE_HEADER = "X-Movierec-Role"
"""The response header naming the role of the key a request carried (the key's own, so it tells nobody anything
new): what a client, the dashboard included, may offer that key."""


def install(app: APIFlask, keys: Iterable[str]) -> KeyRing:
    """Check the key on every request (registered first, so a refused caller learns nothing else), and name its
    role on the answer (``ROLE_HEADER``)."""
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
        caller = ring.identify(token)
        if caller is None:
            return _unauthorized("the key is not valid", error="invalid_token")
        g.caller = caller
        needed = ROUTE_ROLES.get(str(request.endpoint), "admin")  # an unknown path answers 404 after this
        if request.endpoint is not None and not allows(caller.role, needed):
            message = f"this route needs the {needed} role or above; this key's role is {caller.role}"
            return error_response(403, "forbidden", message, details={"needed": needed, "role": caller.role})
        return None

    @app.after_request
    def name_the_role(response: Response) -> Response:
        caller = current_caller()
        if caller is not None:
            response.headers[ROLE_HEADER] = caller.role
        return response

    return ring


_UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "send Authorization: Bearer <key>", "details": {}}}


def _forbidden(needed: str) -> dict[str, Any]:
    lower = ROLES[ROLES.index(needed) - 1]
    message = f"this route needs the {needed} role or above; this key's role is {lower}"
    return {"error": {"code": "forbidden", "message": message, "details": {"needed": needed, "role": lower}}}


def document_security(spec: dict[Any, Any], *, required: bool, roles: dict[tuple[str, str], str]) -> dict[Any, Any]:
    """The requirement in /openapi.json: with keys, every operation but the open ones needs one and may
    answer 401, and one that needs more than a reader may answer 403; an open server accepts and ignores a key,
    so there the requirement is optional (``{}``). Each operation names its least role (``x-role``); ``roles``
    maps (path as the spec writes it, method) to it."""
    spec["security"] = [{SCHEME_NAME: []}] if required else [{SCHEME_NAME: []}, {}]
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            if path in OPEN_PATHS:
                operation["security"] = []
                continue
            needed = roles[(path, method)]
            operation["x-role"] = needed
            if not required:
                continue
            responses = operation.setdefault("responses", {})
            responses["401"] = {
                "description": "missing or unknown API key",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}, "example": _UNAUTHORIZED}},
            }
            if needed != ROLES[0]:
                responses["403"] = {
                    "description": f"the key's role is below {needed}",
                    "content": {
                        "application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}, "example": _forbidden(needed)}
                    },
                }
    return spec


def openapi_path(rule: str) -> str:
    """A Flask rule as /openapi.json writes its path: ``/v1/jobs/<uuid:job_id>`` -> ``/v1/jobs/{job_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def spec_roles(app: APIFlask) -> dict[tuple[str, str], str]:
    """Each (OpenAPI path, lower-case method) of ``app``'s routes with its least role: Flask's ``<uuid:job_id>``
    written as the spec writes it, ``{job_id}``."""
    out: dict[tuple[str, str], str] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in OPEN_ENDPOINTS:
            continue
        path = openapi_path(rule.rule)
        for method in rule.methods or ():
            out[(path, method.lower())] = ROUTE_ROLES[rule.endpoint]
    return out
