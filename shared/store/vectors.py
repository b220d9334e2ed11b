"""String vectors cached in Redis, so each unique string is encoded once per model identity and pooling.

    texts ──unique──> MGET <prefix>:vec:<model identity>:<pooling>:<sha1(text)>   (float32 bytes each)
                        │ misses only
                        ▼
                      Encoder.encode_uncached (shared/ml/encoder.py) ──> SET with a TTL ──> (len(texts), dim)

Keys rather than one hash per model, so each vector carries its own TTL (refreshed when read): strings users
send come and go without the cache growing for ever, while a dataset's descriptors, read by every training
and keyword query, stay. The identity in the key is the model's weights hash or Hub commit, so a changed
model never reads another's vectors.
"""

from __future__ import annotations

import hashlib
import time
from typing import cast

import numpy as np
import redis

from shared.infra.keys import Keys
from shared.ml.encoder import Encoder, EncodeStats, Progress

CACHE_TTL_S = 30 * 24 * 3600
"""A cached string vector lives this long after it was last encoded or read."""


class VectorCache:
    """One Redis key per (model identity, pooling, string), holding the string's float32 vector."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._r = client
        self._keys = Keys(prefix)

    def key(self, encoder: Encoder, text: str) -> str:
        digest = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - a cache key, not security
        return self._keys.vector(encoder.identity, encoder.pooling, digest)

    def encode(
        self, encoder: Encoder, texts: list[str], *, on_batch: Progress | None = None
    ) -> tuple[np.ndarray, EncodeStats]:
        """(len(texts), dim) float32 for ``texts`` (repeats allowed); each unique string encoded at most once."""
        started = time.perf_counter()
        passes_before = encoder.forward_passes
        unique = list(dict.fromkeys(texts))
        keys = [self.key(encoder, t) for t in unique]
        cached = cast(list[bytes | None], self._r.mget(keys)) if keys else []
        vectors = np.zeros((len(unique), encoder.dim), dtype=np.float32)
        missing = []
        for i, raw in enumerate(cached):
            if raw is not None and len(raw) == 4 * encoder.dim:
                vectors[i] = np.frombuffer(raw, dtype=np.float32)
            else:
                missing.append(i)
        pipe = self._r.pipeline(transaction=False)
        if missing:
            fresh = encoder.encode_uncached([unique[i] for i in missing], on_batch=on_batch)
            vectors[missing] = fresh
            for j, i in enumerate(missing):
                pipe.set(keys[i], fresh[j].tobytes(), ex=CACHE_TTL_S)
        for i in sorted(set(range(len(unique))) - set(missing)):
            pipe.expire(keys[i], CACHE_TTL_S)
        pipe.execute()
        position = {t: i for i, t in enumerate(unique)}
        out = vectors[[position[t] for t in texts]] if texts else vectors[:0]
        stats = EncodeStats(
            unique=len(unique),
            cache_hits=len(unique) - len(missing),
            encoded=len(missing),
            forward_passes=encoder.forward_passes - passes_before,
            seconds=round(time.perf_counter() - started, 3),
        )
        return out, stats
