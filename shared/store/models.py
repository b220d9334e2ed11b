"""Trained model versions: a JSON record, the weights as safetensors, the projected movie embeddings.

    <prefix>:model:<version>   JSON record: version, created_at, dataset, triplets, encoder {model, identity,
                               pooling, dim}, config (hyper-parameters), metrics (AUC before/after, losses),
                               artifacts {weights, embeddings}
    <prefix>:models            sorted set of versions by creation time
    <prefix>:active_model      the version recommendations use: one key, switched atomically (SET ... GET)

A version id is a hash of everything that determines the weights (dataset, triplets, encoder identity and
pooling, hyper-parameters and seed), so training the same thing again answers the existing version.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, cast

import redis

from shared.infra.keys import Keys


def model_version(
    *, dataset: str, triplets: str | list[str], encoder_identity: str, pooling: str, config: dict[str, Any]
) -> str:
    key = json.dumps(
        {"dataset": dataset, "triplets": triplets, "encoder": encoder_identity, "pooling": pooling, "config": config},
        sort_keys=True,
    )
    return "m-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class ModelStore:
    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._r = client
        self._keys = Keys(prefix)
        self._servable: dict[str, str] = {}  # version -> its dataset, for versions with an index

    def get(self, version: str) -> dict[str, Any] | None:
        raw = cast("bytes | None", self._r.get(self._keys.model(version)))
        return json.loads(raw) if raw else None

    def servable_dataset(self, version: str) -> str | None:
        """The dataset of ``version`` when it has an index and can serve, else None.

        Cached per process once true: a version's dataset never changes and its index is never removed.
        """
        if version not in self._servable:
            record = self.get(version)
            if record is None or record.get("index") is None:
                return None
            self._servable[version] = record["dataset"]
        return self._servable[version]

    def put(self, record: dict[str, Any]) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._keys.model(record["version"]), json.dumps(record))
        pipe.zadd(self._keys.models, {record["version"]: time.time()})
        pipe.execute()

    def records(self) -> list[dict[str, Any]]:
        versions = [v.decode() for v in cast(list[bytes], self._r.zrevrange(self._keys.models, 0, -1))]
        return [r for r in (self.get(v) for v in versions) if r is not None]

    def update(self, version: str, **fields: Any) -> dict[str, Any]:
        """Add fields to a record (its one writer at a time is the job that built that part)."""
        record = self.get(version)
        if record is None:
            raise KeyError(version)
        record.update(fields)
        self._r.set(self._keys.model(version), json.dumps(record))
        return record

    def activate(self, version: str) -> str | None:
        """Point recommendations at ``version``; answers the version it replaced."""
        previous = cast("bytes | None", self._r.set(self._keys.active_model, version, get=True))
        return previous.decode() if previous else None

    def active(self) -> str | None:
        raw = cast("bytes | None", self._r.get(self._keys.active_model))
        return raw.decode() if raw else None
