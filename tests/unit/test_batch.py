"""Batch recommendations, the pure part: a shard's users answered at once, each user's rows bit for bit the
single-user answer's items (every kind of profile, feedback, no ratings, exclusions), rows in order, CSV text
that reads back to the single answer's scores, the streamed .npy header."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch

from shared.jobs.sharded import ShardPlan
from shared.logic.batch import listed_users
from shared.ml.batch import CSV_ROWS_PER_CHUNK, ROW, ShardModel, StoredRatings, answer_users, csv_text, npy_header
from shared.ml.fitting import TrainConfig, TrainResult
from shared.ml.index import IndexParams, MovieIndex
from shared.ml.recommend import ServingModel, UserRatings, recommend, user_ranking
from shared.ml.sequence import SequenceNet, train_sequence


def small_model(n: int = 40, users: int = 5) -> ServingModel:
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(n, 6)).astype(np.float32)
    weight, bias = rng.normal(size=(4, 6)).astype(np.float32), np.zeros(4, dtype=np.float32)
    projected = raw @ weight.T
    projected /= np.linalg.norm(projected, axis=1, keepdims=True)
    counts = rng.integers(1, n - 2, size=users)  # the last user rated all but a few: fewer than k rows
    counts[-1] = n - 3
    movies = [rng.choice(n, size=c, replace=False) for c in counts]
    descriptors = [["Drama"] if i % 2 else ["Comedy", "x"] for i in range(n)]
    vocabulary = ["Comedy", "Drama", "x"]
    return ServingModel(
        version="m-test", record={}, index=MovieIndex.build(projected, IndexParams()), weight=weight, bias=bias,
        raw=raw, embeddings=projected.astype(np.float32), movie_ids=np.arange(100, 100 + n, dtype=np.int32),
        titles=[f"movie {i}" for i in range(n)], descriptors=descriptors, vocabulary=vocabulary,
        desc_indptr=np.cumsum([0] + [len(d) for d in descriptors]).astype(np.int64),
        desc_indices=np.array([vocabulary.index(x) for d in descriptors for x in d], dtype=np.int32),
        user_ids=np.arange(1, users + 1, dtype=np.int32),
        ratings_indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        ratings_movie=np.concatenate(movies).astype(np.int32),
        ratings_value=rng.choice(np.arange(0.5, 5.01, 0.5), size=int(counts.sum())).astype(np.float32),
    )  # fmt: skip


def answer(model: ServingModel, users: np.ndarray, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """``answer_users`` over the whole of a served model: its network and index, all its stored ratings."""
    return answer_users(ShardModel.of(model), users, stored=StoredRatings.of(model), popular=lambda: model.popular,
                        popularity=lambda: model.popularity, **options)  # fmt: skip


def test_each_user_s_rows_are_recommend_s_items_in_order() -> None:
    model = small_model()
    users = np.array([3, 99, 1, 5, 2])  # 99: no ratings, the popular fallback
    feedback = {2: UserRatings(rows=np.array([0, 1]), values=np.array([5.0, 1.0], dtype=np.float32))}
    rows, stats = answer(model, users, k=6, feedback=feedback)
    assert stats["users"] == 5 and stats["popular"] == 1 and stats["rows"] == len(rows)
    at = 0
    for user in users.tolist():
        params = {"user_id": user, "k": 6, "exclude_seen": True, "genres": None}
        items = recommend(model, params, encode=lambda _: np.zeros(0), feedback=feedback.get(user))["items"]
        mine = rows[at : at + len(items)]
        assert mine["user_id"].tolist() == [user] * len(items)
        assert mine["rank"].tolist() == list(range(1, len(items) + 1))
        assert mine["movie_id"].tolist() == [i["movie_id"] for i in items]
        # the score as the single-user JSON rounds it: exactly (what the CSV writes)
        assert mine["score"].astype(np.float64).round(6).tolist() == [i["score"] for i in items]
        at += len(items)
    assert at == len(rows) and len(rows) == 4 * 6 + 3  # user 5 rated all but 3 movies


COLD = 40
"""Movies nobody rated in a random model whose config has a cold_boost."""
_TRAINED: dict[tuple[int, int, int, bool], TrainResult] = {}
"""Sequence networks trained for random models, by shape and cold movies: one training serves every config."""


def random_model(config: dict[str, object], *, n: int = 3000, users: int = 300, d: int = 24) -> ServingModel:
    """A model of ``config`` (architecture, profile, recency_days) over n movies, a third of them sharing
    another's vector (as movies with the same descriptors do), users with 1 to 400 ratings, one with all but 3
    and one with all; user ids 2, 4, 6, ..."""
    rng = np.random.default_rng(2)
    hidden, recency = 8, float(config.get("recency_days", 0.0))
    raw = rng.normal(size=(n * 2 // 3, d)).astype(np.float32)[rng.integers(0, n * 2 // 3, n)]
    weight, bias = rng.normal(size=(hidden, d)).astype(np.float32), rng.normal(size=hidden).astype(np.float32)
    projected = raw @ weight.T + bias
    projected /= np.linalg.norm(projected, axis=1, keepdims=True)
    ials = config.get("architecture") == "ials"
    sequence = config.get("architecture") == "sequence"
    if ials:  # factors of varied norms in an inner-product index, users folded in
        projected *= rng.uniform(0.2, 2.0, size=(n, 1))
    counts = rng.integers(1, 400, size=users)
    counts[-2:] = [n - 3, n]
    total = int(counts.sum())
    ratings_movie = np.concatenate([rng.choice(n, size=c, replace=False) for c in counts]).astype(np.int32)
    ratings_value = rng.choice(np.arange(0.5, 5.01, 0.5), size=total).astype(np.float32)
    ratings_time = rng.integers(0, 10**9, size=total) if recency or sequence else None
    if "cold_boost" in config:  # the last COLD movies rated by nobody: the cold bonus has movies to raise
        keep = ratings_movie < n - COLD
        owner = np.repeat(np.arange(users), counts)[keep]
        counts = np.bincount(owner, minlength=users)
        ratings_movie, ratings_value = ratings_movie[keep], ratings_value[keep]
        ratings_time = ratings_time[keep] if ratings_time is not None else None
    net = None
    if sequence:  # a network trained for a step on these ratings: its movie vectors, content tower and blocks
        key = (n, users, d, "cold_boost" in config)  # the rest is seeded: the same key, the same ratings
        if key not in _TRAINED:
            indptr = np.r_[0, np.cumsum(counts)]
            config_ = TrainConfig(architecture="sequence", hidden_dim=hidden, layers=2, epochs=1, batch_size=512)
            _TRAINED[key] = train_sequence(raw, np.zeros((0, 3), np.int64), indptr, ratings_movie, ratings_time,
                                           config_, device=torch.device("cpu"))  # fmt: skip
        trained = _TRAINED[key]
        state = {k: v.numpy() for k, v in trained.state.items()}
        projected, weight, bias = trained.projected, state["proj.weight"], state["proj.bias"]
        net = SequenceNet.from_state(state)
    return ServingModel(
        version="m-random", record={"config": config},
        index=MovieIndex.build(projected, IndexParams(space="ip" if ials or sequence else "cosine")),
        weight=weight, bias=bias, raw=raw, embeddings=projected.astype(np.float32),
        movie_ids=np.arange(5, 5 + n, dtype=np.int32), titles=[""] * n, descriptors=[["Drama"]] * n,
        vocabulary=["Drama"], desc_indptr=np.arange(n + 1), desc_indices=np.zeros(n, dtype=np.int32),
        user_ids=np.arange(2, 2 * users + 1, 2, dtype=np.int32),
        ratings_indptr=np.r_[0, np.cumsum(counts)].astype(np.int64),
        ratings_movie=ratings_movie,
        ratings_value=ratings_value,
        ratings_time=ratings_time,
        gram=(projected.T.astype(np.float64) @ projected) if ials else None,
        sequence=net,
    )  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [
        {},  # the notebook's: linear, rating / 5
        {"architecture": "hybrid", "profile": "centred"},  # the default recipe's
        {"profile": "centred", "recency_days": 30.0},
        {"architecture": "hybrid", "recency_days": 10.0},
        {"architecture": "hybrid", "prior": 1.0, "prior_until": 100.0},  # light users: the popularity prior
        {"prior": 3.0, "prior_until": 30.0},
        {"architecture": "ials", "alpha": 5.0, "regularization": 2.0},  # inner product, users folded in
        {"architecture": "ials", "prior": 1.0, "prior_until": 50.0},
        {"architecture": "sequence"},  # inner product, the network's state over the ratings in time order
        {"architecture": "sequence", "prior": 3.0, "prior_until": 30.0},
        {"architecture": "hybrid", "cold_boost": 0.3},  # movies nobody rated raised by 0.3 of the best score
        {"architecture": "ials", "cold_boost": 0.1, "prior": 3.0, "prior_until": 30.0},
        {"architecture": "sequence", "cold_boost": 0.3, "prior": 1.0, "prior_until": 50.0},
    ],
)
def test_a_shard_s_rows_are_each_user_s_ranking_bit_for_bit(config: dict[str, object]) -> None:
    model = random_model(config)
    rng = np.random.default_rng(4)
    users = np.r_[rng.permutation(model.user_ids), 1, 3, 10**9].astype(np.int64)  # and three unknown users
    feedback = {
        int(model.user_ids[0]): UserRatings(rows=np.array([0, 1, 2]), values=np.array([5.0, 1.0, 3.0], np.float32),
                                            times=np.array([1, 2, 3])),  # re-rates and rates anew
        3: UserRatings(rows=np.array([7, 8]), values=np.array([4.0, 2.0], np.float32), times=np.array([5, 6])),
    }  # fmt: skip
    for k, exclude_seen, threads in [(10, True, 1), (1, True, 2), (100, True, 1), (10, False, 2)]:
        rows, stats = answer(model, users, k=k, exclude_seen=exclude_seen, feedback=feedback, threads=threads)
        assert stats["popular"] == 2  # users 1 and 10**9; 3 has feedback
        at, light, cold = 0, 0, 0
        for user in users.tolist():
            one = user_ranking(model, user, k=k, exclude_seen=exclude_seen, feedback=feedback.get(user))
            light += one.strategy == "light-profile"
            cold += int(model.cold[one.rows].sum())
            mine = rows[at : at + len(one.rows)]
            assert mine["user_id"].tolist() == [user] * len(one.rows)
            assert mine["rank"].tolist() == list(range(1, len(one.rows) + 1))
            assert mine["movie_id"].tolist() == model.movie_ids[one.rows].tolist()
            assert mine["score"].tobytes() == one.scores.astype(np.float32).tobytes()
            at += len(one.rows)
        assert at == len(rows) == stats["rows"]
        assert stats["light"] == light and (light > 0) == ("prior" in config)
        assert (cold > 0) == ("cold_boost" in config)  # the bonus brings movies nobody rated into answers


def test_listed_users_keep_their_first_place() -> None:
    assert listed_users([9, 3, 9, 1, 3]).tolist() == [9, 3, 1]


def test_a_plan_covers_every_user_once() -> None:
    assert ShardPlan(items=5, size=2, payload={}).ranges == [(0, 2), (2, 4), (4, 5)]
    assert ShardPlan(items=4, size=2, payload={}).ranges == [(0, 2), (2, 4)]
    assert ShardPlan(items=0, size=2, payload={}).ranges == []
    planned = ShardPlan(items=7, size=3, payload={"users": "all", "k": 10})
    assert ShardPlan.from_json(planned.to_json()) == planned


def test_csv_scores_read_back_to_the_answer_s_rounded_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, 5000).round(6)  # as recommend rounds them
    rows = np.zeros(len(scores), dtype=ROW)
    rows["user_id"], rows["rank"], rows["movie_id"] = 7, 1, 42
    rows["score"] = scores  # float32, as stored
    text = "".join(csv_text(rows, ["r1.x"] * len(rows)))
    assert all(line.endswith(",r1.x") for line in text.splitlines())
    assert [float(line.split(",")[3]) for line in text.splitlines()] == scores.tolist()
    assert [line.split(",")[3] for line in text.splitlines()] == [repr(s) for s in scores.tolist()]


def test_csv_comes_in_pieces() -> None:
    rows = np.zeros(CSV_ROWS_PER_CHUNK * 2 + 1, dtype=ROW)
    pieces = list(csv_text(rows, ["r1.x"] * len(rows)))
    assert len(pieces) == 3 and sum(p.count("\n") for p in pieces) == len(rows)


def test_npy_header_then_raw_rows_is_a_npy_file() -> None:
    rows = np.zeros(4, dtype=ROW)
    rows["user_id"] = [1, 1, 2, 2]
    rows["score"] = [0.5, 0.25, 0.125, -1.0]
    loaded = np.load(io.BytesIO(npy_header(len(rows)) + rows.tobytes()), allow_pickle=False)
    assert loaded.dtype == ROW and loaded.tolist() == rows.tolist()
