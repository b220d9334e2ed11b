"""Feedback in a real Redis: stored whole, the last rating of a (user, movie) winning, read back per user, folded
into a content-addressed dataset version, deleted with its dataset; and a 1-d array read by rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import NotFound
from shared.infra.keys import dataset_artifact
from shared.infra.settings import Settings
from shared.logic.feedback import feedback_version
from shared.logic.ingest import DatasetOptions, ingest
from shared.logic.services import Services
from shared.store.feedback import base_of, problems


@pytest.fixture
def svc(settings: Settings, fresh_prefix: str) -> Services:
    return Services.from_settings(settings.model_copy(update={"key_prefix": fresh_prefix}))


@pytest.fixture
def dataset(svc: Services, tmp_path: Path) -> str:
    """Three movies; user 1 rated 10 and 20, user 2 rated 30."""
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n10,A (1990),Drama\n20,B (1991),Comedy\n"
                                         "30,C (1992),Drama|War\n")  # fmt: skip
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,2.5,200\n"
                                          "2,30,5.0,300\n")  # fmt: skip
    record, _ = ingest(svc.datasets, tmp_path, DatasetOptions(tags_per_movie=5), source="t", progress=lambda *_: None)
    return str(record["id"])


def test_a_batch_is_stored_whole_and_the_last_rating_of_a_movie_wins(svc: Services, dataset: str) -> None:
    fb = svc.feedback
    fb.add(dataset, [(1, 20, 5.0, 400), (3, 10, 3.5, 500), (1, 30, 1.0, 450), (1, 20, 4.5, 410)])
    user = fb.user(dataset, 1)
    assert user.movie_ids.tolist() == [20, 30] and user.values.tolist() == [4.5, 1.0]  # by time; 4.5 came last
    assert user.times.tolist() == [410, 450]
    assert fb.users(dataset).tolist() == [1, 3]
    assert len(fb.user(dataset, 2)) == 0
    fb.add(dataset, [(1, 30, 2.0, 460)])
    assert fb.user(dataset, 1).values.tolist() == [4.5, 2.0]


def test_rows_that_cannot_be_stored_are_named(svc: Services, dataset: str) -> None:
    scale = svc.catalogue.rating_scale(dataset)
    assert scale == (2.5, 5.0, [2.5, 4.0, 5.0])  # few distinct values: only those
    rows = [{"user_id": 1, "movie_id": 10, "rating": 4.0}, {"user_id": 1, "movie_id": 11, "rating": 4.0},
            {"user_id": 1, "movie_id": 20, "rating": 4.2}]  # fmt: skip
    found = problems(rows, svc.catalogue.movie_ids(dataset), scale)
    assert [p["row"] for p in found] == [1, 2]
    assert "unknown movie" in found[0]["problem"] and "not one of" in found[1]["problem"]
    ranged = problems([{"user_id": 1, "movie_id": 10, "rating": 9.0}], frozenset({10}), (0.5, 5.0, None))
    assert "outside 0.5..5.0" in ranged[0]["problem"]


def test_a_feedback_version_is_the_dataset_with_the_feedback_over_it(svc: Services, dataset: str) -> None:
    same, reused = feedback_version(svc.datasets, svc.feedback, dataset)
    assert same["id"] == dataset and reused  # no feedback: the dataset itself

    svc.feedback.add(dataset, [(1, 10, 2.5, 400), (3, 20, 5.0, 500), (1, 30, 4.0, 390)])
    version, reused = feedback_version(svc.datasets, svc.feedback, dataset)
    assert not reused and version["id"] != dataset and base_of(version) == dataset
    assert version["derived"]["feedback"]["ratings"] == 3 and version["counts"]["users"] == 3
    ratings = svc.datasets.ratings(version["id"])
    assert ratings.user_ids.tolist() == [1, 2, 3]
    movie_ids = svc.artifacts.get_array(dataset_artifact(version["id"], "movie_ids")).tolist()
    per_user = [
        [(movie_ids[m], float(v), int(t)) for m, v, t in zip(ratings.movie_index[lo:hi], ratings.values[lo:hi],
                                                              ratings.timestamps[lo:hi], strict=True)]
        for lo, hi in zip(ratings.indptr[:-1], ratings.indptr[1:], strict=True)
    ]  # fmt: skip
    # user 1: the stored 10 is rated again (dropped; the new rating follows), 30 is new, after the stored ones by time
    assert per_user == [[(20, 2.5, 200), (30, 4.0, 390), (10, 2.5, 400)], [(30, 5.0, 300)], [(20, 5.0, 500)]]

    again, reused = feedback_version(svc.datasets, svc.feedback, version["id"])  # a version's base is its dataset
    assert again["id"] == version["id"] and reused
    svc.feedback.add(dataset, [(2, 10, 4.0, 600)])
    newer, reused = feedback_version(svc.datasets, svc.feedback, dataset)
    assert newer["id"] not in (dataset, version["id"]) and not reused
    assert svc.catalogue.feedback_base(newer["id"]) == dataset


def test_deleting_a_dataset_deletes_its_feedback_and_its_versions_stay(svc: Services, dataset: str) -> None:
    svc.feedback.add(dataset, [(1, 10, 2.5, 400), (9, 20, 5.0, 500)])
    version, _ = feedback_version(svc.datasets, svc.feedback, dataset)
    deleted = svc.catalogue.delete(dataset)
    assert deleted["keys"] > 0
    assert not list(svc.redis.scan_iter(match=svc.keys.feedback_of(dataset)))
    assert svc.datasets.get(version["id"]) is not None
    assert svc.catalogue.feedback_base(version["id"]) == version["id"]  # its base is gone: it takes its own
    sources = svc.catalogue.feedback_sources(version["id"])
    assert sources == (dataset, version["id"])  # what a model of the version reads: base, then itself
    svc.feedback.add(version["id"], [(9, 30, 4.0, 600)])
    assert svc.feedback.users_feedback(sources, [9]).movie_ids.tolist() == [30]
    with pytest.raises(NotFound):
        svc.catalogue.feedback_base(dataset)


def test_a_user_s_ratings_are_read_without_the_rest(svc: Services, dataset: str) -> None:
    one = svc.catalogue.user_ratings(dataset, 1)
    assert one.movie_index.tolist() == [0, 1] and one.values.tolist() == [4.0, 2.5]
    assert one.timestamps is not None and one.timestamps.tolist() == [100, 200]
    assert len(svc.catalogue.user_ratings(dataset, 5).values) == 0
    name = "test/rows"
    array = np.arange(100_000, dtype=np.int64)
    small = Services.from_settings(svc.settings.model_copy(update={"chunk_bytes": 4096}))
    small.artifacts.put_array(name, array)
    for lo, hi in [(0, 1), (500, 1500), (99_990, 100_000), (7, 7), (99_000, 200_000)]:
        assert small.artifacts.get_rows(name, lo, hi).tolist() == array[lo:hi].tolist()
