"""String vectors cached in Redis, so each unique string is encoded once per model identity and pooling.

    <prefix>:vec:<model identity>:<pooling>:<sha1(text)>   one string's float32 vector, with a TTL

Keys rather than one hash per model, so each vector carries its own TTL (refreshed when read): strings users
send come and go without the cache growing for ever, while a dataset's descriptors, read by every training
and keyword query, stay. The identity in the key is the model's weights hash or Hub commit, so a changed
model never reads another's vectors. Encoding what the cache misses is shared/logic/encoding.py's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import cast

import numpy as np
import redis

from shared.infra.keys import Keys

CACHE_TTL_S = 30 * 24 * 3600
"""A cached string vector lives this long after it was last encoded or read."""


class VectorCache:
    """One Redis key per (model identity, pooling, string), holding the string's float32 vector."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._r = client
        self._keys = Keys(prefix)

    def keys(self, identity: str, pooling: str, texts: Sequence[str]) -> list[str]:
        """The key of each text's vector under one model identity and pooling."""
        digests = (hashlib.sha1(t.encode()).hexdigest() for t in texts)  # noqa: S324 - a cache key, not security
        return [self._keys.vector(identity, pooling, d) for d in digests]

    def get(self, keys: Sequence[str], *, dim: int) -> tuple[np.ndarray, list[int]]:
        """(len(keys), dim) float32 of the cached vectors, zero rows where there is none, and those rows' indices
        (one round trip). A stored value of another length (a model of another dim) counts as none."""
        cached = cast(list[bytes | None], self._r.mget(keys)) if keys else []
        vectors = np.zeros((len(keys), dim), dtype=np.float32)
        missing = []
        for i, raw in enumerate(cached):
            if raw is not None and len(raw) == 4 * dim:
                vectors[i] = np.frombuffer(raw, dtype=np.float32)
            else:
                missing.append(i)
        return vectors, missing

    def put(self, fresh: Sequence[tuple[str, np.ndarray]], *, refresh: Sequence[str] = ()) -> None:
        """Store each (key, vector) of ``fresh`` and refresh the TTL of the ``refresh`` keys (the hits of a read),
        in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for key, vector in fresh:
            pipe.set(key, vector.tobytes(), ex=CACHE_TTL_S)
        for key in refresh:
            pipe.expire(key, CACHE_TTL_S)
        pipe.execute()
