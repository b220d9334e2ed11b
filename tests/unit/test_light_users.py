"""A light user's answer: the profile blended with a popularity prior that shrinks as ratings arrive.

Pure: ``Profile.prior_weights``, ``popularity_prior`` and ``blended_top`` by hand; the single answer, its
explanation and the evaluation's scorer (``VersionScorer``) ranking the same movies.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shared.errors import InvalidRequest
from shared.logic.serving import VersionScorer
from shared.ml.fitting import TrainConfig
from shared.ml.recommend import LIGHT_PROFILE, Profile, blended_top, popularity_prior, recommend, user_ranking
from tests.unit.test_batch import random_model


def test_the_prior_shrinks_to_nothing_at_prior_until() -> None:
    profile = Profile(prior=2.0, prior_until=10.0)
    np.testing.assert_allclose(profile.prior_weights(np.array([0, 1, 5, 10, 50])), [2.0, 1.8, 1.0, 0.0, 0.0])
    assert not Profile(prior=2.0).prior_weights(np.array([0, 1])).any()  # no prior_until: off
    assert not Profile(prior_until=10.0).prior_weights(np.array([0, 1])).any()
    assert Profile.of({"prior": 1.5, "prior_until": 30}) == Profile(prior=1.5, prior_until=30.0)
    with pytest.raises(InvalidRequest, match="prior must be in"):
        TrainConfig(prior=-1.0)


def test_popularity_is_log_ratings_scaled_to_one() -> None:
    prior = popularity_prior(np.array([0, 0, 0, 1, 2, 2]), 4)  # counts 3, 1, 2, 0
    np.testing.assert_allclose(prior, np.log1p([3, 1, 2, 0]) / np.log1p(3), rtol=1e-6)
    assert prior.dtype == np.float32 and not popularity_prior(np.zeros(0, dtype=np.int32), 2).any()


def test_blended_top_ranks_cosine_plus_weighted_popularity_ties_to_the_lower_row() -> None:
    embeddings = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    popularity = np.array([0.0, 1.0, 0.0, 0.5, 1.0], dtype=np.float32)
    query = np.array([1.0, 0.0], dtype=np.float32)
    allowed = np.ones(5, dtype=bool)
    rows, scores = blended_top(embeddings, query, 0.0, popularity, k=3, allowed=allowed)
    assert rows.tolist() == [0, 2, 3]  # cosine alone; 0 and 2 tie, the lower row first
    rows, scores = blended_top(embeddings, query, 1.0, popularity, k=3, allowed=allowed)
    assert rows.tolist() == [3, 0, 1]  # 1.1, then rows 0, 1 and 2 tied at 1.0: the lower rows
    rows, scores = blended_top(embeddings, query, 1.0, popularity, k=5, allowed=allowed)
    assert rows.tolist() == [3, 0, 1, 2, 4] and scores.tolist() == pytest.approx([1.1, 1.0, 1.0, 1.0, 0.0])
    allowed[[0, 3]] = False
    rows, _ = blended_top(embeddings, query, 1.0, popularity, k=10, allowed=allowed)
    assert rows.tolist() == [1, 2, 4]  # what is allowed, however many are asked for


def test_a_light_user_gets_the_blend_and_a_heavy_one_the_index() -> None:
    model = random_model({"architecture": "hybrid", "prior": 1.0, "prior_until": 100.0})
    counts = np.diff(model.ratings_indptr)
    light, heavy = int(model.user_ids[np.argmax(counts < 20)]), int(model.user_ids[np.argmax(counts > 200)])
    params = {"k": 10, "exclude_seen": True, "genres": None}
    answer = recommend(model, {**params, "user_id": light}, encode=lambda _: np.zeros(0))
    assert answer["strategy"] == LIGHT_PROFILE and "popularity" in answer["explanation"]
    ranking = user_ranking(model, light, k=10)
    assert (
        0 < ranking.prior < 1.0 and [i["movie_id"] for i in answer["items"]] == model.movie_ids[ranking.rows].tolist()
    )
    plain = recommend(model, {**params, "user_id": heavy}, encode=lambda _: np.zeros(0))
    assert plain["strategy"] == "profile" and "explanation" not in plain
    # The prior moves the light user's answer towards the most rated movies.
    off = random_model({"architecture": "hybrid"})
    popular = set(np.argsort(-model.popularity)[:300].tolist())
    with_prior = len(popular & set(ranking.rows.tolist()))
    without = len(popular & set(user_ranking(off, light, k=10).rows.tolist()))
    assert with_prior > without


def test_the_evaluation_scores_a_light_user_as_the_service_ranks_them() -> None:
    model = random_model({"architecture": "hybrid", "prior": 2.0, "prior_until": 50.0})
    scorer = VersionScorer(profile=model.profile, raw=model.raw, embeddings=model.embeddings, weight=model.weight,
                           bias=model.bias, popularity=model.popularity)  # fmt: skip
    counts = np.diff(model.ratings_indptr)
    users = np.flatnonzero(counts < 50)[:5]
    for j in users.tolist():
        lo, hi = model.ratings_indptr[j], model.ratings_indptr[j + 1]
        history = sp.csr_matrix((model.ratings_value[lo:hi], model.ratings_movie[lo:hi], [0, hi - lo]),
                                shape=(1, len(model.movie_ids)))  # fmt: skip
        scores = scorer.score(history, None)[0]
        scores[model.ratings_movie[lo:hi]] = -np.inf
        served = user_ranking(model, int(model.user_ids[j]), k=10)
        assert served.strategy == LIGHT_PROFILE
        np.testing.assert_allclose(scores[served.rows], served.scores, rtol=1e-5, atol=1e-6)
        assert np.sort(scores)[::-1][9] == pytest.approx(float(served.scores[-1]), abs=1e-5)
    # A serve-time override scores the same model at another setting (a validation grid's).
    history = sp.csr_matrix((np.ones(2, np.float32), [0, 1], [0, 2]), shape=(1, len(model.movie_ids)))
    off = scorer.score(history, None, serve={"prior": 0.0})
    on = scorer.score(history, None)
    np.testing.assert_allclose(on - off, 2.0 * (1 - 2 / 50) * model.popularity[None, :], rtol=1e-4, atol=1e-5)
