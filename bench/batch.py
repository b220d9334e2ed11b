"""Batch recommendations: users per second of ``POST /v1/jobs/recommend-batch`` with 1 and 2 worker processes.

    python -m bench.batch [--data DIR] [--recipe hybrid] [--k 10] [--users all|N] [--workers 1,2] [--repeat 1]

Data: a MovieLens directory (default ml-latest-small); the notebook's scale is ``movierec synth /tmp/ml-27m
--movies 58000 --users 283000 --ratings 27000000 --genome --seed 1`` and ``--data /tmp/ml-27m``. A fresh
``movierec up`` stack (embedded Redis, fsync on every write) runs the pipeline (``--recipe``) and activates its
model; then, for each worker count in turn (``--workers``, each round of ``--repeat`` in that order), the CPU
worker is started with that many processes on the same Redis (the stack is stopped and started again over its
data directory) and one batch job answers ``--users`` (``all``, or the dataset's first N) with ``k`` movies each.

Printed per run: the job's users per second (its own wall time, started to finished: the first shard a
process takes loads the model, which counts) and its shards' (the users over the seconds the shards spent
answering, summed over processes: one process's rate with the model loaded); then the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from shared.infra.settings import Settings

from .common import fresh_stack, machine, wait_job

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
PREFIX = "bench-batch"


def job_seconds(job: dict[str, Any]) -> float:
    started, finished = (pd.Timestamp(job[k]) for k in ("started_at", "finished_at"))
    return float((finished - started).total_seconds())


def pipeline(api: str, data: Path, recipe: str, timeout_s: float) -> dict[str, Any]:
    r = requests.post(f"{api}/v1/pipelines", json={"path": data.name, "recipe": recipe}, timeout=30)
    r.raise_for_status()
    job = wait_job(api, r.json()["id"], timeout_s=timeout_s)
    if job["status"] != "succeeded":
        raise SystemExit(f"pipeline {job['status']}: {(job.get('error') or {}).get('message')}")
    result: dict[str, Any] = requests.get(f"{api}{job['result_url']}", timeout=30).json()
    print(f"# pipeline ({recipe}): model {result['model']} of {result['dataset']} in {job_seconds(job):.0f} s",
          flush=True)  # fmt: skip
    return result


def users_of(api: str, dataset: str, how: str) -> str | list[int]:
    """``all``, or the dataset's first N user ids (1..N in MovieLens and generated data)."""
    if how == "all":
        return "all"
    users = int(requests.get(f"{api}/v1/datasets/{dataset}", timeout=30).json()["counts"]["users"])
    return list(range(1, min(int(how), users) + 1))


def run_batch(api: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    r = requests.post(f"{api}/v1/jobs/recommend-batch", json=body, timeout=60)
    r.raise_for_status()
    job = wait_job(api, r.json()["id"], timeout_s=timeout_s)
    if job["status"] != "succeeded":
        raise SystemExit(f"batch {job['status']}: {(job.get('error') or {}).get('message')}")
    result: dict[str, Any] = requests.get(f"{api}{job['result_url']}", timeout=30).json()
    result["job_seconds"] = job_seconds(job)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=SMALL, help="a MovieLens directory")
    parser.add_argument("--recipe", default="hybrid", help="the pipeline's recipe (default %(default)s)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", default="all", help="'all' or N: the dataset's first N users")
    parser.add_argument("--shard-users", type=int, default=None, help="users per shard (default the API's)")
    parser.add_argument("--workers", default="1,2", help="worker process counts, in the order run")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over --workers")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each job")
    args = parser.parse_args()
    data = args.data.resolve()
    counts = [int(n) for n in args.workers.split(",")]
    print(machine(f"data {data.name}, k {args.k}, users {args.users}, workers {args.workers} x {args.repeat}"))
    settings = Settings(data_root=data.parent, key_prefix=PREFIX)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="movierec-batch-") as tmp:
        run_dir = Path(tmp)
        with fresh_stack(settings, run_dir, cpu_workers=max(counts)) as stack:
            model = pipeline(stack.api_url, data, args.recipe, args.timeout)
            users = users_of(stack.api_url, model["dataset"], args.users)
        body: dict[str, Any] = {"users": users, "k": args.k}
        if args.shard_users:
            body["shard_users"] = args.shard_users
        for round_ in range(args.repeat):
            for n in counts:
                started = time.perf_counter()
                with fresh_stack(settings, run_dir, cpu_workers=n) as stack:  # the same Redis, reloaded
                    up = time.perf_counter() - started
                    result = run_batch(stack.api_url, body, args.timeout)
                runs[n].append(result)
                print(
                    f"round {round_ + 1}, {n} worker process{'es' if n > 1 else ''}: {result['users']:,} users, "
                    f"{result['rows']:,} rows in {result['job_seconds']:.1f} s: "
                    f"{result['users'] / result['job_seconds']:,.0f} users/s; shards "
                    f"{result['users'] / result['shard_seconds']:,.0f} users/s a process "
                    f"({len(result['parts'])} shards; stack start {up:.0f} s)",
                    flush=True,
                )
    medians = {n: statistics.median(r["users"] / r["job_seconds"] for r in rs) for n, rs in runs.items()}
    line = ", ".join(f"{n} process{'es' if n > 1 else ''} {m:,.0f} users/s" for n, m in medians.items())
    print(f"# median: {line}")
    if len(counts) >= 2:
        print(f"# ratio {counts[-1]} : {counts[0]} processes = {medians[counts[-1]] / medians[counts[0]]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
