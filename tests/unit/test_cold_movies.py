"""Cold movies (nobody rated them in the model's dataset) raised by a bonus that is a share of the best score.

Pure: ``cold_bonus`` and ``with_cold`` by hand and against a brute-force scan, the single answer with its
explanation, and the evaluation's scorer (``VersionScorer``) giving the served movies the same scores. (The
batch's rows are the single answers with a cold boost too: tests/unit/test_batch.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shared.errors import InvalidRequest
from shared.logic.serving import VersionScorer
from shared.ml.fitting import TrainConfig
from shared.ml.recipes import SERVE_GRIDS
from shared.ml.recommend import Profile, cold_bonus, recommend, user_ranking, vector_scale, with_cold
from tests.unit.test_batch import COLD, random_model


def test_the_bonus_is_a_share_of_the_best_score_a_movie_could_have() -> None:
    queries = np.array([[3.0, 4.0], [0.6, 0.8]], dtype=np.float32)  # lengths 5 and 1
    np.testing.assert_allclose(cold_bonus(0.1, queries, 2.0), [1.0, 0.2], rtol=1e-6)
    assert not cold_bonus(0.0, queries, 2.0).any()
    embeddings = np.array([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [9.0, 9.0]], dtype=np.float32)
    assert vector_scale(embeddings, np.array([1.0, 0.5, 0.2, 0.0])) == 2.0  # the rated ones' median length
    assert vector_scale(embeddings, np.zeros(4)) == 1.0
    assert Profile.of({"cold_boost": 0.3}).cold_boost == 0.3
    with pytest.raises(InvalidRequest, match="cold_boost must be in"):
        TrainConfig(cold_boost=-0.1)
    assert {"cold_boost": 0.3} in SERVE_GRIDS["hybrid"] and {} in SERVE_GRIDS["hybrid"]  # chosen on validation


def test_with_cold_is_the_exact_top_k_of_the_raised_scores() -> None:
    rng = np.random.default_rng(5)
    n, k = 200, 10
    embeddings = rng.normal(size=(n, 6)).astype(np.float32)
    cold = np.zeros(n, dtype=bool)
    cold[rng.choice(n, 30, replace=False)] = True
    for trial in range(20):
        query = rng.normal(size=6).astype(np.float32)
        excluded = rng.choice(n, 15, replace=False)
        allowed = np.ones(n, dtype=bool)
        allowed[excluded] = False
        scores = embeddings @ query
        best = np.flatnonzero(allowed)[np.argsort(-scores[allowed], kind="stable")[:k]]  # the index's answer
        bonus = float(trial) / 4
        rows, got = with_cold(best, scores[best], query, embeddings, bonus=bonus, cold=cold,
                              candidates=np.flatnonzero(cold & allowed), k=k)  # fmt: skip
        raised = np.where(cold, scores + np.float32(bonus), scores)
        raised[~allowed] = -np.inf
        np.testing.assert_allclose(got, np.sort(raised)[::-1][:k], rtol=1e-6)
        np.testing.assert_allclose(got, raised[rows], rtol=1e-6)
        assert not set(rows.tolist()) & set(excluded.tolist())
        if bonus == 0:
            assert rows.tolist() == best.tolist()


def test_a_served_answer_brings_cold_movies_says_so_and_the_evaluation_scores_it_alike() -> None:
    model = random_model({"architecture": "hybrid", "cold_boost": 0.3})
    off = random_model({"architecture": "hybrid"})  # the same vectors, every movie rated: no bonus
    n = len(model.movie_ids)
    assert model.cold.tolist() == [False] * (n - COLD) + [True] * COLD and model.scale == pytest.approx(1.0)
    scorer = VersionScorer(profile=model.profile, raw=model.raw, embeddings=model.embeddings, weight=model.weight,
                           bias=model.bias, popularity=model.popularity)  # fmt: skip
    brought = 0
    for j in range(20):
        lo, hi = model.ratings_indptr[j], model.ratings_indptr[j + 1]
        served = user_ranking(model, int(model.user_ids[j]), k=10)
        assert served.strategy == "profile" and served.bonus == pytest.approx(0.3, rel=1e-5)
        history = sp.csr_matrix((model.ratings_value[lo:hi], model.ratings_movie[lo:hi], [0, hi - lo]),
                                shape=(1, n))  # fmt: skip
        scores = scorer.score(history, None)[0]
        np.testing.assert_allclose(scores[served.rows], served.scores, rtol=1e-5, atol=1e-6)
        plain = scorer.score(history, None, serve={"cold_boost": 0.0})[0]
        np.testing.assert_allclose((scores - plain)[model.cold], 0.3, rtol=1e-4)
        assert not (scores - plain)[~model.cold].any()
        brought += int(model.cold[served.rows].sum())
    assert brought > 0
    answer = recommend(model, {"user_id": int(model.user_ids[0]), "k": 10, "exclude_seen": True},
                       encode=lambda _: np.zeros((1, 1)))  # fmt: skip
    cold_items = sum(model.cold[m - 5] for m in (i["movie_id"] for i in answer["items"]))
    assert ("nobody has rated yet" in answer.get("explanation", "")) == (cold_items > 0)
    assert not off.cold.any() and "explanation" not in recommend(
        off, {"user_id": int(off.user_ids[0]), "k": 10, "exclude_seen": True}, encode=lambda _: np.zeros((1, 1))
    )
