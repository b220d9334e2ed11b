"""The ials recipe: iALS item factors served by inner product, a user's query their fold-in.

Pure: the fold-in against the evaluation's iALS baseline (the same math), the trained model's vectors and
state, and a served answer ranking by the user's factors times the movies'.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from shared.errors import InvalidRequest
from shared.ml import baselines
from shared.ml.baselines import IalsModel, _ials
from shared.ml.fitting import TrainConfig
from shared.ml.hybrid import ials_factorisation, train_hybrid
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
    assert result.factorisation is not None and result.factorisation.item_factors.tobytes() == factors.tobytes()
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


def test_the_recipe_s_factorisation_is_the_ials_baseline_s_bit_for_bit() -> None:
    """What an evaluation's iALS row loads instead of fitting it (shared/logic/fits.py): the same bytes as
    ``baselines.fit`` at factors = hidden_dim, the recipe's regularization, alpha and seed, even from a matrix
    whose rows list their movies out of order (as a dataset stores them) with an explicit zero."""
    ratings = ratings_matrix(users=80, n=40, seed=5)
    shuffled = ratings.copy()
    rng = np.random.default_rng(0)
    for u in range(shuffled.shape[0]):  # each row's entries in another order: the same matrix
        lo, hi = shuffled.indptr[u], shuffled.indptr[u + 1]
        order = lo + rng.permutation(hi - lo)
        shuffled.indices[lo:hi], shuffled.data[lo:hi] = shuffled.indices[order], shuffled.data[order]
    shuffled.has_sorted_indices = False
    config = TrainConfig(architecture="ials", hidden_dim=6, regularization=1.0, alpha=10.0, seed=9)
    ours = ials_factorisation(shuffled, config)
    theirs = baselines.fit("iALS", ratings, {"factors": 6, "regularization": 1.0, "alpha": 10.0}, seed=9,
                           max_bytes=1 << 20)  # fmt: skip
    assert isinstance(theirs, IalsModel)
    assert ours.item_factors.tobytes() == theirs.item_factors.tobytes()
    assert (ours.regularization, ours.alpha) == (1.0, 10.0)


def test_ials_threads_do_not_change_the_factors() -> None:
    """Each user's and each movie's solve is its own: 1, 2 or 4 threads give the same bytes."""
    x = baselines._binary(ratings_matrix(users=300, n=60, seed=8))
    fitted = [_ials(x, factors=8, regularization=0.1, alpha=5.0, seed=2, threads=t).item_factors for t in (1, 2, 4)]
    assert fitted[0].tobytes() == fitted[1].tobytes() == fitted[2].tobytes()
