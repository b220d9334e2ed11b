"""Trained model versions: a JSON record, the weights as safetensors, the projected movie embeddings.

    <prefix>:model:<version>   JSON record: version, created_at, dataset, triplets, encoder {model, identity,
                               pooling, dim}, config (hyper-parameters), metrics (AUC before/after, losses),
                               artifacts {weights, embeddings}
    <prefix>:models            sorted set of versions by creation time

A version id is a hash of everything that determines the weights (dataset, triplets, encoder identity and
pooling, hyper-parameters and seed), so training the same thing again answers the existing version.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, cast

import redis


def model_version(*, dataset: str, triplets: str, encoder_identity: str, pooling: str, config: dict[str, Any]) -> str:
    key = json.dumps(
        {"dataset": dataset, "triplets": triplets, "encoder": encoder_identity, "pooling": pooling, "config": config},
        sort_keys=True,
    )
    return "m-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class ModelStore:
    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._r = client
        self._prefix = prefix
        self._index = f"{prefix}:models"

    def _key(self, version: str) -> str:
        return f"{self._prefix}:model:{version}"

    def get(self, version: str) -> dict[str, Any] | None:
        raw = cast("bytes | None", self._r.get(self._key(version)))
        return json.loads(raw) if raw else None

    def put(self, record: dict[str, Any]) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._key(record["version"]), json.dumps(record))
        pipe.zadd(self._index, {record["version"]: time.time()})
        pipe.execute()

    def records(self) -> list[dict[str, Any]]:
        versions = [v.decode() for v in cast(list[bytes], self._r.zrevrange(self._index, 0, -1))]
        return [r for r in (self.get(v) for v in versions) if r is not None]
