"""The event log: what users did with what was served (issue #27), bounded in count and age; and the secret that
tags a tenant's recommendation ids.

    POST /v1/events, a feedback rating citing an answer (shared/logic/online.py) ──> EventLog.add(pipe, events)
        XADD <prefix>:events MAXLEN ~ max_entries      the oldest go once there are too many
        XTRIM <prefix>:events MINID ~ now - retention   and none stays much past its retention
    GET /v1/events?limit&before ──> EventLog.read (shared/store/audit.py's paging) ──> the newest first

An event is a flat JSON object as posted (``type``, ``user_id``, ``movie_id``, ``recommendation_id``, ``position``,
``timestamp``, ``rating``) plus what attribution found: ``experiment``, ``variant``, ``position``, ``credited``.
Trimming is approximate (whole radix-tree nodes), unlike the audit trail's: events come thousands a second, and
an exact trim would cost each batch a walk of the stream's head.
"""

from __future__ import annotations

import os
from typing import cast

import redis
from redis.commands.core import Script

from shared.store.audit import AuditLog

SECRET_BYTES = 32

_ADD = """
-- KEYS[1] the stream; ARGV[1] the entries it keeps, about; ARGV[2] the oldest id it keeps, about;
-- ARGV[3..] the events, JSON. One call a batch: a command a event from the client costs ~20 us of its CPU.
for i = 3, #ARGV do
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[2])
return #ARGV - 2
"""


class EventLog(AuditLog):
    """A tenant's events under ``key`` (``Keys.events``), and its attribution secret under ``secret_key``."""

    def __init__(
        self, client: redis.Redis, *, key: str, secret_key: str, max_entries: int, retention_s: int
    ) -> None:  # fmt: skip
        super().__init__(client, key=key, max_entries=max_entries, retention_s=retention_s)
        self._secret_key = secret_key
        self._secret: bytes | None = None
        self._add = Script(client, _ADD)

    def add(self, pipe: redis.client.Pipeline, texts: list[str], *, now_ms: int) -> None:
        """Queue events (each as its JSON text) on ``pipe`` (the caller's, beside its counters: one round trip for
        a batch)."""
        self._add(keys=[self._key], args=[self.max_entries, self._oldest(now_ms), *texts], client=pipe)

    def secret(self) -> bytes:
        """The tenant's attribution secret: made by the first process that asks (SET NX), then read once."""
        if self._secret is None:
            self._r.set(self._secret_key, os.urandom(SECRET_BYTES), nx=True)
            self._secret = cast("bytes", self._r.get(self._secret_key))
        return self._secret
