"""The event log: what users did with what was served (issue #27), bounded in count and age; and the secret that
tags a tenant's recommendation ids.

    POST /v1/events, a feedback rating citing an answer (shared/logic/online.py) ──> EventLog.add(pipe, events)
        XADD <prefix>:events MAXLEN ~ max_entries      the oldest go once there are too many
        XTRIM <prefix>:events MINID ~ now - retention   and none stays much past its retention
    GET /v1/events?limit&before ──> EventLog.read (shared/store/audit.py's paging) ──> the newest first
    a batch sent with an Idempotency-Key: the same call first SETs <prefix>:events:batch:<digest> (kept a day);
        a retry finds it, logs nothing and answers what it holds

An event is a flat JSON object as posted (``type``, ``user_id``, ``movie_id``, ``recommendation_id``, ``position``,
``timestamp``, ``rating``) plus what attribution found: ``experiment``, ``variant``, ``position``, ``credited``.
Trimming is approximate (whole radix-tree nodes), unlike the audit trail's: events come thousands a second, and
an exact trim would cost each batch a walk of the stream's head.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import cast

import redis
from redis.commands.core import Script

from shared.store.audit import AuditLog

SECRET_BYTES = 32

_ADD = """
-- KEYS[1] the stream; ARGV[1] the entries it keeps, about; ARGV[2] the oldest id it keeps, about;
-- ARGV[3..] the events, JSON. One call a batch: a command a event from the client costs ~20 us of its CPU.
-- With KEYS[2] (a batch sent with an Idempotency-Key), ARGV[3] is its record and ARGV[4] how long to keep it,
-- and the events follow: a batch whose record is already there is not logged again, and that record answers.
local first = 3
if #KEYS == 2 then
    local held = redis.call('GET', KEYS[2])
    if held then
        return held
    end
    redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
    first = 5
end
for i = first, #ARGV do
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[2])
return #ARGV - first + 1
"""
ONCE_S = 86_400
"""How long a batch sent with an ``Idempotency-Key`` is remembered: a retry within it is answered, not counted."""


class EventLog(AuditLog):
    """A tenant's events under ``key`` (``Keys.events``), its attribution secret under ``secret_key``, and the
    batches sent with an ``Idempotency-Key`` under ``batch_key(digest)`` (``Keys.events_batch``)."""

    def __init__(
        self, client: redis.Redis, *, key: str, secret_key: str, batch_key: Callable[[str], str], max_entries: int,
        retention_s: int,
    ) -> None:  # fmt: skip
        super().__init__(client, key=key, max_entries=max_entries, retention_s=retention_s)
        self._secret_key = secret_key
        self._batch_key = batch_key
        self._secret: bytes | None = None
        self._add = Script(client, _ADD)

    def add(
        self, pipe: redis.client.Pipeline, texts: list[str], *, now_ms: int, once: tuple[str, str] | None = None
    ) -> None:  # fmt: skip
        """Queue events (each as its JSON text) on ``pipe`` (the caller's, beside its counters: one round trip for
        a batch). ``once``: (key, record) of a batch sent with an ``Idempotency-Key``; the command then answers
        the record held under that key, when there is one, and logs nothing, else stores ``record`` there for
        ``ONCE_S`` (``ExperimentStore.count`` reads it, to count the batch once)."""
        if once is None:
            self._add(keys=[self._key], args=[self.max_entries, self._oldest(now_ms), *texts], client=pipe)
        else:
            key, record = once
            self._add(keys=[self._key, key], args=[self.max_entries, self._oldest(now_ms), record, ONCE_S, *texts],
                      client=pipe)  # fmt: skip

    def once_key(self, idempotency_key: str) -> str:
        """Where a batch sent with ``idempotency_key`` is remembered (``Keys.events_batch`` of its digest)."""
        return self._batch_key(hashlib.sha256(idempotency_key.encode()).hexdigest()[:32])

    def secret(self) -> bytes:
        """The tenant's attribution secret: made by the first process that asks (SET NX), then read once."""
        if self._secret is None:
            self._r.set(self._secret_key, os.urandom(SECRET_BYTES), nx=True)
            self._secret = cast("bytes", self._r.get(self._secret_key))
        return self._secret
