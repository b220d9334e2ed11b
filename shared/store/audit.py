"""The audit trail: who changed what and when, bounded in size and expiring (issue #26, item 4).

    a request that changes state (api/audit.py) ──> AuditLog.record(entry)
        XADD <prefix>:audit MAXLEN max_entries         the oldest go once there are too many
        XTRIM <prefix>:audit MINID now - retention      and none stays past its retention
    GET /v1/audit?limit&before ──> AuditLog.read ──> the newest first, a page at a time

An entry is a flat JSON object: ``at`` (ISO time, from the stream id: Redis's clock, so API hosts with skewed
clocks agree), ``owner`` (the key's owner id, ``api.auth.owner_id``, never the key; "open" when the API has no
keys), ``role``, ``action`` ("POST /v1/datasets"), ``target`` (the ids in the path), ``status`` (the HTTP
status answered), ``outcome`` ("accepted", "done", "refused: quota_exceeded", "forbidden"), and ``job`` (the
job a 202 started) where there is one. The stream id is the entry's ``id``, and paging is by it.

Trimming is exact (the trail is written a few times a minute, not thousands: the cost of exactness is
nothing here). Between writes an entry may outlive its retention in Redis; ``read`` never shows it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import redis

Entry = dict[str, Any]


def stream_time(stream_id: str) -> str:
    millis = int(stream_id.split("-", 1)[0])
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


MAX_ID_PART = (1 << 64) - 1
"""The largest part of a stream id (milliseconds, and the sequence within one)."""


def just_before(stream_id: str) -> str | None:
    """The greatest stream id below ``stream_id`` ("<ms>-<seq>", each part at most ``MAX_ID_PART``), None for
    0-0: an inclusive end for XREVRANGE, whose exclusive "(" form Redis refuses at 0-0."""
    ms, seq = (int(part) for part in stream_id.split("-", 1))
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{MAX_ID_PART}" if ms > 0 else None


class AuditLog:
    """One deployment's audit trail under ``key`` (``Keys.audit``)."""

    def __init__(self, client: redis.Redis, *, key: str, max_entries: int, retention_s: int) -> None:
        self._r, self._key = client, key
        self.max_entries, self.retention_s = max_entries, retention_s

    def record(self, entry: Entry) -> str:
        """Append ``entry`` (JSON-able values), trimming the oldest by count and age; its stream id."""
        now_ms = int(cast("tuple[int, int]", self._r.time())[0]) * 1000
        pipe = self._r.pipeline(transaction=False)
        pipe.xadd(self._key, {"e": json.dumps(entry, separators=(",", ":"))}, maxlen=self.max_entries,
                  approximate=False)  # fmt: skip
        pipe.xtrim(self._key, minid=self._oldest(now_ms), approximate=False)
        stream_id = pipe.execute()[0]
        return stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)

    def read(self, *, limit: int, before: str | None = None) -> tuple[list[Entry], str | None]:
        """Up to ``limit`` entries, newest first, older than the stream id ``before`` (all when None); and the
        cursor of the next page (None at the end)."""
        high = just_before(before) if before else "+"
        if high is None:
            return [], None  # nothing is older than the first id there can be
        low = self._oldest(int(cast("tuple[int, int]", self._r.time())[0]) * 1000)  # none past its retention
        rows = cast("list[tuple[bytes, dict[bytes, bytes]]]", self._r.xrevrange(self._key, high, low, count=limit + 1))
        entries = []
        for raw_id, fields in rows[:limit]:
            stream_id = raw_id.decode()
            entries.append({"id": stream_id, "at": stream_time(stream_id), **json.loads(fields[b"e"])})
        more = len(rows) > limit
        return entries, (entries[-1]["id"] if more and entries else None)

    def _oldest(self, now_ms: int) -> str:
        """The id of the oldest entry the retention keeps at ``now_ms``."""
        return f"{max(0, now_ms - self.retention_s * 1000)}-0"

    def count(self) -> int:
        return int(cast("int", self._r.xlen(self._key)))
