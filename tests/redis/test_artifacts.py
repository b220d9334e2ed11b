"""The artifact store on a real Redis."""

from __future__ import annotations

import io

import numpy as np
import pytest
import redis

from shared.errors import NotFound
from shared.store.artifacts import ArtifactStore, CorruptArtifact


@pytest.fixture
def store(redis_client: redis.Redis, fresh_prefix: str) -> ArtifactStore:
    return ArtifactStore(redis_client, prefix=fresh_prefix, chunk_bytes=1000)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(10, dtype=np.int32),
        np.random.default_rng(0).random((37, 11)).astype(np.float32),
        np.zeros((0, 3), dtype=np.int64),
        np.array([[1.5, -2.0]], dtype=np.float64),
    ],
)
def test_array_round_trip(store: ArtifactStore, array: np.ndarray) -> None:
    store.put_array("a/v1", array)
    back = store.get_array("a/v1")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_large_values_are_chunked_and_rewrites_drop_stale_chunks(
    store: ArtifactStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    big = np.arange(5000, dtype=np.int64)  # 40 kB over 1 kB chunks
    m = store.put_array("big", big)
    assert m.chunks == -(-m.size // 1000) > 1
    assert redis_client.exists(f"{fresh_prefix}:art:big:{m.chunks - 1}")
    np.testing.assert_array_equal(store.get_array("big"), big)

    small = store.put_array("big", np.arange(3, dtype=np.int64))
    assert small.chunks == 1
    assert not redis_client.exists(f"{fresh_prefix}:art:big:{m.chunks - 1}")
    assert not list(redis_client.scan_iter(match=f"{fresh_prefix}:art:big:tmp:*"))
    np.testing.assert_array_equal(store.get_array("big"), np.arange(3))


def test_json_and_bytes(store: ArtifactStore) -> None:
    store.put_json("j", {"titles": ["Amélie (2001)", "東京物語"]})
    assert store.get_json("j") == {"titles": ["Amélie (2001)", "東京物語"]}
    store.put_bytes("b", b"\x00\x01" * 700)
    assert store.get_bytes("b") == b"\x00\x01" * 700


def test_stored_arrays_hold_no_pickle(store: ArtifactStore) -> None:
    store.put_array("p", np.arange(4))
    np.load(io.BytesIO(store.get_bytes("p")), allow_pickle=False)
    with pytest.raises(TypeError):
        store.put_array("o", np.array([{"a": 1}], dtype=object))


def test_corruption_is_detected(store: ArtifactStore, redis_client: redis.Redis, fresh_prefix: str) -> None:
    store.put_array("c", np.arange(400, dtype=np.int64))
    redis_client.setrange(f"{fresh_prefix}:art:c:1", 3, b"\xff")
    with pytest.raises(CorruptArtifact):
        store.get_array("c")


def test_missing_and_delete(store: ArtifactStore) -> None:
    with pytest.raises(NotFound):
        store.get_bytes("nothing")
    store.put_array("d", np.arange(600))
    store.delete("d")
    assert not store.exists("d")


def test_ttl(store: ArtifactStore, redis_client: redis.Redis, fresh_prefix: str) -> None:
    store.put_array("t", np.arange(600), ttl_s=100)
    assert 0 < redis_client.ttl(f"{fresh_prefix}:art:t") <= 100
    assert 0 < redis_client.ttl(f"{fresh_prefix}:art:t:1") <= 100


class DeletedMidRead(redis.Redis):
    """A client of the same Redis that has ``store`` delete artifact ``name`` just before the read of its first
    chunk: a job dropping its parts while another job reads them."""

    def __init__(self, store: ArtifactStore, name: str, **options: object) -> None:
        super().__init__(**options)
        self.store, self.name, self.fired = store, name, False

    def _reading(self, key: str) -> None:
        if key == f"{self.store._key(self.name)}:0" and not self.fired:
            self.fired = True
            self.store.delete(self.name)

    def get(self, name: str) -> object:  # type: ignore[override]
        self._reading(name)
        return super().get(name)

    def strlen(self, name: str) -> object:  # type: ignore[override]
        self._reading(name)  # ``copy_to`` streams each chunk: its length, then its pieces
        return super().strlen(name)


def test_an_artifact_deleted_while_being_read_is_not_found_and_a_chunk_missing_under_its_manifest_is_corrupt(
    store: ArtifactStore, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    store.put_array("gone", np.arange(600, dtype=np.int64))  # 5 chunks of 1 kB
    client = DeletedMidRead(store, "gone", **redis_client.connection_pool.connection_kwargs)
    with pytest.raises(NotFound, match="deleted while being read"):
        ArtifactStore(client, prefix=fresh_prefix, chunk_bytes=1000).get_array("gone")
    assert client.fired and not store.exists("gone")
    store.put_bytes("streamed", b"z" * 2500)
    client = DeletedMidRead(store, "streamed", **redis_client.connection_pool.connection_kwargs)
    with pytest.raises(NotFound, match="deleted while being read"):
        ArtifactStore(client, prefix=fresh_prefix, chunk_bytes=1000).copy_to("streamed", io.BytesIO())

    store.put_array("torn", np.arange(600, dtype=np.int64))
    redis_client.delete(f"{fresh_prefix}:art:torn:2")  # a chunk gone, its manifest still there
    with pytest.raises(CorruptArtifact, match="missing a chunk"):
        store.get_array("torn")
    with pytest.raises(CorruptArtifact, match="missing a chunk"):
        store.get_rows("torn", 0, 600)
