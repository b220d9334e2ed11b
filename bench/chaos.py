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
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests

from cli.synth import SynthSpec, write_synthetic
from shared.infra.keys import dataset_artifact
from shared.infra.settings import Settings
from shared.logic.mining import TripletSpec, load_incidence
from shared.logic.services import Services
from shared.ml.mining import mine_range

from .common import fresh_stack, machine, wait_job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--worker-kill-every", type=float, default=4.0)
    parser.add_argument("--redis-kills", type=int, default=2)
    args = parser.parse_args()
    print(machine())

    run_dir = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    data = run_dir / "data"
    write_synthetic(data / "catalogue", SynthSpec(movies=2_000, users=300, ratings=20_000, seed=3))
    settings = Settings(key_prefix="chaos", data_root=data, lease_ttl_s=2, janitor_interval_s=1.0,
                        task_time_limit_s=20, visibility_timeout_s=30)  # fmt: skip
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
