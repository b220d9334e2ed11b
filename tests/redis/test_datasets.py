"""A dataset ingested into a real Redis keeps each rating's timestamp (``ratings_time``) and reads it back."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import redis

from shared.errors import NotFound
from shared.infra.keys import dataset_artifact
from shared.infra.settings import Settings
from shared.logic.ingest import DatasetOptions, ingest
from shared.logic.services import Services
from shared.store.datasets import FORMAT_VERSION
from tests.helpers import SMALL


@pytest.fixture
def svc(settings: Settings, fresh_prefix: str) -> Services:
    return Services.from_settings(settings.model_copy(update={"key_prefix": fresh_prefix}))


def test_ingested_ratings_keep_the_timestamps_of_ratings_csv(svc: Services) -> None:
    record, reused = ingest(svc.datasets, SMALL, DatasetOptions(tags_per_movie=5), source="s", progress=lambda *_: None)
    assert not reused and record["format"] == FORMAT_VERSION == 3
    ds = record["id"]
    stored = svc.artifacts.get_array(dataset_artifact(ds, "ratings_time"))
    assert stored.dtype == np.int64 and len(stored) == record["counts"]["ratings_kept"]

    ratings = svc.datasets.ratings(ds)
    assert ratings.timestamps is not None
    np.testing.assert_array_equal(ratings.timestamps, stored)
    frame = pd.read_csv(SMALL / "ratings.csv")
    movie_ids = svc.artifacts.get_array(dataset_artifact(ds, "movie_ids"))
    kept = frame[frame.movieId.isin(set(movie_ids.tolist()))]
    for user in (1, 414, 610):
        j = int(np.searchsorted(ratings.user_ids, user))
        assert ratings.user_ids[j] == user
        lo, hi = ratings.indptr[j], ratings.indptr[j + 1]
        rows = kept[kept.userId == user]
        assert hi - lo == len(rows) > 0
        np.testing.assert_array_equal(movie_ids[ratings.movie_index[lo:hi]], rows.movieId.to_numpy())
        np.testing.assert_array_equal(ratings.values[lo:hi], rows.rating.to_numpy(np.float32))
        np.testing.assert_array_equal(ratings.timestamps[lo:hi], rows.timestamp.to_numpy(np.int64))


def test_a_format_1_dataset_answers_no_timestamps(svc: Services, redis_client: redis.Redis) -> None:
    record, _ = ingest(svc.datasets, SMALL, DatasetOptions(tags_per_movie=5), source="s", progress=lambda *_: None)
    ds = record["id"]
    # what a dataset ingested before timestamps were kept looks like: format 1, no ratings_time
    svc.artifacts.delete(dataset_artifact(ds, "ratings_time"))
    redis_client.set(svc.keys.dataset(ds), json.dumps({**record, "format": 1}))
    ratings = svc.datasets.ratings(ds)
    assert ratings.timestamps is None
    assert len(ratings.values) == len(ratings.movie_index) == record["counts"]["ratings_kept"]
    assert ratings.indptr[-1] == len(ratings.values) and len(ratings.user_ids) == record["counts"]["users"]


def test_ratings_of_an_unknown_dataset_are_not_found(svc: Services) -> None:
    with pytest.raises(NotFound):
        svc.datasets.ratings("ds-000000000000000000000000")
