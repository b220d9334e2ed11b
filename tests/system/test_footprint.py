"""Bounded footprint: once results expire, the keys and their memory are back where they were."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import redis
import requests

from cli.stack import Stack
from shared.infra.keys import tenant_prefix
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.jobs.submit import submit
from shared.logic.services import Services
from tests.helpers import SAMPLE, wait_job, wait_until

RESULT_TTL_S = 3
KEY = "footprint-admin-key-" + "f" * 12


@pytest.fixture(params=["default", "acme"])
def tenant(request: pytest.FixtureRequest) -> str:
    """Whose footprint: the default tenant's (an open API) or tenant acme's (the API keyed for it alone)."""
    return str(request.param)


@pytest.fixture
def chaos_overrides(tenant: str) -> dict[str, Any]:
    keys = () if tenant == "default" else (f"{tenant}:admin:{KEY}",)
    return {"result_ttl_s": RESULT_TTL_S, "api_keys": keys}


TRANSIENT = re.compile(r":janitor:lock$|:audit$|:events$|:attribution:secret$")
"""The sweep lock comes and goes every interval, whatever else happens; the audit trail records the test's
cancellation and the event log events, each bounded by its own count and retention (tests/redis/test_audit.py),
not by results' TTL; the tenant's attribution secret (32 bytes) is made on its first answer and kept for good."""


CLUSTER = re.compile(r"^[^:]+:(celery:|worker:|tenants$|fastlane:|_kombu|unacked)|^_kombu")
"""The deployment's own keys, no tenant's (shared/infra/keys.py marks them [cluster])."""


def footprint(client: redis.Redis, prefix: str) -> dict[str, int]:
    """Every key of the prefix (but the sweep lock) and the bytes Redis holds for it."""
    keys = (k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000))
    return {k: int(client.memory_usage(k) or 0) for k in keys if not TRANSIENT.search(k)}


def settle(client: redis.Redis, prefix: str, baseline: dict[str, int] | None, *, timeout_s: float) -> dict[str, int]:
    """The footprint once results have expired and the janitor has swept (equal to ``baseline`` if given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = footprint(client, prefix)
        # Settled: no result left to expire (heartbeats and the vector cache live on) and no id left to prune.
        # A key scanned a moment ago may have expired since (PTTL -2): it is leaving too, so not settled.
        expiring = [
            k for k in now if client.pttl(k) != -1 and k[len(prefix) + 1 :].split(":")[0] not in ("worker", "vec")
        ]
        expiring += [k for k in now if k.endswith(":jobs:expiry")]
        if (baseline is None and not expiring) or now.keys() == (baseline or {}).keys():
            return now
        if time.monotonic() > deadline:
            extra, missing = sorted(set(now) - set(baseline or {})), sorted(set(baseline or {}) - set(now))
            raise AssertionError(f"after {timeout_s:.0f} s, {len(extra)} keys more than before: {extra[:10]}, "
                                 f"{len(missing)} fewer: {missing[:10]}; expiring: {expiring[:5]}")  # fmt: skip
        time.sleep(0.5)


def test_keys_and_memory_return_to_baseline_after_results_expire(
    chaos_stack: Stack, chaos_settings: Settings, tenant: str, sample: str
) -> None:
    """Per tenant: its keyspace's keys and bytes come back (for tenant acme, nothing of its lands in the
    default tenant's keyspace either)."""
    svc, celery = Services.from_settings(chaos_settings, tenant), make_celery(chaos_settings)
    prefix, api, r = tenant_prefix(chaos_settings.key_prefix, tenant), chaos_stack.api_url, svc.redis
    auth = {"Authorization": f"Bearer {KEY}"} if tenant != "default" else {}
    # A named recipe: auto's choosing job reads its children's results, which a 3-second result TTL expires.
    pipeline = submit(celery, svc.jobs, kind="pipeline", params={"path": sample, "recipe": "hybrid"})
    done = wait_job(lambda: svc.jobs.get(pipeline.id), timeout_s=240)
    assert done is not None and done.status == "succeeded", done
    # Baseline: what stays (the dataset, the triplets, the model and its index, caches, Celery's bindings).
    baseline = settle(r, prefix, None, timeout_s=60)

    # Every key the jobs make, looked for often enough (every 10 submissions, every wait's poll) that none lives
    # through its 3-second TTL unseen, however slowly the machine runs the submissions.
    made: set[str] = set()

    def look() -> None:
        made.update(k for k in (k.decode() for k in r.scan_iter(match=f"{prefix}:*", count=1000))
                    if not TRANSIENT.search(k))  # fmt: skip

    ids = []
    for n in range(100):  # the sample's users, some twice: each request is a job of its own
        if n % 10 == 0:
            look()
        answer = requests.post(f"{api}/v1/recommendations?wait=0", json={"user_id": 1 + n % SAMPLE.users, "k": 5},
                               headers=auth,
                               timeout=30)  # fmt: skip
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    for _ in range(3):  # strings the cache already holds (descriptors): no new cache entry
        answer = requests.post(f"{api}/v1/jobs/encode", json={"texts": ["drama", "comedy"]}, headers=auth, timeout=30)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    failing = {"dataset": "ds-0000000000000000", "shard_size": 100, "seed": 1, "negatives": "uniform-min"}
    ids.append(submit(celery, svc.jobs, kind="triplets", params=failing).id)
    cancelled = submit(celery, svc.jobs, kind="triplets", params=failing)
    requests.delete(f"{api}/v1/jobs/{cancelled.id}", headers=auth, timeout=30)

    # A record expires RESULT_TTL_S after its job finishes (never before): one that is gone has finished. On a
    # loaded machine the 104 submissions take longer than that, so the first ones can finish and expire before
    # the first look: waiting to see each one finished would wait for good.
    def unfinished() -> list[str]:
        look()
        return [i for i in ids if (job := svc.jobs.get(i)) is not None and not job.finished]

    wait_until(lambda: not unfinished(), timeout_s=120, every_s=0.2,
               failure=lambda: f"{len(unfinished())} of {len(ids)} jobs unfinished")  # fmt: skip
    peak = footprint(r, prefix)
    assert len(made - baseline.keys()) > 100, len(made - baseline.keys())  # the jobs' records and results

    after = settle(r, prefix, baseline, timeout_s=RESULT_TTL_S + 30)
    assert after.keys() == baseline.keys()
    assert sum(after.values()) <= sum(baseline.values()) * 1.01, (sum(after.values()), sum(baseline.values()))
    print(
        f"footprint: baseline {len(baseline)} keys / {sum(baseline.values()):,} B; after {len(ids)} jobs "
        f"{len(peak)} keys / {sum(peak.values()):,} B; once expired {len(after)} keys / {sum(after.values()):,} B"
    )
    gone = requests.get(f"{api}/v1/jobs/{ids[0]}", headers=auth, timeout=30)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    if tenant != "default":  # the default tenant's keyspace holds none of acme's: only the cluster's machinery
        others = footprint(r, chaos_settings.key_prefix)
        outside = [k for k in others if not k.startswith(f"{prefix}:") and CLUSTER.search(k) is None]
        assert outside == [], outside[:10]
