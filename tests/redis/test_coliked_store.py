"""A ratings mining spec through the store (shared/logic/mining.py) on a real Redis: load, mine, store, join."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from shared.errors import NotFound
from shared.infra.keys import dataset_artifact
from shared.infra.process import clear_process_caches
from shared.jobs.sharded import ranges
from shared.logic.mining import (
    TripletSpec,
    join,
    load_likes,
    mine_part,
    part_names,
    shard_stats,
    store_part,
    stored_count,
)
from shared.ml.coliked import build_likes, mine_range
from shared.store.artifacts import ArtifactStore


def test_a_ratings_spec_mined_in_parts_and_joined_equals_the_pure_function(
    redis_client: redis.Redis, fresh_prefix: str
) -> None:
    clear_process_caches()
    artifacts = ArtifactStore(redis_client, prefix=fresh_prefix, chunk_bytes=1 << 20)
    rng = np.random.default_rng(0)
    n, users = 80, 50
    lengths = rng.integers(0, 20, size=users)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    movie = np.concatenate([rng.choice(n - 3, size=k, replace=False) for k in lengths]).astype(np.int32)
    value = rng.choice(np.arange(0.5, 5.01, 0.5), size=len(movie)).astype(np.float32)
    movie_ids = np.arange(n, dtype=np.int32) * 10 + 1
    for part, array in [("ratings_indptr", indptr), ("ratings_movie", movie), ("ratings_value", value),
                        ("movie_ids", movie_ids)]:  # fmt: skip
        artifacts.put_array(dataset_artifact("ds-r", part), array)
    spec = TripletSpec(dataset="ds-r", seed=3, source="ratings", positives=4, liked_at=3.5)

    shards = ranges(n, 23)
    for lo, hi in shards:
        result = mine_part(artifacts, spec, lo, hi)
        store_part(artifacts, spec, "job-1", lo, result, ttl_s=60)
        stats = shard_stats(lo, hi, result, 0.1)
        assert stats["anchors"] == [lo, hi] and stats["triplets"] == len(result.triplets)
    joined = join(artifacts, spec, "job-1", shards)
    for name in part_names(spec, "job-1", shards):
        artifacts.delete(name)

    expected = mine_range(build_likes(indptr, movie, value, n, liked_at=3.5), 0, n, seed=3, positives=4).triplets
    assert joined.tobytes() == movie_ids[expected].astype(np.int32).tobytes()
    assert stored_count(artifacts, spec.name) == len(expected) > n
    assert load_likes(artifacts, "ds-r", 3.5) is load_likes(artifacts, "ds-r", 3.5)  # kept per process
    with pytest.raises(NotFound):
        load_likes(artifacts, "ds-gone", 4.0)
    with pytest.raises(NotFound):
        stored_count(artifacts, "triplets/ds-gone/uniform-min-1")


def test_source_both_mines_each_shard_both_ways_descriptors_first(redis_client: redis.Redis, fresh_prefix: str) -> None:
    clear_process_caches()
    artifacts = ArtifactStore(redis_client, prefix=fresh_prefix, chunk_bytes=1 << 20)
    rng = np.random.default_rng(1)
    n, users = 40, 30
    lengths = rng.integers(2, 12, size=users)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    movie = np.concatenate([rng.choice(n, size=k, replace=False) for k in lengths]).astype(np.int32)
    value = rng.choice(np.arange(0.5, 5.01, 0.5), size=len(movie)).astype(np.float32)
    vocabulary = ["Comedy", "Drama", "War", "space", "heist"]
    desc = [sorted(rng.choice(len(vocabulary), size=2, replace=False).tolist()) for _ in range(n)]
    arrays = {
        "ratings_indptr": indptr, "ratings_movie": movie, "ratings_value": value,
        "movie_ids": np.arange(n, dtype=np.int32) + 1,
        "desc_indptr": np.arange(0, 2 * n + 1, 2, dtype=np.int64),
        "desc_indices": np.array([j for d in desc for j in d], dtype=np.int32),
    }  # fmt: skip
    for part, array in arrays.items():
        artifacts.put_array(dataset_artifact("ds-b", part), array)
    artifacts.put_json(dataset_artifact("ds-b", "vocabulary"), vocabulary)
    both = TripletSpec(dataset="ds-b", seed=5, source="both", positives=3, liked_at=3.5)
    alone = {s: TripletSpec(dataset="ds-b", seed=5, source=s, positives=3, liked_at=3.5)
             for s in ("descriptors", "ratings")}  # fmt: skip
    assert both.name == alone["descriptors"].name + "+" + alone["ratings"].name.rsplit("/", 1)[-1]
    for lo, hi in ranges(n, 17):
        result = mine_part(artifacts, both, lo, hi)
        expected = [mine_part(artifacts, alone[s], lo, hi).triplets for s in ("descriptors", "ratings")]
        assert result.triplets.tobytes() == np.concatenate(expected).tobytes()
        stats = shard_stats(lo, hi, result, 0.2)
        assert stats["ratings"]["triplets"] == len(expected[1]) and "mean_positive_overlap" in stats["descriptors"]
    assert both.describe() == {"seed": 5, "source": "both", "strategy": "uniform-min", "positives": 3, "liked_at": 3.5}
