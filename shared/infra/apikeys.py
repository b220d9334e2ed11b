"""API keys with a tenant and a role: what ``MOVIEREC_API_KEYS`` holds (issue #26).

    MOVIEREC_API_KEYS = ENTRY[,ENTRY...]      or  @/path/to/file: its entries, one a line or comma-separated,
                                                  blank lines and lines starting with # skipped
    ENTRY = KEY                               tenant "default", role "admin": what a key meant before roles,
                                              so a deployment's keys keep working as they were
          | TENANT:ROLE:KEY                   ROLE one of ROLES
    no entry at all                           the API is open: one tenant, every route (as before keys)

A role can do everything the roles before it in ``ROLES`` can: a ``reader`` asks for recommendations, searches,
reads the catalogue, the models and the dashboard and follows its own jobs; a ``writer`` also posts feedback;
an ``admin`` also ingests, uploads, trains, evaluates, activates and deletes, and reads its tenant's quotas and
audit trail; an ``operator`` also sees every tenant's counts in ``/v1/system`` and ``/metrics``. Which route
needs which role is api/auth.py's ``ROUTE_ROLES`` (README.md's matrix, checked against the app by a test).
Each key sees its own tenant's data only (shared/infra/keys.py ``tenant_prefix``).

A key is never printed: a malformed entry's error names its position, not its text. Pure: no Flask, no Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared.infra.keys import DEFAULT_TENANT, TENANT_SHAPE

ROLES = ("reader", "writer", "admin", "operator")
"""Every role, each allowed what the ones before it are (``allows``). An ``operator`` is its tenant's admin who
also sees the whole deployment: ``/v1/system`` and ``/metrics`` over every tenant, each named."""

DEFAULT_ROLE = "admin"
"""The role of a plain ``KEY`` entry: every route, as every key could before roles."""


@dataclass(frozen=True)
class KeyEntry:
    """One configured key: whose (``tenant``) and allowed what (``role``)."""

    tenant: str
    role: str
    key: str = field(repr=False)


def parse_entry(entry: str, position: int) -> KeyEntry:
    """``KEY`` or ``TENANT:ROLE:KEY`` (a key holds no ':'); ValueError naming ``position`` (1-based), never the key."""
    parts = entry.split(":")
    if len(parts) == 1:
        return KeyEntry(DEFAULT_TENANT, DEFAULT_ROLE, entry)
    if len(parts) != 3:
        raise ValueError(f"MOVIEREC_API_KEYS entry {position}: write KEY or TENANT:ROLE:KEY")
    tenant, role, key = parts
    if not TENANT_SHAPE.match(tenant):
        raise ValueError(f"MOVIEREC_API_KEYS entry {position}: a tenant is 1-32 of a-z 0-9 - _, starting with a-z 0-9")
    if role not in ROLES:
        raise ValueError(f"MOVIEREC_API_KEYS entry {position}: the role must be one of {', '.join(ROLES)}")
    return KeyEntry(tenant, role, key)


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` may use a route that needs ``needed``."""
    return ROLES.index(role) >= ROLES.index(needed)


def split_entries(value: str) -> tuple[str, ...]:
    """The entries of ``MOVIEREC_API_KEYS``: comma-separated, or read from the file ``@path`` names."""
    value = value.strip()
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"MOVIEREC_API_KEYS names {path}, which cannot be read: {exc.strerror}") from None
        lines = [line.strip() for line in text.splitlines()]
        value = ",".join(line for line in lines if line and not line.startswith("#"))
    return tuple(part.strip() for part in value.split(",") if part.strip())


def client_key(entries: tuple[str, ...]) -> str | None:
    """The key the project's own clients (the demo, ``movierec evaluate``) send: the first admin key's, since
    they ingest and train; None when the API is open or no key is an admin's."""
    for i, entry in enumerate(entries, start=1):
        parsed = parse_entry(entry, i)
        if parsed.role == "admin":
            return parsed.key
    return None
