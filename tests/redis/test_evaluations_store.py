"""The evaluation's split stored in a real Redis: a training dataset like an ingested one, the test part beside
it, both reused; a shard's rankings the same as the pure functions' (shared/logic/scoring.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from shared.errors import Conflict
from shared.infra.keys import dataset_artifact
from shared.infra.process import clear_process_caches
from shared.infra.settings import Settings
from shared.logic.ingest import DatasetOptions, ingest
from shared.logic.scoring import cut, derive, load_split, score_shard, stored_split
from shared.logic.services import Services
from shared.ml import evaluate
from shared.ml.protocol import Protocol, training_dataset_id
from shared.store.datasets import load_ratings
from tests.conftest import SMALL


@pytest.fixture
def svc(settings: Settings, fresh_prefix: str) -> Services:
    clear_process_caches()  # splits and baselines are cached per process, by store and dataset
    return Services.from_settings(settings.model_copy(update={"key_prefix": fresh_prefix}))


@pytest.fixture
def source(svc: Services) -> dict[str, object]:
    record, _ = ingest(svc.datasets, SMALL, DatasetOptions(tags_per_movie=5), source="s", progress=lambda *_: None)
    return record


def test_the_training_dataset_is_stored_like_an_ingested_one_and_reused(
    svc: Services, source: dict[str, object]
) -> None:
    ds = str(source["id"])
    assert stored_split(svc.datasets, ds, Protocol()) is None
    first = derive(svc.datasets, ds, Protocol())
    assert not first.reused and first.training_dataset == training_dataset_id(ds, Protocol())
    record = svc.datasets.get(first.training_dataset)
    assert record is not None
    assert set(record) == set(source) | {"derived"}
    assert record["derived"] == {
        "from": ds,
        "protocol": {"split": "temporal", "min_ratings": 10, "train_fraction": 0.8},
    }
    assert record["format"] == source["format"] and record["options"] == source["options"]
    counts, source_counts = record["counts"], source["counts"]
    assert isinstance(source_counts, dict)
    assert {k: counts[k] for k in ("movies", "vocabulary", "descriptors")} == {
        k: source_counts[k] for k in ("movies", "vocabulary", "descriptors")
    }
    assert counts["users"] == first.summary["users"] == 610 and counts["ratings"] == first.summary["training_ratings"]
    for name in ("movie_ids", "desc_indptr", "desc_indices"):
        assert np.array_equal(svc.artifacts.get_array(dataset_artifact(ds, name)),
                              svc.artifacts.get_array(dataset_artifact(first.training_dataset, name)))  # fmt: skip

    split, training = cut(load_ratings(svc.artifacts, ds, timestamps=True), int(source_counts["movies"]), Protocol())
    stored = svc.datasets.ratings(first.training_dataset)
    for name in stored._fields:
        assert np.array_equal(getattr(stored, name), getattr(training, name)), name

    again = derive(svc.datasets, ds, Protocol())
    assert again.reused and again.summary == first.summary
    other = derive(svc.datasets, ds, Protocol(relevant_at=3.0, k=5))  # the same training part, another test part
    assert not other.reused and other.training_dataset == first.training_dataset
    assert other.summary["evaluated"] > first.summary["evaluated"]

    loaded = load_split(svc.artifacts, first.training_dataset, 4.0)
    assert np.array_equal(loaded.split.user_ids, split.user_ids)
    assert np.array_equal(loaded.split.evaluated, split.evaluated)
    assert np.array_equal(loaded.split.cold, split.cold)
    assert (loaded.split.train != split.train).nnz == 0 and (loaded.split.relevant != split.relevant).nnz == 0
    # the timestamps' matrix lines up with the ratings': user 1's first rating in the source
    lo = int(training.indptr[0])
    assert loaded.times[0, int(training.movie_index[lo])] == training.timestamps[lo]
    assert loaded.summary == first.summary


def test_a_dataset_without_timestamps_is_refused_with_the_way_out(
    svc: Services, source: dict[str, object], redis_client: redis.Redis
) -> None:
    ds = str(source["id"])
    redis_client.set(svc.keys.dataset(ds), json.dumps({**source, "format": 1}))
    with pytest.raises(Conflict, match="re-ingest its directory"):
        derive(svc.datasets, ds, Protocol())


def test_a_shard_ranks_as_the_pure_functions_do_and_says_what_it_skipped(
    svc: Services, source: dict[str, object]
) -> None:
    derived = derive(svc.datasets, str(source["id"]), Protocol())
    split = load_split(svc.artifacts, derived.training_dataset, 4.0).split
    rows = [
        {"name": name, "kind": "baseline", "model": None} for name in ("random", "most-popular", "item-kNN", "EASE")
    ]
    plan = {"training_dataset": derived.training_dataset, "relevant_at": 4.0, "k": 10, "seed": 3, "rows": rows,
            "ease_max_bytes": 1 << 20}  # fmt: skip
    top, stats = score_shard(svc.artifacts, svc.models, plan, 100, 150)
    assert top.shape == (4, 50, 10) and stats["users"] == [100, 150]
    assert set(stats["seconds"]) == {"random", "most-popular", "item-kNN"}
    assert "GiB" in stats["skipped"]["EASE"] and np.all(top[3] == -1)
    users = split.evaluated[100:150]
    for i, scorer in enumerate((evaluate.random_scorer(split, seed=3), evaluate.popular_scorer(split),
                                evaluate.item_knn_scorer(split))):  # fmt: skip
        assert np.array_equal(top[i], evaluate.top_k(scorer(users), split.train[users], 10))
