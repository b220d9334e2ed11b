"""The streamed artifact writer and reader, and an upload's files on their way to a worker, on a real Redis."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import redis

from shared.errors import DataError
from shared.infra.keys import Keys, upload_artifact
from shared.logic.uploads import ARCHIVE, drop_upload, unpack_upload
from shared.store import artifacts as artifacts_module
from shared.store.artifacts import ArtifactStore, CorruptArtifact
from tests.helpers import SMALL


@pytest.fixture
def store(redis_client: redis.Redis, fresh_prefix: str, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    monkeypatch.setattr(artifacts_module, "STREAM_BUFFER_BYTES", 700)  # flushes that straddle the 1000-byte chunks
    return ArtifactStore(redis_client, prefix=fresh_prefix, chunk_bytes=1000)


def keys_of(client: redis.Redis, prefix: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{prefix}:*"))


def test_a_streamed_write_reads_back_whole_and_piecewise(
    store: ArtifactStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    data = np.random.default_rng(1).bytes(12_345)
    with store.writer("up/f", ttl_s=600) as writer:
        rng, at = np.random.default_rng(2), 0
        while at < len(data):
            step = int(rng.integers(1, 900))
            writer.write(data[at : at + step])
            at += step
        manifest = writer.commit()
    assert (manifest.size, manifest.chunks, manifest.kind) == (12_345, 13, "bytes")
    assert store.get_bytes("up/f") == data
    out = io.BytesIO()
    assert store.copy_to("up/f", out, piece_bytes=333) == manifest
    assert out.getvalue() == data and store.head("up/f", 4) == data[:4]
    assert all(0 < redis_client.ttl(k) <= 600 for k in keys_of(redis_client, fresh_prefix))
    assert not [k for k in keys_of(redis_client, fresh_prefix) if b":tmp:" in k]


def test_an_empty_write_and_a_rewrite_with_fewer_chunks(
    store: ArtifactStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    store.put_bytes("f", b"x" * 5000)
    with store.writer("f") as writer:
        writer.write(b"short")
        writer.commit()
    assert store.get_bytes("f") == b"short"
    key = Keys(fresh_prefix).artifact("f")
    assert not redis_client.exists(Keys.artifact_chunk(key, 1))  # the old artifact's later chunks are gone
    empty = store.writer("e")
    assert empty.commit().size == 0 and store.get_bytes("e") == b""


def test_an_aborted_write_leaves_nothing_and_the_old_artifact_stays(
    store: ArtifactStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    store.put_bytes("kept", b"old")
    before = keys_of(redis_client, fresh_prefix)
    writer = store.writer("kept")

    def interrupted() -> None:
        with writer:
            writer.write(b"y" * 3000)
            raise RuntimeError("the client went away")

    with pytest.raises(RuntimeError):
        interrupted()
    assert keys_of(redis_client, fresh_prefix) == before and store.get_bytes("kept") == b"old"
    with pytest.raises(ValueError, match="after commit or abort"):
        writer.write(b"more")


def test_copy_to_refuses_bytes_that_do_not_match(
    store: ArtifactStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    store.put_bytes("c", b"z" * 2500)
    redis_client.setrange(Keys.artifact_chunk(Keys(fresh_prefix).artifact("c"), 1), 0, b"Q")
    with pytest.raises(CorruptArtifact):
        store.copy_to("c", io.BytesIO())


def test_an_upload_unpacks_as_files_or_from_its_zip_and_is_dropped(
    store: ArtifactStore, redis_client: redis.Redis, fresh_prefix: str, tmp_path: Path
) -> None:
    for name in ("movies.csv", "ratings.csv"):
        with store.writer(upload_artifact("u1", name)) as writer:
            writer.write((SMALL / name).read_bytes())
            writer.commit()
    directory, fix = unpack_upload(store, "u1", ["movies.csv", "ratings.csv"], tmp_path / "a", max_unzipped_bytes=1)
    assert fix is None and (directory / "ratings.csv").read_bytes() == (SMALL / "ratings.csv").read_bytes()

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ("movies.csv", "ratings.csv", "README.txt"):
            zf.write(SMALL / name, f"ml-latest-small/{name}")
    store.put_bytes(upload_artifact("u2", ARCHIVE), buf.getvalue())
    directory, _ = unpack_upload(store, "u2", [ARCHIVE], tmp_path / "b", max_unzipped_bytes=10 << 20)
    assert sorted(p.name for p in directory.iterdir()) == ["movies.csv", "ratings.csv"]

    for upload in ("u1", "u2"):
        drop_upload(store, upload)
    assert keys_of(redis_client, fresh_prefix) == []
    with pytest.raises(DataError, match="gone"):
        unpack_upload(store, "u1", ["movies.csv"], tmp_path / "c", max_unzipped_bytes=1)
