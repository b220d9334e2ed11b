"""Joining a mining job's parts (shared/logic/mining.py) on a real Redis."""

from __future__ import annotations

import numpy as np
import redis

from shared.logic.mining import TripletSpec, join, part_names, store_part
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
