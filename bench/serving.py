"""Pipeline and serving benchmark: a fresh stack, the whole pipeline, then recommendations under load.

    python -m bench.serving [--seconds 15] [--clients 1,8,16] [--redis-fsync always,everysec]
                            [--pipeline '{"recipe": "ials"}'] [--tenant acme]

For each ``--redis-fsync`` mode (the embedded Redis's appendfsync; ``always`` is what ``movierec up`` runs):

1. A new ``movierec up`` stack (embedded Redis, API, a CPU worker with 2 processes, the GPU-queue worker)
   and a new, empty Redis: the full pipeline on ml-latest-small (the hybrid recipe, or ``--pipeline``'s
   options: another recipe, a light-user prior), timed from POST /v1/pipelines to
   ``succeeded`` (model loads included, nothing cached).
2. For each count in ``--clients``, that many threads on this machine (``http.client``, one kept-alive
   connection each) post ``{"user_id": u}`` with ``?wait=30`` for ``--seconds`` (users drawn at random); every
   answer must be 200. Reported: answers per second and latency percentiles, the load generator sharing the
   same two cores. One client shows the latency; more clients, the throughput once the cores are busy.

``--tenant NAME`` runs it all as a tenant of its own: the stack's API takes one key, ``NAME:admin:<key>``, and
every request sends it, so each answer pays the key check and is served from that tenant's keyspace (issue
#26); without it the API is open and serves the default tenant.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from shared.infra.settings import Settings

from .common import fresh_stack, machine, train_on, use_key, warm

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
JSON = {"Content-Type": "application/json"}


def _load(api: str, *, clients: int, seconds: float, key: str | None) -> tuple[list[float], list[str], float]:
    """``clients`` threads posting random users' queries for ``seconds``: (latencies of 200s, other answers, wall)."""
    users = list(range(1, 611))
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    where = urlsplit(api)
    headers = {**JSON, **({"Authorization": f"Bearer {key}"} if key else {})}

    def client() -> None:
        # http.client on a kept-alive connection: the lightest client, since it shares the cores being measured.
        conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
        rng = random.Random(threading.get_ident())
        while time.monotonic() < stop:
            t = time.perf_counter()
            conn.request("POST", "/v1/recommendations?wait=30", body=json.dumps({"user_id": rng.choice(users)}),
                         headers=headers)  # fmt: skip
            response = conn.getresponse()
            text = response.read()
            took = time.perf_counter() - t
            with lock:
                if response.status == 200:
                    latencies.append(took)
                else:
                    errors.append(text.decode(errors="replace"))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", default="1,8,16", help="comma-separated client counts, one phase each")
    parser.add_argument("--redis-fsync", default="always", help="comma-separated: always, everysec")
    parser.add_argument("--pipeline", default="{}", help='pipeline options as JSON, e.g. \'{"recipe": "ials"}\'')
    parser.add_argument("--tenant", help="serve as this tenant, with a key (default: the open API, tenant default)")
    args = parser.parse_args()
    print(machine())
    options = json.loads(args.pipeline)
    for mode in args.redis_fsync.split(","):
        _run(mode, clients=[int(c) for c in args.clients.split(",")], seconds=args.seconds, options=options,
             tenant=args.tenant)  # fmt: skip
    return 0


def _run(mode: str, *, clients: list[int], seconds: float, options: dict[str, object], tenant: str | None) -> None:
    print(f"# embedded Redis: appendfsync {mode}; pipeline {json.dumps({'recipe': 'hybrid', **options})}; "
          f"tenant {tenant or 'default (open API)'}")  # fmt: skip
    key = f"bench-{secrets.token_hex(16)}" if tenant else None
    keys = (f"{tenant}:admin:{key}",) if tenant else ()
    use_key(key)
    settings = Settings(key_prefix="bench", data_root=SMALL.parent, redis_fsync=mode, api_keys=keys)
    with fresh_stack(settings, Path(tempfile.mkdtemp(prefix="bench-serving-"))) as stack:
        api = stack.api_url
        start = time.perf_counter()
        train_on(api, SMALL.name, **options)
        print(f"pipeline on ml-latest-small, fresh stack and Redis: {time.perf_counter() - start:.1f} s wall")
        warm(api)
        for n in clients:
            latencies, errors, elapsed = _load(api, clients=n, seconds=seconds, key=key)
            q = statistics.quantiles(latencies, n=100)
            print(
                f"appendfsync {mode}, {n:2d} client(s), {elapsed:.0f} s: "
                f"{len(latencies) / elapsed:.0f} answers/s, p50 {q[49] * 1000:.1f} ms, p95 {q[94] * 1000:.1f} ms, "
                f"p99 {q[98] * 1000:.1f} ms, errors {len(errors)}"
            )


if __name__ == "__main__":
    sys.exit(main())
