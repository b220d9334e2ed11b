"""Roles (issue #26): each key is a reader, a writer, an admin or an operator, and every route answers README.md's
matrix. (Tenants, the other half of the matrix: tests/system/test_tenants.py.)

The matrix test walks every operation of /openapi.json with each role and with no key, in process (Flask's
client) against the session's Redis: a role below the route's answers 403 naming the role needed, before the
body is read; one at or above it gets past the check (the route's own answer: 400 for an empty body, 404 for
an unknown id, ...). The matrix comes from README.md, so a route added later without a row there fails here,
and ``api.auth.check_routes`` refuses to start an app with a route that has no role. The CLI's 403 goes
through a real ``movierec api``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from api.auth import OPEN_PATHS, ROUTE_ROLES, KeyRing, check_routes
from cli.stack import Stack
from shared.infra.apikeys import ROLES, KeyEntry, allows, client_key, parse_entry, split_entries
from shared.infra.settings import Settings
from tests.helpers import keyed_api, readme_matrix

KEYS = {role: f"{role}-key-" + role[0] * 20 for role in ROLES}
ENTRIES = tuple(f"default:{role}:{key}" for role, key in KEYS.items())

PARAMS = {"dataset_id": "ds-no-such", "version": "m-no-such", "user_id": "1", "movie_id": "1"}
"""What each path parameter is filled with: ids nobody has (a job id: a fresh uuid)."""


MATRIX = readme_matrix()


def url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PARAMS.get(m.group(1), str(uuid.uuid4())), path)


@pytest.fixture(scope="module")
def roles_app(settings: Settings) -> Any:
    return create_app({"TESTING": True}, settings=settings.model_copy(update={"api_keys": ENTRIES}))


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def test_the_spec_has_a_row_in_the_matrix_for_every_operation_and_names_its_role(roles_app: Any) -> None:
    spec = roles_app.test_client().get("/openapi.json", headers=bearer("reader")).get_json()
    operations = {
        (method.upper(), path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method != "parameters" and path not in OPEN_PATHS
    }
    assert sorted(set(operations) - set(MATRIX)) == [], "operations with no row in README.md's roles table"
    assert sorted(set(MATRIX) - set(operations)) == [], "rows of README.md's roles table for no operation"
    for op, operation in operations.items():
        assert operation["x-role"] == MATRIX[op], op
        responses = operation["responses"]
        assert "401" in responses and ("403" in responses) == (MATRIX[op] != "reader"), op
    assert set(MATRIX.values()) == set(ROLES) - {"operator"}  # an operator's is a wider view, no route of its own


@pytest.mark.parametrize(("method", "path"), sorted(MATRIX))
def test_every_role_gets_what_the_matrix_says(roles_app: Any, method: str, path: str) -> None:
    needed, client, target = MATRIX[(method, path)], roles_app.test_client(), url(path)
    body = {} if method in ("POST", "PUT", "PATCH") else None
    assert client.open(target, method=method, json=body).status_code == 401  # no key
    for role in ROLES:
        reply = client.open(target, method=method, json=body, headers=bearer(role))
        if allows(role, needed):
            assert reply.status_code not in (401, 403), (role, reply.get_json())
            continue
        assert reply.status_code == 403, (role, reply.status_code)
        error = reply.get_json()["error"]
        assert error["code"] == "forbidden" and error["details"] == {"needed": needed, "role": role}
        assert f"needs the {needed} role" in error["message"] and KEYS[role] not in reply.get_data(as_text=True)


def test_a_route_without_a_role_stops_the_app_from_starting(roles_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    check_routes(roles_app)  # as built: every route has its row
    without = {k: v for k, v in ROUTE_ROLES.items() if k != "models.activate"}
    monkeypatch.setattr("api.auth.ROUTE_ROLES", without)
    with pytest.raises(RuntimeError, match=r"no role for \['models.activate'\]"):
        check_routes(roles_app)
    monkeypatch.setattr("api.auth.ROUTE_ROLES", {**ROUTE_ROLES, "models.rename": "admin"})
    with pytest.raises(RuntimeError, match=r"rows for no route: \['models.rename'\]"):
        check_routes(roles_app)


def test_entries_are_a_key_or_tenant_role_key() -> None:
    key = "k" * 20
    assert parse_entry(key, 1) == KeyEntry("default", "admin", key)  # today's meaning: nothing changes
    assert parse_entry(f"default:reader:{key}", 1) == KeyEntry("default", "reader", key)
    assert key not in repr(parse_entry(f"default:reader:{key}", 1))
    refused = {
        f"default:{key}": "write KEY or TENANT:ROLE:KEY",
        f"a:b:c:{key}": "write KEY",
        f"Team A:reader:{key}": "a tenant is",
        f"default:owner:{key}": "reader, writer, admin",
    }
    for bad, says in refused.items():
        with pytest.raises(ValueError, match=says) as caught:
            parse_entry(bad, 3)
        assert "entry 3" in str(caught.value) and key not in str(caught.value)
    assert allows("admin", "writer") and allows("writer", "writer") and not allows("reader", "writer")
    assert client_key((f"default:reader:{key}", f"default:admin:{'a' * 20}")) == "a" * 20
    assert client_key((f"default:writer:{key}",)) is None and client_key(()) is None


def test_keys_may_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# the team's keys\n{ENTRIES[0]}\n\n  {ENTRIES[1]} , {ENTRIES[2]}\n" + "\n".join(ENTRIES[3:]))
    assert split_entries(f"@{keys}") == ENTRIES
    monkeypatch.setenv("MOVIEREC_API_KEYS", f"@{keys}")
    settings = Settings()
    assert settings.api_keys == ENTRIES and settings.client_key == KEYS["admin"]
    assert KEYS["admin"] not in repr(settings)
    with pytest.raises(ValueError, match="cannot be read"):
        split_entries(f"@{tmp_path / 'missing'}")


def test_tenants_are_named_by_the_keys_and_a_key_given_twice_refuses_to_start() -> None:
    ring = KeyRing([ENTRIES[0], f"team-b:admin:{'b' * 20}", f"team-b:reader:{'c' * 20}"])
    assert ring.tenants == {"default", "team-b"}
    caller = ring.identify("c" * 20)
    assert caller is not None and (caller.tenant, caller.role) == ("team-b", "reader")
    with pytest.raises(ValueError, match="a key appears twice") as caught:
        KeyRing([f"default:admin:{KEYS['admin']}", f"team-b:reader:{KEYS['admin']}"])
    assert KEYS["admin"] not in str(caught.value)


@pytest.fixture(scope="module")
def roles_url(settings: Settings, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``movierec api`` with the role keys in MOVIEREC_API_KEYS."""
    with keyed_api(settings, ENTRIES, tmp_path_factory.mktemp("roles-api")) as url:
        yield url


def test_the_cli_shows_a_403_and_the_role_it_needs(settings: Settings, roles_url: str) -> None:
    env = {**settings.model_copy(update={"api_keys": ENTRIES}).child_env(), "MOVIEREC_API_KEY": KEYS["reader"]}
    command = [sys.executable, "-m", "cli.main", "delete", "dataset", "ds-no-such", "--api", roles_url]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1
    assert "403 forbidden: this route needs the admin role or above; this key's role is reader" in refused.stderr
    env["MOVIEREC_API_KEY"] = KEYS["admin"]  # past the role check: the dataset's own answer
    allowed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert allowed.returncode == 1 and "404" in allowed.stderr and "403" not in allowed.stderr
