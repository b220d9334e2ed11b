"""Recommendation quality under issue #11's protocol: baselines and today's default method, one table.

    python -m bench.quality [--data DIR] [--no-content] [--ease-max-gib 4]

Data: a MovieLens directory (default ml-latest-small). The catalogue is read as the pipeline's default
ingest reads it (5 tags per movie; movies with no descriptor dropped); ratings.csv is read here, timestamps
included, since a stored dataset does not keep them. Protocol, metrics and baselines: ``shared.ml.evaluate``.

Rows: random (seed 0), most-popular, item-kNN (50 neighbours), EASE (lambda 500) and, unless
``--no-content``, "notebook content": descriptors encoded by the bundled all-MiniLM-L6-v2 (cls pooling),
the Siamese projection trained (default TrainConfig) on uniform-min triplets of the whole catalogue (mined
from descriptors alone, so nothing of the test part reaches it), the user profile = rating/5-weighted mean
of the training part's raw vectors, projected; top 10 by exact cosine among the candidates. Seconds are
wall time on this machine: fitting plus recommending for every evaluated user (the content row includes
mining, encoding and training).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from shared.ml.evaluate import (
    EASE_MAX_BYTES,
    Scorer,
    Skipped,
    Split,
    ease_scorer,
    item_knn_scorer,
    metrics,
    popular_scorer,
    random_scorer,
    recommend,
    temporal_split,
)
from shared.ml.movielens import Catalogue, read_catalogue

from .common import machine

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
TAGS_PER_MOVIE = 5


def load(directory: Path) -> tuple[Catalogue, Split]:
    """The catalogue and the temporal split of ratings.csv over its movies (ratings of other movies dropped)."""
    catalogue = read_catalogue(directory, tags_per_movie=TAGS_PER_MOVIE)
    frame = pd.read_csv(directory / "ratings.csv", usecols=["userId", "movieId", "rating", "timestamp"])
    lookup = pd.Series(np.arange(len(catalogue.movie_ids)), index=catalogue.movie_ids)
    movie = frame["movieId"].map(lookup)
    known = movie.notna().to_numpy()
    split = temporal_split(
        frame["userId"].to_numpy()[known],
        movie.to_numpy()[known].astype(np.int64),
        frame["rating"].to_numpy()[known],
        frame["timestamp"].to_numpy()[known],
        n_movies=len(catalogue.movie_ids),
    )
    return catalogue, split


def content_scorer(catalogue: Catalogue, split: Split) -> Scorer:
    """Today's default method (see the module docstring), fitted without ratings, profiled on the training part."""
    import torch

    from shared.ml.encoder import load_encoder, mean_by_rows
    from shared.ml.mining import build_incidence, mine_range
    from shared.ml.recommend import project
    from shared.ml.training import TrainConfig, train

    inc = build_incidence(catalogue.desc_indptr, catalogue.desc_indices, catalogue.vocabulary)
    triplets = mine_range(inc, 0, inc.n, seed=42, strategy="uniform-min").triplets.astype(np.int64)
    encoder = load_encoder("all-MiniLM-L6-v2", "cls", torch.device("cpu"))
    raw = mean_by_rows(catalogue.desc_indptr, catalogue.desc_indices, encoder.encode_uncached(catalogue.vocabulary))
    result = train(raw, triplets, TrainConfig(), device=torch.device("cpu"))
    weight, bias = result.state["proj.weight"].numpy(), result.state["proj.bias"].numpy()
    projected = result.projected  # (n, hidden), unit length
    weights = split.train.multiply(1 / 5.0).tocsr()  # (u, n) rating / 5

    def score(rows: np.ndarray) -> np.ndarray:
        w = weights[rows]  # (b, n)
        mean = np.asarray(w @ raw) / np.asarray(w.sum(axis=1))  # (b, d): the notebook's profile, as the service's
        return np.asarray(project(mean, weight, bias) @ projected.T, dtype=np.float32)  # (b, n) cosine

    return score


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=SMALL, help="a MovieLens directory")
    parser.add_argument("--no-content", action="store_true", help="skip the notebook-content row (needs torch)")
    parser.add_argument("--ease-max-gib", type=float, default=EASE_MAX_BYTES / 2**30, help="EASE's memory budget")
    args = parser.parse_args()

    print(machine())
    start = time.perf_counter()
    catalogue, split = load(args.data)
    print(
        f"# {args.data.name}: {split.n_movies:,} movies, {split.train.nnz:,} training ratings of "
        f"{len(split.user_ids):,} users, {len(split.evaluated):,} evaluated, {int(split.cold.sum()):,} movies "
        f"unrated in training; split in {time.perf_counter() - start:.1f} s"
    )
    makers: list[tuple[str, Callable[[], Scorer]]] = [
        ("random", lambda: random_scorer(split, seed=0)),
        ("most-popular", lambda: popular_scorer(split)),
        ("item-kNN", lambda: item_knn_scorer(split)),
        ("EASE", lambda: ease_scorer(split, max_bytes=int(args.ease_max_gib * 2**30))),
    ]
    if not args.no_content:
        makers.append(("notebook content", lambda: content_scorer(catalogue, split)))

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


if __name__ == "__main__":
    sys.exit(main())
