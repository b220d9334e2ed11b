"""Joining a mining job's parts (shared/logic/mining.py) on a real Redis."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from shared.errors import NotFound
from shared.infra.keys import triplets_range
from shared.logic.mining import TripletSpec, join, mine_shard_part, part_names, store_part
from shared.ml.mining import ShardResult
from shared.store.artifacts import ArtifactStore


def test_a_join_repeated_after_its_parts_are_gone_answers_the_stored_array(
    redis_client: redis.Redis, fresh_prefix: str
) -> None:
    artifacts = ArtifactStore(redis_client, prefix=fresh_prefix, chunk_bytes=1 << 20)
    spec = TripletSpec(dataset="ds-x", seed=1, strategy="uniform-min")
    artifacts.put_array("dataset/ds-x/movie_ids", np.array([10, 20, 30, 40], dtype=np.int64))
    shards = [(0, 2), (2, 4)]
    rows = np.array([[0, 1, 3], [1, 0, 2], [2, 3, 0], [3, 2, 1]], dtype=np.int32)
    for lo, hi in shards:
        part = ShardResult(rows[lo:hi], np.zeros(hi - lo, np.int16), np.zeros(hi - lo, np.int16))
        store_part(artifacts, spec, "job-1", lo, part, ttl_s=60)
    first = join(artifacts, spec, "job-1", shards)
    np.testing.assert_array_equal(first, [[10, 20, 40], [20, 10, 30], [30, 40, 10], [40, 30, 20]])
    for name in part_names(spec, "job-1", shards):
        artifacts.delete(name)  # the first join went this far, then its worker died
    again = join(artifacts, spec, "job-1", shards)  # the join sent again
    assert again.tobytes() == first.tobytes()
    assert not artifacts.exists(spec.part("job-1", 0))


def test_an_identical_job_takes_a_range_another_mined_and_mines_what_nobody_did(
    redis_client: redis.Redis, fresh_prefix: str
) -> None:
    """Job 2's shard of a range that job 1 mined copies job 1's part (the dataset is not even stored here: mining
    would raise); once job 1 has dropped its parts it would mine; once the triplets are joined, it stores
    nothing (its join answers them as stored)."""
    artifacts = ArtifactStore(redis_client, prefix=fresh_prefix, chunk_bytes=1 << 20)
    spec = TripletSpec(dataset="ds-nowhere", seed=1, source="ratings", positives=2, liked_at=4.0)
    rows = np.array([[0, 1, 3], [0, 2, 3], [1, 0, 2]], dtype=np.int32)
    artifacts.put_array(spec.part("job-1", 0), rows, ttl_s=60)
    artifacts.put_json(triplets_range(spec.name, 0, 2), {"job": "job-1"}, ttl_s=60)

    stats = mine_shard_part(artifacts, spec, "job-2", 0, 2, ttl_s=60)
    assert stats["reused"] and stats["triplets"] == 3
    assert artifacts.get_array(spec.part("job-2", 0)).tobytes() == rows.tobytes()

    with pytest.raises(NotFound):  # another range: nobody mined it, so this shard mines (no dataset here)
        mine_shard_part(artifacts, spec, "job-2", 2, 4, ttl_s=60)
    artifacts.delete(spec.part("job-1", 0))  # job 1 finished and dropped its parts
    with pytest.raises(NotFound):
        mine_shard_part(artifacts, spec, "job-3", 0, 2, ttl_s=60)

    artifacts.put_array(spec.name, rows)  # joined
    assert mine_shard_part(artifacts, spec, "job-3", 0, 2, ttl_s=60) == {"anchors": [0, 2], "seconds": 0.0,
                                                                         "reused": True}  # fmt: skip
    assert not artifacts.exists(spec.part("job-3", 0))
