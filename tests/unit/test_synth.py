"""Generated MovieLens-format data: readable by the ingest path and shaped like the real thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cli.synth import (
    GENOME_TAGS,
    RATING_PROBABILITIES,
    TAG_VOCABULARY,
    SynthSpec,
    _Taste,
    taste_clusters,
    write_synthetic,
)
from shared.ml import baselines
from shared.ml.evaluate import EASE_MAX_BYTES, metrics, popular_scorer, recommend, temporal_split
from shared.ml.movielens import read_catalogue, read_ratings


def test_synthetic_directory_is_ingestible_and_shaped(tmp_path: Path) -> None:
    spec = SynthSpec(movies=4000, users=500, ratings=60_000, genome=True, seed=3)
    counts = write_synthetic(tmp_path, spec)
    movies = pd.read_csv(tmp_path / "movies.csv")
    ratings = pd.read_csv(tmp_path / "ratings.csv")
    assert len(movies) == 4000 and len(ratings) == 60_000 == counts["ratings"]
    assert not ratings.duplicated(["userId", "movieId"]).any()
    assert ratings.userId.is_monotonic_increasing
    assert set(ratings.rating.unique()) <= set(np.arange(0.5, 5.01, 0.5))

    share = movies.genres.str.split("|").explode().value_counts() / len(movies)
    assert abs(share["Drama"] - 0.42) < 0.03 and abs(share["Comedy"] - 0.27) < 0.03

    per_movie = ratings.movieId.value_counts()
    top_share = per_movie.iloc[: len(per_movie) // 100].sum() / len(ratings)
    assert top_share > 0.15  # Zipf-like: the top 1 % of movies hold a large share of ratings

    genome = pd.read_csv(tmp_path / "genome-scores.csv")
    assert genome.tagId.nunique() == GENOME_TAGS
    assert len(genome) == counts["genome_movies"] * GENOME_TAGS

    c = read_catalogue(tmp_path, tags_per_movie=5)
    r = read_ratings(tmp_path / "ratings.csv", c.movie_ids)
    assert c.tag_source == "genome+tags"
    assert r.rows_read == 60_000 and c.dropped < 0.1 * 4000


def test_same_seed_same_files(tmp_path: Path) -> None:
    spec = SynthSpec(movies=300, users=50, ratings=2000, seed=11)
    write_synthetic(tmp_path / "a", spec)
    write_synthetic(tmp_path / "b", spec)
    for name in ("movies.csv", "ratings.csv", "tags.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _ease_over_popular(directory: Path) -> float:
    """EASE's NDCG@10 over most-popular's on the per-user temporal split of a generated directory."""
    frame = pd.read_csv(directory / "ratings.csv")
    ids = np.unique(frame.movieId)
    rows = np.searchsorted(ids, frame.movieId.to_numpy())
    split = temporal_split(
        frame.userId.to_numpy(), rows, frame.rating.to_numpy(), frame.timestamp.to_numpy(), n_movies=len(ids)
    )
    ease = baselines.fit("EASE", split.train, {}, seed=0, max_bytes=EASE_MAX_BYTES).score
    ndcg = {name: metrics(recommend(scorer, split, k=10), split, k=10)["ndcg"]
            for name, scorer in (("popular", popular_scorer(split)), ("ease", ease))}  # fmt: skip
    return ndcg["ease"] / ndcg["popular"]


def test_taste_gives_a_recommender_structure_to_find_and_the_plain_generator_none(tmp_path: Path) -> None:
    # The plain generator draws who rates what from activity x popularity only: EASE can do no better than the
    # most popular list. With --taste, users like a few clusters and drift between two preferences: it can.
    sizes = {"movies": 1000, "users": 400, "ratings": 30_000, "seed": 2}
    write_synthetic(tmp_path / "plain", SynthSpec(**sizes))
    write_synthetic(tmp_path / "taste", SynthSpec(**sizes, taste=True))
    assert _ease_over_popular(tmp_path / "plain") < 1.1
    assert _ease_over_popular(tmp_path / "taste") > 1.3


def test_taste_data_is_ingestible_shaped_and_the_same_for_the_same_seed(tmp_path: Path) -> None:
    spec = SynthSpec(movies=1200, users=300, ratings=20_000, genome=True, seed=7, taste=True)
    counts = write_synthetic(tmp_path / "a", spec)
    write_synthetic(tmp_path / "b", spec)
    for name in ("movies.csv", "ratings.csv", "tags.csv", "genome-scores.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    ratings = pd.read_csv(tmp_path / "a" / "ratings.csv")
    assert len(ratings) == 20_000 == counts["ratings"] and not ratings.duplicated(["userId", "movieId"]).any()
    assert ratings.userId.is_monotonic_increasing
    histogram = ratings.rating.value_counts(normalize=True).sort_index().to_numpy()
    assert np.abs(histogram - RATING_PROBABILITIES / RATING_PROBABILITIES.sum()).max() < 0.01  # ml-latest's stars
    c = read_catalogue(tmp_path / "a", tags_per_movie=5)
    assert read_ratings(tmp_path / "a" / "ratings.csv", c.movie_ids).rows_read == 20_000
    # Tags follow the clusters: every tag of a movie is a word of its cluster's share of the vocabulary.
    tags = pd.read_csv(tmp_path / "a" / "tags.csv")
    block = tags.tag.str.removeprefix("tag ").astype(int) // (TAG_VOCABULARY // taste_clusters(spec.movies))
    assert (block.groupby(tags.movieId).nunique() == 1).all()


def test_users_of_taste_like_a_few_clusters_and_drift_between_two_preferences() -> None:
    rng = np.random.default_rng(1)
    spec = SynthSpec(movies=2000, users=100, ratings=1, seed=1, taste=True)
    taste = _Taste.draw(spec, rng)
    popularity = np.full(spec.movies, 1 / spec.movies)
    users = np.repeat(np.arange(spec.users), 2000)
    early = taste.pick(users, np.zeros(len(users)), popularity, rng)
    late = taste.pick(users, np.ones(len(users)), popularity, rng)

    def clusters_of(picks: np.ndarray) -> np.ndarray:  # (users, clusters) share of each user's picks
        counts = np.zeros((spec.users, taste.clusters))
        np.add.at(counts, (users, taste.cluster[picks]), 1)
        return np.asarray(counts / counts.sum(axis=1, keepdims=True))

    a, b = clusters_of(early), clusters_of(late)
    again = clusters_of(taste.pick(users, np.zeros(len(users)), popularity, rng))
    drift = 0.5 * np.abs(a - b).sum(axis=1).mean()  # total variation between a user's early and late picks
    noise = 0.5 * np.abs(a - again).sum(axis=1).mean()  # the same between two early draws
    assert drift > 2 * noise  # measured: 0.165 against 0.058
    # A user's picks concentrate on a few clusters: their top three hold over four times an even share (0.46
    # measured, a third of the picks being mainstream ones).
    assert np.sort(a, axis=1)[:, -3:].sum(axis=1).mean() > 4 * 3 / taste.clusters
