"""Tenants (issue #26): one deployment, two teams, and neither can read, change or delete the other's data, nor
learn that it exists.

A real ``movierec api`` with keys of two tenants (``acme``, ``globex``; a reader, a writer and an admin each) and
an operator runs beside the session stack's workers, on the stack's own key prefix. ``acme`` trains two models
of ml-latest-small, activates the first, posts a new user's feedback and runs a batch job. Then:

- the probe: everything ``globex`` can try against ``acme``'s ids (read, post feedback as acme's user 1,
  activate, delete, train on acme's dataset, list its jobs) answers as an unknown id does, ``globex`` ingesting
  the same files gets a dataset of its own under the same content-addressed id and deletes it, and afterwards
  ``acme``'s keyspace holds exactly the keys it held and its recommendations are byte-identical;
- the route x tenant matrix: every operation of /openapi.json, called with acme's real ids, by each of acme's
  roles (README.md's roles table decides 403 or through, and through a read answers 2xx), by each of globex's
  (403 where the role is too low, else the very answer an unknown id gets) and with no key (401);
- the key schema: no key outside acme's keyspace names acme's model versions or jobs.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests

from cli.stack import Stack
from shared.infra.keys import Keys, tenant_prefix
from shared.infra.settings import Settings
from tests.helpers import keyed_api, readme_matrix, wait_job

ROLES = ("reader", "writer", "admin")
TENANTS = ("acme", "globex")
KEYS = {(tenant, role): f"{tenant}-{role}-key-" + "k" * 16 for tenant in TENANTS for role in ROLES}
OPERATOR = "operator-key-" + "o" * 16
ENTRIES = (*(f"{tenant}:{role}:{key}" for (tenant, role), key in KEYS.items()), f"default:operator:{OPERATOR}")
RANK = {role: i for i, role in enumerate(ROLES)}
NEW_USER = 900_001
EXPERIMENT = "acme-exp"
MATRIX = readme_matrix()


class As:
    """HTTP calls to the tenants' API with one key (or none)."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers=self.headers, timeout=60, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        r = self.call(method, path, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def run(self, path: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """POST a job, wait for it to succeed: (its id, its result)."""
        r = self.call("POST", path, json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        job = wait_job(lambda: self.ok("GET", f"/v1/jobs/{job_id}"), timeout_s=300)
        assert job["status"] == "succeeded", job
        return job_id, self.ok("GET", f"/v1/jobs/{job_id}/result")


@dataclass(frozen=True)
class World:
    """What acme made: a dataset, two indexed versions (the first active), a new user's feedback, its jobs (and
    a finished batch job of each role's key: a job is its key's own), and an experiment running over both
    versions."""

    url: str
    dataset: str
    versions: tuple[str, str]
    jobs: tuple[str, ...]
    batch: dict[str, str]
    before: frozenset[bytes]
    """Every key outside acme's keyspace before acme made anything: the session's other modules train the same
    content-addressed versions in the default tenant (``two_versions``: the same dataset, seeds and epochs)."""

    def as_(self, tenant: str, role: str) -> As:
        return As(self.url, KEYS[(tenant, role)])


@pytest.fixture(scope="module")
def world(settings: Settings, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    client = redis.Redis.from_url(settings.redis_url)
    own = tenant_prefix(settings.key_prefix, "acme").encode() + b":"
    before = frozenset(key for key in client.scan_iter(match=Keys(settings.key_prefix).everything, count=1000)
                       if not key.startswith(own))  # fmt: skip
    with keyed_api(settings, ENTRIES, tmp_path_factory.mktemp("tenants-api")) as url:
        admin = As(url, KEYS[("acme", "admin")])
        jobs = []
        job, ingested = admin.run("/v1/datasets", {"path": "ml-latest-small"})
        dataset = ingested["dataset"]
        jobs.append(job)
        jobs.append(admin.run("/v1/jobs/triplets", {"dataset": dataset})[0])
        versions = []
        for seed in (1, 2):
            job, trained = admin.run("/v1/jobs/train", {"dataset": dataset, "epochs": 1, "seed": seed})
            versions.append(trained["version"])
            jobs += [job, admin.run("/v1/jobs/index", {"version": trained["version"]})[0]]
        admin.ok("POST", f"/v1/models/{versions[0]}/activate")
        ratings = [{"user_id": NEW_USER, "movie_id": m, "rating": 5.0} for m in (1, 2355, 3114)]
        As(url, KEYS[("acme", "writer")]).ok("POST", f"/v1/datasets/{dataset}/ratings", json={"ratings": ratings})
        batch = {role: As(url, KEYS[("acme", role)]).run("/v1/jobs/recommend-batch", {"users": [1, 2], "k": 5})[0]
                 for role in ROLES}  # fmt: skip
        experiment = {"name": EXPERIMENT, "variants": [{"model": versions[0]}, {"model": versions[1]}]}
        assert admin.call("POST", "/v1/experiments", json=experiment).status_code == 201
        yield World(url, dataset, (versions[0], versions[1]), (*jobs, *batch.values()), batch, before)
    # the tenants' keyspaces go, the session's stay
    for tenant in TENANTS:
        for key in client.scan_iter(match=Keys(tenant_prefix(settings.key_prefix, tenant)).everything, count=1000):
            client.delete(key)
        client.srem(Keys(settings.key_prefix).tenants, tenant)


def recommendations(world: World) -> list[bytes]:
    """acme's answers to a profile, a new user's feedback and keywords, as the bytes of their JSON (but each answer's
    own recommendation_id, signed anew each time: checked to be acme's, then left out)."""
    reader = world.as_("acme", "reader")
    bodies: list[dict[str, Any]] = [
        {"user_id": 1, "k": 10},
        {"user_id": NEW_USER, "k": 10},
        {"keywords": ["Children", "animation"], "k": 5},
    ]
    out = []
    for body in bodies:
        r = reader.call("POST", "/v1/recommendations", params={"wait": 30}, json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        event = {"type": "click", "user_id": body.get("user_id", 1), "movie_id": answer["items"][0]["movie_id"],
                 "recommendation_id": answer.pop("recommendation_id")}  # fmt: skip
        assert world.as_("acme", "writer").call("POST", "/v1/events", json={"events": [event]}).status_code == 200
        assert world.as_("globex", "writer").call("POST", "/v1/events", json={"events": [event]}).status_code != 200
        out.append(json.dumps(answer, sort_keys=True).encode())
    return out


def keyspace(settings: Settings, tenant: str) -> dict[bytes, str]:
    """Every key of ``tenant``'s keyspace (but the minute-long finish signals of its jobs) with a digest of its
    value (``DUMP``), so any change shows."""
    client = redis.Redis.from_url(settings.redis_url)
    pattern = Keys(tenant_prefix(settings.key_prefix, tenant)).everything
    keys = [key for key in client.scan_iter(match=pattern, count=1000) if not key.endswith(b":finished")]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
    return {key: hashlib.sha1(value or b"").hexdigest() for key, value in zip(keys, pipe.execute(), strict=True)}


def test_another_tenant_can_neither_read_change_nor_delete_anything_nor_learn_it_exists(
    settings: Settings, world: World
) -> None:
    before, keys_before = recommendations(world), keyspace(settings, "acme")
    ds, (active, inactive) = world.dataset, world.versions
    probe = world.as_("globex", "admin")

    def unknown(method: str, path: str, **kw: Any) -> None:
        r = probe.call(method, path, **kw)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.status_code, r.text)

    unknown("GET", f"/v1/datasets/{ds}")
    unknown("GET", f"/v1/datasets/{ds}/movies")
    unknown("GET", f"/v1/models/{active}/map")
    unknown("POST", f"/v1/datasets/{ds}/ratings", json={"ratings": [{"user_id": 1, "movie_id": m, "rating": 0.5}
                                                                    for m in range(1, 51)]})  # fmt: skip
    unknown("POST", f"/v1/models/{inactive}/activate")
    unknown("DELETE", f"/v1/models/{inactive}")
    unknown("DELETE", f"/v1/datasets/{ds}")
    unknown("POST", "/v1/jobs/train", json={"dataset": ds, "epochs": 1})
    unknown("POST", "/v1/jobs/index", json={"version": inactive})
    unknown("POST", "/v1/pipelines", json={"dataset": ds})
    for job in world.jobs:
        unknown("GET", f"/v1/jobs/{job}")
        unknown("GET", f"/v1/jobs/{job}/result")
        unknown("DELETE", f"/v1/jobs/{job}")
    assert probe.ok("GET", "/v1/datasets") == {"datasets": []}
    assert probe.ok("GET", "/v1/models") == {"active": None, "models": []}
    assert probe.ok("GET", "/v1/jobs")["jobs"] == []
    for body in ({"user_id": 1}, {"keywords": ["Children"]}):  # no model of its own is active: 409, not acme's
        r = probe.call("POST", "/v1/recommendations", json=body)
        assert r.status_code == 409 and "no model is active" in r.json()["error"]["message"]
    assert probe.call("GET", f"/v1/users/{NEW_USER}/ratings").status_code == 409
    system = probe.ok("GET", "/v1/system")
    assert (system["tenant"], system["datasets"], system["models"], system["tenants"]) == ("globex", 0, 0, None)
    assert "acme" not in probe.call("GET", "/metrics").text

    # The same files make the same content-addressed id, in globex's keyspace: its own dataset, deleted as its own.
    _, ingested = probe.run("/v1/datasets", {"path": "ml-latest-small"})
    assert ingested["dataset"] == ds and not ingested.get("reused")
    assert probe.ok("GET", f"/v1/datasets/{ds}")["id"] == ds
    deleted = probe.ok("DELETE", f"/v1/datasets/{ds}")
    assert deleted["deleted"] == ds and deleted["models"] == [] and deleted["keys"] > 0
    assert not any(f"dataset/{ds}/".encode() in key for key in keyspace(settings, "globex"))  # nothing of it left

    assert keyspace(settings, "acme") == keys_before  # not one key of acme's added, changed away or deleted
    owner = world.as_("acme", "admin")
    assert owner.ok("GET", f"/v1/datasets/{ds}")["id"] == ds
    assert owner.ok("GET", "/v1/models")["active"] == active
    assert recommendations(world) == before  # byte for byte
    whole = As(world.url, OPERATOR).ok("GET", "/v1/system")
    rows = {row["tenant"]: row for row in whole["tenants"]}
    assert rows["acme"]["active_model"] == active and rows["acme"]["models"] == 2 and rows["globex"]["models"] == 0


def test_no_key_outside_a_tenant_s_keyspace_names_its_data(settings: Settings, world: World) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    own = tenant_prefix(settings.key_prefix, "acme").encode() + b":"
    named = [*world.versions, *world.jobs]
    outside = [
        key
        for key in client.scan_iter(match=Keys(settings.key_prefix).everything, count=1000)
        if not key.startswith(own) and key not in world.before and any(name.encode() in key for name in named)
    ]
    assert outside == []  # a unit's lease (the cluster's) is named by a job id, but none outlives its unit
    inside = keyspace(settings, "acme")
    assert any(world.versions[0].encode() in key for key in inside) and any(world.jobs[0].encode() in key
                                                                               for key in inside)  # fmt: skip
    assert client.sismember(Keys(settings.key_prefix).tenants, "acme")  # the janitor sweeps it


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


def normalised(response: requests.Response, ids: dict[str, str]) -> tuple[int, str]:
    """A response's status and body with the ids of stored things it was asked about replaced by their
    parameter's name."""
    text = response.text
    for name in ("dataset_id", "version", "job_id", "name"):
        text = text.replace(ids[name], f"<{name}>")
    return response.status_code, text


@pytest.mark.parametrize(("method", "path"), sorted(MATRIX))
def test_every_route_answers_the_matrix_for_each_tenant_and_role(world: World, method: str, path: str) -> None:
    needed = MATRIX[(method, path)]
    own_ids = {"dataset_id": world.dataset, "version": world.versions[0], "user_id": "1", "movie_id": "1",
               "name": EXPERIMENT}  # fmt: skip
    strange = {"dataset_id": f"ds-{uuid.uuid4().hex[:16]}", "version": f"m-{uuid.uuid4().hex[:16]}", "user_id": "1",
               "movie_id": "1", "job_id": str(uuid.uuid4()), "name": f"exp-{uuid.uuid4().hex[:16]}"}  # fmt: skip
    body = {} if method in ("POST", "PUT", "PATCH") else None
    assert (
        As(world.url, None).call(method, fill(path, {**own_ids, "job_id": world.batch["admin"]}), json=body).status_code
        == 401
    )
    for tenant in TENANTS:
        for role in ROLES:
            caller, ids = world.as_(tenant, role), {**own_ids, "job_id": world.batch[role]}  # acme's role's own job
            target = fill(path, ids)
            reply = caller.call(method, target, json=body)
            if RANK[role] < RANK[needed]:
                assert reply.status_code == 403, (tenant, role, reply.text)
                assert reply.json()["error"]["details"] == {"needed": needed, "role": role}
                continue
            assert reply.status_code not in (401, 403) and reply.status_code < 500, (tenant, role, reply.text)
            if tenant == "acme":
                if method == "GET" and "{" in path:  # acme's own ids are there for acme
                    assert reply.status_code < 300, (role, reply.status_code, reply.text)
                continue
            if "{" in path:  # globex: acme's ids answer as ids nobody has
                twin = caller.call(method, fill(path, strange), json=body)
                assert normalised(reply, ids) == normalised(twin, strange), (role, reply.text, twin.text)
