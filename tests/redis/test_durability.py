"""How accepted jobs reach disk, probed from the Redis at hand (shared/infra/durability.py)."""

from __future__ import annotations

from pathlib import Path

import redis

from cli.stack import EmbeddedRedis
from shared.infra.durability import Durability


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
