"""Trained model versions: a JSON record, the weights as safetensors, the projected movie embeddings.

    <prefix>:model:<version>   JSON record: version, created_at, dataset, triplets, encoder {model, identity,
                               pooling, dim}, config (hyper-parameters), metrics (AUC before/after, losses),
                               artifacts {weights, embeddings}
    <prefix>:models            sorted set of versions by creation time
    <prefix>:active_model      the version recommendations use: one key, switched atomically (SET ... GET)
    models/<version>/...       its artifacts (weights, embeddings, index, index/group, each with its /meta)

``delete`` removes a version that is not active: its record and index entry in one transaction that watches
the active pointer, then every artifact under ``models/<version>/``; ``activate`` watches the version's record,
so a deletion and an activation of the same version cannot both succeed.

A version id is a hash of everything that determines the weights (dataset, triplets, encoder identity and
pooling, hyper-parameters and seed), so training the same thing again answers the existing version.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis

from shared.errors import Conflict, NotFound
from shared.infra.keys import Keys, model_artifacts
from shared.store.artifacts import ArtifactStore


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

        Cached per process once true: a version's dataset never changes; ``delete`` drops it from this
        process's cache (another process may still answer a deleted version's dataset here).
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
        """Every record, newest first: two round trips (the index, then one MGET)."""
        versions = [v.decode() for v in cast(list[bytes], self._r.zrevrange(self._keys.models, 0, -1))]
        raws = cast(list["bytes | None"], self._r.mget([self._keys.model(v) for v in versions])) if versions else []
        return [json.loads(raw) for raw in raws if raw]

    def update(self, version: str, **fields: Any) -> dict[str, Any]:
        """Add fields to a record (its one writer at a time is the job that built that part)."""
        record = self.get(version)
        if record is None:
            raise KeyError(version)
        record.update(fields)
        self._r.set(self._keys.model(version), json.dumps(record))
        return record

    def count(self) -> int:
        """How many versions are stored (ZCARD of the index)."""
        return int(cast(int, self._r.zcard(self._keys.models)))

    def delete(self, version: str, artifacts: ArtifactStore) -> tuple[int, int]:
        """Delete a version that is not the active one: its record, its index entry and every artifact under
        ``models/<version>/``; answers (keys deleted, bytes freed: MEMORY USAGE of each key just before).

        NotFound for an unknown version, Conflict for the active one (checked in the transaction that
        deletes the record: an activation in between makes it run again)."""
        if self.get(version) is None:
            raise NotFound(f"model {version!r} does not exist")

        def check(active: str | None) -> None:
            if active == version:
                raise Conflict(
                    f"model {version!r} is the active model: activate another version first "
                    "(POST /v1/models/<version>/activate), then delete it",
                    details={"active": active},
                )

        keys, freed = self.delete_guarded(check, versions=[version])
        n, b = artifacts.delete_under(model_artifacts(version))
        return keys + n, freed + b

    def delete_guarded(
        self,
        check: Callable[[str | None], None],
        *,
        versions: list[str],
        keys: Sequence[str] = (),
        index: tuple[str, str] | None = None,
    ) -> tuple[int, int]:
        """In one transaction that watches the active pointer: ``check(active version)`` (it raises to
        refuse), then delete the records of ``versions`` and their index entries, the other ``keys`` and the
        ``index`` entry (sorted set, member). Answers (keys deleted, their MEMORY USAGE just before)."""
        doomed = [self._keys.model(v) for v in versions] + list(keys)
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self._keys.active_model, *doomed)  # type: ignore[no-untyped-call]
                    raw = cast("bytes | None", pipe.get(self._keys.active_model))
                    check(raw.decode() if raw else None)
                    sizes: list[Any] = [pipe.memory_usage(k, samples=0) for k in doomed]
                    pipe.multi()
                    pipe.delete(*doomed)
                    if versions:
                        pipe.zrem(self._keys.models, *versions)
                    if index is not None:
                        pipe.zrem(index[0], index[1])
                    deleted = int(pipe.execute()[0])
                    break
                except redis.WatchError:
                    continue
        for v in versions:
            self._servable.pop(v, None)
        return deleted, sum(int(size) for size in sizes if size is not None)

    def activate(self, version: str) -> str | None:
        """Point recommendations at ``version``, which must exist and have an index; answers the version it
        replaced. One transaction that watches the version's record: a ``delete`` that removes it in between
        makes it run again and answer NotFound, so the pointer never names a deleted version."""
        key = self._keys.model(version)
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    raw = cast("bytes | None", pipe.get(key))
                    if raw is None:
                        raise NotFound(f"model {version!r} does not exist")
                    if json.loads(raw).get("index") is None:
                        raise Conflict(f"model {version!r} has no index yet: POST /v1/jobs/index first")
                    pipe.multi()
                    pipe.set(self._keys.active_model, version, get=True)
                    previous = cast("bytes | None", pipe.execute()[0])
                    return previous.decode() if previous else None
                except redis.WatchError:
                    continue

    def active(self) -> str | None:
        raw = cast("bytes | None", self._r.get(self._keys.active_model))
        return raw.decode() if raw else None
