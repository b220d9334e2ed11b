"""The job registry: our own record of every job, in Redis, independent of Celery's result state.

Celery calls an unknown task id PENDING; we never ask it. A job is a Redis hash written *before* its
message is sent, so an id answered with 202 is always known:

    <prefix>:job:<id>    hash: id kind status progress stage message created_at started_at finished_at
                               error(JSON) result(JSON) result_artifact result_inline params(JSON) owner
                               t_created t_started (epoch seconds, for the job metrics)
    <prefix>:jobs        sorted set of ids scored by creation time (newest first when listing)
    <prefix>:jobs:active set of the ids not finished yet, which the janitor (workers/janitor.py) looks after
    <prefix>:jobs:expiry sorted set of finished ids scored by the time their record expires; the janitor
                         takes them out of both indexes once that time has passed
    <prefix>:job:<id>:shards   hash shard -> stats of a sharded job's finished shards (same TTL as the job)

``<prefix>`` is the tenant's keyspace (shared/infra/keys.py): one store per tenant, so another tenant's job id is
not a key here. Creating a job adds its tenant to the deployment's registry (``registry``), for the janitor.

Status moves queued -> running -> succeeded | failed, or queued|running -> cancelled. Every move is one Lua
script that checks the current status, so a cancelled job never turns succeeded and a late progress
report never revives a finished job. A finished record expires after ``result_ttl_s``; its id then
answers 404. Expired ids leave the indexes when the janitor runs, and listing skips any it meets first. The
move that finishes a job also deletes the janitor's marks on it, so none outlives the job.

``owner`` is set when the API runs with keys: a hash of the key that created the job (``api.auth``), or
the pipeline's owner for a pipeline's stage jobs. The store only records it and filters by it; the API
decides what a caller may see.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis
from redis.lock import Lock

from shared.infra.clock import RedisClock, iso
from shared.infra.durability import Durability
from shared.infra.keys import DEFAULT_TENANT, Keys
from shared.infra.metrics import lua_buckets
from shared.infra.redisconn import Script

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE: tuple[Status, ...] = ("queued", "running")
FINISHED: tuple[Status, ...] = ("succeeded", "failed", "cancelled")

MAX_LIST_LIMIT = 500
"""``GET /v1/jobs`` returns at most this many records."""

# KEYS[1]: job hash, KEYS[2]: its "finished" signal list, KEYS[3]: the active set, KEYS[4]: the expiry index,
# KEYS[5]: the job id, KEYS[6..8]: the janitor's idle, queued and resends marks on the job, KEYS[9..10]: the job
# metrics' counter and histogram hashes (shared/infra/metrics.py). ARGV[1]: JSON list of
# statuses the move is allowed from; ARGV[2]: new status or ""; ARGV[3]: TTL in seconds (given exactly when the
# move finishes the job) or ""; ARGV[4..]: field, value pairs to set. Returns {applied, status before}.
# The first move to running records t_started (Redis TIME); the finishing move counts the job's outcome and
# observes its run (t_started -> now) and latency (t_created -> now) seconds: O(buckets) work, once per job.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, false} end
local ok = false
for _, s in ipairs(cjson.decode(ARGV[1])) do
  if s == cur then ok = true end
end
if not ok then return {0, cur} end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[2]) end
if ARGV[2] == 'running' and redis.call('HEXISTS', KEYS[1], 't_started') == 0 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 't_started', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
end
for i = 4, #ARGV, 2 do
  if ARGV[i] == 'started_at' and redis.call('HEXISTS', KEYS[1], 'started_at') == 1 then
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
if ARGV[3] ~= '' then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  redis.call('SREM', KEYS[3], KEYS[5])
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[4], tonumber(now[1]) + tonumber(ARGV[3]), KEYS[5])
  -- Finished: wake whoever waits for it (BLPOP on KEYS[2]); the signal lives a minute, or as long as the
  -- record if that is shorter, so nothing outlives the job.
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], math.min(60, tonumber(ARGV[3])))
  -- The janitor only watches unfinished jobs: its marks would otherwise linger until their own TTL.
  redis.call('DEL', KEYS[6], KEYS[7], KEYS[8])
  local kind = redis.call('HGET', KEYS[1], 'kind') or ''
  redis.call('HINCRBY', KEYS[9], kind .. '\t' .. ARGV[2], 1)
  local finished = tonumber(now[1]) + tonumber(now[2]) / 1000000
  for _, span in ipairs({{'run', 't_started'}, {'latency', 't_created'}}) do
    local since = tonumber(redis.call('HGET', KEYS[1], span[2]) or '')
    if since then
      local seconds = math.max(0, finished - since)
      local cell = kind .. '\t' .. span[1] .. '\t'
      for _, bound in ipairs(BUCKETS) do
        if seconds <= bound[1] then
          redis.call('HINCRBY', KEYS[10], cell .. bound[2], 1)
          break
        end
      end
      redis.call('HINCRBY', KEYS[10], cell .. 'count', 1)
      redis.call('HINCRBYFLOAT', KEYS[10], cell .. 'sum', string.format('%.6f', seconds))
    end
  end
end
return {1, cur}
""".replace("BUCKETS", lua_buckets(), 1)


# KEYS[1]: job hash, KEYS[2]: its shard hash. ARGV: shard id, stats JSON, total, TTL.
# Records a finished shard while the job runs; returns how many shards are done (-1: job not running).
_SHARD_DONE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return -1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
local done = redis.call('HLEN', KEYS[2])
local total = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'progress', string.format('%.4f', done / total),
           'message', done .. ' of ' .. total .. ' shards done')
return done
"""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: Status
    progress: float
    stage: str | None
    message: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: dict[str, Any] | None
    params: dict[str, Any]
    result: Any = None
    result_artifact: str | None = None
    result_inline: str | None = None
    owner: str | None = None

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes]) -> Job:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=f["id"],
            kind=f["kind"],
            status=f["status"],  # type: ignore[arg-type]
            progress=float(f.get("progress", 0.0)),
            stage=f.get("stage") or None,
            message=f.get("message") or None,
            created_at=f["created_at"],
            started_at=f.get("started_at") or None,
            finished_at=f.get("finished_at") or None,
            error=json.loads(f["error"]) if f.get("error") else None,
            params=json.loads(f.get("params", "{}")),
            result=json.loads(f["result"]) if f.get("result") else None,
            result_artifact=f.get("result_artifact") or None,
            result_inline=f.get("result_inline") or None,
            owner=f.get("owner") or None,
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def public(self, *, result_url: str | None) -> dict[str, Any]:
        """The record as DESIGN.md's ``GET /v1/jobs/<id>`` shows it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "progress": self.progress,
            "stage": self.stage,
            "message": self.message,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "result_url": result_url if self.status == "succeeded" else None,
        }


class JobStore:
    """Create, move and read job records. Safe to share between threads; one per process."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        result_ttl_s: int,
        wait_replicas: int = 0,
        tenant: str = DEFAULT_TENANT,
        registry: str | None = None,
    ) -> None:
        self._r = client
        self._keys = Keys(prefix)
        self.tenant = tenant
        """Whose jobs these are: each job's message names it (shared/jobs/submit.py)."""
        self._registry = registry
        self._ttl = result_ttl_s
        self._durability: Durability | None = None
        self._wait_replicas = wait_replicas
        self.clock = RedisClock(client)
        """Every timestamp a job record carries is by this clock (Redis TIME: shared/infra/clock.py)."""
        self._transition = Script(client, _TRANSITION)
        self._shard_done = Script(client, _SHARD_DONE)

    def _key(self, job_id: str) -> str:
        return self._keys.job(job_id)

    def create(
        self, kind: str, params: Mapping[str, Any], *, job_id: str | None = None, owner: str | None = None
    ) -> Job:
        pipe = self.pipeline()
        job = self.create_on(pipe, kind, params, job_id=job_id, owner=owner)
        pipe.execute()
        return job

    def pipeline(self) -> redis.client.Pipeline:
        """A MULTI on this store's Redis, for ``create_on`` and whatever must land with it (the job's message)."""
        return self._r.pipeline(transaction=True)

    def create_on(
        self,
        pipe: redis.client.Pipeline,
        kind: str,
        params: Mapping[str, Any],
        *,
        job_id: str | None = None,
        owner: str | None = None,
    ) -> Job:
        """``create`` queued on ``pipe``: the record exists once the caller executes it."""
        job_id = job_id or str(uuid.uuid4())
        now = self.clock.now()
        fields = {
            "id": job_id,
            "kind": kind,
            "status": "queued",
            "progress": "0",
            "stage": "queued",
            "message": "",
            "created_at": iso(now),
            "params": json.dumps(dict(params)),
            "t_created": f"{now:.6f}",  # seconds since the epoch, for the latency metric (see _TRANSITION)
        }
        if owner:
            fields["owner"] = owner
        pipe.hset(self._key(job_id), mapping=fields)
        pipe.zadd(self._keys.jobs, {job_id: now})
        pipe.sadd(self._keys.jobs_active, job_id)
        if self._registry is not None:  # the janitor sweeps every tenant that has queued a job
            pipe.sadd(self._registry, self.tenant)
        return Job.from_hash({k.encode(): v.encode() for k, v in fields.items()})

    def durability(self) -> Durability:
        """How this Redis keeps accepted jobs on disk (probed once per process)."""
        if self._durability is None:
            self._durability = Durability.probe(self._r, replicas=self._wait_replicas)
        return self._durability

    def confirm_durable(self, job_id: str) -> None:
        """Return once the job's record (and the message sent before this call) are on disk, else 503."""
        self.durability().confirm(self._r, self._key(job_id))

    def get(self, job_id: str) -> Job | None:
        raw = cast(dict[bytes, bytes], self._r.hgetall(self._key(job_id)))
        return Job.from_hash(raw) if raw else None

    def is_running(self, job_id: str) -> bool:
        """What a shard or a join checks first: a job cancelled, failed or expired meanwhile is left alone."""
        return self.field(job_id, "status") == "running"

    def list(
        self, *, status: str | None = None, kind: str | None = None, owner: str | None = None, limit: int = 50
    ) -> list[Job]:
        """Newest first, filtered; reads the index in pages and prunes ids whose record expired."""
        out: list[Job] = []
        start, page = 0, max(limit, 100)
        while len(out) < limit:
            ids = cast(list[bytes], self._r.zrevrange(self._keys.jobs, start, start + page - 1))
            if not ids:
                break
            start += page
            pipe = self._r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._key(job_id.decode()))
            expired = []
            for job_id, raw in zip(ids, pipe.execute(), strict=True):
                if not raw:
                    expired.append(job_id)
                    continue
                job = Job.from_hash(raw)
                if (
                    (status is None or job.status == status)
                    and (kind is None or job.kind == kind)
                    and (owner is None or job.owner == owner)
                ):
                    out.append(job)
                    if len(out) == limit:
                        break
            if expired:
                self._r.zrem(self._keys.jobs, *expired)
                start -= len(expired)
        return out

    def active_ids(self) -> tuple[str, ...]:
        """Ids of the jobs not finished yet (queued or running, or whose record vanished: see ``forget``)."""
        return tuple(sorted(i.decode() for i in cast("set[bytes]", self._r.smembers(self._keys.jobs_active))))

    def active_count(self) -> int:
        """How many jobs are unfinished (one SCARD: an id whose record vanished counts until the janitor's sweep)."""
        return cast(int, self._r.scard(self._keys.jobs_active))

    def active_statuses(self) -> dict[Status, int]:
        """How many unfinished jobs are queued and how many running, counted now (one round trip for the ids,
        one for their statuses; a record that vanished counts for nothing)."""
        statuses = [status for status, _ in self._active_kinds()]
        return {status: statuses.count(status) for status in ACTIVE}

    def queued_kinds(self) -> dict[str, int]:
        """How many jobs of each kind are queued, counted now (as ``active_statuses``)."""
        counts: dict[str, int] = {}
        for status, kind in self._active_kinds():
            if status == "queued":
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    def _active_kinds(self) -> Sequence[tuple[str, str]]:
        """(status, kind) of each unfinished job whose record lives."""
        pipe = self._r.pipeline(transaction=False)
        for job_id in self.active_ids():
            pipe.hmget(self._key(job_id), ["status", "kind"])
        rows = cast("list[list[bytes | None]]", pipe.execute())
        return [(status.decode(), kind.decode()) for status, kind in rows if status is not None and kind is not None]

    def count(self) -> int:
        """Ids in the listing index: every job whose record lives, and expired ones until the janitor prunes them."""
        return cast(int, self._r.zcard(self._keys.jobs))

    def forget(self, job_id: str) -> None:
        """Take an id out of the active set (the janitor does this for a record that no longer exists)."""
        self._r.srem(self._keys.jobs_active, job_id)

    def prune_expired(self, *, now: float | None = None, batch: int = 5000) -> int:
        """Take ids whose record has expired out of the indexes; answers how many (at most ``batch``)."""
        expiry = self._keys.jobs_expiry
        ids = cast("list[bytes]", self._r.zrangebyscore(expiry, "-inf", now or self.clock.now(), start=0, num=batch))
        if ids:
            pipe = self._r.pipeline(transaction=True)
            pipe.zrem(self._keys.jobs, *ids)
            pipe.zrem(expiry, *ids)
            pipe.execute()
        return len(ids)

    def _move(
        self,
        job_id: str,
        *,
        allowed: Iterable[Status],
        to: Status | None,
        ttl: bool,
        fields: Mapping[str, str],
        ttl_s: int | None = None,
        pipe: redis.client.Pipeline | None = None,
    ) -> bool:
        """Run the transition script (see ``_TRANSITION``): True when the move applied. With ``pipe`` it is
        only queued there, to share a round trip, and True is answered."""
        args = [json.dumps(list(allowed)), to or "", str(ttl_s or self._ttl) if ttl else ""]
        for k, v in fields.items():
            args += [k, v]
        schema = self._keys
        keys = [
            schema.job(job_id),
            schema.job_finished(job_id),
            schema.jobs_active,
            schema.jobs_expiry,
            job_id,
            *schema.janitor_marks(job_id),
            schema.metrics_jobs,
            schema.metrics_job_seconds,
        ]
        if pipe is not None:
            self._transition(keys=keys, args=args, client=pipe)
            return True
        applied, _ = self._transition(keys=keys, args=args)
        return bool(applied)

    def wait_finished(self, job_id: str, timeout_s: float, *, just_submitted: bool = False) -> Job | None:
        """Block up to ``timeout_s`` until the job finishes (no polling); answers its record then, or None.

        ``just_submitted`` skips the first look at the record: a job this caller created a moment ago cannot
        have finished more than a minute ago, so its finish signal is still there for BLPOP to take.
        """
        if not just_submitted:
            job = self.get(job_id)
            if job is None or job.finished or timeout_s <= 0:
                return job if job is not None and job.finished else None
        if timeout_s <= 0 or self._r.blpop([self._keys.job_finished(job_id)], timeout=timeout_s) is None:
            return None
        return self.get(job_id)

    def start(self, job_id: str, *, stage: str, message: str = "") -> Job | None:
        """Mark running (again, on a redelivery) and answer the record, in one round trip.

        None when the job is gone or already finished.
        """
        pipe = self._r.pipeline(transaction=False)
        started = self.start_on(pipe, job_id, stage=stage, message=message)
        return started(pipe.execute())

    def start_on(
        self, pipe: redis.client.Pipeline, job_id: str, *, stage: str, message: str = ""
    ) -> Callable[[Sequence[Any]], Job | None]:
        """``start`` queued on ``pipe`` (two commands, the last on it so far); call the answer with the
        pipeline's results."""
        fields = {"started_at": self.clock.iso(), "stage": stage, "message": message}
        self._move(job_id, allowed=ACTIVE, to="running", ttl=False, fields=fields, pipe=pipe)
        pipe.hgetall(self._key(job_id))

        def read(results: Sequence[Any]) -> Job | None:
            (applied, _), raw = results[-2:]
            return Job.from_hash(raw) if applied and raw else None

        return read

    def progress(self, job_id: str, progress: float, *, stage: str, message: str = "") -> bool:
        value = f"{min(max(progress, 0.0), 1.0):.4f}"
        return self._move(
            job_id,
            allowed=("running",),
            to=None,
            ttl=False,
            fields={"progress": value, "stage": stage, "message": message},
        )

    def note_queued(self, job_id: str, message: str, *, pipe: redis.client.Pipeline) -> None:
        """Queue on ``pipe`` a message on a job that still waits to start (where it waits: the janitor)."""
        self._move(job_id, allowed=("queued",), to=None, ttl=False, fields={"message": message}, pipe=pipe)

    def succeed(
        self,
        job_id: str,
        result: Any,
        *,
        result_artifact: str | None = None,
        result_inline: str | None = None,
        message: str = "",
        ttl_s: int | None = None,
        pipe: redis.client.Pipeline | None = None,
    ) -> bool:
        """Finish with a result, kept ``ttl_s`` (default: the store's result TTL).

        With ``pipe``, the move is only queued there (to share a round trip) and True is answered.
        """
        fields = {
            "finished_at": self.clock.iso(),
            "progress": "1",
            "stage": "done",
            "message": message,
            "result": json.dumps(result),
        }
        if result_artifact:
            fields["result_artifact"] = result_artifact
        if result_inline:
            fields["result_inline"] = result_inline
        return self._move(job_id, allowed=ACTIVE, to="succeeded", ttl=True, fields=fields, ttl_s=ttl_s, pipe=pipe)

    def fail(self, job_id: str, *, code: str, message: str, details: Mapping[str, Any] | None = None) -> bool:
        error = {"code": code, "message": message, **({"details": dict(details)} if details else {})}
        fields = {"finished_at": self.clock.iso(), "message": message, "error": json.dumps(error)}
        return self._move(job_id, allowed=ACTIVE, to="failed", ttl=True, fields=fields)

    def shard_done(self, job_id: str, shard: str, stats: Mapping[str, Any], *, total: int) -> int:
        """Record a finished shard (idempotent per shard); answers shards done, or -1 if the job is not running."""
        keys = [self._key(job_id), self._keys.job_shards(job_id)]
        # The shard hash lives as long as a finished job would, so an abandoned job leaves nothing forever.
        return int(self._shard_done(keys=keys, args=[shard, json.dumps(dict(stats)), str(total), str(self._ttl)]))

    def shards_done(self, job_id: str) -> set[str]:
        """The ids of a sharded job's finished shards."""
        return {k.decode() for k in cast("list[bytes]", self._r.hkeys(self._keys.job_shards(job_id)))}

    def shard_stats(self, job_id: str) -> dict[str, dict[str, Any]]:
        raw = cast(dict[bytes, bytes], self._r.hgetall(self._keys.job_shards(job_id)))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def annotate(self, job_id: str, **fields: str) -> bool:
        """Set extra fields on a running job (a pipeline's state); False when it is not running."""
        return self._move(job_id, allowed=("running",), to=None, ttl=False, fields=fields)

    def field(self, job_id: str, name: str) -> str | None:
        raw = cast("bytes | None", self._r.hget(self._key(job_id), name))
        return raw.decode() if raw is not None else None

    def lock(self, name: str, *, ttl_s: float = 30.0) -> Lock:
        """A short exclusive claim on ``name``, not taken yet: ``acquire()`` answers at once whether it was
        (never waits), ``release()`` frees it only while this holder still has it, and it expires after
        ``ttl_s`` if its holder dies. Usable as ``with``, which raises ``LockError`` when it is held elsewhere."""
        return cast(Lock, self._r.lock(self._keys.lock(name), timeout=ttl_s, blocking=False))

    def cancel(self, job_id: str) -> bool:
        fields = {"finished_at": self.clock.iso(), "message": "cancelled by request", "stage": "cancelled"}
        return self._move(job_id, allowed=ACTIVE, to="cancelled", ttl=True, fields=fields)
