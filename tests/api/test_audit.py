"""The audit trail and the quotas view through the API (issue #26, items 2 and 4): every change of state an
admin route accepted, every request a role refused there, and every quota refusal, with the key's owner id and
never the key, readable by an admin at ``GET /v1/audit``, newest first; each cap with what is held against it at
``GET /v1/quotas``. In process (Flask's client) on a prefix of its own, real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from api import create_app
from api.auth import owner_id
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from tests.api.test_deletion import seed_dataset, seed_model
from tests.conftest import delete_prefix

KEYS = {role: f"{role}-audit-" + role[0] * 20 for role in ("reader", "writer", "admin")}


@pytest.fixture
def audited(settings: Settings) -> Iterator[Any]:
    prefix = f"{settings.key_prefix}-audit-{uuid.uuid4().hex[:8]}"
    entries = tuple(f"default:{role}:{key}" for role, key in KEYS.items())
    update = {"key_prefix": prefix, "api_keys": entries, "max_datasets": 2}
    yield create_app({"TESTING": True}, settings=settings.model_copy(update=update))
    delete_prefix(connect(settings.redis_url), prefix)


def as_(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def test_who_changed_what_and_when(audited: Any) -> None:
    client = audited.test_client()
    started = client.post("/v1/datasets", json={"path": "ml-latest-small"}, headers=as_("admin"))
    assert started.status_code == 202
    assert client.post("/v1/datasets", json={"path": "ml-latest-small"}, headers=as_("reader")).status_code == 403
    assert client.get("/v1/datasets", headers=as_("admin")).status_code == 200  # a read: not recorded
    assert client.delete("/v1/datasets/ds-none", headers=as_("admin")).status_code == 404  # nothing changed
    seed_dataset(audited, "ds-a")
    seed_model(audited, "m-a", "ds-a")
    assert client.delete("/v1/models/m-a", headers=as_("admin")).status_code == 200
    seed_dataset(audited, "ds-b")  # two stored: the quota (MOVIEREC_MAX_DATASETS=2) refuses the next ingest
    refused = client.post("/v1/datasets", json={"path": "ml-latest-small"}, headers=as_("admin"))
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "quota_exceeded"

    page = client.get("/v1/audit", headers=as_("admin"))
    assert page.status_code == 200
    body = page.get_json()
    admin, reader = owner_id(KEYS["admin"]), owner_id(KEYS["reader"])
    got = [(e["action"], e["owner"], e["role"], e["status"], e["outcome"], e["target"]) for e in body["entries"]]
    assert got == [
        ("POST /v1/datasets", admin, "admin", 409, "refused: quota_exceeded", {}),
        ("DELETE /v1/models/{version}", admin, "admin", 200, "done", {"version": "m-a"}),
        ("POST /v1/datasets", reader, "reader", 403, "forbidden", {}),
        ("POST /v1/datasets", admin, "admin", 202, "accepted", {}),
    ]
    assert body["entries"][-1]["job"] == started.get_json()["id"] and body["entries"][0]["job"] is None
    assert all(e["at"].endswith("Z") for e in body["entries"]) and body["next"] is None
    assert body["kept"] == {"max_entries": 100_000, "retention_s": 90 * 24 * 3600}
    assert not any(key in page.get_data(as_text=True) for key in KEYS.values())  # owner ids, never a key

    older = client.get("/v1/audit?limit=2", headers=as_("admin")).get_json()
    rest = client.get(f"/v1/audit?limit=2&before={older['next']}", headers=as_("admin")).get_json()
    assert [e["id"] for e in older["entries"] + rest["entries"]] == [e["id"] for e in body["entries"]]
    assert client.get("/v1/audit", headers=as_("writer")).status_code == 403  # an admin's view
    for wrong in ("yesterday", f"{2**64}-0", "1-99999999999999999999"):
        bad = client.get(f"/v1/audit?before={wrong}", headers=as_("admin"))
        assert bad.status_code == 400 and "before" in bad.get_json()["error"]["message"], wrong
    assert client.get("/v1/audit?before=0-0", headers=as_("admin")).get_json()["entries"] == []


def test_an_admin_sees_each_quota_and_what_is_held_against_it(audited: Any) -> None:
    client, svc = audited.test_client(), audited.extensions["movierec"]
    seed_dataset(audited, "ds-q")
    assert svc.feedback.add("ds-q", [(7, 10, 4.0, 1_700_000_000), (7, 20, 3.0, 1_700_000_001)]) == 2
    answer = client.get("/v1/quotas", headers=as_("admin"))
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["datasets"] == {"used": 1, "limit": 2, "setting": "MOVIEREC_MAX_DATASETS"}
    assert body["models"] == {"used": 0, "limit": None, "setting": "MOVIEREC_MAX_MODELS"}  # 0: no cap
    assert body["feedback_rows"]["datasets"] == [{"dataset": "ds-q", "used": 2}]
    assert body["feedback_rows"]["limit"] == svc.settings.max_feedback_rows
    assert body["uploads_in_flight_bytes"]["used"] == 0
    assert body["jobs_in_flight"] == {"used": 0, "limit": None, "setting": "MOVIEREC_MAX_JOBS_IN_FLIGHT"}
    assert client.get("/v1/quotas", headers=as_("writer")).status_code == 403  # an admin's view
