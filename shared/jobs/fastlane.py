"""The fast lane: an interactive answer asked of a live interactive worker over pub/sub, with no write on its path.

An interactive answer (a recommendation for a user, keywords, examples, a movie's neighbours) is a read: idempotent,
short, and asked again if it is lost. Sent as a job it pays for durability it does not need: the job's record and
message, the worker's admission and start, its success, each a write that Redis fsyncs before it answers
(``appendfsync always``), in series. Pub/sub messages are never written to the AOF, so here nothing is:

    API process (FastLane.ask)                               interactive worker process (Responder)
      pick a live responder: ZSET <prefix>:fastlane:responders     beats every BEAT_S: ZADD its channel, Redis time
      (channel -> the Redis time of its last beat; read once a
      second), at random
      PUBLISH <prefix>:fastlane:ask:<host>:<pid>  ────────────>   SUBSCRIBE'd there: answer(tenant, params)
        {"id", "reply", "tenant", "params"}                        (with that tenant's data: see Answer)
      wait on this process's reply channel   <────────────────   PUBLISH <reply> {"id", "ok", "result" | "error"}
        (one SUBSCRIBE per API process, <prefix>:fastlane:reply:<uuid>)

``ask`` answers None when no responder lives, when its PUBLISH reached no one (that one has just gone: another is
tried), when no reply came within the deadline, or when the answer was an error: the caller then takes the
durable path, a job on the ``interactive`` queue (api/recommendations.py), which behaves as every job does. So the
fast lane can lose nothing that was accepted: nothing is accepted until its answer is in hand.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis

from shared.infra.clock import RedisClock
from shared.infra.keys import DEFAULT_TENANT, Keys

log = logging.getLogger(__name__)

BEAT_S = 2.0
"""How often a responder says it lives; one silent for three beats is not asked."""

REFRESH_S = 1.0
"""How long an API process trusts its list of live responders."""

SUBSCRIBE_S = 0.1
"""How long a request waits for its process's reply channel to be subscribed (the first one, or after an outage)."""

TRIES = 2
"""Responders tried when a PUBLISH reaches no one, before the durable path."""

Answer = Callable[[str, dict[str, Any]], dict[str, Any]]
"""A responder's work: (the asker's tenant, the query's parameters) -> its JSON answer, from that tenant's data
(raising for an answer that is an error). The lane is the deployment's; what an answer reads is the tenant's."""


class FastLane:
    """The API side: asks a live responder and waits for its reply (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._r = client
        self._keys = Keys(prefix)
        self._clock = RedisClock(client)
        self._reply = self._keys.fastlane_reply(uuid.uuid4().hex)
        self._waiting: dict[str, tuple[threading.Event, list[Any]]] = {}
        self._lock = threading.Lock()
        self._live: list[bytes] = []
        self._live_at = float("-inf")
        self._listening = threading.Event()
        threading.Thread(target=self._listen, name="movierec-fastlane", daemon=True).start()

    def ask(self, params: dict[str, Any], timeout_s: float, *, tenant: str) -> dict[str, Any] | None:
        """A responder's answer to ``params`` from ``tenant``'s data within ``timeout_s``; None when the durable
        path must answer."""
        if timeout_s <= 0 or not self._listening.wait(min(timeout_s, SUBSCRIBE_S)):
            return None  # no reply channel (Redis away?): the durable path says what is wrong
        request_id = uuid.uuid4().hex
        done, slot = threading.Event(), list[Any]()
        with self._lock:
            self._waiting[request_id] = (done, slot)
        try:
            message = json.dumps({"id": request_id, "reply": self._reply, "tenant": tenant, "params": params})
            if not self._publish(message):
                return None
            if not done.wait(timeout_s):
                return None
            reply = slot[0]
            return cast(dict[str, Any], reply["result"]) if reply.get("ok") else None
        except redis.RedisError:
            return None  # the durable path says what is wrong with Redis
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)

    def _publish(self, message: str) -> bool:
        """Send the request to a live responder: True once one received it."""
        for _ in range(TRIES):
            live = self._responders()
            if not live:
                return False
            channel = random.choice(live)
            if cast(int, self._r.publish(channel, message)):
                return True
            self._live = [c for c in self._live if c != channel]  # gone since its last beat
        return False

    def _responders(self) -> list[bytes]:
        if time.monotonic() - self._live_at > REFRESH_S:
            since = self._clock.now() - 3 * BEAT_S
            self._live = cast(list[bytes], self._r.zrangebyscore(self._keys.fastlane_responders, since, "+inf"))
            self._live_at = time.monotonic()
        return self._live

    def _listen(self) -> None:
        """This process's reply channel: hand each reply to the request waiting for it; resubscribe after a
        Redis outage."""
        while True:
            try:
                pubsub = self._r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self._reply)
                self._listening.set()
                for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    reply = json.loads(message["data"])
                    with self._lock:
                        waiter = self._waiting.get(reply.get("id"))
                    if waiter is not None:
                        waiter[1].append(reply)
                        waiter[0].set()
            except (redis.RedisError, OSError, ValueError):
                self._listening.clear()
                log.info("fast lane: reply channel lost; subscribing again", exc_info=True)
                time.sleep(1.0)


class Responder:
    """The worker side: one per interactive worker process, answering on a channel of its own."""

    def __init__(self, client: redis.Redis, *, prefix: str, answer: Answer) -> None:
        self._r = client
        self._keys = Keys(prefix)
        self._clock = RedisClock(client)
        self._answer = answer
        self.channel = self._keys.fastlane_ask(socket.gethostname(), os.getpid())
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._serve, name="movierec-fastlane", daemon=True).start()
        threading.Thread(target=self._beat, name="movierec-fastlane-beat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):  # else its beats stop: it leaves the live list within three
            self._r.zrem(self._keys.fastlane_responders, self.channel)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._r.zadd(self._keys.fastlane_responders, {self.channel: self._clock.now()})
                if random.random() < 0.05:  # now and then, drop responders that stopped beating long ago
                    self._r.zremrangebyscore(self._keys.fastlane_responders, "-inf", self._clock.now() - 60)
            except redis.RedisError:
                log.warning("fast lane: beat failed (Redis unreachable?)", exc_info=True)
            self._stop.wait(BEAT_S)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self._r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._reply(json.loads(message["data"]))
            except (redis.RedisError, OSError):
                log.info("fast lane: request channel lost; subscribing again", exc_info=True)
                self._stop.wait(1.0)

    def _reply(self, request: dict[str, Any]) -> None:
        try:
            tenant = request.get("tenant", DEFAULT_TENANT)  # an API process from before tenants names none
            reply = {"id": request["id"], "ok": True, "result": self._answer(tenant, request["params"])}
        except Exception as exc:  # noqa: BLE001 - the asker takes the durable path, which reports the error
            log.debug("fast lane: %s; the asker takes the durable path", exc)
            reply = {"id": request["id"], "ok": False}
        self._r.publish(request["reply"], json.dumps(reply))
