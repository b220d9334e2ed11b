"""Ingest benchmark: movierec's chunked ingest against a whole-file pandas read, side by side.

    python -m bench.ingest [DIR ...]        (default: ../shared/data/ml-latest-small)

For each MovieLens directory, each contender runs in a fresh process (so peak RSS is its own):

- ``movierec``: the whole ingest job body, ``logic.ingest.ingest``: hash the inputs, build descriptors,
  read ratings.csv in chunks into a per-user CSR, store every array in Redis (``REDIS_URL``, else an
  embedded redis-server), under a throwaway key prefix removed afterwards.
- ``pandas``: what a notebook does for the ratings alone: ``pd.read_csv`` of the whole file with default
  dtypes, map movieIds to catalogue rows, sort by user. Nothing stored.

Wall time is the median of ``--repeat`` runs; peak RSS is the process's ``VmHWM``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import cast

from .common import machine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ml-latest-small"


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _run_movierec(directory: Path, redis_url: str) -> dict[str, float]:
    from shared.infra.settings import Settings
    from shared.logic.ingest import DatasetOptions, ingest
    from shared.logic.services import Services

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    services = Services.from_settings(Settings(redis_url=redis_url, key_prefix=prefix, data_root=directory.parent))
    start = time.perf_counter()
    record, _ = ingest(
        services.datasets, directory, DatasetOptions(tags_per_movie=5), source=directory.name, progress=lambda *_: None
    )
    seconds = time.perf_counter() - start
    keys = list(services.redis.scan_iter(match=services.keys.everything, count=1000))
    sizes: list[int] = [int(cast(int, services.redis.memory_usage(k)) or 0) for k in keys]
    stored_mb = sum(sizes) / 2**20
    if keys:
        services.redis.delete(*keys)
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "ratings": record["counts"]["ratings"],
        "movies": record["counts"]["movies"],
        "stored_mb": stored_mb,
    }


def _run_pandas(directory: Path) -> dict[str, float]:
    import numpy as np
    import pandas as pd

    start = time.perf_counter()
    movies = pd.read_csv(directory / "movies.csv")
    ratings = pd.read_csv(directory / "ratings.csv")
    row_of = pd.Series(np.arange(len(movies)), index=movies.movieId)
    ratings["row"] = ratings.movieId.map(row_of)
    ratings = ratings.dropna(subset=["row"]).sort_values("userId", kind="stable")
    users = ratings.userId.unique()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "ratings": len(ratings), "users": len(users)}


def _one(kind: str, directory: Path, redis_url: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--one", kind, "--redis-url", redis_url, str(directory)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dirs", nargs="*", type=Path, default=[DEFAULT_DATA])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", choices=["movierec", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        run = _run_movierec(args.dirs[0], args.redis_url) if args.one == "movierec" else _run_pandas(args.dirs[0])
        print(json.dumps(run))
        return 0

    server = None
    redis_url = args.redis_url
    if not redis_url:
        from cli.stack import EmbeddedRedis

        server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="bench-redis-")))
        redis_url = server.start()
    try:
        print(machine())
        print(
            "| data | ratings | movierec ingest s | pandas read s | time ratio "
            "| movierec peak RSS MB | pandas peak RSS MB | RSS ratio | stored MB |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for directory in args.dirs:
            ours = [_one("movierec", directory, redis_url) for _ in range(args.repeat)]
            theirs = [_one("pandas", directory, redis_url) for _ in range(args.repeat)]
            t_ours = statistics.median(r["seconds"] for r in ours)
            t_theirs = statistics.median(r["seconds"] for r in theirs)
            m_ours = max(r["peak_rss_mb"] for r in ours)
            m_theirs = max(r["peak_rss_mb"] for r in theirs)
            print(
                f"| {directory.name} | {int(ours[0]['ratings']):,} | {t_ours:.2f} | {t_theirs:.2f} | "
                f"{t_theirs / t_ours:.2f}x | {m_ours:,.0f} | {m_theirs:,.0f} | {m_theirs / m_ours:.2f}x | "
                f"{ours[0]['stored_mb']:,.0f} |",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
