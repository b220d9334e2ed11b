"""Arrays and blobs in Redis under versioned names, so any worker on any machine can read them.

Layout for an artifact ``name`` (names carry their version, e.g. ``dataset/<id>/movie_ids``):

    <prefix>:art:<name>         manifest, JSON: {"kind", "size", "chunks", "sha256", "dtype"?, "shape"?}
    <prefix>:art:<name>:<i>     chunk i of the payload, each at most ``chunk_bytes``

A write puts the chunks and the manifest under temporary keys, then renames them all in one MULTI/EXEC, so
a reader sees the old artifact or the new one, never a mix. Arrays travel as ``.npy`` bytes written
without pickle and read with ``allow_pickle=False``; the sha256 is checked on every read. ``delete_under``
deletes every artifact under a name prefix (SCAN MATCH ``Keys.artifacts_under``), temporary keys included.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis

from shared.errors import NotFound
from shared.infra.keys import Keys


@dataclass(frozen=True)
class Manifest:
    kind: str
    size: int
    chunks: int
    sha256: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None


class CorruptArtifact(Exception):
    """The stored bytes do not match their manifest's checksum."""


class ArtifactStore:
    """Versioned, chunked, pickle-free storage of numpy arrays and byte blobs in Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str, chunk_bytes: int) -> None:
        self._r = client
        self._keys = Keys(prefix)
        self._chunk_bytes = chunk_bytes

    def _key(self, name: str) -> str:
        return self._keys.artifact(name)

    # -- writing ---------------------------------------------------------------------------------------
    def put_array(self, name: str, array: np.ndarray, *, ttl_s: int | None = None) -> Manifest:
        if array.dtype.hasobject:
            raise TypeError("object arrays cannot be stored without pickle")
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return self._put(
            name, buf.getbuffer(), kind="npy", ttl_s=ttl_s, dtype=array.dtype.str, shape=tuple(array.shape)
        )

    def put_json(self, name: str, value: Any, *, ttl_s: int | None = None) -> Manifest:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        return self._put(name, memoryview(data), kind="json", ttl_s=ttl_s)

    def put_bytes(self, name: str, data: bytes, *, ttl_s: int | None = None) -> Manifest:
        return self._put(name, memoryview(data), kind="bytes", ttl_s=ttl_s)

    def _put(
        self,
        name: str,
        payload: memoryview,
        *,
        kind: str,
        ttl_s: int | None,
        dtype: str | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> Manifest:
        key = self._key(name)
        size = payload.nbytes
        n_chunks = max(1, -(-size // self._chunk_bytes))
        manifest = Manifest(kind, size, n_chunks, hashlib.sha256(payload).hexdigest(), dtype, shape)
        tmp = Keys.artifact_tmp(key, uuid.uuid4().hex)
        old = self.manifest(name)

        for i in range(n_chunks):
            chunk = payload[i * self._chunk_bytes : (i + 1) * self._chunk_bytes]
            # Temporary keys expire by themselves if this writer dies before the rename.
            self._r.set(Keys.artifact_chunk(tmp, i), bytes(chunk), ex=3600)
        self._r.set(tmp, json.dumps(manifest.__dict__), ex=3600)

        pipe = self._r.pipeline(transaction=True)
        for i in range(n_chunks):
            pipe.rename(Keys.artifact_chunk(tmp, i), Keys.artifact_chunk(key, i))
        if old is not None:
            for i in range(n_chunks, old.chunks):
                pipe.delete(Keys.artifact_chunk(key, i))
        pipe.rename(tmp, key)
        for k in [key, *(Keys.artifact_chunk(key, i) for i in range(n_chunks))]:
            if ttl_s is None:
                pipe.persist(k)
            else:
                pipe.expire(k, ttl_s)
        pipe.execute()
        return manifest

    # -- reading ---------------------------------------------------------------------------------------
    def manifest(self, name: str) -> Manifest | None:
        raw = cast("bytes | None", self._r.get(self._key(name)))
        if raw is None:
            return None
        fields = json.loads(raw)
        if fields.get("shape") is not None:
            fields["shape"] = tuple(fields["shape"])
        return Manifest(**fields)

    def exists(self, name: str) -> bool:
        return bool(self._r.exists(self._key(name)))

    def get_bytes(self, name: str) -> bytes:
        manifest = self.manifest(name)
        if manifest is None:
            raise NotFound(f"artifact {name!r} does not exist")
        key = self._key(name)
        parts = [cast("bytes | None", self._r.get(Keys.artifact_chunk(key, i))) for i in range(manifest.chunks)]
        if any(p is None for p in parts):
            raise CorruptArtifact(f"artifact {name!r} is missing a chunk")
        data = b"".join(p for p in parts if p is not None)
        if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
            raise CorruptArtifact(f"artifact {name!r} does not match its checksum")
        return data

    def get_array(self, name: str) -> np.ndarray:
        array: np.ndarray = np.load(io.BytesIO(self.get_bytes(name)), allow_pickle=False)
        return array

    def get_json(self, name: str) -> Any:
        return json.loads(self.get_bytes(name))

    def delete_under(self, name_prefix: str) -> tuple[int, int]:
        """Delete every artifact whose name starts with ``name_prefix`` (manifests, chunks and writes in
        progress alike, found by SCAN with MATCH); answers (keys deleted, bytes freed), the bytes Redis's
        MEMORY USAGE reported for those keys just before their deletion."""
        return delete_matching(self._r, self._keys.artifacts_under(name_prefix))

    def delete(self, name: str) -> None:
        manifest = self.manifest(name)
        if manifest is None:
            return
        key = self._key(name)
        self._r.delete(key, *(Keys.artifact_chunk(key, i) for i in range(manifest.chunks)))


def delete_matching(client: redis.Redis, pattern: str, *, batch: int = 500) -> tuple[int, int]:
    """Delete every key matching the SCAN ``pattern``, ``batch`` at a time; answers (keys, bytes freed), the
    bytes being each key's MEMORY USAGE just before its deletion (keys gone meanwhile count for nothing)."""
    keys = bytes_freed = 0
    pending: list[bytes] = []

    def flush() -> None:
        nonlocal keys, bytes_freed
        n, freed = delete_measured(client, pending)
        keys, bytes_freed = keys + n, bytes_freed + freed
        pending.clear()

    for key in client.scan_iter(match=pattern, count=1000):
        pending.append(cast(bytes, key))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return keys, bytes_freed


def delete_measured(client: redis.Redis, keys: list[bytes] | list[str]) -> tuple[int, int]:
    """Delete ``keys``; answers (keys deleted, the MEMORY USAGE of the keys there just before)."""
    if not keys:
        return 0, 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    sizes = pipe.execute()
    deleted = int(cast(int, client.delete(*keys)))
    return deleted, sum(int(s) for s in sizes if s is not None)
