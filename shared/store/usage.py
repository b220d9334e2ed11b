"""What a tenant stores: the bytes its keyspace holds in Redis, for ``MOVIEREC_MAX_STORED_BYTES``.

    StoredBytes.held() ──fresh?──> GET <prefix>:usage:stored_bytes   (the last measurement, a minute old at most)
                       └─stale──> SCAN the keyspace, MEMORY USAGE of each key (pipelined), SET it with EX 60

Every key of the tenant's keyspace counts (datasets, models, triplets, embeddings, evaluations, feedback, job
records and results, the vector cache, the audit trail), and nothing else: the default tenant's keyspace is the
deployment's prefix, so there the other tenants' keyspaces (``<prefix>:tenant:*``) and the deployment's own
machinery (Celery's queues and bindings, heartbeats, leases: ``CLUSTER_KINDS``) are left out. Counting bytes
as they are written would not do: results and caches expire by TTL, which no counter sees.

The cap is checked before work is accepted (api/context.py), against a measurement up to a minute old, so a
tenant may pass it by what its jobs of that minute store: a bound on growth, not an exact ceiling.
"""

from __future__ import annotations

from typing import cast

import redis

from shared.infra.keys import Keys

MAX_AGE_S = 60
"""How long a measurement stands before the next check measures again."""

CLUSTER_KINDS = frozenset({"tenant", "tenants", "celery", "worker", "fastlane", "unit", "readyz-probe"})
"""The first part (after the deployment's prefix) of the keys that are the deployment's, not the default
tenant's (shared/infra/keys.py marks them [cluster])."""

BATCH = 1000
"""Keys measured per round trip."""


class StoredBytes:
    """The bytes one tenant's keyspace holds (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, prefix: str, default: bool) -> None:
        self._r = client
        self._keys = Keys(prefix)
        self._prefix = prefix
        self._default = default

    def held(self, *, max_age_s: float = MAX_AGE_S) -> int:
        """The bytes held, as measured at most ``max_age_s`` ago (measured now if not)."""
        if max_age_s > 0:
            cached = cast("bytes | None", self._r.get(self._keys.usage_stored_bytes))
            if cached is not None:
                return int(cached)
        held = self.measure()
        self._r.set(self._keys.usage_stored_bytes, held, ex=max(1, int(max_age_s)))
        return held

    def measure(self) -> int:
        """SCAN the keyspace and add up ``MEMORY USAGE`` of every key of the tenant's (a key that expires meanwhile
        counts nothing)."""
        total, batch = 0, []
        for key in self._r.scan_iter(match=self._keys.everything, count=BATCH):
            if self._mine(key):
                batch.append(key)
            if len(batch) == BATCH:
                total += self._usage(batch)
                batch = []
        return total + (self._usage(batch) if batch else 0)

    def _mine(self, key: bytes) -> bool:
        if not self._default:
            return True
        rest = key.decode(errors="replace")[len(self._prefix) + 1 :]
        kind = rest.split(":", 1)[0]
        return kind not in CLUSTER_KINDS and rest != "janitor:lock"

    def _usage(self, keys: list[bytes]) -> int:
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key)
        return sum(int(n or 0) for n in pipe.execute())
