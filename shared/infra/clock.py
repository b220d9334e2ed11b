"""The one clock every record and every timer reads: Redis ``TIME``, in the one format records carry.

Hosts' clocks drift apart (a worker 10 minutes ahead would write ``started_at`` 600 s after ``created_at``), and
Redis is the one place every process shares. A ``RedisClock`` measures the offset from this host's clock to
Redis's with ``PROBES`` ``TIME`` round trips, keeping the shortest one's (Cristian's method: the offset is then
within half of that round trip, its ``uncertainty_s``), and reads the local clock plus that offset, measuring
again at most every ``RESYNC_S``; so a timestamp costs no round trip. One probe was not enough on a loaded
machine: beside a test suite in four processes on two cores, a job's queued span of 30 ms read as 3 ms, its
creation time 27 ms off. Job timestamps (shared/jobs/store.py), ETAs (shared/jobs/progress.py) and the
janitor's marks read it; leases are TTLs that Redis itself counts down.

Records carry times as UTC, ISO 8601, milliseconds, ``Z`` (``iso``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import cast

import redis

log = logging.getLogger(__name__)

RESYNC_S = 60.0
"""How long a measured offset is trusted before the next ``TIME``."""
PROBES = 3
"""``TIME`` round trips a measurement makes: the shortest one sets the offset."""


def iso(epoch_s: float) -> str:
    """``epoch_s`` in the records' format."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """A records' timestamp back to epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def utcnow_iso() -> str:
    """This host's clock, for what no other host compares with (file names, logs)."""
    return iso(time.time())


class RedisClock:
    """Redis's clock, read locally (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, resync_s: float = RESYNC_S) -> None:
        self._r = client
        self._resync_s = resync_s
        self._offset = 0.0
        self._measured_at = float("-inf")  # monotonic
        self.uncertainty_s = float("inf")
        """How far the offset may be from the true one: half the round trip it was measured on (inf until then)."""
        self._lock = threading.Lock()

    def now(self) -> float:
        """Epoch seconds by Redis's clock."""
        if time.monotonic() - self._measured_at > self._resync_s:
            self._measure()
        return time.time() + self._offset

    def iso(self) -> str:
        return iso(self.now())

    def _measure(self) -> None:
        with self._lock:
            if time.monotonic() - self._measured_at <= self._resync_s:
                return  # another thread just did
            best: tuple[float, float] | None = None  # (round trip, offset)
            try:
                for _ in range(PROBES):
                    before = time.time()
                    seconds, micros = cast(tuple[int, int], self._r.time())
                    after = time.time()
                    if best is None or after - before < best[0]:
                        best = (after - before, seconds + micros / 1e6 - (before + after) / 2)
            except redis.RedisError:  # unreachable: keep the last offset (the caller's own write will say so)
                log.debug("clock: Redis TIME failed; keeping the last offset", exc_info=True)
            if best is None:
                return
            self._offset, self.uncertainty_s = best[1], best[0] / 2
            self._measured_at = time.monotonic()
