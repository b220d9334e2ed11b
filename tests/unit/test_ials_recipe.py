"""The ials recipe: iALS item factors served by inner product, a user's query their fold-in.

Pure: the fold-in against the evaluation's iALS baseline (the same math), the trained model's vectors and
state, and a served answer ranking by the user's factors times the movies'.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shared.errors import InvalidRequest
from shared.ml.baselines import IalsModel, _ials
from shared.ml.fitting import TrainConfig
from shared.ml.hybrid import train_hybrid
from shared.ml.recipes import RECIPES, recipe_options
from shared.ml.recommend import Profile, fold_in, user_ranking
from tests.unit.test_batch import random_model


def ratings_matrix(users: int = 60, n: int = 30, seed: int = 1) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, n)) < 0.3) * rng.choice(np.arange(1, 11) / 2, size=(users, n))
    dense[:, -3:] = 0  # three movies nobody rated: cold
    return sp.csr_matrix(dense.astype(np.float32))


def test_a_user_s_fold_in_is_the_ials_baseline_s() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=(25, 6)).astype(np.float32)
    dense = (rng.random((8, 25)) < 0.3).astype(np.float32) * 4
    dense[0] = 0  # a user with no rating: zero factors
    history = sp.csr_matrix(dense)
    baseline = IalsModel(item_factors=y, regularization=0.5, alpha=3.0).user_factors(history)
    ours = fold_in(history.indptr, history.indices, y, y.T.astype(np.float64) @ y, alpha=3.0, regularization=0.5)
    np.testing.assert_allclose(ours, baseline, rtol=1e-5, atol=1e-6)
    assert not ours[0].any()
    # The rating's value does not count, only that the movie was rated (and a movie rated twice counts once).
    twice = fold_in(np.array([0, 3]), np.array([4, 7, 4]), y, y.T.astype(np.float64) @ y, alpha=3.0,
                    regularization=0.5)  # fmt: skip
    once = fold_in(np.array([0, 2]), np.array([4, 7]), y, y.T.astype(np.float64) @ y, alpha=3.0, regularization=0.5)
    assert twice.tobytes() == once.tobytes()


def test_the_ials_model_keeps_the_factors_and_places_cold_movies_by_content() -> None:
    ratings = ratings_matrix()
    n, d = ratings.shape[1], 12
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    triplets = np.array([[a, (a + 1) % 27, (a + 5) % 27] for a in range(27)] * 4)
    config = TrainConfig(architecture="ials", hidden_dim=8, regularization=2.0, alpha=4.0, epochs=2, batch_size=16)
    result = train_hybrid(vectors, triplets, ratings, config)
    factors = _ials(ratings, factors=8, regularization=2.0, alpha=4.0, seed=config.seed).item_factors
    warm = np.arange(n) < n - 3
    np.testing.assert_array_equal(result.projected[warm], factors[warm])  # the baseline's factors, as they are
    norms = np.linalg.norm(result.projected, axis=1)
    np.testing.assert_allclose(norms[~warm], np.median(norms[warm]), rtol=1e-5)  # cold: the median norm
    gram = result.state["fold_in.gram"].numpy()
    np.testing.assert_allclose(gram, factors[warm].T.astype(np.float64) @ factors[warm], rtol=1e-6)
    assert result.warm == n - 3
    with pytest.raises(InvalidRequest, match="regularization must be above 0"):
        TrainConfig(architecture="ials", regularization=0.0)


def test_an_ials_answer_is_the_users_factors_times_the_movies() -> None:
    model = random_model({"architecture": "ials", "alpha": 2.0, "regularization": 1.0})
    assert model.profile == Profile(item_space=True, fold_in=True, alpha=2.0, regularization=1.0)
    j = 7
    lo, hi = model.ratings_indptr[j], model.ratings_indptr[j + 1]
    assert model.gram is not None
    x = fold_in(np.array([0, hi - lo]), model.ratings_movie[lo:hi], model.embeddings, model.gram, alpha=2.0,
                regularization=1.0)[0]  # fmt: skip
    scores = model.embeddings @ x
    scores[model.ratings_movie[lo:hi]] = -np.inf
    ranking = user_ranking(model, int(model.user_ids[j]), k=10)
    assert ranking.strategy == "profile"
    np.testing.assert_allclose(ranking.scores, np.sort(scores)[::-1][:10], rtol=1e-4)  # inner products
    assert len(set(ranking.rows.tolist()) & set(np.argsort(-scores)[:10].tolist())) >= 9  # the index's recall


def test_the_ials_recipe_names_its_options() -> None:
    options = recipe_options("ials", {"hidden_dim": 128})
    assert options["architecture"] == "ials" and options["hidden_dim"] == 128 and options["recipe"] == "ials"
    assert RECIPES["ials"].options["source"] == "ratings"  # the content tower learns from co-liked triplets


def test_training_an_ials_config_trains_the_ials_model() -> None:
    import torch

    from shared.ml.training import train

    ratings = ratings_matrix()
    vectors = np.random.default_rng(2).normal(size=(ratings.shape[1], 12)).astype(np.float32)
    triplets = np.array([[a, (a + 1) % 27, (a + 5) % 27] for a in range(27)] * 4)
    config = TrainConfig(architecture="ials", hidden_dim=8, epochs=1, batch_size=16)
    result = train(vectors, triplets, config, device=torch.device("cpu"), ratings=ratings)
    assert "fold_in.gram" in result.state and result.warm == ratings.shape[1] - 3
    with pytest.raises(InvalidRequest, match="ials architecture learns from ratings"):
        train(vectors, triplets, config, device=torch.device("cpu"))
