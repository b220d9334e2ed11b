"""Evaluation: metrics against hand-computed cases, the temporal split on a tiny fixture, each baseline against
a slow dense reference, and a check that nothing of the test part reaches a baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from shared.ml import baselines
from shared.ml.evaluate import (
    EASE_MAX_BYTES,
    Split,
    metrics,
    popular_scorer,
    random_scorer,
    recommend,
    temporal_split,
    top_k,
)


def csr(rows: list[list[int]], n: int, *, dtype: type = np.float32) -> sp.csr_matrix:
    m = sp.lil_matrix((len(rows), n), dtype=dtype)
    for i, r in enumerate(rows):
        for j in r:
            m[i, j] = 1
    return m.tocsr()


# -- metrics ---------------------------------------------------------------------------------------------
def test_metrics_hand_computed() -> None:
    # 2 users, 5 movies, k = 3. Training: user 0 rated {0}, user 1 rated {1, 2}; movies 3 and 4 are cold.
    # user 0: relevant {1, 3}, recommended [1, 2, 3] -> hits at positions 0 and 2.
    #   recall = 2 / min(3, 2) = 1;  DCG = 1/log2(2) + 1/log2(4) = 1.5;  IDCG = 1 + 1/log2(3) = 1.6309
    #   NDCG = 0.91972; cold relevant {3}, hit -> cold recall 1 / min(3, 1) = 1
    # user 1: relevant {4}, recommended [0, 2, 1] -> no hit; cold relevant {4} -> cold recall 0
    # means: recall 0.5, NDCG 0.45986, HR 0.5, coverage |{0, 1, 2, 3}| / 5 = 0.8, cold recall 0.5
    split = Split(
        user_ids=np.array([10, 11]),
        train=csr([[0], [1, 2]], 5),
        evaluated=np.array([0, 1]),
        relevant=csr([[1, 3], [4]], 5, dtype=bool),
        cold=np.array([False, False, False, True, True]),
    )
    got = metrics(np.array([[1, 2, 3], [0, 2, 1]]), split, k=3)
    ndcg0 = 1.5 / (1 + 1 / math.log2(3))
    assert got["recall"] == pytest.approx(0.5)
    assert got["ndcg"] == pytest.approx(ndcg0 / 2)
    assert ndcg0 == pytest.approx(0.91972, abs=1e-5)
    assert got["hr"] == pytest.approx(0.5)
    assert got["coverage"] == pytest.approx(0.8)
    assert got["cold_recall"] == pytest.approx(0.5)
    assert got["cold_share"] == pytest.approx(1 / 6)  # movie 3 in one of the six slots
    assert (got["users"], got["cold_users"]) == (2, 2)


def test_metrics_more_relevant_than_k_and_padding() -> None:
    # One user, relevant {0, 1, 2, 3}, k = 2, recommended [0, 4]: recall = 1 / min(2, 4) = 0.5,
    # NDCG = 1 / (1 + 1/log2(3)) = 0.6131. A second user with a padded list [-1, -1] and relevant {2}: all 0.
    # No cold movie: cold recall 0 over 0 users. Coverage counts {0, 4} of 5 movies = 0.4.
    split = Split(
        user_ids=np.array([1, 2]),
        train=csr([[], []], 5),
        evaluated=np.array([0, 1]),
        relevant=csr([[0, 1, 2, 3], [2]], 5, dtype=bool),
        cold=np.zeros(5, dtype=bool),
    )
    got = metrics(np.array([[0, 4], [-1, -1]]), split, k=2)
    assert got["recall"] == pytest.approx(0.25)
    assert got["ndcg"] == pytest.approx(1 / (1 + 1 / math.log2(3)) / 2)
    assert got["hr"] == pytest.approx(0.5)
    assert got["coverage"] == pytest.approx(0.4)
    assert (got["cold_recall"], got["cold_users"], got["cold_share"]) == (0.0, 0, 0.0)


def test_top_k_excludes_breaks_ties_low_and_pads() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1], [1.0, 2.0, 3.0, 4.0, 5.0]])
    exclude = csr([[1], [0, 1, 2, 3]], 5)
    assert top_k(scores, exclude, 3).tolist() == [[0, 2, 3], [4, -1, -1]]


def _slow_top_k(scores: np.ndarray, exclude: sp.csr_matrix, k: int) -> np.ndarray:
    """The rule itself: each row's candidates (not excluded, not NaN) by score, ties to the lower movie."""
    b, n = scores.shape
    want = np.full((b, k), -1)
    for i in range(b):
        candidates = [j for j in range(n) if not exclude[i, j] and not np.isnan(scores[i, j])]
        best = sorted(candidates, key=lambda j: (-scores[i, j], j))[:k]
        want[i, : len(best)] = best
    return want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_against_a_slow_reference_with_ties_and_nan_scores(dtype: type) -> None:
    rng = np.random.default_rng(4)
    scores = np.round(rng.random((30, 50)), 1).astype(dtype)  # ties within the top k and across its edge
    scores[rng.random(scores.shape) < 0.05] = np.nan
    scores[7, :45] = np.nan  # fewer than k candidates: padded
    scores[8] = np.arange(50)[::-1]  # no tie at all
    scores[9] = 0.5  # one tie across the whole row
    exclude = sp.csr_matrix(rng.random((30, 50)) < 0.2)
    for k in (1, 3, 10, 45, 50, 60):
        want = _slow_top_k(scores, exclude, k)
        assert np.array_equal(top_k(scores, exclude, k), want), k
        mine = scores.copy()
        assert np.array_equal(top_k(mine, exclude, k, overwrite=True), want), k  # ranked in place


def test_top_k_of_scores_every_user_shares() -> None:
    rng = np.random.default_rng(5)
    row = np.round(rng.random(40), 1).astype(np.float32)
    row[[3, 17]] = np.nan
    shared = np.broadcast_to(row, (12, 40))  # most-popular's scores: one row, stride 0
    exclude = sp.csr_matrix(rng.random((12, 40)) < 0.3)
    for k in (1, 10, 40):
        assert np.array_equal(top_k(shared, exclude, k), _slow_top_k(np.array(shared), exclude, k))


# -- the split -------------------------------------------------------------------------------------------
def tiny() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, movie, rating, timestamp) rows; see test_split for what each user is for."""
    rows: list[tuple[int, int, float, int]] = []
    # user 7, 10 ratings -> 8 training. Movie 0 is last in time (ts 100); movies 9 and 8 tie at ts 8 on the
    # boundary and 9 comes first in the input, so 9 trains and 8 is tested. Relevant: {8} (4.0), not 0 (3.5).
    rows += [(7, 0, 3.5, 100)] + [(7, m, 2.0, m) for m in range(1, 8)] + [(7, 9, 1.0, 8), (7, 8, 4.0, 8)]
    rows += [(3, m, 5.0, m) for m in range(10, 19)]  # user 3: 9 ratings -> dropped, trains nothing
    rows += [(5, m, 5.0 if m < 10 else 3.0, m) for m in range(12)]  # 12 -> 10 training, test {10, 11} < 4
    # user 9: 11 ratings -> round(8.8) = 9 training (movies 0..8); test movie 9 (not cold) and 12 (cold).
    rows += [(9, m, 3.0, m) for m in range(9)] + [(9, 12, 5.0, 20), (9, 9, 4.5, 19)]
    # Interleave the users at random but keep each user's own rows in order, so the tie above stays meaningful.
    queues = {u: [r for r in rows if r[0] == u] for u in (7, 3, 5, 9)}
    slots = np.random.default_rng(0).permutation([r[0] for r in rows]).tolist()
    rows = [queues[u].pop(0) for u in slots]
    user, movie, rating, ts = (np.array(c) for c in zip(*rows, strict=True))
    return user, movie, rating, ts


def test_split() -> None:
    s = temporal_split(*tiny(), n_movies=20)
    assert s.user_ids.tolist() == [5, 7, 9]  # user 3 (9 ratings) dropped
    assert [sorted(s.train[r].indices.tolist()) for r in range(3)] == [
        list(range(10)),
        [1, 2, 3, 4, 5, 6, 7, 9],
        list(range(9)),
    ]
    assert s.train[1, 9] == 1.0 and s.train[0, 0] == 5.0  # rating values are kept
    assert s.evaluated.tolist() == [1, 2]  # user 5 has no relevant test movie
    assert [sorted(s.relevant[i].indices.tolist()) for i in range(2)] == [[8], [9, 12]]
    assert np.flatnonzero(s.cold).tolist() == list(range(10, 20))
    got = metrics(np.array([[8, 0], [12, 0]]), s, k=2)
    assert got["recall"] == pytest.approx((1 + 0.5) / 2)
    assert got["cold_recall"] == pytest.approx(1.0)  # user 9's cold movie 12 found
    assert got["cold_users"] == 1


# -- baselines against dense references ------------------------------------------------------------------
def fixture(seed: int = 1, users: int = 40, movies: int = 30) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        n = int(rng.integers(8, 20))
        for m in rng.choice(movies, size=n, replace=False):
            rows.append((u, int(m), float(rng.integers(1, 11)) / 2, int(rng.integers(0, 1000))))
    return tuple(np.array(c) for c in zip(*rows, strict=True))


@pytest.fixture(scope="module")
def split() -> Split:
    return temporal_split(*fixture(), n_movies=32)  # movies 30 and 31 are never rated


def dense_train(split: Split) -> np.ndarray:
    return np.asarray(split.train.toarray() != 0, dtype=np.float64)  # (u, n)


def reference_top(scores: np.ndarray, seen: np.ndarray, k: int) -> list[list[int]]:
    """Per row: candidates sorted by (-score, movie) in plain Python, first k."""
    out = []
    for row, s in zip(scores, seen, strict=True):
        candidates = [j for j in range(len(row)) if not s[j]]
        out.append(sorted(candidates, key=lambda j: (-row[j], j))[:k])
    return out


def test_popular_against_reference(split: Split) -> None:
    x = dense_train(split)
    counts = [sum(x[u, j] for u in range(x.shape[0])) for j in range(x.shape[1])]
    rows = split.evaluated
    expected = reference_top(np.array([counts] * len(rows)), x[rows] > 0, 5)
    assert recommend(popular_scorer(split), split, k=5, batch_users=7).tolist() == expected


def test_random_is_seeded_and_batch_free(split: Split) -> None:
    a = recommend(random_scorer(split, seed=3), split, k=5, batch_users=4)
    assert a.tolist() == recommend(random_scorer(split, seed=3), split, k=5).tolist()
    assert a.tolist() != recommend(random_scorer(split, seed=4), split, k=5).tolist()
    x = dense_train(split)
    assert not np.any(x[split.evaluated[:, None], a] > 0)


def test_the_test_part_never_leaks() -> None:
    """New values, new movies and a new order for every test rating: the training part is the same, so every
    baseline's scores are too (while what is relevant changes)."""
    user, movie, rating, ts = fixture()
    base = temporal_split(user, movie, rating, ts, n_movies=32)
    rng = np.random.default_rng(9)
    rating2, ts2, movie2 = rating.copy(), ts.copy(), movie.copy()
    for u in np.unique(user):
        mine = np.flatnonzero(user == u)
        mine = mine[np.argsort(ts[mine], kind="stable")]
        test = mine[round(0.8 * len(mine)) :]
        rating2[test] = rng.integers(1, 11, size=len(test)) / 2
        ts2[test] = ts[test].max() + rng.permutation(len(test)) + 1  # reordered, still after the training part
        movie2[test] = 30 + rng.integers(0, 2, size=len(test))  # movies nobody trains on
    other = temporal_split(user, movie2, rating2, ts2, n_movies=32)
    assert (base.train != other.train).nnz == 0
    assert base.relevant.nnz != other.relevant.nnz or (base.relevant != other.relevant).nnz > 0
    rows = np.arange(base.train.shape[0])
    for make in (popular_scorer, random_scorer):
        np.testing.assert_array_equal(make(base)(base.train[rows]), make(other)(other.train[rows]))
    for name in baselines.NAMES:
        a = baselines.fit(name, base.train, {}, seed=1, max_bytes=EASE_MAX_BYTES).score(base.train[rows])
        np.testing.assert_array_equal(a, baselines.fit(name, other.train, {}, seed=1,
                                                       max_bytes=EASE_MAX_BYTES).score(other.train[rows]))  # fmt: skip


def test_metrics_of_a_split_with_nobody_to_evaluate_are_zero() -> None:
    split = temporal_split(np.array([1, 1]), np.array([0, 1]), np.array([3.0, 2.0]), np.array([1, 2]), min_ratings=1)
    assert len(split.evaluated) == 0
    m = metrics(np.zeros((0, 10), dtype=np.int64), split)
    zero = dict.fromkeys(("recall", "ndcg", "hr", "coverage", "cold_recall", "cold_share"), 0.0)
    assert m == zero | {"users": 0, "cold_users": 0}
