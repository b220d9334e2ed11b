"""A served model's index queries against another revision's ``shared/ml/index.py``, side by side: every user's
query with what they rated left out, and queries filtered to a share of the catalogue; and a sequence model's
query (its network's forward) against that revision's ``shared/ml/sequence.py``.

    python -m bench.scan [--recipes sequence,hybrid,ials] [--baseline-rev REV] [--rounds 3] [--epochs N]
    python -m bench.scan --synthetic 58000x128

A fresh ``movierec up`` stack trains each recipe on ml-latest-small (``--epochs`` overrides the sequence
recipe's 20, for a quicker look) without activating it; this process then loads each model as an interactive
worker does (``load_serving``: its movie vectors, its index with ties) and builds the same index with
``--baseline-rev``'s ``MovieIndex`` (default 737c942: the graph search widened to the whole graph before an
exact scan, which read every vector out of hnswlib each time). Both answer, in alternating order, ``--rounds``
times, on one thread:

    users     each of the 610 users' query (the model's own: a sequence model's network, a fold-in, a profile
              sum) with the movies they rated left out, k = 10: what a recommendation by user id asks the index
    filtered  200 queries (a random user's) with 1 %, 10 %, 50 % and 90 % of the movies allowed (a filter's
              mask), k = 10

    forward   (``sequence`` only) each user's query vector from their last 50 ratings in time order, by this
              tree's ``SequenceNet`` and the revision's, over the same weights

``--synthetic NxD`` instead checks the exact scan's threshold (``EXACT_SHARE`` of the movies) at another scale,
with no stack: N clustered vectors of D floats (300 centres, unit noise at half their spread, 8,000 rows copied
onto others as movies with the same descriptors are), an index built as a version's is, then queries (a mean
of 30 rows) with 100 to 15,000 of the movies nearest them left out (drawn from the nearest twice as many, so
the graph search must dig), each answered by the graph search alone and by the scan, 15 times: the median of
each, and which one the threshold picks.

Printed per recipe and kind: median, p99 and max milliseconds of each revision, and how many answers differ
(the exact scan's are exact; the graph search's approximate); for the forward, the largest difference between
the two revisions' vectors.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from shared.infra.settings import Settings
from shared.logic.services import Services
from shared.logic.serving import load_serving
from shared.ml.recommend import ServingModel, UserRatings, user_query
from shared.ml.sequence import time_order

from .common import HTTP, fresh_stack, machine, train_on
from .similarity import revision

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
SHARES = (0.01, 0.1, 0.5, 0.9)
FILTERED = 200


def queries(model: ServingModel) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each user's (query vector, allowed mask: everything but what they rated)."""
    out = []
    for j in range(len(model.user_ids)):
        ratings: UserRatings = model.stored_ratings(int(model.user_ids[j]))
        allowed = np.ones(len(model.embeddings), dtype=bool)
        allowed[ratings.rows] = False
        out.append((user_query(model, ratings), allowed))
    return out


def timed(index: Any, asked: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[float], list[list[int]]]:
    """Seconds and rows of each query, k = 10."""
    seconds, answers = [], []
    for vector, allowed in asked:
        t = time.perf_counter()
        rows, _ = index.query(vector, 10, allowed=allowed)
        seconds.append(time.perf_counter() - t)
        answers.append(rows.tolist())
    return seconds, answers


def forwards(model: ServingModel, before: ModuleType, rounds: int) -> None:
    """Each user's sequence query by this tree's network and ``before``'s, alternating, ``rounds`` times."""
    assert model.sequence is not None
    nets = {"this tree": model.sequence, "baseline": before.SequenceNet(model.sequence.w)}
    histories = []
    for j in range(len(model.user_ids)):
        ratings = model.stored_ratings(int(model.user_ids[j]))
        histories.append(ratings.rows[time_order(ratings.rows, ratings.times)])
    times: dict[str, list[float]] = {name: [] for name in nets}
    vectors: dict[str, list[np.ndarray]] = {}
    for r in range(rounds):
        for name in list(nets) if r % 2 == 0 else list(nets)[::-1]:
            vectors[name] = []
            for history in histories:
                t = time.perf_counter()
                vectors[name].append(nets[name].query(model.embeddings, history))
                times[name].append(time.perf_counter() - t)
    gap = max(float(np.abs(a - b).max()) for a, b in zip(vectors["this tree"], vectors["baseline"], strict=True))
    cells = [f"{name} median {statistics.median(s) * 1e6:.0f} us" for name, s in times.items()]
    print(f"{'sequence forward':28s} {' | '.join(cells)}; largest difference {gap:.1e}")


def compare(label: str, ours: Any, theirs: Any, asked: list[tuple[np.ndarray, np.ndarray]], rounds: int) -> None:
    times: dict[str, list[float]] = {"this tree": [], "baseline": []}
    answers: dict[str, list[list[int]]] = {}
    for r in range(rounds):
        pairs = [("this tree", ours), ("baseline", theirs)]
        for name, index in pairs if r % 2 == 0 else pairs[::-1]:
            seconds, answers[name] = timed(index, asked)
            times[name].extend(seconds)
    differ = sum(a != b for a, b in zip(answers["this tree"], answers["baseline"], strict=True))
    cells = []
    for name, seconds in times.items():
        ms = np.array(seconds) * 1000
        cells.append(f"{name} median {statistics.median(ms):.3f} p99 {np.percentile(ms, 99):.2f} max {ms.max():.1f}")
    print(f"{label:28s} {' | '.join(cells)} ms; {differ} of {len(asked)} answers differ")


def synthetic(shape: str) -> None:
    """The graph search against the exact scan on generated vectors (``--synthetic``)."""
    from shared.ml.index import EXACT_SHARE, IndexParams, MovieIndex

    n, d = (int(x) for x in shape.lower().split("x"))
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, d)).astype(np.float32)
    vectors = (centres[rng.integers(300, size=n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    vectors[rng.integers(n, size=n // 7)] = vectors[rng.integers(n, size=n // 7)]
    index = MovieIndex.build(vectors, IndexParams()).with_ties(rng.integers(0, 1000, n)).with_scan()
    print(f"# {n} movies, {index.groups} vectors of {d}; the threshold: {EXACT_SHARE * n:.0f} left out")
    for left_out in [c for c in (100, 300, 500, 1000, 1800, 3000, 6000, 15000) if 2 * c <= n]:
        graph, scan = [], []
        for _ in range(15):
            query = vectors[rng.integers(n, size=30)].mean(axis=0)
            nearest = np.argsort(-(vectors @ query))[: 2 * left_out]
            allowed = np.ones(n, dtype=bool)
            allowed[rng.choice(nearest, left_out, replace=False)] = False
            t = time.perf_counter()
            index.search(query, 10, allowed=allowed)
            graph.append(time.perf_counter() - t)
            t = time.perf_counter()
            index.scan(query, 10, allowed=allowed)
            scan.append(time.perf_counter() - t)
        picked = "scan" if index.scan_beats_search(10 + left_out) else "graph"
        print(
            f"{left_out:6d} left out: graph {statistics.median(graph) * 1e3:6.2f} ms, "
            f"scan {statistics.median(scan) * 1e3:6.2f} ms; the threshold picks the {picked}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="sequence,hybrid,ials")
    parser.add_argument("--baseline-rev", default="737c942")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="the sequence recipe's epochs (default: the recipe's)")
    parser.add_argument("--synthetic", metavar="NxD", help="the scan's threshold on N generated vectors of D floats")
    args = parser.parse_args()
    threadpool_limits(1)  # as an interactive worker's pool process
    if args.synthetic:
        print(machine("one thread"))
        synthetic(args.synthetic)
        return 0
    print(machine(f"baseline {args.baseline_rev}"))
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        root = Path(tmp)
        before: ModuleType = revision(args.baseline_rev, root, "shared/ml/index.py")
        network = revision(args.baseline_rev, root, "shared/ml/sequence.py")
        (root / "data").mkdir()
        shutil.copytree(SMALL, root / "data" / SMALL.name)
        settings = Settings(key_prefix="bench-scan", data_root=root / "data")
        with fresh_stack(settings, root / "stack") as stack:
            svc = Services.from_settings(stack.settings)
            rng = np.random.default_rng(0)
            for recipe in args.recipes.split(","):
                extra = {"epochs": args.epochs} if args.epochs and recipe == "sequence" else {}
                state = train_on(stack.api_url, SMALL.name, recipe=recipe, activate=False, **extra)
                version = HTTP.get(f"{stack.api_url}{state['result_url']}", timeout=30).json()["model"]
                model = load_serving(svc.artifacts, svc.models, version)
                ours = model.index
                params = before.IndexParams(**ours.params.as_dict())
                theirs = before.MovieIndex(ours._index, ours.group, dim=ours.dim, params=params).with_ties(
                    np.bincount(model.ratings_movie, minlength=len(model.embeddings))
                )
                asked = queries(model)
                print(f"# {recipe}: {len(model.embeddings)} movies, {ours.groups} vectors, {ours.params.space}")
                if model.sequence is not None:
                    forwards(model, network, args.rounds)
                compare(f"{recipe} users", ours, theirs, asked, args.rounds)
                for share in SHARES:
                    picked = rng.integers(len(asked), size=FILTERED)
                    masks = [(asked[i][0], rng.random(len(model.embeddings)) < share) for i in picked.tolist()]
                    compare(f"{recipe} filtered {share:.0%}", ours, theirs, masks, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
