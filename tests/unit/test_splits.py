"""Where each rating goes (shared/ml/splits.py) and the new-user slice (evaluate.new_user_split), against the rules
written out per user in plain Python."""

from __future__ import annotations

import numpy as np
import pytest

from shared.ml import evaluate, splits
from shared.ml.protocol import Protocol


def ratings(seed: int = 5, users: int = 60, movies: int = 40) -> tuple[np.ndarray, ...]:
    """(user, movie, rating, timestamp) in a shuffled order, with tied timestamps."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 25, size=users)
    user = np.repeat(rng.choice(np.arange(1, 1000), size=users, replace=False), counts)
    movie = np.concatenate([rng.choice(movies, size=c, replace=False) for c in counts])
    rating = rng.choice(np.arange(1, 11) / 2, size=len(user)).astype(np.float32)
    ts = rng.integers(0, 50, size=len(user)).astype(np.int64)
    order = rng.permutation(len(user))
    return user[order], movie[order], rating[order], ts[order]


def test_temporal_cuts_each_timeline_at_its_own_point() -> None:
    user, _, _, ts = ratings()
    parts = splits.assign(user, ts, kind="temporal", min_ratings=10, train_fraction=0.8)
    for u in np.unique(user):
        mine = np.flatnonzero(user == u)
        labels = parts.label[mine]
        if len(mine) < 10:
            assert np.all(labels == splits.DROPPED)
            continue
        by_time = mine[np.lexsort((mine, ts[mine]))]  # time, then input order
        n_train = round(0.8 * len(mine))
        assert np.all(parts.label[by_time[:n_train]] == splits.TRAIN)
        assert np.all(parts.label[by_time[n_train:]] == splits.TEST)
        cut = parts.cut_times[np.searchsorted(parts.cut_users, u)]
        assert cut == ts[by_time[n_train]]  # the first test rating's time
    assert parts.new_in_test == 0


def test_global_cuts_everyone_at_one_time() -> None:
    user, _, _, ts = ratings(seed=7)
    parts = splits.assign(user, ts, kind="global", min_ratings=5, train_fraction=0.8)
    values, counts = np.unique(user, return_counts=True)
    kept = np.isin(user, values[counts >= 5])
    in_time = np.lexsort((np.arange(len(ts)), ts))
    kept_in_time = in_time[kept[in_time]]
    early = set(kept_in_time[: round(0.8 * len(kept_in_time))].tolist())
    cut = ts[kept_in_time[round(0.8 * len(kept_in_time))]]
    assert np.all(parts.cut_times == cut)
    trained_users = {int(user[i]) for i in early}
    assert parts.cut_users.tolist() == sorted(trained_users)
    for i in range(len(user)):
        if not kept[i] or int(user[i]) not in trained_users:
            assert parts.label[i] == splits.DROPPED  # under min_ratings, or new in the test period
        else:
            assert parts.label[i] == (splits.TRAIN if i in early else splits.TEST)
    assert parts.new_in_test == len({int(user[i]) for i in np.flatnonzero(kept)} - trained_users)
    train_times, test_times = ts[parts.label == splits.TRAIN], ts[parts.label == splits.TEST]
    assert train_times.max() <= test_times.min()


def test_the_cohort_is_a_hash_draw_held_out_whole() -> None:
    ids = np.arange(1, 20_001)
    drawn = splits.in_cohort(ids, 0.15)
    assert 0.14 < drawn.mean() < 0.16
    assert np.array_equal(splits.in_cohort(ids[::7], 0.15), drawn[::7])  # a user's draw depends on them alone
    assert not splits.in_cohort(ids, 0.0).any()
    user, _, _, ts = ratings(seed=9, users=200)
    parts = splits.assign(user, ts, min_ratings=10, new_user_share=0.3)
    held = np.unique(user[parts.label == splits.NEW_USER])
    assert len(held) and np.array_equal(held, np.unique(user[np.isin(user, held)]))
    assert not np.isin(held, parts.cut_users).any()  # none of them is a training user
    for u in held:
        assert np.all(parts.label[user == u] == splits.NEW_USER)
    with pytest.raises(ValueError, match="unknown split"):
        splits.assign(user, ts, kind="random")


def test_a_validation_cohort_is_drawn_from_what_the_test_cohort_left() -> None:
    ids = np.arange(1, 40_001)
    test = Protocol(new_user_share=0.15)
    validation = test.validation()
    assert validation.new_user_share == 0.15 and validation.cohort_from == pytest.approx(0.15)
    held = splits.in_cohort(ids, test.new_user_share, test.cohort_from)
    training = ids[~held]  # the users a training part keeps
    again = splits.in_cohort(training, validation.new_user_share, validation.cohort_from)
    assert 0.14 < again.mean() < 0.16  # the same share of the training users, none of whom the test drew
    assert not splits.in_cohort(training, test.new_user_share).any()  # the test's own draw would find nobody
    assert validation.validation().cohort_from == pytest.approx(0.15 + 0.15 * 0.85)
    assert "cohort_from" not in test.training and validation.training["cohort_from"] == validation.cohort_from


def test_new_users_histories_are_their_first_ratings_and_later_likes_are_relevant() -> None:
    user, movie, rating, ts = ratings(seed=3, users=150)
    split, cohort, parts = evaluate.split_ratings(user, movie, rating, ts, n_movies=40, new_user_share=0.3)
    assert len(cohort.user_ids) == len(np.unique(user[parts.label == splits.NEW_USER]))
    for first in (1, 3, 10):
        new, times = evaluate.new_user_split(cohort, first, n_movies=40, cold=split.cold, relevant_at=4.0)
        evaluated = set(new.evaluated.tolist())
        for row, u in enumerate(cohort.user_ids.tolist()):
            mine = np.flatnonzero(user == u)
            mine = mine[np.lexsort((mine, ts[mine]))]
            history, later = mine[:first], mine[first:]
            assert set(new.train[row].indices.tolist()) == set(movie[history].tolist())
            assert sorted(times[row].data.tolist()) == sorted(ts[history].tolist())
            liked = set(movie[later][rating[later] >= 4.0].tolist())
            assert (row in evaluated) == bool(liked)
            if liked:
                got = new.relevant[int(np.searchsorted(new.evaluated, row))].indices
                assert set(got.tolist()) == liked
        assert new.cold is split.cold


def test_a_sample_of_evaluated_users_is_a_nested_hash_draw_and_leaves_training_alone() -> None:
    values = np.arange(10_000, 10_500) * 7
    small, large = splits.sample(values, 50), splits.sample(values, 200)
    assert len(small) == 50 and len(large) == 200 and np.all(np.diff(small) > 0)
    assert set(small) <= set(large)  # a larger cap holds a smaller one
    assert np.array_equal(splits.sample(values[::-1], 50), np.sort(len(values) - 1 - small))  # by value, not place
    assert np.array_equal(splits.sample(values, 0), np.arange(500)) and len(splits.sample(values, 900)) == 500
    user, movie, rating, ts = ratings(seed=6, users=300)
    split, _, _ = evaluate.split_ratings(user, movie, rating, ts, n_movies=40, min_ratings=1)
    capped = evaluate.sample_evaluated(split, 25)
    assert capped.train is split.train and len(capped.evaluated) == 25 < len(split.evaluated)
    kept = np.searchsorted(split.evaluated, capped.evaluated)
    assert np.array_equal(split.evaluated[kept], capped.evaluated)
    assert (capped.relevant != split.relevant[kept]).nnz == 0  # each kept user's relevant movies, unchanged
    assert evaluate.sample_evaluated(split, 0) is split


@pytest.mark.parametrize("kind", ["temporal", "global"])
def test_max_users_keeps_a_hashed_sample_of_the_training_users(kind: str) -> None:
    user, _, _, ts = ratings(seed=4, users=300)
    whole = splits.assign(user, ts, kind=kind, min_ratings=1)
    sample = splits.assign(user, ts, kind=kind, min_ratings=1, max_users=50)
    assert 0 < len(sample.cut_users) <= 50 and set(sample.cut_users) <= set(whole.cut_users)
    if kind == "temporal":  # (a global split's boundary ties go by input order: who trains may change)
        again = splits.assign(user[::-1], ts[::-1], kind=kind, min_ratings=1, max_users=50)  # another order
        assert np.array_equal(again.cut_users, sample.cut_users)
    out = ~np.isin(user, sample.cut_users)
    assert np.all(sample.label[out] == splits.DROPPED)
    inside = ~out  # the sample's users are split as they are without the cap
    assert np.array_equal(sample.label[inside], whole.label[inside])
    if kind == "global":
        assert np.array_equal(np.unique(sample.cut_times), np.unique(whole.cut_times))  # the same test period


def test_a_sampled_split_keeps_its_cohort_in_proportion() -> None:
    """At scale a validation split samples 10,000 training users; its cohort, drawn from all of them, would be
    15 % of hundreds of thousands. It keeps max_users x share / (1 - share) of them, by a hash draw."""
    user, _, _, ts = ratings(seed=5, users=900)
    whole = splits.assign(user, ts, min_ratings=1, new_user_share=0.2)
    sample = splits.assign(user, ts, min_ratings=1, new_user_share=0.2, max_users=100)
    held = np.unique(user[sample.label == splits.NEW_USER])
    assert len(held) == round(100 * 0.2 / 0.8) and set(held) <= set(user[whole.label == splits.NEW_USER])
    assert len(sample.cut_users) == 100
    assert np.array_equal(held, np.unique(user[splits.assign(user, ts, min_ratings=1, new_user_share=0.2,
                                                              max_users=100).label == splits.NEW_USER]))  # fmt: skip
