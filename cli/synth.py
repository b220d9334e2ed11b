"""``movierec synth``: a MovieLens-format directory whose shape follows the real one.

It serves the scale checks (58,000 movies and 27M ratings, the notebook's ml-latest) and the demo's
offline fallback. What is shaped like MovieLens:

- genres drawn per movie with ml-latest's frequencies (Drama ~42 %, Comedy ~27 %, ...); a movie that
  draws none is "(no genres listed)", as about 7 % are in ml-latest;
- movie popularity, user activity and tag use are Zipf-like, so a few movies get most ratings and tags;
- rating values follow ml-latest's half-star histogram; rows are sorted by user, then movie;
- with ``--genome``, ~1,128 genome tags and dense relevance scores for a share of the movies (22 %, as
  ml-25m), each movie relevant to a few tags.

By default who rates what is activity x popularity and nothing else: no taste, so at scale item-kNN equals
most-popular and no recipe can be told from another. ``--taste`` draws the data from a model with known
structure instead (``_Taste``), so that a recommender has something to find:

- movies fall into taste clusters (``taste_clusters``); each cluster has signature genres and its own tags,
  so genres, tags and (with ``--genome``) genome relevance follow the clusters;
- a user has an early and a late preference over the clusters (sparse Dirichlet draws) and drifts from the
  first to the second over their own timeline: who rates what is activity x the user's preference at that
  moment x popularity within the cluster (and, for a share of picks, popularity alone);
- a rating's value rises with the user's affinity for the movie's cluster and the movie's quality, mapped to
  ml-latest's half-star histogram; timestamps run forward per user, so a temporal split meets the drift;
- tags are written by users about movies they would pick, with words of the movie's cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

GENRE_FREQUENCIES = {
    "Drama": 0.42, "Comedy": 0.27, "Thriller": 0.14, "Romance": 0.12, "Action": 0.12, "Horror": 0.10,
    "Documentary": 0.09, "Crime": 0.09, "Adventure": 0.07, "Sci-Fi": 0.06, "Children": 0.05,
    "Animation": 0.05, "Mystery": 0.05, "Fantasy": 0.05, "War": 0.03, "Western": 0.02, "Musical": 0.02,
    "Film-Noir": 0.01, "IMAX": 0.003,
}  # fmt: skip
RATING_VALUES = np.arange(0.5, 5.01, 0.5)
RATING_PROBABILITIES = np.array([0.016, 0.033, 0.016, 0.072, 0.049, 0.199, 0.129, 0.266, 0.082, 0.138])
GENOME_TAGS = 1128
GENOME_SHARE = 0.22
TAG_VOCABULARY = 1100
TAGS_PER_RATING = 0.04
_WRITE_CHUNK = 2_000_000


TASTE_DRIFT = 0.5
"""The share of a user's picks that come from their late preference by the end of their timeline."""
DUPLICATE_ROUNDS = 8
"""Rounds in which a repeated (user, movie) pick is drawn again by taste, before a free movie is drawn for it."""
PICK_CHUNK = 200_000
"""Picks drawn per step of ``_Taste.pick`` (its working arrays are this many rows by the clusters)."""
TASTE_MAINSTREAM = 0.3
"""The share of picks made by popularity alone, as most-popular is a strong baseline on real data."""
TASTE_ALPHA = 0.15
"""Dirichlet concentration of a user's preference over clusters: small, so a user likes a few clusters."""


@dataclass(frozen=True)
class SynthSpec:
    movies: int
    users: int
    ratings: int
    genome: bool = False
    seed: int = 0
    taste: bool = False


def taste_clusters(movies: int) -> int:
    """How many taste clusters ``--taste`` groups ``movies`` into: about 60 movies a cluster, 8 to 64."""
    return int(min(64, max(8, movies // 60)))


@dataclass(frozen=True)
class _Taste:
    """The hidden structure ``--taste`` draws from: each movie's cluster and quality, each user's early and
    late preference over the clusters (rows sum to 1)."""

    cluster: np.ndarray  # (movies,) int
    quality: np.ndarray  # (movies,) float
    early: np.ndarray  # (users, clusters) float
    late: np.ndarray  # (users, clusters) float

    @classmethod
    def draw(cls, spec: SynthSpec, rng: np.random.Generator) -> _Taste:
        k = taste_clusters(spec.movies)
        cluster = rng.choice(k, size=spec.movies, p=_zipf_weights(k, 0.5, rng))
        early = rng.dirichlet(np.full(k, TASTE_ALPHA), size=spec.users)
        late = 0.5 * early + 0.5 * rng.dirichlet(np.full(k, TASTE_ALPHA), size=spec.users)
        return cls(cluster, rng.normal(0.0, 1.0, size=spec.movies), early, late)

    @property
    def clusters(self) -> int:
        return int(self.early.shape[1])

    def pick(self, users: np.ndarray, when: np.ndarray, popularity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A movie for each (user, moment in their timeline 0..1): a cluster from the user's preference then,
        a movie of that cluster by popularity; or, for a ``TASTE_MAINSTREAM`` share, any movie by popularity."""
        late = rng.random(len(users)) < TASTE_DRIFT * when
        draw = rng.random(len(users))
        cluster = np.empty(len(users), dtype=np.int64)
        for lo in range(0, len(users), PICK_CHUNK):  # (chunk, clusters) at a time: 27M x 64 at once is 14 GB
            hi = min(lo + PICK_CHUNK, len(users))
            part = users[lo:hi]
            chosen = np.where(late[lo:hi, None], self.late[part], self.early[part])
            cluster[lo:hi] = (chosen.cumsum(axis=1) < draw[lo:hi, None]).sum(axis=1)
        cluster = np.minimum(cluster, self.clusters - 1)
        # Movies ordered by cluster; within each, cumulative popularity spread over [c, c + 1).
        order = np.argsort(self.cluster, kind="stable")
        weights = popularity[order]
        starts = np.searchsorted(self.cluster[order], np.arange(self.clusters + 1))
        ladder = np.empty(len(order))
        for c in range(self.clusters):
            lo, hi = starts[c], starts[c + 1]
            if hi > lo:
                ladder[lo:hi] = c + np.cumsum(weights[lo:hi]) / weights[lo:hi].sum()
        empty = starts[1:] == starts[:-1]
        cluster = np.where(empty[cluster], self.cluster[order[0]], cluster)  # no movie there: any one cluster
        spot = np.searchsorted(ladder, cluster + rng.random(len(users)) * 0.999999, side="right")
        picked = np.asarray(order[np.minimum(spot, len(order) - 1)])
        mainstream = rng.random(len(users)) < TASTE_MAINSTREAM  # what everyone watches, whatever their taste
        picked[mainstream] = rng.choice(len(popularity), size=int(mainstream.sum()), p=popularity)
        return picked

    def affinity(self, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
        """How much each user likes each movie: log preference for its cluster plus its quality."""
        return np.asarray(
            np.log(self.clusters * self.early[users, self.cluster[movies]] + 1e-3) + 0.5 * self.quality[movies]
        )


def _zipf_weights(n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    w: np.ndarray = 1.0 / np.arange(1, n + 1) ** s
    rng.shuffle(w)
    return np.asarray(w / w.sum(), dtype=np.float64)


def _tag_names(n: int) -> list[str]:
    return [f"tag {i:04d}" for i in range(n)]


def write_synthetic(out: Path, spec: SynthSpec) -> dict[str, int]:
    """Write movies, ratings, tags, links (and genome files) under ``out``; answers row counts."""
    if spec.ratings > spec.movies * spec.users:
        raise ValueError("more ratings than (movie, user) pairs")
    rng = np.random.default_rng(spec.seed)
    out.mkdir(parents=True, exist_ok=True)
    taste = _Taste.draw(spec, rng) if spec.taste else None
    movie_ids = _write_movies(out, spec, rng, taste)
    popularity = _zipf_weights(spec.movies, 1.0, rng)
    activity = _zipf_weights(spec.users, 0.6, rng)
    weights = {"movie_ids": movie_ids, "popularity": popularity, "activity": activity}
    if taste is None:
        _write_ratings(out, spec, rng, **weights)
        n_tags = _write_tags(out, spec, rng, **weights)
    else:
        _write_taste_ratings(out, spec, rng, taste, **weights)
        n_tags = _write_taste_tags(out, spec, rng, taste, **weights)
    counts = {"movies": spec.movies, "ratings": spec.ratings, "tags": n_tags}
    if spec.genome:
        counts["genome_movies"] = _write_genome(out, spec, rng, movie_ids, taste)
    return counts


def _write_movies(out: Path, spec: SynthSpec, rng: np.random.Generator, taste: _Taste | None) -> np.ndarray:
    movie_ids = np.sort(rng.choice(np.arange(1, spec.movies * 3 + 1), size=spec.movies, replace=False))
    names = list(GENRE_FREQUENCIES)
    frequency = np.array(list(GENRE_FREQUENCIES.values()))
    has = rng.random((spec.movies, len(names))) < frequency
    if taste is not None:  # each cluster's two or three signature genres, most of its movies have them
        signature = np.zeros((taste.clusters, len(names)), dtype=bool)
        for c in range(taste.clusters):
            signature[
                c, rng.choice(len(names), size=rng.integers(2, 4), replace=False, p=frequency / frequency.sum())
            ] = True
        has = np.where(signature[taste.cluster], rng.random(has.shape) < 0.8, rng.random(has.shape) < 0.3 * frequency)
    genres = ["|".join(n for n, h in zip(names, row, strict=True) if h) or "(no genres listed)" for row in has]
    years = rng.integers(1902, 2019, size=spec.movies)
    titles = [f"Synthetic Movie {m} ({y})" for m, y in zip(movie_ids, years, strict=True)]
    pd.DataFrame({"movieId": movie_ids, "title": titles, "genres": genres}).to_csv(out / "movies.csv", index=False)
    pd.DataFrame({"movieId": movie_ids, "imdbId": movie_ids + 100000, "tmdbId": movie_ids + 200000}).to_csv(
        out / "links.csv", index=False
    )
    return movie_ids


def _write_ratings(
    out: Path,
    spec: SynthSpec,
    rng: np.random.Generator,
    *,
    movie_ids: np.ndarray,
    popularity: np.ndarray,
    activity: np.ndarray,
) -> None:
    # (user, movie) pairs drawn by activity x popularity, deduplicated, topped up until there are enough.
    pairs = np.zeros(0, dtype=np.int64)
    while len(pairs) < spec.ratings:
        need = int((spec.ratings - len(pairs)) * 1.1) + 16
        users = rng.choice(spec.users, size=need, p=activity).astype(np.int64)
        movies = rng.choice(spec.movies, size=need, p=popularity).astype(np.int64)
        pairs = np.unique(np.concatenate([pairs, users * spec.movies + movies]))
        if len(pairs) < spec.ratings:
            # Saturated popular pairs: widen towards uniform draws so the loop always ends.
            popularity = 0.5 * popularity + 0.5 / spec.movies
            activity = 0.5 * activity + 0.5 / spec.users
    pairs = np.sort(rng.choice(pairs, size=spec.ratings, replace=False))
    user_of, movie_of = pairs // spec.movies, pairs % spec.movies
    del pairs
    values = rng.choice(RATING_VALUES, size=spec.ratings, p=RATING_PROBABILITIES / RATING_PROBABILITIES.sum())
    stamps = rng.integers(789_652_009, 1_537_799_250, size=spec.ratings)
    _write_ratings_csv(out, user_of, movie_ids[movie_of], values, stamps)


def _write_ratings_csv(
    out: Path, user_rows: np.ndarray, movie_ids: np.ndarray, values: np.ndarray, stamps: np.ndarray
) -> None:
    """ratings.csv from parallel arrays (user rows from 0, in the order to write), a chunk at a time."""
    with (out / "ratings.csv").open("w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for lo in range(0, len(user_rows), _WRITE_CHUNK):
            hi = lo + _WRITE_CHUNK
            chunk = pd.DataFrame(
                {"userId": user_rows[lo:hi] + 1, "movieId": movie_ids[lo:hi], "rating": values[lo:hi],
                 "timestamp": stamps[lo:hi]}
            )  # fmt: skip
            chunk.to_csv(f, header=False, index=False, float_format="%.1f")


def _write_taste_ratings(
    out: Path,
    spec: SynthSpec,
    rng: np.random.Generator,
    taste: _Taste,
    *,
    movie_ids: np.ndarray,
    popularity: np.ndarray,
    activity: np.ndarray,
) -> None:
    # Each user's count by activity; each rating's moment in its user's timeline; a pick for each; duplicates of
    # a (user, movie) pair drawn again, a little more uniformly each round so the loop always ends.
    per_user = np.bincount(rng.choice(spec.users, size=spec.ratings, p=activity), minlength=spec.users)
    cap = max(1, spec.movies // 2)  # the heaviest rater of ml-latest rated 40 % of its movies
    if spec.ratings > cap * spec.users:
        raise ValueError(f"--taste: more ratings than {cap:,} (half the movies) a user")
    per_user = np.minimum(per_user, cap)
    short = spec.ratings - int(per_user.sum())
    while short > 0:  # a capped user's excess goes to others with room
        room = np.flatnonzero(per_user < cap)
        extra = np.bincount(rng.choice(room, size=short), minlength=spec.users)
        per_user = np.minimum(per_user + extra, cap)
        short = spec.ratings - int(per_user.sum())
    users = np.repeat(np.arange(spec.users), per_user)
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    when = (np.arange(len(users)) - np.repeat(starts, per_user)) / np.maximum(np.repeat(per_user, per_user), 1)
    movies = taste.pick(users, when, popularity, rng)
    flat = popularity
    for _ in range(DUPLICATE_ROUNDS):
        again = _duplicates(users, movies, spec.movies)
        if not again.any():
            break
        flat = 0.5 * flat + 0.5 / spec.movies
        movies[again] = taste.pick(users[again], when[again], flat, rng)
    again = _duplicates(users, movies, spec.movies)
    if again.any():  # what taste could not place: a movie the user has not rated, at random
        movies[again] = _free_movies(users, movies, again, spec.movies, rng)
    score = taste.affinity(users, movies) + rng.normal(0.0, 0.8, size=len(users))
    cuts = np.quantile(score, np.cumsum(RATING_PROBABILITIES / RATING_PROBABILITIES.sum())[:-1])
    values = RATING_VALUES[np.searchsorted(cuts, score)]
    begin = rng.integers(789_652_009, 1_437_000_000, size=spec.users)
    span = rng.exponential(2 * 365 * 86_400.0, size=spec.users)
    stamps = np.minimum(begin[users] + (when * span[users]).astype(np.int64), 1_537_799_250)
    order = np.lexsort((movie_ids[movies], users))  # by user, then movie, as MovieLens is
    _write_ratings_csv(out, users[order], movie_ids[movies[order]], values[order], stamps[order])


def _duplicates(users: np.ndarray, movies: np.ndarray, n_movies: int) -> np.ndarray:
    """True for each (user, movie) row that repeats an earlier one."""
    key = users.astype(np.int64) * n_movies + movies
    order = np.argsort(key, kind="stable")
    again = np.zeros(len(key), dtype=bool)
    again[order[1:][key[order][1:] == key[order][:-1]]] = True
    return again


def _free_movies(
    users: np.ndarray, movies: np.ndarray, again: np.ndarray, n_movies: int, rng: np.random.Generator
) -> np.ndarray:
    """For the rows marked ``again``, movies their users have not rated in the other rows, drawn at random."""
    rows = np.flatnonzero(again)
    picked = np.empty(len(rows), dtype=movies.dtype)
    for user in np.unique(users[rows]):
        mine = rows[users[rows] == user]
        rated = movies[(users == user) & ~again]
        free = np.setdiff1d(np.arange(n_movies), rated)
        picked[np.searchsorted(rows, mine)] = rng.choice(free, size=len(mine), replace=False)
    return picked


def _write_taste_tags(
    out: Path,
    spec: SynthSpec,
    rng: np.random.Generator,
    taste: _Taste,
    *,
    movie_ids: np.ndarray,
    popularity: np.ndarray,
    activity: np.ndarray,
) -> int:
    # A user tags a movie they would pick, with a word of its cluster (the vocabulary dealt out over the clusters).
    n_tags = max(1, int(spec.ratings * TAGS_PER_RATING))
    vocabulary = np.array(_tag_names(TAG_VOCABULARY))
    users = rng.choice(spec.users, size=n_tags, p=activity)
    movies = taste.pick(users, rng.random(n_tags), popularity, rng)
    per_cluster = TAG_VOCABULARY // taste.clusters
    word = taste.cluster[movies] * per_cluster + rng.choice(
        per_cluster, size=n_tags, p=_zipf_weights(per_cluster, 1.1, rng)
    )
    tags = pd.DataFrame(
        {
            "userId": users + 1,
            "movieId": movie_ids[movies],
            "tag": vocabulary[word],
            "timestamp": rng.integers(1_137_000_000, 1_537_000_000, size=n_tags),
        }
    ).sort_values(["userId", "movieId"], kind="stable")
    tags.to_csv(out / "tags.csv", index=False)
    return n_tags


def _write_tags(
    out: Path,
    spec: SynthSpec,
    rng: np.random.Generator,
    *,
    movie_ids: np.ndarray,
    popularity: np.ndarray,
    activity: np.ndarray,
) -> int:
    n_tags = max(1, int(spec.ratings * TAGS_PER_RATING))
    vocabulary = np.array(_tag_names(TAG_VOCABULARY))
    tag_of = rng.choice(TAG_VOCABULARY, size=n_tags, p=_zipf_weights(TAG_VOCABULARY, 1.1, rng))
    tags = pd.DataFrame(
        {
            "userId": rng.choice(spec.users, size=n_tags, p=activity) + 1,
            "movieId": movie_ids[rng.choice(spec.movies, size=n_tags, p=popularity)],
            "tag": vocabulary[tag_of],
            "timestamp": rng.integers(1_137_000_000, 1_537_000_000, size=n_tags),
        }
    ).sort_values(["userId", "movieId"], kind="stable")
    tags.to_csv(out / "tags.csv", index=False)
    return n_tags


def _write_genome(
    out: Path, spec: SynthSpec, rng: np.random.Generator, movie_ids: np.ndarray, taste: _Taste | None = None
) -> int:
    genome_names = [f"genome {i:04d}" for i in range(GENOME_TAGS)]
    pd.DataFrame({"tagId": np.arange(1, GENOME_TAGS + 1), "tag": genome_names}).to_csv(
        out / "genome-tags.csv", index=False
    )
    covered_rows = np.sort(rng.choice(spec.movies, size=max(1, int(spec.movies * GENOME_SHARE)), replace=False))
    covered = movie_ids[covered_rows]
    tag_weights = _zipf_weights(GENOME_TAGS, 1.0, rng)
    with (out / "genome-scores.csv").open("w") as f:
        f.write("movieId,tagId,relevance\n")
        per_chunk = max(1, _WRITE_CHUNK // GENOME_TAGS)
        for lo in range(0, len(covered), per_chunk):
            block = covered[lo : lo + per_chunk]
            # Mostly low relevance, with a few strongly relevant tags per movie, Zipf-like across tags; with
            # taste, drawn from the genome tags dealt to the movie's cluster.
            relevance = rng.beta(0.6, 6.0, size=(len(block), GENOME_TAGS))
            strong = rng.choice(GENOME_TAGS, size=(len(block), 8), p=tag_weights)
            if taste is not None:
                share = GENOME_TAGS // taste.clusters
                strong = taste.cluster[covered_rows[lo : lo + per_chunk]][:, None] * share + strong % share
            np.put_along_axis(relevance, strong, rng.uniform(0.7, 1.0, size=strong.shape), axis=1)
            pd.DataFrame(
                {
                    "movieId": np.repeat(block, GENOME_TAGS),
                    "tagId": np.tile(np.arange(1, GENOME_TAGS + 1), len(block)),
                    "relevance": relevance.ravel(),
                }
            ).to_csv(f, header=False, index=False, float_format="%.5f")
    return len(covered)
