"""Batch recommendations: users per second of ``POST /v1/jobs/recommend-batch``, by worker processes and by tree.

    python -m bench.batch [--data DIR] [--recipe hybrid] [--k 10] [--users all|N] [--workers 1,2] [--repeat 1]
                          [--state DIR] [--baseline TREE]

Data: a MovieLens directory (default ml-latest-small); the notebook's scale is ``movierec synth /tmp/ml-27m
--movies 58000 --users 283000 --ratings 27000000 --genome --seed 1`` and ``--data /tmp/ml-27m``. A ``movierec up``
stack (embedded Redis, fsync on every write) runs the pipeline (``--recipe``) and activates its model; with
``--state DIR`` the stack's data dir is DIR and is kept, so a later run over the same data and recipe reuses the
model (at the notebook's scale ingest and pipeline take minutes). Then, for each round of ``--repeat``, each tree
and each worker count (``--workers``), the stack is started again over the same Redis with the CPU worker at that
many processes and one batch job answers ``--users`` (``all``, or the dataset's first N) with ``k`` movies each.

Trees: the one this file is in, and with ``--baseline TREE`` another checkout (``git worktree add /tmp/baseline
<commit>``) run with the same virtualenv. Each stack is its tree's own ``movierec up``, started in the tree with
the tree first on ``PYTHONPATH``, so supervisor, API and workers run that tree's code over the same Redis and
model. The trees alternate which goes first from round to round. The first job of each
tree is downloaded (``?format=npy``) and the two compared row for row: the same users, movies and scores.

Printed per run: the job's users per second (its own wall time, started to finished: the first shard a
process takes loads the model, which counts), its shards' (the users over the seconds the shards spent
answering, summed over processes: one process's rate with the model loaded) and the 1-minute load average
before and after (the cores are shared); then the median of each (tree, workers) and the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

from shared.infra.settings import Settings

from .common import REPO, commit_of, machine, tree_stack, wait_job

SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
PREFIX = "bench-batch"
STATE_FILE = "bench-batch.json"
"""In a ``--state`` dir: the data, recipe, model and dataset of the model trained there."""
RESULT_TTL_S = 3600
"""How long a stack may take to stop (its own grace period is 20 s a process) before its group is killed."""


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
    result["job"] = job["id"]
    return result


def stack_env(settings: Settings) -> dict[str, str]:
    """The settings each tree's ``movierec up`` runs with (bench/common.py ``tree_stack``)."""
    return {"MOVIEREC_KEY_PREFIX": settings.key_prefix, "MOVIEREC_DATA_ROOT": str(settings.data_root),
            "MOVIEREC_RESULT_TTL_S": str(settings.result_ttl_s)}  # fmt: skip


def trained(api: str, run_dir: Path, data: Path, recipe: str, timeout_s: float) -> dict[str, Any]:
    """The model this state dir holds for ``data`` and ``recipe`` (``STATE_FILE``), else a new pipeline's."""
    state = run_dir / STATE_FILE
    wanted = {"data": str(data), "recipe": recipe}
    if state.exists():
        known: dict[str, Any] = json.loads(state.read_text())
        active = requests.get(f"{api}/v1/models", timeout=30).json().get("active")
        if {k: known.get(k) for k in wanted} == wanted and active == known["model"]:
            print(f"# reused: model {known['model']} of {known['dataset']} ({state})", flush=True)
            return known
    result = pipeline(api, data, recipe, timeout_s)
    known = {**wanted, "model": result["model"], "dataset": result["dataset"]}
    state.write_text(json.dumps(known))
    return known


def npy_of(api: str, job_id: str) -> np.ndarray:
    r = requests.get(f"{api}/v1/jobs/{job_id}/result", params={"format": "npy"}, timeout=600)
    r.raise_for_status()
    array: np.ndarray = np.load(io.BytesIO(r.content), allow_pickle=False)
    return array


def compare(ours: np.ndarray, theirs: np.ndarray) -> str:
    """How two trees' rows differ: not at all, or in which users' rows."""
    if ours.tobytes() == theirs.tobytes():
        return f"identical: {len(ours):,} rows, every user, movie, rank and score the same"
    if len(ours) == len(theirs):
        differ = np.unique(ours["user_id"][ours != theirs])
    else:  # the users whose row counts differ
        mine = dict(zip(*(a.tolist() for a in np.unique(ours["user_id"], return_counts=True)), strict=True))
        other = dict(zip(*(a.tolist() for a in np.unique(theirs["user_id"], return_counts=True)), strict=True))
        differ = np.array(sorted(u for u in mine.keys() | other.keys() if mine.get(u) != other.get(u)))
    return f"DIFFERENT: {len(ours):,} vs {len(theirs):,} rows; {len(differ):,} users differ, e.g. {differ[:5].tolist()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=SMALL, help="a MovieLens directory")
    parser.add_argument("--recipe", default="hybrid", help="the pipeline's recipe (default %(default)s)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", default="all", help="'all' or N: the dataset's first N users")
    parser.add_argument("--shard-users", type=int, default=None, help="users per shard (default the API's)")
    parser.add_argument("--workers", default="1,2", help="worker process counts, in the order run")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the trees and --workers")
    parser.add_argument(
        "--state", type=Path, default=None, help="the stack's data dir, kept (default: a temporary one)"
    )
    parser.add_argument("--baseline", type=Path, default=None, help="another tree to run side by side")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each job")
    args = parser.parse_args()
    data = args.data.resolve()
    counts = [int(n) for n in args.workers.split(",")]
    trees = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    print(machine(f"data {data.name}, k {args.k}, users {args.users}, workers {args.workers} x {args.repeat}"))
    print("# trees: " + ", ".join(f"{name} {path} ({commit_of(path)})" for name, path in trees.items()))
    # Parts of the jobs run here expire after an hour, not the default TTL: repeated runs would pile them up.
    settings = Settings(data_root=data.parent, key_prefix=PREFIX, result_ttl_s=RESULT_TTL_S)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(t, n): [] for t in trees for n in counts}
    firsts: dict[str, np.ndarray] = {}
    with ExitStack() as cleanup:
        run_dir = args.state or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="movierec-batch-")))
        run_dir.mkdir(parents=True, exist_ok=True)
        with tree_stack(REPO, run_dir, stack_env(settings), cpu_workers=max(counts)) as stack:
            model = trained(stack.api, run_dir, data, args.recipe, args.timeout)
            users = users_of(stack.api, model["dataset"], args.users)
        body: dict[str, Any] = {"users": users, "k": args.k}
        if args.shard_users:
            body["shard_users"] = args.shard_users
        for round_ in range(args.repeat):
            names = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
            for name, n in ((name, n) for name in names for n in counts):
                started = time.perf_counter()
                with tree_stack(trees[name], run_dir, stack_env(settings), cpu_workers=n) as stack:
                    api = stack.api
                    up = time.perf_counter() - started
                    load = os.getloadavg()[0]
                    result = run_batch(api, body, args.timeout)
                    result["load"] = (load, os.getloadavg()[0])
                    if len(trees) > 1 and name not in firsts:
                        firsts[name] = npy_of(api, result["job"])
                runs[(name, n)].append(result)
                print(
                    f"round {round_ + 1}, {name}, {n} worker process{'es' if n > 1 else ''}: {result['users']:,} "
                    f"users, {result['rows']:,} rows in {result['job_seconds']:.1f} s: "
                    f"{result['users'] / result['job_seconds']:,.0f} users/s; shards "
                    f"{result['users'] / result['shard_seconds']:,.0f} users/s a process "
                    f"({len(result['parts'])} shards; stack start {up:.0f} s; load {load:.2f} -> "
                    f"{result['load'][1]:.2f})",
                    flush=True,
                )
    if len(firsts) == 2:
        print(f"# rows, this tree against the baseline: {compare(firsts['this'], firsts['baseline'])}")
    report(runs, trees, counts)
    return 0


def report(runs: dict[tuple[str, int], list[dict[str, Any]]], trees: dict[str, Path], counts: list[int]) -> None:
    """The median users/s of each (tree, workers), the workers' ratio within a tree and the trees' ratio."""
    medians = {key: statistics.median(r["users"] / r["job_seconds"] for r in rs) for key, rs in runs.items()}
    loads = [load for rs in runs.values() for r in rs for load in r["load"]]
    for name in trees:
        line = ", ".join(f"{n} process{'es' if n > 1 else ''} {medians[(name, n)]:,.0f} users/s" for n in counts)
        print(f"# median, {name}: {line}")
        if len(counts) >= 2:
            ratio = medians[(name, counts[-1])] / medians[(name, counts[0])]
            print(f"# ratio, {name}: {counts[-1]} : {counts[0]} processes = {ratio:.2f}x")
    if "baseline" in trees:
        ratios = ", ".join(f"{n} process{'es' if n > 1 else ''} "
                           f"{medians[('this', n)] / medians[('baseline', n)]:.2f}x" for n in counts)  # fmt: skip
        print(f"# this tree : baseline = {ratios}")
    print(f"# 1-minute load average around the jobs: {min(loads):.2f} to {max(loads):.2f}")


if __name__ == "__main__":
    sys.exit(main())
