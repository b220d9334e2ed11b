"""The Redis-backed services one process uses, built from its settings: every store once, and the per-process
view of the datasets (``Catalogue``) over them.

The API builds one in ``create_app``. A worker builds one lazily in each process that runs tasks, after
the fork, so no connection is shared between a prefork parent and its children.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import cast

import redis

from shared.infra.keys import Keys
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from shared.jobs.leases import UnitGuard
from shared.jobs.store import JobStore
from shared.logic.catalogue import Catalogue
from shared.store.artifacts import ArtifactStore
from shared.store.audit import AuditLog
from shared.store.datasets import DatasetStore
from shared.store.feedback import FeedbackStore
from shared.store.models import ModelStore
from shared.store.vectors import VectorCache

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

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        client, prefix = connect(settings.redis_url), settings.key_prefix
        artifacts = ArtifactStore(client, prefix=prefix, chunk_bytes=settings.chunk_bytes)
        datasets = DatasetStore(client, artifacts, prefix=prefix)
        models = ModelStore(client, prefix=prefix)
        feedback = FeedbackStore(client, prefix=prefix)
        return cls(
            settings=settings,
            redis=client,
            jobs=JobStore(
                client, prefix=prefix, result_ttl_s=settings.result_ttl_s, wait_replicas=settings.wait_replicas
            ),
            artifacts=artifacts,
            datasets=datasets,
            models=models,
            units=UnitGuard(client, prefix=prefix, ttl_s=settings.lease_ttl_s, max_starts=settings.max_deliveries),
            feedback=feedback,
            vectors=VectorCache(client, prefix=prefix),
            catalogue=Catalogue(datasets, feedback, models, prefix=prefix),
            audit=AuditLog(
                client,
                key=Keys(prefix).audit,
                max_entries=settings.audit_max_entries,
                retention_s=settings.audit_retention_s,
            ),
        )

    @property
    def keys(self) -> Keys:
        """The Redis keys of this deployment."""
        return Keys(self.settings.key_prefix)

    # -- worker heartbeats, read by /readyz ------------------------------------------------------------
    def beat(self, name: str, queues: list[str]) -> None:
        value = ",".join(queues) + f"|{os.getpid()}|{time.time():.0f}"
        self.redis.set(self.keys.worker(name), value, ex=HEARTBEAT_TTL_S)

    def forget_worker(self, name: str) -> None:
        self.redis.delete(self.keys.worker(name))

    def live_queues(self) -> dict[str, int]:
        """How many live workers consume each queue."""
        counts: dict[str, int] = {}
        for key in self.redis.scan_iter(match=self.keys.workers_pattern, count=500):
            raw = cast("bytes | None", self.redis.get(key))
            if raw is None:
                continue
            for queue in raw.decode().split("|", 1)[0].split(","):
                counts[queue] = counts.get(queue, 0) + 1
        return counts
