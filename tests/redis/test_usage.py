"""What a tenant stores (shared/store/usage.py) on a real Redis: its keyspace's bytes and nothing else."""

from __future__ import annotations

import redis

from shared.infra.keys import Keys, tenant_prefix
from shared.store.usage import StoredBytes


def test_each_tenant_counts_its_own_keys_and_the_default_one_not_the_deployment_s(
    redis_client: redis.Redis, fresh_prefix: str
) -> None:
    acme = tenant_prefix(fresh_prefix, "acme")
    default_usage = StoredBytes(redis_client, prefix=fresh_prefix, default=True)
    acme_usage = StoredBytes(redis_client, prefix=acme, default=False)
    assert default_usage.measure() == 0 and acme_usage.measure() == 0
    redis_client.set(Keys(fresh_prefix).artifact("mine"), b"x" * 10_000)
    redis_client.set(Keys(acme).artifact("theirs"), b"y" * 50_000)
    for cluster in (f"{Keys(fresh_prefix).celery_prefix}cpu", Keys(fresh_prefix).worker("w1"),
                    Keys(fresh_prefix).tenants, Keys(fresh_prefix).janitor_lock):  # fmt: skip
        redis_client.set(cluster, b"z" * 30_000)
    mine, theirs = default_usage.measure(), acme_usage.measure()
    assert 10_000 <= mine < 11_000 and 50_000 <= theirs < 51_000, (mine, theirs)

    assert default_usage.held() == mine  # measured, and kept a minute
    redis_client.set(Keys(fresh_prefix).artifact("more"), b"x" * 10_000)
    assert default_usage.held() == mine  # the minute's figure
    assert default_usage.held(max_age_s=0) >= mine + 10_000  # measured now
