"""Tests of the code that talks to Redis (stores, job store, leases, janitor, broker, run_job, durability).

Each runs on the session's Redis (``REDIS_URL``, else an embedded redis-server; tests/conftest.py) under a
key prefix of its own (``fresh_prefix``, or ``settings.key_prefix`` plus a suffix), or on a private
redis-server it starts. Pure tests, which need no Redis, belong in tests/unit.
"""
