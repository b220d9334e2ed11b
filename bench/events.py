"""Events benchmark (issue #27): how many events a second ``POST /v1/events`` takes in, and what they cost a
recommendation's latency while they flow.

    python -m bench.events [--seconds 10] [--batch 500] [--senders 2] [--rate 5000] [--rounds 3]

A fresh ``movierec up`` stack (embedded Redis, fsync on every write, the API with its default processes, a CPU
worker of 2 processes) trains two models on ml-latest-small (the hybrid and the seed recipe) and runs an A/B
test between them, so every event is checked, logged and credited to a variant: the costliest path. Answers to
real users give the events their recommendation ids (impressions of every item, clicks on some).

1. Intake: ``--senders`` threads post batches of ``--batch`` events as fast as they are answered, for
   ``--seconds``: events a second, and each batch's latency.
   Also the CPU the stack's processes (the API's, the workers', Redis's) spent per event taken in.
2. Side by side, ``--rounds`` times in turn: one client's recommendations for ``--seconds`` (bench.serving's
   load) with nothing else running, then again while a process of its own posts ``--rate`` events a second
   (batches of ``--batch``, paced), then while a process of its own burns the CPU those events cost (phase 1's
   CPU per event, a batch's worth at a time, ``--rate / --batch`` times a second) and posts nothing: the control
   that tells the events' own cost (a lock, Redis held, a request stuck behind a batch) from the cost of any
   work of that size on these cores. Reported: each phase's p50 and p99, and the events a second taken in.

The load generator shares the machine's cores with the stack, as a user's would on one host.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from cli.stack import Stack
from shared.infra.settings import Settings

from .common import HTTP, fresh_stack, machine, percentile, train_on, warm
from .serving import SMALL, _load


def model(api: str, pipeline: dict[str, Any]) -> str:
    """The version a finished pipeline trained."""
    return str(HTTP.get(f"{api}/v1/jobs/{pipeline['id']}/result", timeout=30).json()["model"])


def answers(api: str, users: int) -> list[dict[str, Any]]:
    """Real answers (k = 10) to ``users`` random users: what events cite."""
    out = []
    for user in random.Random(0).sample(range(1, 611), users):
        answer = HTTP.post(f"{api}/v1/recommendations?wait=30", json={"user_id": user, "k": 10}, timeout=60).json()
        out.append({"user_id": user, **answer})
    return out


def batches(served: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Request bodies of ``size`` events each: every answer's impressions, and a click on its first two items."""
    events = []
    for answer in served:
        rid, user = answer["recommendation_id"], answer["user_id"]
        for i, item in enumerate(answer["items"]):
            events.append(
                {"type": "impression", "user_id": user, "movie_id": item["movie_id"], "recommendation_id": rid}
            )
            if i < 2:
                events.append(
                    {"type": "click", "user_id": user, "movie_id": item["movie_id"], "recommendation_id": rid}
                )
    return [{"events": events[lo : lo + size]} for lo in range(0, len(events) - size + 1, size)]


def post(api: str, body: dict[str, Any]) -> float:
    t = time.perf_counter()
    r = HTTP.post(f"{api}/v1/events", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["credited"] == len(body["events"]), r.text
    return time.perf_counter() - t


def intake(api: str, bodies: list[dict[str, Any]], *, senders: int, seconds: float) -> tuple[int, list[float], float]:
    """(events taken in, batch latencies, wall seconds) of ``senders`` threads posting as fast as answered."""
    taken, latencies, lock = [0], [], threading.Lock()
    stop = time.monotonic() + seconds

    def send(offset: int) -> None:
        i = offset
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            took = post(api, body)
            with lock:
                taken[0] += len(body["events"])
                latencies.append(took)
            i += senders

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return taken[0], latencies, time.perf_counter() - began


def server_cpu_s(stack: Stack) -> float:
    """CPU seconds (user and system) the stack's processes have spent so far: Redis, and every child of ``movierec
    up`` with its own children (the API's workers, the worker pools)."""
    redis = stack.redis.process if stack.redis is not None else None
    roots = [c.process.pid for c in stack.children] + ([redis.pid] if redis is not None else [])
    total = 0.0
    for pid in roots:
        with suppress(psutil.Error):
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                with suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
    return total


class Burner:
    """Burns ``burst_s`` of CPU ``per_s`` times a second in a process of its own, posting nothing: the events'
    CPU without the events."""

    def __init__(self, burst_s: float, per_s: float) -> None:
        self.burst_s, self.per_s = burst_s, per_s
        context = multiprocessing.get_context("fork")
        self.stopping = context.Event()
        self.process = context.Process(target=self._run, daemon=True)

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.stopping.set()
        self.process.join(timeout=60)

    def _run(self) -> None:
        due = time.perf_counter()
        while not self.stopping.is_set():
            began = time.process_time()
            while time.process_time() - began < self.burst_s:
                sum(i * i for i in range(200))
            due += 1 / self.per_s
            if self.stopping.wait(max(0.0, due - time.perf_counter())):
                break


class Paced:
    """Posts ``rate`` events a second (batches from ``bodies``, encoded once) from a process of its own until
    stopped, so the recommendation client measured beside it shares no interpreter lock with the sender."""

    def __init__(self, api: str, bodies: list[dict[str, Any]], rate: float) -> None:
        self.api, self.rate = api, rate
        self.payloads = [(json.dumps(body).encode(), len(body["events"])) for body in bodies]
        context = multiprocessing.get_context("fork")
        self.stopping = context.Event()
        self.report: Any = context.Queue()
        self.process = context.Process(target=self._run, daemon=True)
        self.taken, self.seconds = 0, 0.0

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.stopping.set()
        self.taken, self.seconds = self.report.get(timeout=60)
        self.process.join(timeout=60)

    def _run(self) -> None:
        where = urlsplit(self.api)
        conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
        began, taken, i = time.perf_counter(), 0, 0
        while not self.stopping.is_set():
            payload, n = self.payloads[i % len(self.payloads)]
            if self.stopping.wait(max(0.0, began + (taken + n) / self.rate - time.perf_counter())):
                break
            conn.request("POST", "/v1/events", body=payload, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            taken, i = taken + n, i + 1
        self.report.put((taken, time.perf_counter() - began))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=500, help="events a request (1..1000)")
    parser.add_argument("--senders", type=int, default=2, help="threads posting events in the intake phase")
    parser.add_argument("--rate", type=float, default=5000.0, help="events a second while recommendations run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=400, help="answers the events cite")
    parser.add_argument("--redis-fsync", choices=("always", "everysec"), default="always",
                        help="the embedded Redis's appendfsync (movierec up's: always)")  # fmt: skip
    args = parser.parse_args()
    print(machine(f"{args.senders} sender thread(s) of {args.batch} events, one recommendation client",
                  f"appendfsync {args.redis_fsync}"))  # fmt: skip
    settings = Settings(key_prefix="bench-events", data_root=SMALL.parent, redis_fsync=args.redis_fsync)
    with fresh_stack(settings, Path(tempfile.mkdtemp(prefix="bench-events-"))) as stack:
        api = stack.api_url
        seed, default = (model(api, train_on(api, SMALL.name, **options)) for options in ({"recipe": "seed"}, {}))
        experiment = {"name": "bench", "variants": [{"model": default}, {"model": seed}]}
        assert HTTP.post(f"{api}/v1/experiments", json=experiment, timeout=30).status_code == 201
        warm(api)
        bodies = batches(answers(api, args.users), args.batch)
        cpu_before = server_cpu_s(stack)
        taken, latencies, wall = intake(api, bodies, senders=args.senders, seconds=args.seconds)
        per_event = (server_cpu_s(stack) - cpu_before) / taken
        p50, p99 = statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000
        print(f"intake: {taken / wall:,.0f} events/s ({taken:,} in {wall:.1f} s), a batch of {args.batch}: "
              f"p50 {p50:.0f} ms, p99 {p99:.0f} ms; the stack's CPU {per_event * 1e6:.1f} us an event, "
              f"{per_event * args.rate:.1%} of a core at {args.rate:,.0f} events/s")  # fmt: skip
        for round_ in range(1, args.rounds + 1):
            for phase in ("alone", "with events", "with a burner"):
                side: Paced | Burner | None = None
                if phase == "with events":
                    side = Paced(api, bodies, args.rate)
                elif phase == "with a burner":
                    side = Burner(per_event * args.batch, args.rate / args.batch)
                if side:
                    side.start()
                got, errors, elapsed = _load(api, clients=1, seconds=args.seconds, key=None)
                rate = ""
                if side:
                    side.stop()
                if isinstance(side, Paced):
                    rate = f", events {side.taken / side.seconds:,.0f}/s"
                print(f"round {round_}, recommendations {phase:<13}: "
                      f"{len(got) / elapsed:.0f} answers/s, p50 {statistics.median(got) * 1000:.1f} ms, "
                      f"p99 {percentile(got, 0.99) * 1000:.1f} ms, errors {len(errors)}{rate}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
