"""Recommendation latency over HTTP, side by side with another tree: idle, on a slow disk, beside batch work.

    python -m bench.latency [--baseline TREE] [--seconds 20] [--rounds 2]

For this tree and, with ``--baseline``, another checkout (``git worktree add /tmp/baseline <commit>``, run with
this virtualenv: bench/common.py ``tree_stack``): a fresh ``movierec up`` of that tree (embedded Redis with
``appendfsync always``, 2 CPU worker processes) trains the default pipeline on ml-latest-small; then one client
(``http.client``, one kept-alive connection) posts ``{"user_id": u}`` with ``?wait=30`` for ``--seconds`` in
each phase:

    idle        nothing else runs
    slow disk   a thread here writes 4 MiB every 10 ms (400 MB/s, a quarter of a core) on the disk the stack's
                Redis appends to, with an fsync every 512 MiB: on ext4 each fsync of Redis's then flushes those
                dirty pages too, and waits (a probe's median fsync is printed: 3-7 ms here, against about
                1 ms on the idle disk)
    busy        a batch of all users and a baselines evaluation run on the same stack (submitted at the start
                of the phase, and again whenever one finishes)

Printed per tree and phase: answers per second, p50 and p99 latency, and the ratios (busy / idle and slow disk /
idle; this tree / the baseline). The trees alternate which goes first from round to round; medians over rounds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import requests

from .common import REPO, commit_of, machine, percentile, train_on, tree_stack, warm

SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
PHASES = ("idle", "slow disk", "busy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baseline", type=Path, default=None, help="another tree to run side by side")
    parser.add_argument("--seconds", type=float, default=20.0, help="each phase's length")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(machine("one client, ?wait=30, embedded Redis with appendfsync always"))
    trees = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    for name, tree in trees.items():
        print(f"# {name}: {tree} at {commit_of(tree)}")
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            for phase, figures in measure(trees[name], args.seconds).items():
                runs.setdefault((name, phase), []).append(figures)
                rate, p50, p99 = figures
                print(f"round {round_ + 1}, {name:8s} {phase:9s}: {rate:6.0f} answers/s, p50 {p50 * 1000:6.2f} ms, "
                      f"p99 {p99 * 1000:6.2f} ms; load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    report(runs, list(trees))
    return 0


def measure(tree: Path, seconds: float) -> dict[str, tuple[float, float, float]]:
    """One tree's fresh stack through the three phases: (answers/s, p50 s, p99 s) of each."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    env = {"MOVIEREC_KEY_PREFIX": "latency", "MOVIEREC_DATA_ROOT": str(SMALL.parent), "MOVIEREC_REDIS_FSYNC": "always"}
    out = {}
    with tree_stack(tree, run_dir, env, cpu_workers=2) as stack:
        model = train_on(stack.api, SMALL.name)
        dataset = requests.get(f"{stack.api}/v1/jobs/{model['id']}/result", timeout=30).json()["dataset"]
        warm(stack.api)
        with disk(run_dir, hog=False) as idle_fsync:
            out["idle"] = load(stack.api, seconds)
        with disk(run_dir, hog=True) as slow_fsync:
            out["slow disk"] = load(stack.api, seconds)
        fsyncs = f"idle {idle_fsync() * 1000:.1f} ms, slow disk {slow_fsync() * 1000:.1f} ms"
        print(f"#   a probe's fsync (median): {fsyncs}", flush=True)
        with batch_work(stack.api, dataset):
            out["busy"] = load(stack.api, seconds)
    return out


def load(api: str, seconds: float) -> tuple[float, float, float]:
    """One client for ``seconds``: (answers per second, p50, p99). An answer not ready within ``?wait=30`` (202)
    counts with the time it took, and is printed; any other status fails the run."""
    where = urlsplit(api)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
    rng = random.Random(7)
    latencies = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        body = json.dumps({"user_id": rng.randint(1, 610)})
        t = time.perf_counter()
        conn.request("POST", "/v1/recommendations?wait=30", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read()
        assert response.status in (200, 202), text
        latencies.append(time.perf_counter() - t)
        if response.status == 202:
            print(f"#   not answered within 30 s: {text[:120]!r}", flush=True)
    conn.close()
    return len(latencies) / (time.perf_counter() - began), percentile(latencies, 0.5), percentile(latencies, 0.99)


@contextmanager
def disk(directory: Path, *, hog: bool) -> Iterator[Callable[[], float]]:
    """While inside, with ``hog``: 4 MiB written every 10 ms on ``directory``'s disk; answers the median fsync a
    small probe write saw meanwhile."""
    stop = threading.Event()
    probes: list[float] = []

    def write() -> None:
        block = os.urandom(4 << 20)
        with (directory / "hog").open("wb") as out:
            while not stop.wait(0.01):
                out.write(block)
                if out.tell() > 512 << 20:
                    out.flush()
                    os.fsync(out.fileno())
                    out.seek(0)

    def probe() -> None:
        with (directory / "probe").open("ab") as out:
            while not stop.wait(0.2):
                out.write(b"x")
                out.flush()
                t = time.perf_counter()
                os.fsync(out.fileno())
                probes.append(time.perf_counter() - t)

    threads = [threading.Thread(target=probe, daemon=True)]
    if hog:
        threads.append(threading.Thread(target=write, daemon=True))
    for thread in threads:
        thread.start()
    try:
        yield lambda: statistics.median(probes) if probes else float("nan")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        (directory / "hog").unlink(missing_ok=True)


@contextmanager
def batch_work(api: str, dataset: str) -> Iterator[None]:
    """While inside: a batch of all users and a baselines evaluation keep running on the stack."""
    stop = threading.Event()
    bodies = {
        "/v1/jobs/recommend-batch": {"users": "all", "k": 10},
        "/v1/jobs/evaluate": {"dataset": dataset, "recipes": [], "baselines": ["most-popular", "item-kNN", "EASE"]},
    }

    def keep(path: str) -> None:
        while not stop.is_set():
            job = requests.post(f"{api}{path}", json=bodies[path], timeout=60).json()
            while not stop.wait(0.5):
                status = requests.get(f"{api}/v1/jobs/{job['id']}", timeout=60).json()["status"]
                if status not in ("queued", "running"):
                    break

    threads = [threading.Thread(target=keep, args=(path,), daemon=True) for path in bodies]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # the work has started
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def report(runs: dict[tuple[str, str], list[tuple[float, float, float]]], trees: list[str]) -> None:
    def median(name: str, phase: str, i: int) -> float:
        return statistics.median(figures[i] for figures in runs[(name, phase)])

    for name in trees:
        cells = [f"{phase} p50 {median(name, phase, 1) * 1000:.2f} ms p99 {median(name, phase, 2) * 1000:.2f} ms"
                 for phase in PHASES]  # fmt: skip
        print(f"# {name}: " + "; ".join(cells))
        print(f"#   busy / idle: p99 {median(name, 'busy', 2) / median(name, 'idle', 2):.2f}x; slow disk / idle: "
              f"p50 {median(name, 'slow disk', 1) / median(name, 'idle', 1):.2f}x")  # fmt: skip
    if "baseline" in trees:
        for phase in PHASES:
            print(f"# this / baseline, {phase}: p50 {median('this', phase, 1) / median('baseline', phase, 1):.2f}x, "
                  f"p99 {median('this', phase, 2) / median('baseline', phase, 2):.2f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
