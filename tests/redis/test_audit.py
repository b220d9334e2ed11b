"""The audit trail (shared/store/audit.py) on a real Redis: newest first, paged by id, at most ``max_entries``
kept, and nothing shown past its retention."""

from __future__ import annotations

import time

import redis

from shared.infra.keys import Keys
from shared.store.audit import AuditLog


def trail(client: redis.Redis, prefix: str, *, max_entries: int = 1000, retention_s: int = 3600) -> AuditLog:
    return AuditLog(client, key=Keys(prefix).audit, max_entries=max_entries, retention_s=retention_s)


def test_entries_come_back_newest_first_a_page_at_a_time(redis_client: redis.Redis, fresh_prefix: str) -> None:
    log = trail(redis_client, fresh_prefix)
    ids = [log.record({"action": "POST /v1/datasets", "n": i}) for i in range(7)]
    page, cursor = log.read(limit=3)
    assert [e["n"] for e in page] == [6, 5, 4] and cursor == ids[4]
    assert page[0]["id"] == ids[6] and page[0]["at"].endswith("Z") and page[0]["action"] == "POST /v1/datasets"
    page, cursor = log.read(limit=3, before=cursor)
    assert [e["n"] for e in page] == [3, 2, 1] and cursor == ids[1]
    page, cursor = log.read(limit=3, before=cursor)
    assert [e["n"] for e in page] == [0] and cursor is None
    assert log.read(limit=10) == (log.read(limit=7)[0], None)
    assert log.read(limit=3, before="0-0") == ([], None)  # nothing can be older (the fuzzer's case: not a 500)
    ms, seq = (int(p) for p in ids[3].split("-"))
    assert [e["n"] for e in log.read(limit=10, before=f"{ms}-{seq}")[0]] == [2, 1, 0]  # strictly older
    assert [e["n"] for e in log.read(limit=10, before=f"{ms + 1}-0")[0]][-1] == 0


def test_the_trail_keeps_the_newest_entries_and_none_past_their_retention(
    redis_client: redis.Redis, fresh_prefix: str
) -> None:
    log = trail(redis_client, fresh_prefix, max_entries=5)
    for i in range(12):
        log.record({"n": i})
    assert log.count() == 5 and [e["n"] for e in log.read(limit=100)[0]] == [11, 10, 9, 8, 7]
    short = trail(redis_client, f"{fresh_prefix}:short", retention_s=1)
    short.record({"n": "old"})
    time.sleep(2.1)  # Redis's clock, in whole seconds
    assert short.read(limit=10) == ([], None)  # past its retention: never shown
    short.record({"n": "new"})  # and a write drops it
    assert short.count() == 1 and [e["n"] for e in short.read(limit=10)[0]] == ["new"]
