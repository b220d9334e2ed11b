"""Mining benchmark: the notebook's exact loop against ours, and 1 against 2 worker processes at scale.

    python -m bench.mining [--scale-movies 58000] [--skip-notebook] [--skip-coliked]

A. ml-latest-small (../shared/data): the notebook's exact method re-implemented as it was written
   (Python sets, a stable sort of every other movie per anchor, a random pick among the first 3) against
   ``shared.mining.mine_range`` in one process, same input, same machine, one after the other.
C. ml-latest-small again, from ratings: ``shared.ml.coliked`` (co-liked positives, popularity-weighted
   negatives, 5 per anchor), one process; the likes' build and the mining timed apart, triplets/s printed.
B. A generated ml-latest-scale catalogue (``movierec synth``: 58,000 movies, MovieLens genre frequencies,
   Zipf-like tags, genome tags for 22 % of movies): a real ``movierec up`` stack, the dataset ingested, then
   one mining job (uniform-min, shard 2000) timed from submission to ``succeeded`` over HTTP, with the CPU
   worker at 1 and then at 2 processes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from cli.synth import SynthSpec, write_synthetic
from shared.infra.settings import Settings
from shared.ml.mining import mine_range
from shared.ml.movielens import read_catalogue, read_ratings

from .common import fresh_stack, machine, wait_job

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"


def notebook_exact(descriptors: list[list[str]], seed: int) -> list[tuple[int, int, int]]:
    """The notebook's slow, exact method: for each anchor, sort every other movie by shared descriptors."""
    rng = random.Random(seed)
    sets = [{d.lower() for d in ds} for ds in descriptors]
    triplets = []
    for a, anchor in enumerate(sets):
        scored = [(len(anchor & other), b) for b, other in enumerate(sets) if b != a]
        by_similarity = sorted(scored, key=lambda sb: sb[0], reverse=True)
        positive = by_similarity[0][1]
        by_dissimilarity = sorted((sb for sb in scored if sb[1] != positive), key=lambda sb: sb[0])
        negative = rng.choice(by_dissimilarity[:3])[1]
        triplets.append((a, positive, negative))
    return triplets


def part_a(skip_notebook: bool) -> None:
    catalogue = read_catalogue(SMALL, tags_per_movie=5)
    from shared.ml.mining import build_incidence

    start = time.perf_counter()
    inc = build_incidence(catalogue.desc_indptr, catalogue.desc_indices, catalogue.vocabulary)
    ours = mine_range(inc, 0, inc.n, seed=42, strategy="notebook")
    t_ours = time.perf_counter() - start
    print(f"ml-latest-small, {inc.n:,} anchors: movierec (1 process) {t_ours:.3f} s", flush=True)
    if skip_notebook:
        return
    descriptors = [catalogue.descriptors(i) for i in range(inc.n)]
    start = time.perf_counter()
    reference = notebook_exact(descriptors, seed=42)
    t_notebook = time.perf_counter() - start
    same = sum(p == int(q) for (_, p, _), q in zip(reference, ours.triplets[:, 1], strict=True))
    print(f"ml-latest-small: notebook loop {t_notebook:.1f} s; ratio {t_notebook / t_ours:,.0f}x; "
          f"identical positives {same:,} of {inc.n:,}")  # fmt: skip


def part_coliked() -> None:
    from shared.ml import coliked

    catalogue = read_catalogue(SMALL, tags_per_movie=5)
    ratings = read_ratings(SMALL / "ratings.csv", catalogue.movie_ids)
    n = len(catalogue.movie_ids)
    start = time.perf_counter()
    likes = coliked.build_likes(ratings.indptr, ratings.movie_index, ratings.values, n)
    t_build = time.perf_counter() - start
    for block in (64, coliked.BLOCK, 256):
        start = time.perf_counter()
        result = coliked.mine_range(likes, 0, n, seed=42, block=block)
        t_mine = time.perf_counter() - start
        found = len(result.triplets)
        print(f"ml-latest-small co-liked, {n:,} anchors, {len(ratings.values):,} ratings, {likes.liked.nnz:,} likes, "
              f"block {block}: {found:,} triplets in {t_mine:.2f} s ({found / t_mine:,.0f} triplets/s; "
              f"likes built in {t_build:.3f} s)", flush=True)  # fmt: skip


def _time_mining(settings: Settings, root: Path, processes: int, name: str, repeat: int) -> tuple[float, float]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-stack-{processes}-"))
    with fresh_stack(settings, run_dir, cpu_workers=processes) as stack:
        api = stack.api_url

        def run(path: str, body: dict[str, object]) -> tuple[dict[str, object], float]:
            start = time.perf_counter()
            job = requests.post(f"{api}{path}", json=body, timeout=30).json()
            state = wait_job(api, job["id"])
            assert state["status"] == "succeeded", state
            return state, time.perf_counter() - start

        ingested, t_ingest = run("/v1/datasets", {"path": name})
        dataset = requests.get(f"{api}{ingested['result_url']}", timeout=30).json()["dataset"]
        # A new seed each time: the same seed would be answered from the stored array.
        times = [
            run("/v1/jobs/triplets", {"dataset": dataset, "shard_size": 2000, "seed": s})[1] for s in range(repeat)
        ]
        print(f"  {processes} process(es), each run: {', '.join(f'{t:.2f} s' for t in times)}", flush=True)
        return statistics.median(times), t_ingest


def part_b(movies: int, reuse: Path | None, repeat: int) -> None:
    name = f"synth-{movies}"
    if reuse is not None and (reuse / name / "movies.csv").is_file():
        root = reuse
    else:
        root = reuse or Path(tempfile.mkdtemp(prefix="bench-mining-"))
        start = time.perf_counter()
        write_synthetic(root / name, SynthSpec(movies=movies, users=20_000, ratings=3_000_000, genome=True, seed=1))
        print(f"generated {movies:,} movies in {time.perf_counter() - start:.0f} s", flush=True)
    catalogue = read_catalogue(root / name, tags_per_movie=5)
    print(f"catalogue: {len(catalogue.movie_ids):,} movies, {len(catalogue.desc_indices):,} descriptors, "
          f"{len(catalogue.vocabulary):,} unique, tags from {catalogue.tag_source}", flush=True)  # fmt: skip
    settings = Settings(key_prefix="bench", data_root=root)
    results = {}
    for processes in (1, 2):
        t_mine, _ = _time_mining(settings, root, processes, name, repeat)
        results[processes] = t_mine
        print(f"{movies:,} movies, CPU worker with {processes} process(es): mining job {t_mine:.2f} s wall "
              f"(median of {repeat})", flush=True)  # fmt: skip
    print(f"2 processes vs 1: {results[1] / results[2]:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale-movies", type=int, default=58_000)
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--skip-coliked", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--scale-dir", type=Path, default=None, help="keep (or reuse) the generated data here")
    parser.add_argument("--repeat", type=int, default=3, help="mining jobs per configuration (median)")
    args = parser.parse_args()
    print(machine())
    part_a(args.skip_notebook)
    if not args.skip_coliked:
        part_coliked()
    if not args.skip_scale:
        part_b(args.scale_movies, args.scale_dir, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
