"""Who runs what: a lease on each unit of work, renewed while it runs, and a count of its starts.

A *unit* is one task's share of a job: its main task (``main``), one shard (``shard-000002000``,
shared/jobs/sharded.py), the join of the shards (``join``). Celery delivers a message at least once: again
when a pool process dies under it (``task_reject_on_worker_lost``) or its worker shuts down, and the
janitor (``workers/janitor.py``) sends a unit again when it finds it lost (a whole worker died with it). So
before a worker runs a unit, ``UnitGuard.admit`` does, in one Lua call (``admit_on`` queues it in the round
trip that starts the job):

1. counts the start: ``INCR <prefix>:unit:<job>:<unit>:starts``. A unit started more than
   ``max_deliveries`` times without finishing has killed its worker each time (a poison message): the
   caller fails the job with the unit named instead of running it again, and no lease is taken;
2. takes the lease: ``SET <prefix>:unit:<job>:<unit>:lease <holder> NX PX ttl``. A second delivery of a unit
   that another live worker runs is not run (``Admission.BUSY``). When the holder was a process of this
   host that no longer exists, its lease is taken over at once rather than waited out.

While a unit runs, one renewer thread per process extends every lease the process holds, every third of the
TTL; and the worker's main process (workers/main.py ``LeaseKeeper``) extends, as often, the lease of every unit
its pool processes are running, for as long as each such process exists and is not stopped
(``renew_for_processes``): a child whose renewer thread is starved (a C call holding the GIL, a machine so
loaded that the thread is not scheduled for a TTL) keeps its lease, since a lease means "a live process runs
this", not "this process was scheduled lately". A stopped (SIGSTOP) or dead child's lease is left to expire.
``release`` (after the unit returned or raised: either way it finished) drops the lease and the count.
A unit's renewal can fail (its process froze past the TTL): its output is then written fenced by its lease
(``holder`` gives the token; ``ArtifactStore.fenced``), so a unit whose lease was lost discards what it made.
A unit whose process was killed leaves both: the lease expires after its TTL, which tells the janitor the unit
is no longer running; the count stays, so the next start sees it. A poison unit's count is never released,
so every later copy of its message is refused too, without taking the lease.

Keys: ``...:lease`` lives ``ttl`` and is renewed; ``...:starts`` lives a day after its last start.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import redis
from redis.client import Pipeline

from shared.infra.keys import Keys
from shared.infra.redisconn import Script

log = logging.getLogger(__name__)

STARTS_TTL_S = 24 * 3600
"""A start count outlives any redelivery of its unit (a task's time limit is hours at most), then goes."""

# KEYS[1]: start count, KEYS[2]: lease. ARGV: holder, lease TTL ms, most starts, count TTL s.
# Returns {starts, 1 when the lease was taken, current holder when it was not}. Past the most starts the
# lease is not even tried, so no process is seen holding a unit that will not run.
_ADMIT = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
if n > tonumber(ARGV[3]) then return {n, 0, false} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then return {n, 1, false} end
return {n, 0, redis.call('GET', KEYS[2])}
"""

# KEYS[1]: lease. ARGV[1]: holder expected, ARGV[2]: new holder or "", ARGV[3]: TTL ms.
# Renew (ARGV[2] == "") or hand over the lease, only while ARGV[1] still holds it. Returns 1 when done.
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
else redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3])) end
return 1
"""

# KEYS: leases. ARGV[1]: TTL ms, ARGV[2..]: for each lease, the holder prefix ("host|pid|") of the process that
# runs its unit. Extends each lease still held by that process. Returns how many were extended.
_RENEW_FOR = """
local n = 0
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  local prefix = ARGV[i + 1]
  if holder and string.sub(holder, 1, #prefix) == prefix then
    redis.call('PEXPIRE', key, tonumber(ARGV[1]))
    n = n + 1
  end
end
return n
"""

# KEYS[1]: lease, KEYS[2]: start count. ARGV[1]: holder. Drops the count, and the lease if still ours.
_RELEASE = """
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class Admission(enum.Enum):
    RUN = "run"
    BUSY = "busy"  # another live worker holds the lease: this delivery is a duplicate
    POISON = "poison"  # started too many times without finishing


def holder_prefix(pid: int, host: str | None = None) -> str:
    """The start of every lease holder that process ``pid`` of ``host`` (default: this one) writes."""
    return f"{host or socket.gethostname()}|{pid}|"


def process_running(pid: int) -> bool:
    """True while process ``pid`` of this host exists and is neither stopped nor a zombie (Linux ``/proc``;
    elsewhere: while it exists)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return _holder_alive(holder_prefix(pid))
    state = stat.rpartition(")")[2].split()[0]  # the command name may hold spaces and parentheses
    return state not in ("T", "t", "Z", "X")


def _holder_alive(holder: str) -> bool:
    """False only when ``holder`` names a process of this host that is gone; other hosts' are taken as alive."""
    host, _, rest = holder.partition("|")
    pid = rest.split("|", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class UnitGuard:
    """Admission, leases and their renewal for the units one process runs."""

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: float, max_starts: int) -> None:
        self._r = client
        self._keys = Keys(prefix)
        self._ttl_ms = int(ttl_s * 1000)
        self._max_starts = max_starts
        self._admit = Script(client, _ADMIT)
        self._swap = Script(client, _SWAP)
        self._release = Script(client, _RELEASE)
        self._renew_for = Script(client, _RENEW_FOR)
        self._held: dict[str, str] = {}  # lease key -> holder, renewed by the thread below
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._renewer_pid = 0

    def lease_key(self, job_id: str, unit: str) -> str:
        return self._keys.unit_lease(job_id, unit)

    def starts_key(self, job_id: str, unit: str) -> str:
        return self._keys.unit_starts(job_id, unit)

    def holder(self, job_id: str, unit: str) -> str | None:
        """The token this process holds ``unit``'s lease with, None when it runs no such unit: a write fenced by
        (``lease_key``, this token) lands only while the lease is still this run's."""
        with self._lock:
            return self._held.get(self.lease_key(job_id, unit))

    def admit(self, job_id: str, unit: str) -> tuple[Admission, int]:
        """Count this start and take the lease: (what to do, how many times the unit has been started)."""
        pipe = self._r.pipeline(transaction=False)
        admitted = self.admit_on(pipe, job_id, unit)
        return admitted(pipe.execute()[0])

    def admit_on(self, pipe: Pipeline, job_id: str, unit: str) -> Callable[[Any], tuple[Admission, int]]:
        """Queue the admission on ``pipe`` (so it shares a round trip with the job's start); call the answer
        with the pipeline's result for it."""
        lease, starts = self.lease_key(job_id, unit), self.starts_key(job_id, unit)
        holder = f"{holder_prefix(os.getpid())}{uuid.uuid4().hex}"
        self._admit(keys=[starts, lease], args=[holder, self._ttl_ms, self._max_starts, STARTS_TTL_S], client=pipe)

        def decide(result: Any) -> tuple[Admission, int]:
            count, taken, current = result
            previous = cast("bytes | None", current)
            return self._decide(lease, starts, holder, count=int(count), taken=bool(taken), previous=previous)

        return decide

    def _decide(
        self, lease: str, starts: str, holder: str, *, count: int, taken: bool, previous: bytes | None
    ) -> tuple[Admission, int]:
        if count > self._max_starts:
            return Admission.POISON, count - 1
        if not taken:
            if previous is not None and _holder_alive(previous.decode()):
                self._r.decr(starts)  # not started here after all
                return Admission.BUSY, count - 1
            # The holder died on this host (or the lease expired in between): take it over.
            if previous is None:
                taken = bool(self._r.set(lease, holder, nx=True, px=self._ttl_ms))
            else:
                taken = bool(self._swap(keys=[lease], args=[previous.decode(), holder, self._ttl_ms]))
            if not taken:
                self._r.decr(starts)
                return Admission.BUSY, count - 1
        with self._lock:
            self._held[lease] = holder
        self._ensure_renewer()
        return Admission.RUN, count

    def release(self, job_id: str, unit: str) -> None:
        """The unit finished (returned or raised): drop its lease and its start count."""
        pipe = self._r.pipeline(transaction=False)
        self.release_on(pipe, job_id, unit)
        pipe.execute()

    def release_on(self, pipe: Pipeline, job_id: str, unit: str) -> None:
        """Queue the release on ``pipe`` (so it shares a round trip with the job's finish)."""
        lease = self.lease_key(job_id, unit)
        with self._lock:
            holder = self._held.pop(lease, "")
        self._release(keys=[lease, self.starts_key(job_id, unit)], args=[holder], client=pipe)

    def renew_for_processes(self, units: list[tuple[str, str, int]]) -> int:
        """Extend the lease of each (job, unit, pid) while process ``pid`` of this host holds it and runs (the
        worker's main process, for its pool's children); answers how many were extended."""
        running = [(self.lease_key(job, unit), holder_prefix(pid)) for job, unit, pid in units if process_running(pid)]
        if not running:
            return 0
        leases, prefixes = zip(*running, strict=True)
        return int(self._renew_for(keys=list(leases), args=[self._ttl_ms, *prefixes]))

    def _ensure_renewer(self) -> None:
        # Started lazily in the process that runs units (a prefork child), and again after a fork.
        if self._renewer is not None and self._renewer_pid == os.getpid() and self._renewer.is_alive():
            return
        self._renewer_pid = os.getpid()
        self._renewer = threading.Thread(target=self._renew_forever, name="movierec-lease-renewer", daemon=True)
        self._renewer.start()

    def _renew_forever(self) -> None:
        interval = self._ttl_ms / 3000
        while True:
            time.sleep(interval)
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                pipe = self._r.pipeline(transaction=False)
                for lease, holder in held.items():
                    self._swap(keys=[lease], args=[holder, "", self._ttl_ms], client=pipe)
                for (lease, _), renewed in zip(held.items(), pipe.execute(), strict=True):
                    if not renewed and lease in self._held:  # not merely released in the meantime
                        log.warning("lease %s was lost while its unit ran (paused past its TTL?)", lease)
            except redis.RedisError:
                log.warning("lease renewal failed; retrying", exc_info=True)
