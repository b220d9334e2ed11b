"""Generated MovieLens-format data: readable by the ingest path and shaped like the real thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cli.synth import GENOME_TAGS, SynthSpec, write_synthetic
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
