"""The broker transport: kombu's Redis transport with its clients kept, and messages that join a MULTI."""

from __future__ import annotations

import json

import redis

from shared.infra.broker import Channel, onto
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery


def test_a_channel_keeps_one_client_per_pool(settings: Settings) -> None:
    with make_celery(settings).connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        first = channel._create_client()
        assert channel._create_client() is first
        assert channel._create_client(asynchronous=True) is not first
        channel._disconnect_pools()  # what kombu does on a lost connection: new pools, so new clients
        assert channel._create_client() is not first


def test_a_message_sent_onto_a_pipeline_lands_with_it_exactly_as_kombu_sends_it(
    settings: Settings, redis_client: redis.Redis, fresh_prefix: str
) -> None:
    app = make_celery(settings.model_copy(update={"key_prefix": fresh_prefix}))
    queue = f"{fresh_prefix}:celery:interactive"
    app.send_task("workers.interactive.recommend", args=["direct", {}], task_id="direct")

    pipe = redis_client.pipeline(transaction=True)
    pipe.set(f"{fresh_prefix}:record", "1")
    with onto(pipe):
        app.send_task("workers.interactive.recommend", args=["piped", {}], task_id="piped")
    assert redis_client.llen(queue) == 1 and not redis_client.exists(f"{fresh_prefix}:record")  # nothing sent yet
    pipe.execute()

    piped, direct = (json.loads(m) for m in redis_client.lrange(queue, 0, -1))  # newest first
    assert piped["headers"]["id"] == "piped" and direct["headers"]["id"] == "direct"
    assert piped.keys() == direct.keys() and piped["properties"].keys() == direct["properties"].keys()
    assert piped["properties"]["delivery_info"] == direct["properties"]["delivery_info"]
    assert redis_client.get(f"{fresh_prefix}:record") == b"1"

    app.send_task("workers.interactive.recommend", args=["after", {}], task_id="after")  # outside: sent at once
    assert redis_client.llen(queue) == 3
