"""Recommendation quality under issue #24's protocol: the evaluation job on a fresh stack, one table per split.

    python -m bench.quality [--data DIR] [--splits temporal,global] [--recipes seed,hybrid] [--baselines ...]
                            [--seed 42] [--cpu-workers 2] [--no-tune] [--json out.json] [--logs DIR]
    python -m bench.quality --pure [--data DIR] [--ease-max-gib 4]

Data: a MovieLens directory (default ml-latest-small). The default run starts a fresh ``movierec up`` stack
(embedded Redis, the API, a CPU worker with ``--cpu-workers`` processes, the GPU-queue worker) and sends one
``POST /v1/jobs/evaluate`` per split with the directory: ingested, split by time with a share of users held out
as new users, every setting of every row's grid scored on a validation split of the training part, the chosen
settings refitted on the training part and scored once on the test part and on the new users, each row with a
paired bootstrap interval against the baseline chosen on validation. It prints each job's table, wall time and
stage timeline (every child job and pipeline stage); ``--logs`` keeps the workers' logs (each task's time).
Rows: random (the run's seed), most-popular, item-kNN, EASE (skipped, saying why, over its memory budget),
RP3beta, iALS (shared/ml/baselines.py) and each recipe (shared/ml/recipes.py). A row's seconds are its fitting
and scoring summed over the shards (and for a recipe, its pipeline's wall time).

``--pure`` computes the baselines at their default settings in this process instead (``shared.ml``, ratings.csv
read here): no stack, no recipes, no tuning; the seconds are wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

from cli.evaluate import format_table
from shared.infra.settings import Settings
from shared.ml import baselines
from shared.ml.evaluate import (
    EASE_MAX_BYTES,
    Scorer,
    Skipped,
    Split,
    metrics,
    popular_scorer,
    random_scorer,
    recommend,
    temporal_split,
)
from shared.ml.movielens import read_catalogue

from .common import fresh_stack, machine, wait_job

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
TAGS_PER_MOVIE = 5


def run_job(args: argparse.Namespace) -> int:
    """The evaluation job on a fresh stack; prints its table."""
    data = args.data.resolve()
    body: dict[str, object] = {"path": data.name, "seed": args.seed, "shard_users": args.shard_users}
    if args.max_evaluated:
        body["max_evaluated"] = args.max_evaluated
    if args.recipes is not None:
        body["recipes"] = [r for r in args.recipes.split(",") if r]
    if args.baselines is not None:
        body["baselines"] = [b for b in args.baselines.split(",") if b]
    if args.no_tune:
        body["tune"] = False
    settings = Settings(data_root=data.parent, key_prefix="bench-quality")
    start = time.perf_counter()
    tables = []
    with tempfile.TemporaryDirectory(prefix="movierec-quality-") as run_dir, \
            fresh_stack(settings, Path(run_dir), cpu_workers=args.cpu_workers) as stack:  # fmt: skip
        up = time.perf_counter() - start
        for kind in args.splits.split(","):
            r = requests.post(f"{stack.api_url}/v1/jobs/evaluate", json={**body, "split": kind}, timeout=30)
            if r.status_code != 202:
                print(f"refused: {r.status_code} {r.text}", file=sys.stderr)
                return 1
            job = wait_job(stack.api_url, r.json()["id"], timeout_s=args.timeout)
            if job["status"] != "succeeded":
                print(f"evaluation {job['status']}: {(job.get('error') or {}).get('message')}", file=sys.stderr)
                return 1
            table = requests.get(f"{stack.api_url}{job['result_url']}", timeout=30).json()
            started, finished = (pd.Timestamp(job[k]) for k in ("started_at", "finished_at"))
            tables.append((table, (finished - started).total_seconds(), timeline(stack.api_url, job, table)))
        if args.logs is not None:  # the workers' logs outlive the stack's directory: each task's time is there
            shutil.copytree(Path(run_dir) / "logs", args.logs, dirs_exist_ok=True)
    for table, job_s, stages in tables:
        print(format_table(table))
        print(f"# the {table['protocol']['split']} job: {job_s:.0f} s; its stages (seconds from its start):")
        print("\n".join(stages) + "\n")
    if args.json:
        args.json.write_text(json.dumps([t for t, _, _ in tables], indent=1, sort_keys=True))
    took = time.perf_counter() - start
    print(f"# wall time: {took:.0f} s in all (stack start {up:.0f} s)")
    return 0


def timeline(api: str, job: dict[str, Any], table: dict[str, Any]) -> list[str]:
    """Where an evaluation's time went: each child job (ingest, validation, a recipe's pipeline; validation's own
    trainings and each pipeline's stages indented under it) as its start and end in seconds from the job's
    start; the scoring is what follows the last training."""
    origin = pd.Timestamp(job["started_at"])
    lines: list[str] = []

    def walk(jobs: dict[str, str], depth: int) -> None:
        children = {stage: requests.get(f"{api}/v1/jobs/{child}", timeout=30).json() for stage, child in jobs.items()}
        for stage, child in sorted(children.items(), key=lambda kv: str(kv[1].get("started_at"))):
            if not (child.get("started_at") and child.get("finished_at")):
                continue
            start, end = ((pd.Timestamp(child[k]) - origin).total_seconds() for k in ("started_at", "finished_at"))
            name = f"{'  ' * depth}{stage}"
            lines.append(f"#   {name:<40} {start:7.0f} -> {end:7.0f}  ({end - start:.0f} s)")
            if child.get("result_url") and child.get("kind") in ("evaluate", "pipeline"):
                inner = requests.get(f"{api}{child['result_url']}", timeout=30).json()
                walk(inner.get("jobs") or inner.get("stage_jobs") or {}, depth + 1)

    walk(table.get("jobs", {}), 0)
    finished = (pd.Timestamp(job["finished_at"]) - origin).total_seconds()
    lines.append(f"#   {'the job':<40} {0:7.0f} -> {finished:7.0f}")
    return lines


def load(directory: Path) -> Split:
    """The temporal split of ratings.csv over the catalogue as the default ingest reads it (movies with no
    descriptor dropped, and their ratings)."""
    catalogue = read_catalogue(directory, tags_per_movie=TAGS_PER_MOVIE)
    frame = pd.read_csv(directory / "ratings.csv", usecols=["userId", "movieId", "rating", "timestamp"])
    lookup = pd.Series(np.arange(len(catalogue.movie_ids)), index=catalogue.movie_ids)
    movie = frame["movieId"].map(lookup)
    known = movie.notna().to_numpy()
    return temporal_split(
        frame["userId"].to_numpy()[known],
        movie.to_numpy()[known].astype(np.int64),
        frame["rating"].to_numpy()[known],
        frame["timestamp"].to_numpy()[known],
        n_movies=len(catalogue.movie_ids),
    )


def default_baseline(split: Split, name: str, *, seed: int, max_bytes: int) -> Callable[[], Scorer]:
    """A maker of baseline ``name`` at its default setting, fitted on the split's training part."""
    return lambda: baselines.fit(name, split.train, baselines.DEFAULTS[name], seed=seed, max_bytes=max_bytes).score


def run_pure(args: argparse.Namespace) -> int:
    """The baselines in this process."""
    start = time.perf_counter()
    split = load(args.data)
    print(
        f"# {args.data.name}: {split.n_movies:,} movies, {split.train.nnz:,} training ratings of "
        f"{len(split.user_ids):,} users, {len(split.evaluated):,} evaluated, {int(split.cold.sum()):,} movies "
        f"unrated in training; split in {time.perf_counter() - start:.1f} s"
    )
    makers: list[tuple[str, Callable[[], Scorer]]] = [
        ("random", lambda: random_scorer(split, seed=args.seed)),
        ("most-popular", lambda: popular_scorer(split)),
        *(
            (name, default_baseline(split, name, seed=args.seed, max_bytes=int(args.ease_max_gib * 2**30)))
            for name in baselines.NAMES
        ),
    ]
    header = (
        f"{'recommender':<18} {'Recall@10':>9} {'NDCG@10':>8} {'HR@10':>6} {'cov@10':>7} {'cold rec':>8} "
        f"{'users':>6} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, make in makers:
        start = time.perf_counter()
        try:
            scorer = make()
        except Skipped as skipped:
            print(f"{name:<18} skipped: {skipped}")
            continue
        m = metrics(recommend(scorer, split, k=10), split, k=10)
        took = time.perf_counter() - start
        print(
            f"{name:<18} {m['recall']:>9.4f} {m['ndcg']:>8.4f} {m['hr']:>6.3f} {m['coverage']:>7.4f} "
            f"{m['cold_recall']:>8.4f} {m['users']:>6} {took:>8.1f}"
        )
    cold_users = int((split.relevant[:, split.cold].sum(axis=1) > 0).sum())
    print(f"# cold rec: recall over the {cold_users} users with a relevant test movie nobody rated in training")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=SMALL, help="a MovieLens directory")
    parser.add_argument("--recipes", default=None, help="comma-separated; '' for none (default: every recipe)")
    parser.add_argument("--baselines", default=None, help="comma-separated; '' for none (default: all six)")
    parser.add_argument("--splits", default="temporal,global", help="one job per split, in this order")
    parser.add_argument("--no-tune", action="store_true", help="every row at its default setting (no validation)")
    parser.add_argument("--json", type=Path, default=None, help="also write the tables here as JSON")
    parser.add_argument("--logs", type=Path, default=None, help="copy the stack's logs (every task's time) here")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--shard-users", type=int, default=200, help="evaluated users per scoring shard")
    parser.add_argument(
        "--max-evaluated", type=int, default=0, help="at most this many test users and per new-user slice (0: all)"
    )
    parser.add_argument("--cpu-workers", type=int, default=2, help="CPU worker processes of the stack")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job")
    parser.add_argument("--pure", action="store_true", help="the baselines in this process, no stack")
    parser.add_argument("--ease-max-gib", type=float, default=EASE_MAX_BYTES / 2**30, help="--pure: EASE's budget")
    args = parser.parse_args()
    print(machine(f"{args.cpu_workers} CPU worker processes" if not args.pure else "in-process"))
    return run_pure(args) if args.pure else run_job(args)


if __name__ == "__main__":
    sys.exit(main())
