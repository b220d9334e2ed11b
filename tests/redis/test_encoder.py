"""The encoder's Redis cache: a second call is answered from it, per model and pooling."""

from __future__ import annotations

import numpy as np
import redis

from shared.logic.encoding import encode_cached
from shared.ml.encoder import load_encoder
from shared.store.vectors import VectorCache
from tests.unit.test_encoder import CPU, STRINGS


def test_cache_is_hit_by_a_second_call(tiny_bert: str, redis_client: redis.Redis, fresh_prefix: str) -> None:
    encoder = load_encoder(tiny_bert, "mean", CPU)
    cache = VectorCache(redis_client, prefix=fresh_prefix)
    texts = STRINGS + STRINGS[:3]  # repeats are encoded once
    first, stats = encode_cached(cache, encoder, texts)
    assert (stats.unique, stats.encoded, stats.cache_hits) == (len(STRINGS), len(STRINGS), 0)
    assert stats.forward_passes >= 1
    again, stats = encode_cached(cache, encoder, list(reversed(texts)))
    assert (stats.encoded, stats.cache_hits, stats.forward_passes) == (0, len(STRINGS), 0)
    np.testing.assert_array_equal(again, first[::-1])
    other = load_encoder(tiny_bert, "cls", CPU)
    _, stats = encode_cached(cache, other, texts)
    assert stats.encoded == len(STRINGS)  # another pooling is another cache
