"""The event log and the experiment store (shared/store/events.py, shared/store/experiments.py) on a real Redis."""

from __future__ import annotations

import json
import time
from typing import cast

import pytest
import redis

from shared.errors import Conflict, NotFound
from shared.infra.keys import Keys
from shared.store.events import EventLog
from shared.store.experiments import ExperimentStore


def event_log(client: redis.Redis, prefix: str, *, max_entries: int = 1000, retention_s: int = 3600) -> EventLog:
    keys = Keys(prefix)
    return EventLog(client, key=keys.events, secret_key=keys.attribution_secret, batch_key=keys.events_batch,
                    max_entries=max_entries, retention_s=retention_s)  # fmt: skip


def test_a_batch_is_logged_in_one_call_newest_first(redis_client: redis.Redis, fresh_prefix: str) -> None:
    log = event_log(redis_client, fresh_prefix)
    pipe = redis_client.pipeline(transaction=False)
    log.add(pipe, [json.dumps({"type": "click", "n": i}) for i in range(5)], now_ms=int(time.time() * 1000))
    assert pipe.execute() == [5]
    page, cursor = log.read(limit=3)
    assert [e["n"] for e in page] == [4, 3, 2] and cursor is not None
    assert [e["n"] for e in log.read(limit=3, before=cursor)[0]] == [1, 0]


def test_the_log_keeps_whole_batches_about_its_size_pages_event_by_event_and_drops_what_passed_its_retention(
    redis_client: redis.Redis, fresh_prefix: str
) -> None:
    log = event_log(redis_client, fresh_prefix, max_entries=1000, retention_s=60)
    now_ms = int(time.time() * 1000)
    for b in range(10):
        pipe = redis_client.pipeline(transaction=False)
        log.add(pipe, [json.dumps({"type": "impression", "b": b, "i": i}) for i in range(300)], now_ms=now_ms)
        assert pipe.execute() == [300]
    # The oldest batches go while the rest hold 1,000 events or more: 4 of 300 stay.
    assert log.count() == 1200 and redis_client.xlen(Keys(fresh_prefix).events) == 4
    seen, cursor = [], None
    while True:  # pages of 500 end inside a batch, and the next begins where it stopped
        page, cursor = log.read(limit=500, before=cursor)
        seen += page
        if cursor is None:
            break
    assert [(e["b"], e["i"]) for e in seen] == [(b, i) for b in range(9, 5, -1) for i in range(299, -1, -1)]
    ids = [tuple(int(part) for part in e["id"].split("-")) for e in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 1200 and seen[0]["at"].endswith("Z")
    assert log.read(limit=10, before=seen[-1]["id"]) == ([], None) and log.read(limit=1, before="0-0") == ([], None)
    pipe = redis_client.pipeline(transaction=False)
    log.add(pipe, [json.dumps({"type": "click"})], now_ms=now_ms + 3_600_000)  # an hour on: the rest are past 60 s
    pipe.execute()
    assert log.count() == 1 and [e["type"] for e in log.read(limit=10)[0]] == ["click"]


def test_a_log_made_before_batches_reads_and_grows_on(redis_client: redis.Redis, fresh_prefix: str) -> None:
    log = event_log(redis_client, fresh_prefix)
    for n in range(2):  # as session 21's log wrote them: an entry an event
        redis_client.xadd(Keys(fresh_prefix).events, {"e": json.dumps({"type": "click", "n": n})})
    pipe = redis_client.pipeline(transaction=False)
    log.add(pipe, [json.dumps({"type": "click", "n": n}) for n in (2, 3)], now_ms=int(time.time() * 1000))
    assert pipe.execute() == [2]
    assert [e["n"] for e in log.read(limit=10)[0]] == [
        3,
        2,
        1,
        0,
    ] and log.count() == 3  # about: the older entries are in no running count


def test_a_batch_sent_with_an_idempotency_key_is_logged_and_counted_once(
    redis_client: redis.Redis, fresh_prefix: str
) -> None:
    log, store = event_log(redis_client, fresh_prefix), ExperimentStore(redis_client, prefix=fresh_prefix)
    key = log.once_key("client-batch-7")
    assert key.startswith(Keys(fresh_prefix).events_batch("")) and key == log.once_key("client-batch-7")
    now_ms = int(time.time() * 1000)
    answers = []
    for token in ("first", "retry"):  # the retry has a token of its own; the record keeps the first's
        pipe = redis_client.pipeline(transaction=False)
        log.add(pipe, [json.dumps({"type": "click"})] * 3, now_ms=now_ms, once=(key, f"{token}|summary"))
        store.count(pipe, 1, {"0:clicks": 3}, {"7:0:c": 3}, {}, once=(key, token))
        answers.append(pipe.execute())
    assert answers == [[3, 2], [b"first|summary", 0]]  # stored (3 events, 2 counters), then the first's record
    assert log.count() == 3 and store.counts(1)[:2] == ({"0:clicks": 3}, {"7:0:c": 3})
    assert 0 < cast("int", redis_client.ttl(key)) <= 86_400
    # Without a key, the same batch is a new one.
    pipe = redis_client.pipeline(transaction=False)
    log.add(pipe, [json.dumps({"type": "click"})], now_ms=now_ms)
    store.count(pipe, 1, {"0:clicks": 1}, {}, {})
    assert pipe.execute() == [1, 1] and log.count() == 4 and store.counts(1)[0] == {"0:clicks": 4}


def test_the_secret_is_made_once_and_shared_by_every_process(redis_client: redis.Redis, fresh_prefix: str) -> None:
    first, second = event_log(redis_client, fresh_prefix), event_log(redis_client, fresh_prefix)
    assert len(first.secret()) == 32 and first.secret() == second.secret()
    assert cast("bytes", redis_client.get(Keys(fresh_prefix).attribution_secret)) == first.secret()


def record(name: str, *models: str) -> dict[str, object]:
    return {"name": name, "kind": "ab", "variants": [{"name": m, "model": m, "share": 1} for m in models]}


def test_one_experiment_runs_at_a_time_and_its_counts_go_with_it(redis_client: redis.Redis, fresh_prefix: str) -> None:
    store = ExperimentStore(redis_client, prefix=fresh_prefix)
    made = store.create(record("a", "m1", "m2"))
    assert made["number"] == 1 and made["state"] == "running" and store.running() == made
    with pytest.raises(Conflict, match="is running"):
        store.create(record("b", "m1", "m3"))
    with pytest.raises(Conflict, match="exists"):
        store.create(record("a", "m1", "m3"))
    assert store.uses("m2") == ["a"] and store.uses("m9") == []
    pipe = redis_client.pipeline()
    store.count(pipe, 1, {"0:clicks": 2}, {"7:0:c": 2}, {"60:0:c": 2})
    pipe.execute()
    assert store.counts(1) == ({"0:clicks": 2}, {"7:0:c": 2}, {"60:0:c": 2})
    # One command a call, each increment to its own hash whatever the sizes (an empty one included).
    store.count(pipe, 1, {"0:clicks": 1, "0:impressions": 3}, {}, {"60:0:c": 1, "120:0:i": 3, "120:0:c": 1})
    store.count(pipe, 1, {}, {"7:0:c": -1, "8:0:i": 5}, {})
    assert len(pipe) == 2
    pipe.execute()
    assert store.counts(1) == ({"0:clicks": 3, "0:impressions": 3}, {"7:0:c": 1, "8:0:i": 5},
                               {"60:0:c": 3, "120:0:i": 3, "120:0:c": 1})  # fmt: skip
    paused = store.set_state("a", "paused")
    assert paused["state"] == "paused" and store.running() is None
    second = store.create(record("b", "m1", "m3"))  # the next one gets a number of its own
    assert second["number"] == 2
    with pytest.raises(Conflict, match="'b' is running"):
        store.set_state("a", "running")
    store.set_state("b", "ended")
    assert store.set_state("a", "running")["state"] == "running"
    store.set_state("a", "ended")
    with pytest.raises(Conflict, match="has ended"):
        store.set_state("a", "running")
    assert store.uses("m2") == []  # an ended experiment holds no model
    store.delete("a")
    assert store.counts(1) == ({}, {}, {}) and [r["name"] for r in store.all()] == ["b"]
    with pytest.raises(NotFound):
        store.get("a")
