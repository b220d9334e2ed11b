"""The Redis-backed services one process uses, built from its settings: every store once per tenant, and the
per-process view of the datasets (``Catalogue``) over them.

A tenant is a keyspace (shared/infra/keys.py ``tenant_prefix``): ``Services`` is one tenant's stores over one
Redis connection, and ``for_tenant`` answers another tenant's, built on first use and kept, sharing the
connection. So the code that serves a request or runs a task is the same for every tenant; which tenant's
data it reaches is decided once, where the request or message names its tenant:

    API request ──key──> Caller.tenant ──> api/context.py services() ──> svc.for_tenant(tenant)
    task message ──TENANT_HEADER──> workers/base.py services() ──> svc.for_tenant(tenant)
    the janitor ──svc.tenants()──> each tenant's services in turn (workers/janitor.py)

What is the deployment's, not a tenant's, is reached through ``cluster_keys`` (worker heartbeats, the tenant
registry) or shared by every tenant's services: the connection, and ``units``, the leases of the units of work
this process runs (keyed by job id, a UUID: no tenant's data, and one renewer thread for all).

The API builds one in ``create_app``. A worker builds one lazily in each process that runs tasks, after
the fork, so no connection is shared between a prefork parent and its children.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import cast

import redis

from shared.infra.keys import DEFAULT_TENANT, TENANT_SHAPE, Keys, tenant_prefix
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from shared.jobs.leases import UnitGuard
from shared.jobs.store import JobStore
from shared.logic.catalogue import Catalogue
from shared.store.artifacts import ArtifactStore
from shared.store.audit import AuditLog
from shared.store.datasets import DatasetStore
from shared.store.events import EventLog
from shared.store.experiments import ExperimentStore
from shared.store.feedback import FeedbackStore
from shared.store.models import ModelStore
from shared.store.usage import StoredBytes
from shared.store.vectors import VectorCache

Connection = redis.Redis
"""(A name the class body's ``redis`` field does not hide.)"""

_FAMILY_LOCK = threading.Lock()
"""Held while a tenant's services are built, so two threads asking at once build them once."""

HEARTBEAT_TTL_S = 30
"""A worker that has not refreshed its heartbeat for this long is taken as gone."""


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    artifacts: ArtifactStore
    datasets: DatasetStore
    models: ModelStore
    units: UnitGuard
    feedback: FeedbackStore
    vectors: VectorCache
    catalogue: Catalogue
    audit: AuditLog
    usage: StoredBytes
    events: EventLog
    experiments: ExperimentStore
    tenant: str = DEFAULT_TENANT
    _family: dict[str, Services] = field(default_factory=dict, repr=False, compare=False)
    """Every tenant's services built so far in this process, this one's included: one dict for all of them."""

    @classmethod
    def from_settings(cls, settings: Settings, tenant: str = DEFAULT_TENANT) -> Services:
        """``tenant``'s services (the default tenant's: a store made before tenants existed) on a new connection."""
        client = connect(settings.redis_url)
        units = UnitGuard(
            client, prefix=settings.key_prefix, ttl_s=settings.lease_ttl_s, max_starts=settings.max_deliveries
        )
        return cls._build(settings, client, units, tenant, {})

    def for_tenant(self, tenant: str) -> Services:
        """``tenant``'s services over this connection, built on first use in this process; ValueError for a name
        that is not a tenant's."""
        found = self._family.get(tenant)
        if found is None:
            with _FAMILY_LOCK:
                found = self._family.get(tenant) or self._build(
                    self.settings, self.redis, self.units, tenant, self._family
                )
        return found

    @property
    def cluster_keys(self) -> Keys:
        """The deployment's own keys (its prefix alone): worker heartbeats, the tenant registry."""
        return Keys(self.settings.key_prefix)

    def tenants(self) -> list[str]:
        """Every tenant that has queued a job, and the default one, sorted."""
        named = cast("set[bytes]", self.redis.smembers(self.cluster_keys.tenants))
        found = {name.decode() for name in named if TENANT_SHAPE.match(name.decode())}
        return sorted(found | {DEFAULT_TENANT})

    @classmethod
    def _build(
        cls, settings: Settings, client: Connection, units: UnitGuard, tenant: str, family: dict[str, Services]
    ) -> Services:
        prefix = tenant_prefix(settings.key_prefix, tenant)
        artifacts = ArtifactStore(client, prefix=prefix, chunk_bytes=settings.chunk_bytes)
        datasets = DatasetStore(client, artifacts, prefix=prefix)
        models = ModelStore(client, prefix=prefix)
        feedback = FeedbackStore(client, prefix=prefix)
        built = cls(
            settings=settings,
            redis=client,
            jobs=JobStore(
                client,
                prefix=prefix,
                result_ttl_s=settings.result_ttl_s,
                wait_replicas=settings.wait_replicas,
                tenant=tenant,
                registry=Keys(settings.key_prefix).tenants,
            ),
            artifacts=artifacts,
            datasets=datasets,
            models=models,
            units=units,
            feedback=feedback,
            vectors=VectorCache(client, prefix=prefix),
            catalogue=Catalogue(datasets, feedback, models, prefix=prefix),
            audit=AuditLog(
                client,
                key=Keys(prefix).audit,
                max_entries=settings.audit_max_entries,
                retention_s=settings.audit_retention_s,
            ),
            usage=StoredBytes(client, prefix=prefix, default=tenant == DEFAULT_TENANT),
            events=EventLog(
                client,
                key=Keys(prefix).events,
                secret_key=Keys(prefix).attribution_secret,
                batch_key=Keys(prefix).events_batch,
                max_entries=settings.events_max_entries,
                retention_s=settings.events_retention_s,
            ),
            experiments=ExperimentStore(client, prefix=prefix),
            tenant=tenant,
            _family=family,
        )
        family[tenant] = built
        return built

    @property
    def keys(self) -> Keys:
        """The Redis keys of this tenant."""
        return Keys(tenant_prefix(self.settings.key_prefix, self.tenant))

    # -- worker heartbeats, read by /readyz ------------------------------------------------------------
    def beat(self, name: str, queues: list[str]) -> None:
        value = ",".join(queues) + f"|{os.getpid()}|{time.time():.0f}"
        self.redis.set(self.cluster_keys.worker(name), value, ex=HEARTBEAT_TTL_S)

    def forget_worker(self, name: str) -> None:
        self.redis.delete(self.cluster_keys.worker(name))

    def live_queues(self) -> dict[str, int]:
        """How many live workers consume each queue."""
        counts: dict[str, int] = {}
        for key in self.redis.scan_iter(match=self.cluster_keys.workers_pattern, count=500):
            raw = cast("bytes | None", self.redis.get(key))
            if raw is None:
                continue
            for queue in raw.decode().split("|", 1)[0].split(","):
                counts[queue] = counts.get(queue, 0) + 1
        return counts
