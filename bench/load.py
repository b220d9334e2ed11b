"""Load test: a fresh stack under a mix of submissions, polls and recommendations for a few minutes.

    python -m bench.load [--seconds 180] [--clients 8]

A new ``movierec up`` stack (embedded Redis with AOF and ``appendfsync always``, the API, a CPU worker with 2
processes, the GPU-queue worker) runs the pipeline on ml-latest-small; then ``--clients`` threads
(``http.client``, a kept-alive connection each) draw operations at random for ``--seconds``:

    55 %  POST /v1/recommendations?wait=30 {"user_id"}        200 expected
    10 %  POST /v1/recommendations?wait=30 {"keywords"}       200
    10 %  POST /v1/jobs/encode {"texts"} (known strings)      202, then polled
     2 %  POST /v1/jobs/triplets {"seed": new}                202, then polled
    15 %  GET /v1/jobs/<an id this client submitted>          200
     5 %  GET /v1/jobs?limit=20                               200
     3 %  GET /v1/models                                      200

Any other status, or a connection error, is an error. At the end every job answered 202 must have
succeeded (nothing accepted is lost). Reported per operation: count, errors, p50 / p95 / p99 latency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import requests

from shared.infra.settings import Settings

from .common import fresh_stack, machine, train_on, wait_job

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
JSON = {"Content-Type": "application/json"}
KEYWORDS = [["war", "drama"], ["Children", "family", "animation"], ["comedy"], ["sci-fi", "space"]]

MIX = [
    ("recommend user", 55),
    ("recommend keywords", 10),
    ("submit encode", 10),
    ("submit triplets", 2),
    ("poll job", 15),
    ("list jobs", 5),
    ("list models", 3),
]


class Load:
    def __init__(self, api: str, dataset: str) -> None:
        self.where = urlsplit(api)
        self.dataset = dataset
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.accepted: list[str] = []
        self.lock = threading.Lock()
        self.seed = 1000

    def client(self, stop_at: float, rng: random.Random) -> None:
        conn = http.client.HTTPConnection(self.where.hostname or "127.0.0.1", self.where.port, timeout=60)
        mine: list[str] = []
        names, weights = zip(*MIX, strict=True)
        while time.monotonic() < stop_at:
            op = rng.choices(names, weights)[0]
            if op == "poll job" and not mine:
                op = "list jobs"
            method, path, body, expected = self._request(op, rng, mine)
            started = time.perf_counter()
            try:
                conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=JSON)
                response = conn.getresponse()
                text = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(self.where.hostname or "127.0.0.1", self.where.port, timeout=60)
                status, text = -1, repr(exc).encode()
            took = time.perf_counter() - started
            with self.lock:
                if status == expected:
                    self.latencies[op].append(took)
                    if status == 202:
                        job_id = json.loads(text)["id"]
                        self.accepted.append(job_id)
                        mine.append(job_id)
                else:
                    self.errors[op].append(f"{status}: {text[:200]!r}")
        conn.close()

    def _request(self, op: str, rng: random.Random, mine: list[str]) -> tuple[str, str, object, int]:
        """(method, path, JSON body, expected status) of one operation."""
        with self.lock:
            self.seed += 1  # a new seed per mining job: each mines for real
            seed = self.seed
        requests: dict[str, tuple[str, str, object, int]] = {
            "recommend user": ("POST", "/v1/recommendations?wait=30", {"user_id": rng.randint(1, 610)}, 200),
            "recommend keywords": ("POST", "/v1/recommendations?wait=30", {"keywords": rng.choice(KEYWORDS)}, 200),
            "submit encode": ("POST", "/v1/jobs/encode", {"texts": rng.choice(KEYWORDS)}, 202),
            "submit triplets": ("POST", "/v1/jobs/triplets", {"dataset": self.dataset, "seed": seed}, 202),
            "poll job": ("GET", f"/v1/jobs/{rng.choice(mine) if mine else ''}", None, 200),
            "list jobs": ("GET", "/v1/jobs?limit=20", None, 200),
            "list models": ("GET", "/v1/models", None, 200),
        }
        return requests[op]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    print(machine())

    settings = Settings(key_prefix="load", data_root=SMALL.parent)
    with fresh_stack(settings, Path(tempfile.mkdtemp(prefix="bench-load-"))) as stack:
        api = stack.api_url
        train_on(api, SMALL.name)
        datasets = requests.get(f"{api}/v1/datasets", timeout=30).json()
        dataset = str(datasets["datasets"][0]["id"])
        print(f"pipeline done; {args.clients} clients for {args.seconds:.0f} s ...", flush=True)

        load = Load(api, dataset)
        stop_at = time.monotonic() + args.seconds
        threads = [threading.Thread(target=load.client, args=(stop_at, random.Random(i))) for i in range(args.clients)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        finals = [wait_job(api, job_id) for job_id in load.accepted]
        lost = [f for f in finals if f["status"] != "succeeded"]

        total = sum(len(v) for v in load.latencies.values())
        errors = sum(len(v) for v in load.errors.values())
        rate, done = (total + errors) / elapsed, len(finals) - len(lost)
        print(f"{total + errors:,} requests in {elapsed:.0f} s ({rate:.0f}/s), errors {errors}; "
              f"{len(load.accepted):,} jobs accepted, {done:,} succeeded, lost {len(lost)}")  # fmt: skip
        print("| operation | requests | errors | p50 ms | p95 ms | p99 ms |")
        print("|---|---|---|---|---|---|")
        for op, _ in MIX:
            lat = sorted(load.latencies[op])
            if len(lat) < 2:
                continue
            q = statistics.quantiles(lat, n=100)
            print(f"| {op} | {len(lat) + len(load.errors[op]):,} | {len(load.errors[op])} | {q[49] * 1000:.1f} | "
                  f"{q[94] * 1000:.1f} | {q[98] * 1000:.1f} |")  # fmt: skip
        for op, errs in load.errors.items():
            for e in errs[:3]:
                print(f"error in {op}: {e}")
        return 0 if errors == 0 and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
