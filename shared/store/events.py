"""The event log: what users did with what was served (issue #27), bounded in count and age; and the secret that
tags a tenant's recommendation ids.

    POST /v1/events, a feedback rating citing an answer (shared/logic/online.py) ──> EventLog.add(pipe, events)
        one script: XADD <prefix>:events * n <events> c <events logged so far> e <the batch, a JSON array>
        then the oldest batches go while the rest hold max_entries events or more, and those past retention
    a batch sent with an Idempotency-Key: the same script first SETs <prefix>:events:batch:<digest> (kept a day);
        a retry finds it, logs nothing and answers what it holds
    GET /v1/events?limit&before ──> EventLog.read ──> events one by one, the newest first

A stream entry is a batch, not an event: 500 events as 500 entries held Redis 3.5 ms a batch (with appendfsync
always), beside other clients' commands, against 0.7 ms as one. An event is a flat JSON object as posted
(``type``, ``user_id``, ``movie_id``, ``recommendation_id``, ``position``, ``timestamp``, ``rating``) plus what
attribution found (``experiment``, ``variant``, ``position``, ``credited``). Its ``id`` is its batch's stream id
with the event's place folded into the sequence part (``<ms>-<seq * SLOTS + i>``), so events page as stream
entries do (the audit trail's ``before`` cursors) and sort as they were posted. Trimming is by whole batches,
by the count each batch's entry carries (``c``, running), so the log keeps between ``max_entries`` events and
that plus one batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import cast

import redis
from redis.commands.core import Script

from shared.store.audit import AuditLog, Entry, just_before, stream_time

SECRET_BYTES = 32
BATCHES_A_READ = 8
"""Stream entries (batches) a page's read asks Redis for at a time."""

SLOTS = 1 << 16
"""Events one stream entry holds at most (a feedback batch's ratings citing answers: at most 10,000)."""

_ADD = """
-- KEYS[1] the stream; ARGV[1] the events it keeps at least (whole batches go while the rest still hold that
-- many); ARGV[2] the oldest millisecond it keeps; ARGV[3] the batch's events; ARGV[4] the batch, a JSON array.
-- With KEYS[2] (a batch sent with an Idempotency-Key), ARGV[5] is its record and ARGV[6] how long to keep it: a
-- batch whose record is already there is not logged again, and that record answers.
if #KEYS == 2 then
    local held = redis.call('GET', KEYS[2])
    if held then
        return held
    end
    redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[6])
end
local function counted(fields)  -- an entry's running count; 0 for an event of a log made before batches
    return fields[3] == 'c' and tonumber(fields[4]) or 0
end
local n = tonumber(ARGV[3])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local logged = n + (#last > 0 and counted(last[1][2]) or 0)
local added = redis.call('XADD', KEYS[1], '*', 'n', n, 'c', logged, 'e', ARGV[4])
local keep, oldest = tonumber(ARGV[1]), tonumber(ARGV[2])
local cursor, dropped = '-', false
while true do
    local batch = redis.call('XRANGE', KEYS[1], cursor, '+', 'COUNT', 1)[1]
    local id = batch[1]
    if id == added or (tonumber(string.match(id, '^%d+')) >= oldest and logged - counted(batch[2]) < keep) then
        if dropped then
            redis.call('XTRIM', KEYS[1], 'MINID', id)
        end
        return n
    end
    cursor, dropped = '(' .. id, true
end
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
        """Queue a batch of events (each as its JSON text) on ``pipe`` (the caller's, beside its counters: one round
        trip for a batch): one stream entry. ``once``: (key, record) of a batch sent with an ``Idempotency-Key``;
        the command then answers the record held under that key, when there is one, and logs nothing, else
        stores ``record`` there for ``ONCE_S`` (``ExperimentStore.count`` reads it, to count the batch once)."""
        if len(texts) > SLOTS:
            raise ValueError(f"a batch of {len(texts):,} events is more than one entry holds ({SLOTS:,})")
        args: list[str | int] = [self.max_entries, max(0, now_ms - self.retention_s * 1000), len(texts),
                                 "[" + ",".join(texts) + "]"]  # fmt: skip
        if once is None:
            self._add(keys=[self._key], args=args, client=pipe)
        else:
            self._add(keys=[self._key, once[0]], args=[*args, once[1], ONCE_S], client=pipe)

    def read(self, *, limit: int, before: str | None = None) -> tuple[list[Entry], str | None]:
        """Up to ``limit`` events, newest first, older than the event id ``before`` (all when None), none past the
        retention; and the cursor of the next page (None at the end)."""
        low = self._oldest(int(cast("tuple[int, int]", self._r.time())[0]) * 1000)
        high, cited, below = "+", "", SLOTS
        if before:
            ms, folded = (int(part) for part in before.split("-", 1))
            seq, below = divmod(folded, SLOTS)
            high = cited = f"{ms}-{seq}"  # its batch, whose events before it are read first
        events: list[Entry] = []
        while len(events) <= limit:
            rows = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                        self._r.xrevrange(self._key, high, low, count=BATCHES_A_READ))  # fmt: skip
            for raw_id, fields in rows:
                stream_id = raw_id.decode()
                ms, seq = (int(part) for part in stream_id.split("-", 1))
                batch = json.loads(fields[b"e"]) if b"n" in fields else [json.loads(fields[b"e"])]  # an older log's
                top = min(len(batch), below) if stream_id == cited else len(batch)
                events += ({"id": f"{ms}-{seq * SLOTS + i}", "at": stream_time(stream_id), **batch[i]}
                           for i in range(top - 1, -1, -1))  # fmt: skip
            if len(rows) < BATCHES_A_READ:
                break
            next_high = just_before(rows[-1][0].decode())
            if next_high is None:
                break
            high = next_high
        page = events[:limit]
        return page, (page[-1]["id"] if len(events) > limit and page else None)

    def count(self) -> int:
        """Events the log holds (retention is applied as batches are added)."""
        first = cast("list[tuple[bytes, dict[bytes, bytes]]]", self._r.xrange(self._key, count=1))
        last = cast("list[tuple[bytes, dict[bytes, bytes]]]", self._r.xrevrange(self._key, count=1))
        if not first:
            return 0
        (_, oldest), (_, newest) = first[0], last[0]
        return int(newest.get(b"c", 1)) - int(oldest.get(b"c", 0)) + int(oldest.get(b"n", 1))

    def once_key(self, idempotency_key: str) -> str:
        """Where a batch sent with ``idempotency_key`` is remembered (``Keys.events_batch`` of its digest)."""
        return self._batch_key(hashlib.sha256(idempotency_key.encode()).hexdigest()[:32])

    def secret(self) -> bytes:
        """The tenant's attribution secret: made by the first process that asks (SET NX), then read once."""
        if self._secret is None:
            self._r.set(self._secret_key, os.urandom(SECRET_BYTES), nx=True)
            self._secret = cast("bytes", self._r.get(self._secret_key))
        return self._secret
