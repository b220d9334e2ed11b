"""Feedback caps in a real Redis (shared/store/feedback.py): a batch that would pass the dataset's or a user's row
cap is refused whole, with nothing of it written; ratings of a (user, movie) already stored add no row; a
dataset whose feedback predates the row count is counted on its next batch."""

from __future__ import annotations

import pytest
import redis

from shared.errors import QuotaExceeded
from shared.infra.keys import Keys
from shared.store.feedback import HSET_PAIRS, FeedbackCaps, FeedbackStore

DS = "ds-caps"


@pytest.fixture
def store(redis_client: redis.Redis, fresh_prefix: str) -> FeedbackStore:
    return FeedbackStore(redis_client, prefix=fresh_prefix)


def snapshot(client: redis.Redis, prefix: str) -> dict[bytes, object]:
    """Every key under ``prefix`` with its content."""
    out: dict[bytes, object] = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = client.type(key)
        out[key] = {b"hash": client.hgetall, b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                    b"string": client.get}[kind](key)  # fmt: skip
    return out


def test_the_dataset_cap_refuses_a_whole_batch_and_stores_nothing(
    store: FeedbackStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    caps = FeedbackCaps(rows=10, rows_per_user=0)
    assert store.add(DS, [(u, m, 4.0, 100) for u in (1, 2) for m in range(4)], caps=caps) == 8
    before = snapshot(redis_client, fresh_prefix)
    with pytest.raises(QuotaExceeded) as refused:
        store.add(DS, [(3, 1, 4.0, 200), (4, 1, 4.0, 200), (5, 1, 4.0, 200)], caps=caps)  # 8 + 3 > 10
    assert refused.value.details == {"cap": "dataset", "stored": 8, "new": 3, "limit": 10,
                                     "setting": "MOVIEREC_MAX_FEEDBACK_ROWS"}  # fmt: skip
    assert "nothing of this batch was stored" in refused.value.message
    assert snapshot(redis_client, fresh_prefix) == before  # no new user, no row, no count
    assert store.add(DS, [(1, 0, 2.0, 300), (3, 1, 4.0, 300), (4, 1, 4.0, 300)], caps=caps) == 2  # 1 replaces
    assert store.rows(DS) == 10 and store.users(DS).tolist() == [1, 2, 3, 4]


def test_the_user_cap_counts_that_user_s_rows_after_the_batch(
    store: FeedbackStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    caps = FeedbackCaps(rows=0, rows_per_user=3)
    store.add(DS, [(7, 1, 4.0, 1), (7, 2, 4.0, 1)], caps=caps)
    before = snapshot(redis_client, fresh_prefix)
    with pytest.raises(QuotaExceeded) as refused:
        store.add(DS, [(8, 1, 4.0, 2), (7, 3, 4.0, 2), (7, 4, 4.0, 2)], caps=caps)  # user 8 fine, user 7 not
    assert refused.value.details["cap"] == "user" and refused.value.details["user_id"] == 7
    assert refused.value.details["stored"] == 2 and refused.value.details["new"] == 2
    assert snapshot(redis_client, fresh_prefix) == before  # user 8's row was not written either
    assert store.add(DS, [(7, 1, 1.0, 3), (7, 2, 1.0, 3), (7, 3, 1.0, 3)], caps=caps) == 1  # re-rating adds none
    assert len(store.user(DS, 7)) == 3


def test_a_batch_larger_than_one_hset_is_stored_whole(store: FeedbackStore) -> None:
    rows = [(1, m, 3.0, m) for m in range(3 * HSET_PAIRS + 7)] + [(2, 5, 1.0, 9)]
    assert store.add(DS, rows, caps=FeedbackCaps(rows=len(rows), rows_per_user=len(rows))) == len(rows)
    assert len(store.user(DS, 1)) == 3 * HSET_PAIRS + 7 and store.rows(DS) == len(rows)


def test_feedback_stored_before_the_count_is_counted_on_the_next_batch(
    store: FeedbackStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    store.add(DS, [(1, 1, 4.0, 1), (1, 2, 4.0, 1), (2, 1, 4.0, 1)])
    redis_client.delete(Keys(fresh_prefix).feedback_rows(DS))  # as a deployment before the count was kept
    with pytest.raises(QuotaExceeded):
        store.add(DS, [(3, 1, 4.0, 2)], caps=FeedbackCaps(rows=3))
    assert store.rows(DS) == 3
