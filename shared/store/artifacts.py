"""Arrays and blobs in Redis under versioned names, so any worker on any machine can read them.

Layout for an artifact ``name`` (names carry their version, e.g. ``dataset/<id>/movie_ids``):

    <prefix>:art:<name>         manifest, JSON: {"kind", "size", "chunks", "sha256", "dtype"?, "shape"?}
    <prefix>:art:<name>:<i>     chunk i of the payload, each at most ``chunk_bytes``

A write puts the chunks and the manifest under temporary keys, then renames them all in one MULTI/EXEC, so
a reader sees the old artifact or the new one, never a mix. Arrays travel as ``.npy`` bytes written
without pickle and read with ``allow_pickle=False``; the sha256 is checked on every read. ``delete_under``
deletes every artifact under a name prefix (SCAN MATCH ``Keys.artifacts_under``), temporary keys included.

Bytes too large to hold (an uploaded ``ratings.csv``) stream both ways: ``writer`` appends to the temporary
chunks as data arrives, holding at most ``STREAM_BUFFER_BYTES``, and publishes the same way on ``commit``;
``copy_to`` reads an artifact into a file piece by piece, checking the sha256 at the end.

A *fenced* store (``fenced(key, token)``: a unit's lease and its holder) publishes a write only while ``key``
still holds ``token``, checked and renamed in one Lua call; otherwise it deletes the temporary keys and raises
``FencedOut``, so a unit that lost its lease (paused past it, another delivery took over) leaves nothing behind.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import numpy as np
import redis

from shared.errors import NotFound
from shared.infra.keys import Keys
from shared.infra.redisconn import Script

STREAM_BUFFER_BYTES = 1 << 20
"""What a streamed write or read holds in memory at most (besides one piece of its caller's)."""
TMP_TTL_S = 3600
"""Temporary keys expire this long after their last write, if their writer dies before publishing them."""


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


class FencedOut(Exception):
    """A fenced write found its fence key no longer holding its token: it was discarded, nothing published."""


# KEYS[1]: fence, KEYS[2]: manifest, KEYS[3 .. 2+n]: temporary chunks, KEYS[3+n .. 2+2n]: their final names,
# then stale chunks of the old artifact. ARGV: token, n, manifest JSON, TTL s ("" persists).
# Publishes as _publish's MULTI/EXEC does, only while the fence holds the token; else deletes the temporary chunks.
_PUBLISH_FENCED = """
local n = tonumber(ARGV[2])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  for i = 3, 2 + n do redis.call('DEL', KEYS[i]) end
  return 0
end
for i = 1, n do redis.call('RENAME', KEYS[2 + i], KEYS[2 + n + i]) end
for i = 3 + 2 * n, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('SET', KEYS[2], ARGV[3])
for i = 0, n do
  local k = KEYS[2]
  if i > 0 then k = KEYS[2 + n + i] end
  if ARGV[4] == '' then redis.call('PERSIST', k) else redis.call('EXPIRE', k, tonumber(ARGV[4])) end
end
return 1
"""


class ArtifactStore:
    """Versioned, chunked, pickle-free storage of numpy arrays and byte blobs in Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str, chunk_bytes: int) -> None:
        self._r = client
        self._keys = Keys(prefix)
        self._chunk_bytes = chunk_bytes
        self._fence: tuple[str, str] | None = None

    def fenced(self, key: str, token: str) -> ArtifactStore:
        """This store, whose writes publish only while Redis key ``key`` holds ``token`` (else ``FencedOut``)."""
        store = copy.copy(self)
        store._fence = (key, token)
        return store

    # A fenced copy reads what its source reads: the same store to the per-process caches keyed by it (a shard's
    # incidence, a model, an evaluation's split and baselines), which would otherwise miss on every shard.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArtifactStore):
            return NotImplemented
        return self._r is other._r and (self._keys, self._chunk_bytes) == (other._keys, other._chunk_bytes)

    def __hash__(self) -> int:
        return hash((id(self._r), self._keys, self._chunk_bytes))

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
        for i in range(n_chunks):
            chunk = payload[i * self._chunk_bytes : (i + 1) * self._chunk_bytes]
            # Temporary keys expire by themselves if this writer dies before the rename.
            self._r.set(Keys.artifact_chunk(tmp, i), bytes(chunk), ex=TMP_TTL_S)
        self._publish(name, tmp, manifest, ttl_s=ttl_s)
        return manifest

    def writer(self, name: str, *, ttl_s: int | None = None) -> ArtifactWriter:
        """A streamed write of a ``bytes`` artifact (see ``ArtifactWriter``)."""
        return ArtifactWriter(self, name, ttl_s=ttl_s)

    def _publish(self, name: str, tmp: str, manifest: Manifest, *, ttl_s: int | None) -> None:
        """Rename a write's temporary chunks and manifest into place, in one MULTI/EXEC."""
        key = self._key(name)
        old = self.manifest(name)
        n_chunks = manifest.chunks
        if self._fence is not None:
            self._publish_fenced(name, tmp, manifest, stale=range(n_chunks, old.chunks if old else 0), ttl_s=ttl_s)
            return
        self._r.set(tmp, json.dumps(manifest.__dict__), ex=TMP_TTL_S)
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

    def _publish_fenced(self, name: str, tmp: str, manifest: Manifest, *, stale: range, ttl_s: int | None) -> None:
        assert self._fence is not None
        fence, token = self._fence
        key, n = self._key(name), manifest.chunks
        keys = [fence, key, *(Keys.artifact_chunk(tmp, i) for i in range(n))]
        keys += [*(Keys.artifact_chunk(key, i) for i in range(n)), *(Keys.artifact_chunk(key, i) for i in stale)]
        args = [token, n, json.dumps(manifest.__dict__), "" if ttl_s is None else ttl_s]
        if not Script(self._r, _PUBLISH_FENCED)(keys=keys, args=args):
            raise FencedOut(f"artifact {name!r} was not written: {fence} no longer holds this writer's token")

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
            raise self._unreadable(name, "is missing a chunk")
        data = b"".join(p for p in parts if p is not None)
        if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
            raise CorruptArtifact(f"artifact {name!r} does not match its checksum")
        return data

    def get_array(self, name: str) -> np.ndarray:
        array: np.ndarray = np.load(io.BytesIO(self.get_bytes(name)), allow_pickle=False)
        return array

    def get_json(self, name: str) -> Any:
        return json.loads(self.get_bytes(name))

    def get_rows(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of a stored 1-d array, reading only the chunks that hold them (a user's ratings out of
        27M without the other 300 MB). The checksum covers whole reads only: a partial read trusts Redis."""
        manifest = self.manifest(name)
        if manifest is None or manifest.kind != "npy" or manifest.dtype is None or manifest.shape is None:
            raise NotFound(f"array artifact {name!r} does not exist")
        if len(manifest.shape) != 1:
            raise ValueError(f"artifact {name!r} is not a 1-d array")
        dtype = np.dtype(manifest.dtype)
        lo, hi = max(0, lo), min(hi, manifest.shape[0])
        if hi <= lo:
            return np.zeros(0, dtype=dtype)
        key, step = self._key(name), self._chunk_bytes
        first = cast("bytes | None", self._r.get(Keys.artifact_chunk(key, 0)))
        if first is None:
            raise self._unreadable(name, "is missing a chunk")
        header = io.BytesIO(first)
        version = np.lib.format.read_magic(header)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(header)
        else:
            np.lib.format.read_array_header_2_0(header)
        start, end = header.tell() + lo * dtype.itemsize, header.tell() + hi * dtype.itemsize
        chunks = range(start // step, (end - 1) // step + 1)
        parts = [first if i == 0 else cast("bytes | None", self._r.get(Keys.artifact_chunk(key, i))) for i in chunks]
        if any(p is None for p in parts):
            raise self._unreadable(name, "is missing a chunk")
        data = b"".join(p for p in parts if p is not None)
        offset = start - chunks[0] * step
        return np.frombuffer(data[offset : offset + (hi - lo) * dtype.itemsize], dtype=dtype).copy()

    def _unreadable(self, name: str, problem: str) -> NotFound | CorruptArtifact:
        """What a read of ``name`` that found its chunks short (``problem``) raises. A read takes the manifest,
        then the chunks, so a deletion (or the TTL) that falls between them takes the chunks from under it: the
        artifact is gone, and its manifest with it (``delete`` takes both in one command; their TTLs are set in
        one transaction, so they expire within a millisecond of each other). Only chunks short under a manifest
        that is still there are corruption."""
        if self.manifest(name) is None:
            return NotFound(f"artifact {name!r} does not exist (it was deleted while being read)")
        return CorruptArtifact(f"artifact {name!r} {problem}")

    def head(self, name: str, n: int) -> bytes:
        """The first ``n`` bytes of an artifact (fewer when it is shorter; empty when there is none), unchecked."""
        if n <= 0:
            return b""
        return cast(bytes, self._r.getrange(Keys.artifact_chunk(self._key(name), 0), 0, n - 1))

    def copy_to(self, name: str, out: BinaryIO, *, piece_bytes: int = STREAM_BUFFER_BYTES) -> Manifest:
        """Write an artifact's bytes into ``out``, ``piece_bytes`` at a time (GETRANGE); CorruptArtifact when
        they do not match the manifest (``out`` then holds what was read)."""
        manifest = self.manifest(name)
        if manifest is None:
            raise NotFound(f"artifact {name!r} does not exist")
        key = self._key(name)
        digest, size = hashlib.sha256(), 0
        for i in range(manifest.chunks):
            chunk_key = Keys.artifact_chunk(key, i)
            length = int(cast(int, self._r.strlen(chunk_key)))
            for start in range(0, length, piece_bytes):
                piece = cast(bytes, self._r.getrange(chunk_key, start, min(start + piece_bytes, length) - 1))
                digest.update(piece)
                out.write(piece)
                size += len(piece)
        if size != manifest.size or digest.hexdigest() != manifest.sha256:
            raise self._unreadable(name, "does not match its checksum")
        return manifest

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


class ArtifactWriter:
    """One ``bytes`` artifact written as its data arrives: ``write`` buffers up to ``STREAM_BUFFER_BYTES`` and
    appends to the temporary chunk keys (APPEND, a new chunk every ``chunk_bytes``); ``commit`` publishes it as
    ``put_bytes`` would (readers see the old artifact or the new one); ``abort`` deletes what was written. As a
    context manager it aborts when its block raises and it was not committed."""

    def __init__(self, store: ArtifactStore, name: str, *, ttl_s: int | None) -> None:
        self.name = name
        self.size = 0
        self._store = store
        self._r = store._r
        self._ttl_s = ttl_s
        self._tmp = Keys.artifact_tmp(store._key(name), uuid.uuid4().hex)
        self._digest = hashlib.sha256()
        self._pending = bytearray()
        self._chunk = 0  # the temporary chunk being appended to
        self._in_chunk = 0  # bytes already appended to it
        self._done = False

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None and not self._done:
            self.abort()

    def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError(f"artifact {self.name!r}: write after commit or abort")
        self._digest.update(data)
        self.size += len(data)
        self._pending += data
        if len(self._pending) >= STREAM_BUFFER_BYTES:
            self._flush()

    def _flush(self) -> None:
        data, chunk_bytes = bytes(self._pending), self._store._chunk_bytes
        self._pending.clear()
        view = memoryview(data)
        pipe = self._r.pipeline(transaction=False)
        while view.nbytes:
            piece = view[: chunk_bytes - self._in_chunk]
            key = Keys.artifact_chunk(self._tmp, self._chunk)
            pipe.append(key, bytes(piece))
            pipe.expire(key, TMP_TTL_S)
            self._in_chunk += piece.nbytes
            view = view[piece.nbytes :]
            if self._in_chunk == chunk_bytes:
                self._chunk, self._in_chunk = self._chunk + 1, 0
        pipe.execute()

    def commit(self) -> Manifest:
        """Publish what was written; answers its manifest."""
        self._flush()
        n_chunks = max(1, -(-self.size // self._store._chunk_bytes))
        if self.size == 0:
            self._r.set(Keys.artifact_chunk(self._tmp, 0), b"", ex=TMP_TTL_S)
        manifest = Manifest("bytes", self.size, n_chunks, self._digest.hexdigest())
        self._store._publish(self.name, self._tmp, manifest, ttl_s=self._ttl_s)
        self._done = True
        return manifest

    def abort(self) -> None:
        """Delete the temporary chunks; the artifact, if one was there, stays as it was."""
        self._done = True
        self._pending.clear()
        self._r.delete(self._tmp, *(Keys.artifact_chunk(self._tmp, i) for i in range(self._chunk + 1)))


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
