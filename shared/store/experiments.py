"""Experiments: their records, the running one, and their counters (issue #27). A store: no arithmetic here.

    POST /v1/experiments ──> ExperimentStore.create: a number (INCR), a record (HSET name), running (SET)
    a recommendation ──> ExperimentStore.running(): one GET, the running record (or None)
    POST /v1/events ──> ExperimentStore.count(pipe, number, totals, users, series): one script on the caller's
        pipe, HINCRBY of every counter (a command each from the client cost a batch of 500 events ~4 ms of CPU)
    GET /v1/experiments/<name> ──> ExperimentStore.counts(number): the three hashes, for shared/logic/online.py

At most one experiment of a tenant runs at a time: a user's answer comes from one place. The running record is
kept whole under its own key, so a recommendation reads it in one GET; the record of an experiment changes
only in its ``state`` and timestamps, always through ``_save``, which writes both. Counters are named by the
experiment's number, not its name, so a name deleted and made again starts from nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import redis
from redis.commands.core import Script

from shared.errors import Conflict, NotFound
from shared.infra.keys import Keys

RUNNING, PAUSED, ENDED = "running", "paused", "ended"
STATES = (RUNNING, PAUSED, ENDED)
MAX_EXPERIMENTS = 100
"""Experiments a tenant may hold (each keeps per-user counters until deleted)."""

Record = dict[str, Any]


_COUNT = """
-- KEYS: the totals, per-user and per-bucket hashes; ARGV[1], ARGV[2]: how many field/increment pairs go to the
-- first and to the second; then the pairs, the third hash's last. With KEYS[4], a batch's record under its
-- Idempotency-Key, and ARGV[3] this request's token: nothing is counted unless the record is this request's
-- (a retry finds the first request's there).
local first = 3
if #KEYS == 4 then
    local held = redis.call('GET', KEYS[4])
    if not held or string.sub(held, 1, #ARGV[3]) ~= ARGV[3] then
        return 0
    end
    first = 4
end
local firsts, seconds = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = first, #ARGV, 2 do
    local pair = (i - first) / 2 + 1
    local key = KEYS[pair <= firsts and 1 or (pair <= firsts + seconds and 2 or 3)]
    redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
end
return (#ARGV - first + 1) / 2
"""


class ExperimentStore:
    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._r, self._keys = client, Keys(prefix)
        self._count = Script(client, _COUNT)

    def create(self, record: Record) -> Record:
        """Store a new experiment, running; Conflict when the name is taken, another runs or there are too many."""
        name = record["name"]
        if self._r.hexists(self._keys.experiments, name):
            raise Conflict(f"experiment {name!r} exists: DELETE /v1/experiments/{name} first, or pick another name")
        if int(cast("int", self._r.hlen(self._keys.experiments))) >= MAX_EXPERIMENTS:
            raise Conflict(f"{MAX_EXPERIMENTS} experiments are stored: delete some (DELETE /v1/experiments/<name>)")
        running = self.running()
        if running is not None:
            raise Conflict(f"experiment {running['name']!r} is running: pause or end it first (one runs at a time)")
        number = int(cast("int", self._r.incr(self._keys.experiments_seq)))
        made = {**record, "number": number, "state": RUNNING}
        self._save(made)
        return made

    def get(self, name: str) -> Record:
        raw = cast("bytes | None", self._r.hget(self._keys.experiments, name))
        if raw is None:
            raise NotFound(f"experiment {name!r} does not exist")
        return cast("Record", json.loads(raw))

    def all(self) -> list[Record]:
        """Every experiment, newest first."""
        raw = cast("dict[bytes, bytes]", self._r.hgetall(self._keys.experiments))
        return sorted((json.loads(v) for v in raw.values()), key=lambda r: -int(r["number"]))

    def running(self) -> Record | None:
        raw = cast("bytes | None", self._r.get(self._keys.experiment_running))
        return cast("Record", json.loads(raw)) if raw is not None else None

    def set_state(self, name: str, state: str, **fields: Any) -> Record:
        """Move an experiment to ``state`` (with ``fields`` recorded beside it); Conflict for a move that is not
        one (an ended experiment stays ended; one runs at a time)."""
        record = self.get(name)
        if record["state"] == ENDED:
            raise Conflict(f"experiment {name!r} has ended")
        if state == RUNNING and record["state"] != RUNNING:
            running = self.running()
            if running is not None and running["name"] != name:
                raise Conflict(f"experiment {running['name']!r} is running: pause or end it first")
        updated = {**record, **fields, "state": state}
        self._save(updated)
        return updated

    def mark(self, name: str, **fields: Any) -> Record:
        """Record ``fields`` beside an experiment's state (which stays)."""
        updated = {**self.get(name), **fields}
        self._save(updated)
        return updated

    def delete(self, name: str) -> Record:
        record = self.get(name)
        pipe = self._r.pipeline()
        pipe.hdel(self._keys.experiments, name)
        pipe.delete(*self._keys.experiment_counts(int(record["number"])))
        if record["state"] == RUNNING:
            pipe.delete(self._keys.experiment_running)
        pipe.execute()
        return record

    def uses(self, version: str) -> list[str]:
        """The experiments, not ended, that serve model ``version``."""
        return [r["name"] for r in self.all() if r["state"] != ENDED and version in _models(r)]

    def _save(self, record: Record) -> None:
        text = json.dumps(record, separators=(",", ":"))
        pipe = self._r.pipeline()
        pipe.hset(self._keys.experiments, record["name"], text)
        if record["state"] == RUNNING:
            pipe.set(self._keys.experiment_running, text)
        else:
            # Only this experiment's own record leaves the running key (a WATCH-free compare: the key holds at most
            # one record, and ``create``/``set_state`` refused to run a second).
            running = self.running()
            if running is not None and running["name"] == record["name"]:
                pipe.delete(self._keys.experiment_running)
        pipe.execute()

    # -- counters ------------------------------------------------------------------------------------------
    def count(
        self, pipe: redis.client.Pipeline, number: int, totals: Mapping[str, int], users: Mapping[str, int],
        series: Mapping[str, int], *, once: tuple[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Queue the increments of an experiment's counters on ``pipe``: one command, however many counters.
        ``once``: (key, token) of a batch sent with an ``Idempotency-Key`` (``EventLog.add``): counted only when
        the record under ``key`` starts with ``token``, this request's."""
        args: list[str | int] = [len(totals), len(users), *([once[1]] if once else [])]
        for increments in (totals, users, series):
            for field_name, by in increments.items():
                args += (field_name, by)
        self._count(keys=[*self._keys.experiment_counts(number), *([once[0]] if once else [])], args=args, client=pipe)

    def counts(self, number: int) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """An experiment's counters: totals, per user, per time bucket (field -> count)."""
        pipe = self._r.pipeline(transaction=False)
        for key in self._keys.experiment_counts(number):
            pipe.hgetall(key)
        hashes = cast("list[dict[bytes, bytes]]", pipe.execute())
        totals, users, series = ({k.decode(): int(v) for k, v in h.items()} for h in hashes)
        return totals, users, series

    def totals(self, numbers: list[int]) -> list[dict[str, int]]:
        """The totals of several experiments at once (/metrics)."""
        pipe = self._r.pipeline(transaction=False)
        for number in numbers:
            pipe.hgetall(self._keys.experiment_counts(number)[0])
        return [{k.decode(): int(v) for k, v in h.items()} for h in cast("list[dict[bytes, bytes]]", pipe.execute())]


def _models(record: Record) -> set[str]:
    return {v["model"] for v in record["variants"]}
