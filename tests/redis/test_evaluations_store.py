"""The evaluation's split stored in a real Redis: a training dataset like an ingested one, the test part beside
it, both reused; a shard's rankings the same as the pure functions' (shared/logic/scoring.py)."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from shared.errors import Conflict
from shared.infra.keys import dataset_artifact, evaluation_fit_artifact
from shared.infra.process import clear_process_caches
from shared.infra.settings import Settings
from shared.logic.fits import fit_id
from shared.logic.ingest import DatasetOptions, ingest
from shared.logic.scoring import (
    FitPending,
    cell,
    cut,
    derive,
    fit_baseline,
    load_split,
    no_claim,
    plan_items,
    score_shard,
    stored_split,
)
from shared.logic.services import Services
from shared.ml import baselines, evaluate
from shared.ml.protocol import Protocol, training_dataset_id
from shared.store.datasets import load_ratings
from tests.helpers import SMALL


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
    assert {k: record["derived"][k] for k in ("from", "protocol")} == {
        "from": ds,
        "protocol": {
            "split": "temporal",
            "min_ratings": 10,
            "train_fraction": 0.8,
            "new_user_share": 0.15,
            "max_users": 0,
        },
    }
    assert record["format"] == source["format"] and record["options"] == source["options"]
    counts, source_counts = record["counts"], source["counts"]
    assert isinstance(source_counts, dict)
    assert counts["movies"] == source_counts["movies"]
    assert counts["vocabulary"] < source_counts["vocabulary"]  # tags written after their user's cut are gone
    tags = record["derived"]["tags"]
    assert tags["tags"] == 3683 and tags["kept"] + tags["after_cut"] + tags["no_cut"] == 3683 and tags["after_cut"]
    assert counts["users"] == first.summary["users"] and counts["ratings"] == first.summary["training_ratings"]
    assert counts["users"] + first.summary["new_users"] == 610  # a share held out as new users, none dropped
    assert 0.1 < first.summary["new_users"] / 610 < 0.2
    assert np.array_equal(svc.artifacts.get_array(dataset_artifact(ds, "movie_ids")),
                          svc.artifacts.get_array(dataset_artifact(first.training_dataset, "movie_ids")))  # fmt: skip
    # the training part's tag events: only those written before their user's cut, by a training user
    user = svc.artifacts.get_array(dataset_artifact(first.training_dataset, "tag_user"))
    when = svc.artifacts.get_array(dataset_artifact(first.training_dataset, "tag_time"))
    assert len(user) == tags["kept"]
    made_parts = cut(load_ratings(svc.artifacts, ds, timestamps=True), int(source_counts["movies"]), Protocol()).parts
    cuts = dict(zip(made_parts.cut_users.tolist(), made_parts.cut_times.tolist(), strict=True))
    assert all(t < cuts[u] for u, t in zip(user.tolist(), when.tolist(), strict=True))

    made = cut(load_ratings(svc.artifacts, ds, timestamps=True), int(source_counts["movies"]), Protocol())
    split, training = made.split, made.training
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
    assert np.array_equal(loaded.cohort.user_ids, made.cohort.user_ids)
    assert np.array_equal(loaded.cohort.indptr, made.cohort.indptr)
    assert np.array_equal(loaded.cohort.timestamps, made.cohort.timestamps)
    for n, users in first.summary["new_user_slices"].items():  # each new-user slice: someone to evaluate
        new, _ = loaded.segment(f"new-{n}", 4.0)
        assert len(new.evaluated) == users > 0 and new.train.shape[0] == first.summary["new_users"]


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
    rows = [{"name": name, "kind": "baseline", "family": name, "params": {}}
            for name in ("random", "most-popular", "item-kNN", "EASE")]  # fmt: skip
    plan = {"training_dataset": derived.training_dataset, "relevant_at": 4.0, "k": 10, "seed": 3, "rows": rows,
            "ease_max_bytes": 1 << 20, "groups": [[i, i + 1] for i in range(4)], "chunk": 50,
            "segments": [{"name": "all", "users": 150}]}  # fmt: skip
    # The four rows' cells of the first 50 users, item-kNN's (a stored fit) first; then the other chunks row by
    # row, item-kNN's last.
    assert plan_items(plan) == 12
    assert [cell(plan, i) for i in range(12)] == [
        (2, 0, 50), (0, 0, 50), (1, 0, 50), (3, 0, 50), (0, 50, 100), (0, 100, 150),
        (1, 50, 100), (1, 100, 150), (3, 50, 100), (3, 100, 150), (2, 50, 100), (2, 100, 150)]  # fmt: skip
    users = split.evaluated[100:150]
    knn = baselines.fit("item-kNN", split.train, {}, seed=3, max_bytes=1 << 20)
    scorers = (evaluate.random_scorer(split, seed=3), evaluate.popular_scorer(split), knn.score)
    for i, (item, scorer) in enumerate(zip((5, 7, 11), scorers, strict=True)):  # the third chunk's cells
        top, stats = score_shard(svc.artifacts, svc.models, plan, item, item + 1)
        assert top.shape == (1, 50, 10) and stats["items"] == [item, item + 1]
        assert set(stats["seconds"]) == {rows[i]["name"]}
        assert np.array_equal(top[0], evaluate.top_k(scorer(split.train[users]), split.train[users], 10))
    top, stats = score_shard(svc.artifacts, svc.models, plan, 9, 10)
    assert "GiB" in stats["skipped"]["EASE"] and np.all(top == -1) and not stats["seconds"]


def test_a_model_s_serve_time_settings_scored_together_rank_as_each_alone(
    svc: Services, source: dict[str, object]
) -> None:
    """A grid's light-user priors and cold boosts of one trained model share a cell: its scores made once, each
    cold boost's columns raised and ranked once, each setting's prior added for the users it weighs on. The
    rankings are those of one cell per setting, bit for bit."""
    from safetensors.numpy import save

    derived = derive(svc.datasets, str(source["id"]), Protocol())
    n = len(svc.artifacts.get_array(dataset_artifact(derived.training_dataset, "movie_ids")))
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(n, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    weights = {"proj.weight": rng.normal(size=(8, 4)).astype(np.float32), "proj.bias": np.zeros(8, np.float32)}
    names = {part: f"test:m-serve/{part}" for part in ("weights", "embeddings", "input_embeddings")}
    svc.artifacts.put_bytes(names["weights"], save(weights))
    svc.artifacts.put_array(names["embeddings"], embeddings)
    svc.artifacts.put_array(names["input_embeddings"], rng.normal(size=(n, 4)).astype(np.float32))
    svc.models.put({"version": "m-serve", "dataset": derived.training_dataset, "artifacts": names,
                    "config": {"architecture": "hybrid", "profile": "centred"}})  # fmt: skip
    serves = [
        {},
        {"prior": 0.3, "prior_until": 10.0},
        {"prior": 3.0, "prior_until": 30.0},
        {"prior": 1.0, "prior_until": 500.0},
        {"cold_boost": 0.3},
        {"prior": 3.0, "prior_until": 30.0, "cold_boost": 0.1},
        {"prior": 1.0, "prior_until": 500.0, "cold_boost": 0.3},
    ]
    rows = [{"name": f"hybrid {i}", "kind": "recipe", "family": "hybrid", "params": serve, "stage": "train:h",
             "serve": serve} for i, serve in enumerate(serves)]  # fmt: skip
    users = int(derived.summary["evaluated"])
    segments = [
        {"name": "all", "users": users},
        {"name": "new-1", "users": int(derived.summary["new_user_slices"]["1"])},
    ]
    plan = {"training_dataset": derived.training_dataset, "relevant_at": 4.0, "k": 10, "seed": 3, "rows": rows,
            "ease_max_bytes": 1 << 20, "chunk": 10**6, "segments": segments, "grid": True}  # fmt: skip
    together, stats = score_shard(svc.artifacts, svc.models, {**plan, "groups": [[0, len(rows)]]}, 0, 1,
                                  trained={"train:h": "m-serve"})  # fmt: skip
    assert set(stats["seconds"]) == {row["name"] for row in rows}
    alone = {**plan, "groups": [[i, i + 1] for i in range(len(rows))]}
    for i in range(len(rows)):
        top, _ = score_shard(svc.artifacts, svc.models, alone, i, i + 1, trained={"train:h": "m-serve"})
        assert np.array_equal(top[0], together[i]), rows[i]["name"]
    assert not np.array_equal(together[0], together[2])  # the prior changed someone's answer
    assert not np.array_equal(together[0], together[4])  # and the cold boost: movies nobody rated in training


@pytest.mark.parametrize("family", ["item-kNN", "RP3beta", "iALS", "most-popular"])
def test_a_test_scoring_fits_a_baseline_once_and_the_others_load_it(
    svc: Services, source: dict[str, object], family: str
) -> None:
    derived = derive(svc.datasets, str(source["id"]), Protocol())
    split = load_split(svc.artifacts, derived.training_dataset, 4.0).split
    history = split.train[split.evaluated[:40]]
    first = fit_baseline(svc.artifacts, derived.training_dataset, 4.0, family, "{}", seed=3, ease_max_bytes=1 << 30)
    summary = evaluation_fit_artifact(derived.training_dataset, fit_id(family, "{}", 3), "summary")
    stored = svc.artifacts.exists(summary)
    again = fit_baseline(svc.artifacts, derived.training_dataset, 4.0, family, "{}", seed=3, ease_max_bytes=1 << 30)
    assert first.scorer is not None and again.scorer is not None
    assert np.array_equal(first.scorer(history), again.scorer(history))
    if family in baselines.STORED:  # loaded, not fitted again: the same object type, from the stored arrays
        assert stored and again.model is not None and again.model is not first.model
    else:  # fitted again where it is wanted, never stored (EASE's dense matrix too: not in STORED)
        assert not stored and "EASE" not in baselines.STORED


def test_a_tag_of_the_test_period_changes_nothing_in_the_training_part(
    svc: Services, source: dict[str, object], tmp_path: Path
) -> None:
    """The same ratings, and one more tag written after its user's cut (on a movie whose descriptors it would
    change): the training dataset's arrays, all of them, are the same bytes."""
    ds = str(source["id"])
    ratings = pd.read_csv(SMALL / "ratings.csv")
    tags = pd.read_csv(SMALL / "tags.csv")
    user = int(tags.userId.iloc[0])
    late = int(ratings[ratings.userId == user].timestamp.max()) + 1  # after every rating: the test period
    movie = int(ratings.movieId.iloc[0])
    extra = pd.DataFrame({"userId": [user] * 5, "movieId": [movie] * 5, "tag": ["zzz leaked"] * 5,
                          "timestamp": [late] * 5})  # fmt: skip
    directory = tmp_path / "leak"
    directory.mkdir()
    for name in ("movies.csv", "ratings.csv"):
        (directory / name).write_bytes((SMALL / name).read_bytes())
    pd.concat([tags, extra]).to_csv(directory / "tags.csv", index=False)
    changed, _ = ingest(svc.datasets, directory, DatasetOptions(tags_per_movie=5), source="leak",
                        progress=lambda *_: None)  # fmt: skip
    vocabulary = svc.artifacts.get_json(dataset_artifact(str(changed["id"]), "vocabulary"))
    assert "zzz leaked" in vocabulary  # the source dataset's descriptors have it
    a = derive(svc.datasets, ds, Protocol()).training_dataset
    b = derive(svc.datasets, str(changed["id"]), Protocol()).training_dataset
    assert a != b
    names = ("movie_ids", "desc_indptr", "desc_indices", "vocabulary", "user_ids", "ratings_indptr", "ratings_movie",
             "ratings_value", "ratings_time", "tag_user", "tag_movie", "tag_text", "tag_time", "terms")  # fmt: skip
    for name in names:
        key_a, key_b = dataset_artifact(a, name), dataset_artifact(b, name)
        if name in ("vocabulary", "terms"):
            if name == "vocabulary":
                assert svc.artifacts.get_json(key_a) == svc.artifacts.get_json(key_b), name
            continue
        assert np.array_equal(svc.artifacts.get_array(key_a), svc.artifacts.get_array(key_b)), name


def test_a_cell_whose_baseline_another_process_is_fitting_defers_and_later_loads_the_fit(
    svc: Services, source: dict[str, object]
) -> None:
    """One process fits a stored baseline; a cell that finds the claim held scores nothing (``FitPending``: the
    worker sends it again), and once the fit is stored it loads it without a claim."""
    derived = derive(svc.datasets, str(source["id"]), Protocol())
    rows = [{"name": "item-kNN", "kind": "baseline", "family": "item-kNN", "params": {}}]
    plan = {"training_dataset": derived.training_dataset, "relevant_at": 4.0, "k": 10, "seed": 3, "rows": rows,
            "ease_max_bytes": 1 << 20, "groups": [[0, 1]], "chunk": 50,
            "segments": [{"name": "all", "users": 100}]}  # fmt: skip
    summary = evaluation_fit_artifact(derived.training_dataset, fit_id("item-kNN", "{}", 3), "summary")
    claims: list[str] = []

    def held(fit: str) -> AbstractContextManager[bool]:
        claims.append(fit)
        return nullcontext(False)  # another live process fits it

    with pytest.raises(FitPending, match="item-kNN is being fitted by another process"):
        score_shard(svc.artifacts, svc.models, plan, 0, 1, claim=held)
    assert claims == [fit_id("item-kNN", "{}", 3)] and not svc.artifacts.exists(summary)
    first, _ = score_shard(svc.artifacts, svc.models, plan, 0, 1, claim=no_claim)  # the fitter: fits, stores
    assert svc.artifacts.exists(summary)
    clear_process_caches()  # another process: nothing cached, the fit stored
    later, stats = score_shard(svc.artifacts, svc.models, plan, 1, 2, claim=held)
    assert len(claims) == 1 and set(stats["seconds"]) == {"item-kNN"}  # loaded, no claim taken
    assert np.all(later >= 0) and np.all(first >= 0)
