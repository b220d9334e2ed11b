"""The evaluation's derived training dataset: exactly the temporal split's training part, nothing of the test part.

Pure: ``shared.logic.scoring.cut`` on ratings arrays shaped as a stored dataset's; the job's table from
shard stats (``shared.logic.evaluation.build_table``); the content-addressed ids.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shared.jobs.sharded import ranges
from shared.logic.evaluation import EvaluationState, build_table, parent, stages
from shared.logic.scoring import cut, ratings_matrix, train_mask
from shared.ml import evaluate
from shared.ml.protocol import Protocol, training_dataset_id
from shared.store.datasets import DatasetRatings

N_MOVIES = 60


def dataset_ratings(seed: int = 3, users: int = 40) -> DatasetRatings:
    """Ratings as a dataset stores them: grouped by ascending user id, each user's in file order (not time
    order), one rating per (user, movie), many timestamps tied."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, size=users)  # some users under min_ratings
    movie = np.concatenate([rng.choice(N_MOVIES, size=c, replace=False) for c in counts]).astype(np.int32)
    values = rng.choice(np.arange(1, 11) / 2, size=len(movie)).astype(np.float32)
    times = rng.integers(1_000, 1_020, size=len(movie)).astype(np.int64)  # few distinct times: ties
    return DatasetRatings(
        user_ids=np.sort(rng.choice(np.arange(1, 500), size=users, replace=False)).astype(np.int32),
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        movie_index=movie,
        values=values,
        timestamps=times,
    )


def per_user(ratings: DatasetRatings) -> dict[int, dict[int, tuple[float, int]]]:
    """user id -> movie -> (rating, timestamp)."""
    assert ratings.timestamps is not None
    out: dict[int, dict[int, tuple[float, int]]] = {}
    for j, user in enumerate(ratings.user_ids.tolist()):
        lo, hi = ratings.indptr[j], ratings.indptr[j + 1]
        rows = zip(ratings.movie_index[lo:hi], ratings.values[lo:hi], ratings.timestamps[lo:hi], strict=True)
        out[user] = {int(m): (float(v), int(t)) for m, v, t in rows}
    return out


@pytest.mark.parametrize("protocol", [Protocol(), Protocol(min_ratings=3, train_fraction=0.5, relevant_at=3.0)])
def test_the_training_part_holds_no_test_rating_and_ends_before_it(protocol: Protocol) -> None:
    ratings = dataset_ratings()
    split, training = cut(ratings, N_MOVIES, protocol)
    everything, trained = per_user(ratings), per_user(training)
    assert set(trained) == {u for u, r in everything.items() if len(r) >= protocol.min_ratings}
    assert training.user_ids.tolist() == split.user_ids.tolist()
    for row, user in enumerate(split.user_ids.tolist()):
        train, full = trained[user], everything[user]
        test = {m: full[m] for m in full.keys() - train.keys()}
        assert all(full[m] == train[m] for m in train)  # the user's own ratings, unchanged
        assert len(train) == round(protocol.train_fraction * len(full))
        if train and test:
            assert max(t for _, t in train.values()) <= min(t for _, t in test.values())
        assert set(np.flatnonzero(split.train[row].toarray()).tolist()) == set(train)
        if row in split.evaluated:
            relevant = split.relevant[int(np.searchsorted(split.evaluated, row))]
            assert set(relevant.indices.tolist()) == {m for m, (v, _) in test.items() if v >= protocol.relevant_at}
            assert not set(relevant.indices.tolist()) & set(train)
    # within a user, the stored order is kept (what ingestion promises of ratings.csv)
    for j in range(len(training.user_ids)):
        lo, hi = training.indptr[j], training.indptr[j + 1]
        source = int(np.searchsorted(ratings.user_ids, training.user_ids[j]))
        order = ratings.movie_index[ratings.indptr[source] : ratings.indptr[source + 1]].tolist()
        kept = training.movie_index[lo:hi].tolist()
        assert kept == [m for m in order if m in set(kept)]


def test_changing_a_test_rating_changes_nothing_in_the_training_part() -> None:
    ratings = dataset_ratings(seed=8)
    split, training = cut(ratings, N_MOVIES, Protocol())
    mask = train_mask(ratings.indptr, ratings.timestamps, min_ratings=10, train_fraction=0.8)
    counts = np.diff(ratings.indptr)
    in_test = ~mask & np.repeat(counts >= 10, counts)
    changed = ratings.values.copy()
    changed[in_test] = np.where(changed[in_test] >= 4.0, 0.5, 5.0)  # every test rating flips relevance
    split2, training2 = cut(ratings._replace(values=changed), N_MOVIES, Protocol())
    for name in DatasetRatings._fields:
        assert np.array_equal(getattr(training, name), getattr(training2, name)), name
    assert (split.train != split2.train).nnz == 0
    assert split.relevant.nnz != split2.relevant.nnz or (split.relevant != split2.relevant).nnz  # the test part moved


def test_train_mask_is_temporal_splits_rule() -> None:
    ratings = dataset_ratings(seed=11, users=80)
    assert ratings.timestamps is not None
    for min_ratings, fraction in ((1, 0.8), (10, 0.8), (5, 0.3), (2, 0.5)):
        mask = train_mask(ratings.indptr, ratings.timestamps, min_ratings=min_ratings, train_fraction=fraction)
        counts = np.diff(ratings.indptr)
        split = evaluate.temporal_split(np.repeat(ratings.user_ids, counts), ratings.movie_index, ratings.values,
                                        ratings.timestamps, n_movies=N_MOVIES, min_ratings=min_ratings,
                                        train_fraction=fraction)  # fmt: skip
        kept = counts >= min_ratings
        indptr = np.concatenate([[0], np.cumsum(np.add.reduceat(mask, ratings.indptr[:-1])[kept])])
        owner_kept = np.repeat(kept, counts)
        assert np.all(~mask[~owner_kept])
        built = ratings_matrix(indptr, ratings.movie_index[mask], ratings.values[mask], N_MOVIES)
        assert (built != split.train).nnz == 0


def test_cut_needs_timestamps() -> None:
    with pytest.raises(ValueError, match="timestamps"):
        cut(dataset_ratings()._replace(timestamps=None), N_MOVIES, Protocol())


def test_the_training_dataset_id_depends_on_what_cuts_it_only() -> None:
    base = training_dataset_id("ds-a", Protocol())
    assert base.startswith("ds-") and len(base) == 27
    assert training_dataset_id("ds-a", Protocol(relevant_at=3.5, k=20)) == base  # scoring only: same dataset
    assert training_dataset_id("ds-b", Protocol()) != base
    assert training_dataset_id("ds-a", Protocol(min_ratings=5)) != base
    assert training_dataset_id("ds-a", Protocol(train_fraction=0.7)) != base


def test_stages_and_their_share_of_the_progress_bar() -> None:
    params = {"path": "x", "recipes": ["seed", "hybrid"]}
    assert stages(params) == ["ingest", "split", "train:seed", "train:hybrid", "score"]
    assert stages({"dataset": "d", "recipes": []}) == ["ingest", "split", "score"]  # ingest: its feedback
    shares = [parent("j", params, s) for s in stages(params)]
    assert shares[0]["index"] == 0 and shares[0]["step"] == "workers.evaluation.evaluation_step"
    # overall = (index + fraction) / stages: each stage starts where the one before ends, the last ends at 1
    for before, after in itertools.pairwise(shares):
        assert (before["index"] + 1) / before["stages"] == pytest.approx(after["index"] / after["stages"])
    assert (shares[-1]["index"] + 1) / shares[-1]["stages"] == pytest.approx(1.0)
    assert ranges(450, 200) == [(0, 200), (200, 400), (400, 450)] and ranges(0, 200) == []


def test_the_table_sums_seconds_names_skips_and_the_best_recipe() -> None:
    state = EvaluationState(
        stage=3,
        results={
            "split": {"dataset": "ds-a", "training_dataset": "ds-t", "evaluated": 3, "cold_users": 1},
            "train:seed": {"model": "m-1", "seconds": 10.0, "job": "p1"},
            "train:hybrid": {"model": "m-2", "seconds": 5.0, "job": "p2"},
        },
        children={"train:seed": "p1", "train:hybrid": "p2"},
    )
    plan = {"seed": 7, "rows": [{"name": "EASE", "kind": "baseline", "model": None},
                                {"name": "seed", "kind": "recipe", "model": "m-1"},
                                {"name": "hybrid", "kind": "recipe", "model": "m-2"}]}  # fmt: skip
    m = {"recall": 0.1, "ndcg": 0.2, "hr": 0.3, "coverage": 0.4, "cold_recall": 0.0, "users": 3, "cold_users": 1}
    stats = [{"seconds": {"seed": 1.0, "hybrid": 2.0}, "skipped": {"EASE": "too big"}},
             {"seconds": {"seed": 1.5, "hybrid": 2.0}, "skipped": {"EASE": "too big"}}]  # fmt: skip
    table = build_table({"dataset": "ds-a", "k": 5}, state, plan, [None, m, {**m, "ndcg": 0.3}], stats)
    assert [(r["name"], r["kind"], r["model"]) for r in table["rows"]] == [
        ("EASE", "baseline", None), ("seed", "recipe", "m-1"), ("hybrid", "recipe", "m-2")]  # fmt: skip
    ease, seed, hybrid = table["rows"]
    assert ease["skipped"] == "too big" and ease["ndcg"] is None and seed["skipped"] is None
    assert seed["seconds"] == 12.5 and hybrid["seconds"] == 9.0  # pipeline wall time + scoring over shards
    assert table["best"] == "hybrid" and table["users"] == 3 and table["cold_users"] == 1
    assert table["protocol"] == {"split": "temporal", "min_ratings": 10, "train_fraction": 0.8, "relevant_at": 4.0,
                                 "k": 5, "seed": 7}  # fmt: skip
