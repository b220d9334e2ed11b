"""The in-flight budget: bytes that requests being received hold, capped in total across every API process.

    API process A ─┐  reserve(id, bytes)  ──> one Lua script: drop expired leases, sum the holders, grant or refuse
    API process B ─┼─ renew(id)           ──> push the lease's end on (the body is still arriving)
                   └─ release(id)         ──> the request is done, whatever way (finally)

    <prefix>:uploads:in_flight          hash: holder id -> bytes held
    <prefix>:uploads:in_flight:expiry   sorted set: holder id -> Redis time its lease ends

A holder whose process dies (SIGKILL, OOM) never releases: its lease runs out ``lease_s`` after its last renewal
and the next ``reserve`` drops it, so a crash leaks the budget for a lease at most. Times are Redis's own
(``TIME``), so API hosts with skewed clocks agree.
"""

from __future__ import annotations

from typing import Any, cast

import redis

from shared.infra.redisconn import Script

_RESERVE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(gone) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local held = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do held = held + tonumber(v) end
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local want = tonumber(ARGV[2])
local others = held - mine
if want > mine and others + want > tonumber(ARGV[3]) then
  if mine > 0 then redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1]) end
  return {0, others + mine}
end
redis.call('HSET', KEYS[1], ARGV[1], want)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
return {1, others + want}
"""
"""KEYS: the hash, the expiry set. ARGV: holder id, the bytes it wants to hold in all, the cap, the lease in
seconds. Answers {granted 0/1, bytes held in all afterwards}. Growing past the cap is refused (what the holder
had, it keeps, its lease renewed); holding the same or less is always granted, and renews the lease."""


class InFlightBudget:
    """Bytes held by requests in flight under one hash and its expiry set (``Keys.uploads_in_flight``...)."""

    def __init__(self, client: redis.Redis, *, key: str, expiry_key: str) -> None:
        self._r = client
        self._keys = (key, expiry_key)
        self._reserve = Script(client, _RESERVE)

    def reserve(self, holder: str, nbytes: int, *, cap: int, lease_s: float) -> tuple[bool, int]:
        """Hold ``nbytes`` in all for ``holder`` (more than it held, or the same to renew its lease) if every
        holder's bytes stay within ``cap``; answers (granted, bytes held in all now)."""
        granted, held = cast(list[Any], self._reserve(keys=self._keys, args=[holder, int(nbytes), cap, lease_s]))
        return bool(granted), int(held)

    def release(self, holder: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hdel(self._keys[0], holder)
        pipe.zrem(self._keys[1], holder)
        pipe.execute()

    def held(self) -> int:
        """Bytes held in all, expired leases included until the next ``reserve`` drops them."""
        values = cast(list[bytes], self._r.hvals(self._keys[0]))
        return sum(int(v) for v in values)
