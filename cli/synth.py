"""``movierec synth``: a MovieLens-format directory whose shape follows the real one.

It serves the scale checks (58,000 movies and 27M ratings, the notebook's ml-latest) and the demo's
offline fallback. What is shaped like MovieLens:

- genres drawn per movie with ml-latest's frequencies (Drama ~42 %, Comedy ~27 %, ...); a movie that
  draws none is "(no genres listed)", as about 7 % are in ml-latest;
- movie popularity, user activity and tag use are Zipf-like, so a few movies get most ratings and tags;
- rating values follow ml-latest's half-star histogram; rows are sorted by user, then movie;
- with ``--genome``, ~1,128 genome tags and dense relevance scores for a share of the movies (22 %, as
  ml-25m), each movie relevant to a few tags.
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


@dataclass(frozen=True)
class SynthSpec:
    movies: int
    users: int
    ratings: int
    genome: bool = False
    seed: int = 0


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
    movie_ids = _write_movies(out, spec, rng)
    popularity = _zipf_weights(spec.movies, 1.0, rng)
    activity = _zipf_weights(spec.users, 0.6, rng)
    weights = {"movie_ids": movie_ids, "popularity": popularity, "activity": activity}
    _write_ratings(out, spec, rng, **weights)
    n_tags = _write_tags(out, spec, rng, **weights)
    counts = {"movies": spec.movies, "ratings": spec.ratings, "tags": n_tags}
    if spec.genome:
        counts["genome_movies"] = _write_genome(out, spec, rng, movie_ids)
    return counts


def _write_movies(out: Path, spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    movie_ids = np.sort(rng.choice(np.arange(1, spec.movies * 3 + 1), size=spec.movies, replace=False))
    names = list(GENRE_FREQUENCIES)
    has = rng.random((spec.movies, len(names))) < np.array(list(GENRE_FREQUENCIES.values()))
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
    with (out / "ratings.csv").open("w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for lo in range(0, spec.ratings, _WRITE_CHUNK):
            hi = min(lo + _WRITE_CHUNK, spec.ratings)
            chunk = pd.DataFrame(
                {
                    "userId": user_of[lo:hi] + 1,
                    "movieId": movie_ids[movie_of[lo:hi]],
                    "rating": values[lo:hi],
                    "timestamp": stamps[lo:hi],
                }
            )
            chunk.to_csv(f, header=False, index=False, float_format="%.1f")


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


def _write_genome(out: Path, spec: SynthSpec, rng: np.random.Generator, movie_ids: np.ndarray) -> int:
    genome_names = [f"genome {i:04d}" for i in range(GENOME_TAGS)]
    pd.DataFrame({"tagId": np.arange(1, GENOME_TAGS + 1), "tag": genome_names}).to_csv(
        out / "genome-tags.csv", index=False
    )
    covered = np.sort(rng.choice(movie_ids, size=max(1, int(spec.movies * GENOME_SHARE)), replace=False))
    tag_weights = _zipf_weights(GENOME_TAGS, 1.0, rng)
    with (out / "genome-scores.csv").open("w") as f:
        f.write("movieId,tagId,relevance\n")
        per_chunk = max(1, _WRITE_CHUNK // GENOME_TAGS)
        for lo in range(0, len(covered), per_chunk):
            block = covered[lo : lo + per_chunk]
            # Mostly low relevance, with a few strongly relevant tags per movie, Zipf-like across tags.
            relevance = rng.beta(0.6, 6.0, size=(len(block), GENOME_TAGS))
            strong = rng.choice(GENOME_TAGS, size=(len(block), 8), p=tag_weights)
            np.put_along_axis(relevance, strong, rng.uniform(0.7, 1.0, size=strong.shape), axis=1)
            pd.DataFrame(
                {
                    "movieId": np.repeat(block, GENOME_TAGS),
                    "tagId": np.tile(np.arange(1, GENOME_TAGS + 1), len(block)),
                    "relevance": relevance.ravel(),
                }
            ).to_csv(f, header=False, index=False, float_format="%.5f")
    return len(covered)
