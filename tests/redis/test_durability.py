"""How accepted jobs reach disk, probed from the Redis at hand (shared/infra/durability.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from cli.stack import EmbeddedRedis
from shared.errors import ServiceUnavailable
from shared.infra.durability import Durability
from tests.system.real_redis import RedisProcess


def test_the_mode_follows_the_servers_persistence(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        assert Durability.probe(client).mode == "fsync-always"  # the embedded Redis of `movierec up`
        client.config_set("appendfsync", "everysec")
        assert Durability.probe(client).mode == "none"  # up to a second of accepted jobs at risk
        client.config_set("appendonly", "no")
        assert Durability.probe(client).mode == "none"
        Durability("fsync-always").confirm(client, "k")  # nothing to wait for: every write was fsynced
        assert not client.exists("k")


def test_with_wait_replicas_a_job_is_confirmed_only_once_a_replica_has_it(tmp_path: Path) -> None:
    # MOVIEREC_WAIT_REPLICAS=1: a primary whose replica is gone answers 503 (redis_replicas), not 202; with the
    # replica attached the confirmation passes, and the replica holds the record.
    primary = RedisProcess(tmp_path / "primary", [])
    primary.lines = ["bind 127.0.0.1", f"port {primary.port}", 'save ""']
    replica = RedisProcess(tmp_path / "replica", [])
    replica.lines = ["bind 127.0.0.1", f"port {replica.port}", 'save ""', f"replicaof 127.0.0.1 {primary.port}"]
    client = redis.Redis(port=primary.port)
    try:
        primary.start(ready=lambda: bool(client.ping()))
        durability = Durability.probe(client, replicas=1)
        client.hset("job", "id", "1")
        with pytest.raises(ServiceUnavailable) as refused:
            durability.confirm(client, "job")
        assert (refused.value.details or {})["cause"] == "redis_replicas"
        follower = redis.Redis(port=replica.port)
        replica.start(ready=lambda: follower.info("replication")["master_link_status"] == "up")
        client.hset("job", "id", "2")
        durability.confirm(client, "job")
        assert follower.hgetall("job") == {b"id": b"2", b"durable": b"1"}
    finally:
        replica.stop()
        primary.stop()
