"""Descriptors rebuilt from the tag events kept (``descriptors_from``) against the catalogue read whole and a
catalogue read from a tags.csv that holds only those events; the cuts that choose them (shared/logic/descriptors.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli.synth import SynthSpec, write_synthetic
from shared.logic.descriptors import NO_CUT, NO_END, event_cuts, per_user_cuts
from shared.ml.encoder import mean_by_rows
from shared.ml.movielens import Catalogue, DescriptorParts, Descriptors, descriptors_from, read_catalogue
from shared.store.datasets import DatasetRatings
from tests.helpers import SMALL


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text.strip() + "\n")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Movies with genres and user tags, one in the genome, one described by user tags alone (20)."""
    write(tmp_path, "movies.csv", """
movieId,title,genres
10,"Alpha, The (1990)",Comedy|Drama
20,Beta (1991),(no genres listed)
30,Gamma (1992),(no genres listed)
40,Delta (1993),Horror
50,Epsilon (1994),Comedy
""")  # fmt: skip
    write(tmp_path, "tags.csv", """
userId,movieId,tag,timestamp
1,10,Funny,100
2,10,funny ,200
3,10,dark,300
1,10,clever,400
1,20,Quiet,500
1,40,zzz,600
2,40,aaa,700
1,50,comedy,800
3,50,  ,900
2,99,unknown movie,950
""")  # fmt: skip
    write(tmp_path, "genome-tags.csv", "tagId,tag\n1,zombies\n2,atmospheric\n3,witty\n")
    write(tmp_path, "genome-scores.csv", "movieId,tagId,relevance\n40,1,0.95\n40,2,0.1\n40,3,0.3\n")
    return tmp_path


@pytest.fixture(scope="module")
def small() -> Catalogue:
    return read_catalogue(SMALL, tags_per_movie=5)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, SynthSpec(movies=400, users=80, ratings=5000, genome=True, seed=7))
    return out


def parts_of(catalogue: Catalogue) -> DescriptorParts:
    assert catalogue.parts is not None
    return catalogue.parts


def assert_same(got: Descriptors, catalogue: Catalogue) -> None:
    assert got.indptr.dtype == catalogue.desc_indptr.dtype == np.int64
    assert got.indices.dtype == catalogue.desc_indices.dtype == np.int32
    np.testing.assert_array_equal(got.indptr, catalogue.desc_indptr)
    np.testing.assert_array_equal(got.indices, catalogue.desc_indices)
    assert got.vocabulary == catalogue.vocabulary


def rows_of(d: Descriptors) -> list[list[str]]:
    return [[d.vocabulary[j] for j in d.indices[d.indptr[i] : d.indptr[i + 1]]] for i in range(len(d.indptr) - 1)]


def test_every_event_kept_gives_the_catalogue_exactly_on_ml_latest_small(small: Catalogue) -> None:
    parts = parts_of(small)
    assert len(parts.tag_time) == 3_683 and parts.n == len(small.movie_ids)
    assert_same(descriptors_from(parts, None, tags_per_movie=5), small)
    assert_same(descriptors_from(parts, np.ones(3_683, dtype=bool), tags_per_movie=5), small)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_every_event_kept_gives_the_catalogue_exactly_on_fixtures(tiny: Path, generated: Path, k: int) -> None:
    for directory in (tiny, generated):
        catalogue = read_catalogue(directory, tags_per_movie=k)
        assert_same(descriptors_from(parts_of(catalogue), None, tags_per_movie=k), catalogue)


def test_the_parts_hold_each_event_with_its_user_time_and_text(tiny: Path) -> None:
    c = read_catalogue(tiny, tags_per_movie=2)
    p = parts_of(c)
    assert p.terms == sorted(p.terms) and len(set(p.terms)) == len(p.terms)
    # the blank tag and the tag of a movie not in movies.csv are not events; the rest keep tags.csv's order
    assert [p.terms[t] for t in p.tag_text] == ["funny", "funny", "dark", "clever", "quiet", "zzz", "aaa", "comedy"]
    assert p.tag_user.tolist() == [1, 2, 3, 1, 1, 1, 2, 1]
    assert p.tag_time.tolist() == [100, 200, 300, 400, 500, 600, 700, 800]
    assert c.movie_ids[p.tag_movie].tolist() == [10, 10, 10, 10, 20, 40, 40, 50]
    assert p.in_genome.tolist() == [False, False, True, False]  # catalogue rows 10, 20, 40, 50 (30 dropped)
    assert c.descriptors(2) == ["Horror", "zombies", "witty"]  # the genome wins over zzz and aaa


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kept_events_give_what_a_tags_csv_of_only_those_events_gives(
    small: Catalogue, tmp_path: Path, seed: int
) -> None:
    """The oracle: read_catalogue of a directory whose tags.csv holds only the kept rows (a movie it drops for
    want of descriptors is an empty row here)."""
    keep = np.random.default_rng(seed).random(len(parts_of(small).tag_time)) < 0.4
    tags = pd.read_csv(SMALL / "tags.csv", keep_default_na=False)
    assert len(tags) == len(keep)  # ml-latest-small: every row is an event (no blank tag, no unknown movie)
    (tmp_path / "movies.csv").write_bytes((SMALL / "movies.csv").read_bytes())
    tags[keep].to_csv(tmp_path / "tags.csv", index=False)
    oracle = read_catalogue(tmp_path, tags_per_movie=5)
    got = descriptors_from(parts_of(small), keep, tags_per_movie=5)
    by_movie = {int(m): oracle.descriptors(i) for i, m in enumerate(oracle.movie_ids)}
    assert rows_of(got) == [by_movie.get(int(m), []) for m in small.movie_ids]
    assert got.vocabulary == oracle.vocabulary


def test_a_tag_after_the_cut_changes_nothing_when_it_is_changed(tiny: Path) -> None:
    """Change one event written after the cut (its text, its movie, its time, its user) and nothing rebuilt
    changes; change one written before and something does (the test can see a change)."""
    c = read_catalogue(tiny, tags_per_movie=2)
    p = parts_of(c)
    cut = 350  # events at 100, 200, 300 are before it

    def rebuilt(parts: DescriptorParts) -> Descriptors:
        return descriptors_from(parts, parts.tag_time < cut, tags_per_movie=2)

    base = rebuilt(p)
    assert rows_of(base) == [["Comedy", "Drama", "funny", "dark"], [], ["Horror", "zombies", "witty"], ["Comedy"]]
    term = {t: i for i, t in enumerate(p.terms)}
    late = 3  # (1, 10, clever, 400)
    for change in (
        {"tag_text": np.where(np.arange(8) == late, term["funny"], p.tag_text)},
        {"tag_text": np.where(np.arange(8) == late, term["zzz"], p.tag_text)},
        {"tag_movie": np.where(np.arange(8) == late, 1, p.tag_movie)},
        {"tag_time": np.where(np.arange(8) == late, 10**9, p.tag_time)},
        {"tag_user": np.where(np.arange(8) == late, 7, p.tag_user)},
    ):
        again = rebuilt(dataclasses.replace(p, **change))
        np.testing.assert_array_equal(again.indptr, base.indptr)
        np.testing.assert_array_equal(again.indices, base.indices)
        assert again.vocabulary == base.vocabulary
    early = dataclasses.replace(p, tag_text=np.where(np.arange(8) == 2, term["zzz"], p.tag_text))  # dark -> zzz
    assert rows_of(rebuilt(early))[0] == ["Comedy", "Drama", "funny", "zzz"]


def test_a_movie_described_by_user_tags_alone_keeps_an_empty_row(tiny: Path) -> None:
    c = read_catalogue(tiny, tags_per_movie=2)
    p = parts_of(c)
    got = descriptors_from(p, np.zeros(len(p.tag_time), dtype=bool), tags_per_movie=2)
    assert len(got.indptr) == len(c.movie_ids) + 1  # the catalogue's rows, whatever is cut
    assert rows_of(got) == [["Comedy", "Drama"], [], ["Horror", "zombies", "witty"], ["Comedy"]]
    # what encoding a movie with no descriptor gives: a zero vector, no NaN
    vectors = np.random.default_rng(0).normal(size=(len(got.vocabulary), 4)).astype(np.float32)
    movies = mean_by_rows(got.indptr, got.indices, vectors)
    assert np.isfinite(movies).all() and not movies[1].any()


def test_a_smaller_k_cuts_the_genome_and_the_user_tags(tiny: Path) -> None:
    c = read_catalogue(tiny, tags_per_movie=2)
    one = read_catalogue(tiny, tags_per_movie=1)
    assert rows_of(descriptors_from(parts_of(c), None, tags_per_movie=1)) == [one.descriptors(i) for i in range(4)]
    with pytest.raises(ValueError, match="keep has shape"):
        descriptors_from(parts_of(c), np.ones(3, dtype=bool), tags_per_movie=2)


def test_per_user_cuts_are_each_trained_users_first_test_rating() -> None:
    ratings = DatasetRatings(
        user_ids=np.array([3, 5, 8], dtype=np.int32),
        indptr=np.array([0, 3, 5, 6], dtype=np.int64),
        movie_index=np.zeros(6, dtype=np.int32),
        values=np.ones(6, dtype=np.float32),
        timestamps=np.array([30, 10, 20, 50, 40, 70], dtype=np.int64),
    )
    train = np.array([False, True, True, True, True, False])  # user 8 has no training part
    users, cuts = per_user_cuts(ratings, train)
    assert users.tolist() == [3, 5] and cuts.tolist() == [30, NO_END]


def testevent_cuts_from_pairs_or_a_function() -> None:
    users = np.array([5, 3, 5, 9], dtype=np.int32)
    pairs = (np.array([3, 5]), np.array([30, 50]))
    assert event_cuts(users, pairs).tolist() == [50, 30, 50, NO_CUT]  # 9 has no cut
    assert event_cuts(users, (np.zeros(0, np.int32), np.zeros(0, np.int64))).tolist() == [NO_CUT] * 4
    assert event_cuts(users, lambda u: np.full(len(u), 42)).tolist() == [42] * 4  # a global cut
    with pytest.raises(ValueError, match="answered shape"):
        event_cuts(users, lambda u: np.zeros(1, np.int64))
