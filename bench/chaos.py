"""Chaos run: sharded mining jobs submitted over HTTP while workers and Redis are SIGKILLed and restarted.

    python -m bench.chaos [--jobs 300] [--worker-kill-every 4] [--redis-kills 2]

A fresh stack (embedded Redis with AOF and ``appendfsync always``, the API, a CPU worker with 2 processes, the
GPU-queue worker; leases of 2 s and a janitor sweeping every second, as a deployment that wants fast recovery
would set them) and a generated 2,000-movie catalogue. ``--jobs`` mining jobs with distinct seeds (8 shards
each) are submitted over HTTP at a steady pace; meanwhile the whole CPU worker (main process and pool) is
SIGKILLed every ``--worker-kill-every`` seconds and started again, and Redis is SIGKILLed and restarted on
its directory ``--redis-kills`` times. Submissions answered 503 during an outage are retried by the client.
At the end every job answered 202 must have succeeded with triplets byte-identical to an undisturbed
computation. Reported: jobs, kills, restarts, 503s, lost, and the wall time.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from cli.synth import SynthSpec, write_synthetic
from shared.infra.keys import dataset_artifact
from shared.infra.settings import Settings
from shared.logic.mining import TripletSpec, load_incidence
from shared.logic.services import Services
from shared.ml.mining import mine_range

from .common import REPO, commit_of, fresh_stack, machine, percentile, tree_stack, wait_job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--worker-kill-every", type=float, default=None, help="seconds (default 4; --load: 15)")
    parser.add_argument("--redis-kills", type=int, default=2)
    parser.add_argument("--load", action="store_true", help="the busy cluster, side by side with --baseline")
    parser.add_argument("--baseline", type=Path, default=None, help="--load: another tree to run side by side")
    parser.add_argument("--seconds", type=float, default=120.0, help="--load: how long the load lasts")
    parser.add_argument("--clients", type=int, default=8, help="--load: recommendation clients")
    args = parser.parse_args()
    print(machine())
    if args.load:
        return busy(args)
    args.worker_kill_every = args.worker_kill_every or 4.0

    run_dir = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    data = run_dir / "data"
    write_synthetic(data / "catalogue", SynthSpec(movies=2_000, users=300, ratings=20_000, seed=3))
    settings = Settings(key_prefix="chaos", data_root=data, lease_ttl_s=2, janitor_interval_s=1.0,
                        task_time_limit_s=20)  # fmt: skip
    with fresh_stack(settings, run_dir) as stack:
        api = stack.api_url
        job = requests.post(f"{api}/v1/datasets", json={"path": "catalogue"}, timeout=30).json()
        wait_job(api, job["id"])
        dataset = requests.get(f"{api}/v1/jobs/{job['id']}/result", timeout=30).json()["dataset"]

        accepted: dict[int, str] = {}
        unavailable = [0]
        done = threading.Event()

        def submit_all() -> None:
            for seed in range(1, args.jobs + 1):
                body = {"dataset": dataset, "seed": seed, "shard_size": 250}
                while True:  # a client retries a 503 (or a refused connection) until it is accepted
                    try:
                        r = requests.post(f"{api}/v1/jobs/triplets", json=body, timeout=30)
                    except requests.RequestException:
                        r = None
                    if r is not None and r.status_code == 202:
                        accepted[seed] = r.json()["id"]
                        break
                    assert r is None or r.status_code == 503, r.text
                    unavailable[0] += 1
                    time.sleep(0.2)
                time.sleep(0.05)
            done.set()

        began = time.perf_counter()
        submitter = threading.Thread(target=submit_all)
        submitter.start()
        worker_kills = redis_kills = 0
        revived: list[str] = []
        redis_every = max(1, args.jobs // (args.redis_kills + 1))
        while not done.is_set() or _unfinished(api, list(accepted.values())):
            time.sleep(args.worker_kill_every)
            stack.kill("cpu-worker", signal.SIGKILL)
            stack.respawn("cpu-worker")
            revived += [name for name, _ in stack.revive()]  # as `movierec up` does: what exited starts again
            worker_kills += 1
            if redis_kills < args.redis_kills and len(accepted) >= redis_every * (redis_kills + 1):
                assert stack.redis is not None and stack.redis.process is not None
                stack.redis.process.kill()
                stack.redis.process.wait()
                time.sleep(1.0)
                stack.redis.start()
                redis_kills += 1
        submitter.join()
        elapsed = time.perf_counter() - began

        svc = Services.from_settings(stack.settings)
        incidence = load_incidence(svc.artifacts, dataset)
        movie_ids = svc.artifacts.get_array(dataset_artifact(dataset, "movie_ids"))
        lost = differ = 0
        why: Counter[str] = Counter()
        for seed, job_id in accepted.items():
            final = requests.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
            if final["status"] != "succeeded":
                lost += 1
                why[f"{final['status']}: {(final.get('error') or {}).get('message', '')}"] += 1
                continue
            stored = svc.artifacts.get_array(TripletSpec(dataset=dataset, seed=seed, strategy="uniform-min").name)
            result = mine_range(incidence, 0, len(movie_ids), seed=seed, strategy="uniform-min")
            differ += stored.tobytes() != movie_ids[result.triplets].astype(np.int32).tobytes()
        print(f"{len(accepted)} jobs accepted (202), {unavailable[0]} submissions answered 503 and retried; "
              f"{worker_kills} CPU-worker SIGKILLs, {redis_kills} Redis SIGKILL+restarts, {len(revived)} exited "
              f"processes restarted {sorted(set(revived))}; "
              f"lost {lost}, results differing from an undisturbed run {differ}; {elapsed:.0f} s wall")  # fmt: skip
        for reason, count in why.most_common():
            print(f"  {count} x {reason}")
        return 0 if lost == 0 and differ == 0 else 1


def busy(args: argparse.Namespace) -> int:
    """``--load``: each tree through the same busy run; 0 when this tree failed no accepted job."""
    trees = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    outcomes = {}
    for name, tree in trees.items():
        print(f"# {name}: {tree} at {commit_of(tree)}; load average before {os.getloadavg()[0]:.1f}", flush=True)
        outcomes[name] = busy_run(tree, Path(tempfile.mkdtemp(prefix=f"bench-busy-{name}-")), args)
        print(f"{name}: {outcomes[name].line()}", flush=True)
        for reason, count in outcomes[name].why.most_common():
            print(f"  {count} x {reason}")
    return 0 if outcomes["this"].failed == 0 else 1


@dataclass
class Busy:
    """What one tree's busy run gave."""

    accepted: int = 0
    failed: int = 0
    answers: int = 0
    queued: int = 0
    errors: int = 0
    kills: int = 0
    latencies: list[float] = field(default_factory=list)
    why: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0

    def line(self) -> str:
        return (f"{self.accepted} accepted jobs, {self.failed} failed or lost; {self.answers} recommendations "
                f"answered 200 (p50 {percentile(self.latencies, 0.5) * 1000:.0f} ms, "
                f"p99 {percentile(self.latencies, 0.99) * 1000:.0f} ms), {self.queued} answered 202, "
                f"{self.errors} other answers; {self.kills} CPU-worker SIGKILLs; {self.wall_s:.0f} s wall")  # fmt: skip


def busy_run(tree: Path, run_dir: Path, args: argparse.Namespace) -> Busy:
    data = run_dir / "data"
    write_synthetic(data / "catalogue", SynthSpec(movies=2_000, users=300, ratings=20_000, seed=3))
    env = {"MOVIEREC_KEY_PREFIX": "busy", "MOVIEREC_DATA_ROOT": str(data), "MOVIEREC_LEASE_TTL_S": "2",
           "MOVIEREC_JANITOR_INTERVAL_S": "1", "MOVIEREC_TASK_TIME_LIMIT_S": "300",
           "MOVIEREC_VISIBILITY_TIMEOUT_S": "330"}  # fmt: skip
    out = Busy()
    with tree_stack(tree, run_dir, env, cpu_workers=2) as stack:
        api = stack.api
        model = _run(api, "/v1/pipelines", {"path": "catalogue", "epochs": 1, "recipe": "hybrid"})
        assert model["status"] == "succeeded", model
        dataset = requests.get(f"{api}/v1/jobs/{model['id']}/result", timeout=30).json()["dataset"]
        stop = threading.Event()
        lock = threading.Lock()
        rec_jobs: list[str] = []

        def client(seed: int) -> None:
            rng = random.Random(seed)
            session = requests.Session()
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    r = session.post(f"{api}/v1/recommendations?wait=30", json={"user_id": rng.randint(1, 300)},
                                     timeout=60)  # fmt: skip
                except requests.RequestException:
                    r = None
                took = time.perf_counter() - began
                with lock:
                    if r is not None and r.status_code == 200:
                        out.answers += 1
                        out.latencies.append(took)
                    elif r is not None and r.status_code == 202:
                        out.queued += 1
                        rec_jobs.append(r.json()["id"])
                    else:
                        out.errors += 1

        began = time.perf_counter()
        clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        for thread in clients:
            thread.start()
        jobs = [_submit(api, "/v1/pipelines", {"dataset": dataset, "epochs": 1, "seed": seed, "activate": False,
                                               "recipe": "hybrid"}) for seed in (11, 12)]  # fmt: skip
        jobs.append(_submit(api, "/v1/jobs/evaluate", {"dataset": dataset, "recipes": [], "shard_users": 10,
                                                       "baselines": ["most-popular", "item-kNN", "EASE"]}))  # fmt: skip
        every = args.worker_kill_every or 15.0
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            time.sleep(every)
            stack.kill_workers("cpu")
            out.kills += 1
        stop.set()
        for thread in clients:
            thread.join(timeout=90)
        for job_id in [*jobs, *rec_jobs]:  # every accepted job has finished: stage jobs finish before theirs
            _finished(api, job_id)
        out.accepted = len(rec_jobs) + sum(len(_listed(api, kind=kind)) for kind in BATCH_KINDS)
        for final in _listed(api, status="failed") + _listed(api, status="cancelled"):
            out.failed += 1
            error = final.get("error") or {}
            out.why[f"{final.get('kind')} {final.get('status')}: {error.get('message', '')}"] += 1
        out.wall_s = time.perf_counter() - began
    return out


def _submit(api: str, path: str, body: dict[str, Any]) -> str:
    r = requests.post(f"{api}{path}", json=body, timeout=60)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _run(api: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return wait_job(api, _submit(api, path, body), timeout_s=900)


BATCH_KINDS = ("ingest", "pipeline", "triplets", "encode", "train", "index", "evaluate")


def _listed(api: str, **query: str) -> list[dict[str, Any]]:
    return list(requests.get(f"{api}/v1/jobs", params={**query, "limit": 500}, timeout=30).json()["jobs"])


def _finished(api: str, job_id: str) -> dict[str, Any]:
    try:
        return wait_job(api, job_id, timeout_s=900)
    except TimeoutError:
        return {"status": "unfinished after 900 s", "id": job_id}


def _unfinished(api: str, ids: list[str]) -> bool:
    try:
        return any(
            requests.get(f"{api}/v1/jobs/{i}", timeout=30).json().get("status") not in ("succeeded", "failed")
            for i in ids
        )
    except (requests.RequestException, ValueError):
        return True


if __name__ == "__main__":
    sys.exit(main())
