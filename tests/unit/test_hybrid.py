"""The hybrid model (shared/ml/hybrid.py), recipes, and user profiles (shared/ml/recommend.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from shared.errors import InvalidRequest
from shared.ml.fitting import TrainConfig, hinge_gradient
from shared.ml.hybrid import spectral_embedding, train_hybrid
from shared.ml.recipes import DEFAULT_RECIPE, FALLBACK_RECIPE, RECIPES, recipe_options
from shared.ml.recommend import Profile, profile_queries, profile_weights, project


def ratings_fixture(seed: int = 0, users: int = 60, movies: int = 30) -> sp.csr_matrix:
    """Two taste groups (movies 0-13 and 14-27), movies 28-29 never rated: ratings 1-5 in half steps."""
    rng = np.random.default_rng(seed)
    rows, cols, vals = [], [], []
    for u in range(users):
        group = u % 2
        for m in rng.choice(14, size=6, replace=False) + 14 * group:
            rows.append(u)
            cols.append(m)
            vals.append(rng.choice([4.0, 4.5, 5.0]))
        m = int(rng.integers(0, 28))
        if m not in cols[-6:]:
            rows.append(u)
            cols.append(m)
            vals.append(1.0)
    return sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(users, movies))


def test_spectral_embedding_factorises_the_normalised_co_likes() -> None:
    ratings = ratings_fixture()
    e = spectral_embedding(ratings, liked_at=3.5, dim=29)  # full rank: E E^T = D^-1/2 L^T L D^-1/2 exactly
    liked = (ratings.toarray() >= 3.5).astype(np.float64)
    counts = liked.sum(axis=0)
    scale = np.divide(1.0, np.sqrt(counts), out=np.zeros_like(counts), where=counts > 0)
    expected = (liked * scale).T @ (liked * scale)
    np.testing.assert_allclose(e.astype(np.float64) @ e.T, expected, atol=1e-4)
    assert not e[28:].any()  # nobody rated them: zero rows
    low = spectral_embedding(ratings, liked_at=3.5, dim=8)
    np.testing.assert_array_equal(low, spectral_embedding(ratings, liked_at=3.5, dim=8))  # deterministic


def test_spectral_embedding_pads_a_rank_the_data_cannot_give() -> None:
    ratings = sp.csr_matrix(np.array([[5.0, 4.0, 0.0], [0.0, 5.0, 4.0]], dtype=np.float32))
    e = spectral_embedding(ratings, liked_at=3.5, dim=8)
    assert e.shape == (3, 8) and not e[:, 1:].any()


def tower_triplets(ratings: sp.csr_matrix) -> np.ndarray:
    """(anchor, positive, negative): a movie of the same taste group and one of the other."""
    rng = np.random.default_rng(1)
    rows = []
    for a in range(28):
        group = a // 14
        for _ in range(3):
            p = int(rng.integers(0, 14)) + 14 * group
            n = int(rng.integers(0, 14)) + 14 * (1 - group)
            if p != a:
                rows.append((a, p, n))
    return np.array(rows, dtype=np.int64)


def test_hybrid_movies_someone_liked_keep_their_learned_vector_the_others_their_content() -> None:
    ratings = ratings_fixture()
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(30, 16)).astype(np.float32)
    vectors[:14, 0] += 3.0  # content says which group a movie is in, movies 28-29 included
    vectors[14:28, 0] -= 3.0
    vectors[28, 0] += 3.0
    vectors[29, 0] -= 3.0
    config = TrainConfig(architecture="hybrid", hidden_dim=8, epochs=30, lr=0.01, batch_size=16, liked_at=3.5)
    result = train_hybrid(vectors, tower_triplets(ratings), ratings, config)
    e = spectral_embedding(ratings, liked_at=3.5, dim=8)
    warm = np.linalg.norm(e, axis=1) > 0
    assert result.warm == int(warm.sum()) == 28
    np.testing.assert_allclose(result.projected[warm], e[warm] / np.linalg.norm(e[warm], axis=1, keepdims=True),
                               atol=1e-6)  # fmt: skip
    content = project(vectors, result.state["proj.weight"].numpy(), result.state["proj.bias"].numpy())
    np.testing.assert_allclose(result.projected[28:], content[28:], atol=1e-6)
    # The content tower learnt the groups: a cold movie sits nearer its group's liked vectors.
    group_a, group_b = result.projected[:14].mean(axis=0), result.projected[14:28].mean(axis=0)
    assert result.projected[28] @ group_a > result.projected[28] @ group_b
    assert result.projected[29] @ group_b > result.projected[29] @ group_a
    assert result.train_losses[-1] < result.train_losses[0]
    again = train_hybrid(vectors, tower_triplets(ratings), ratings, config)
    np.testing.assert_array_equal(result.projected, again.projected)


def test_tower_gradient_matches_autograd() -> None:
    rng = np.random.default_rng(3)
    xa = np.hstack([rng.normal(size=(5, 6)), np.ones((5, 1))]).astype(np.float64)
    wb = rng.normal(size=(4, 7))
    p = rng.normal(size=(5, 4))
    n = rng.normal(size=(5, 4))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    loss, grad = hinge_gradient(xa, wb, margin=1.5, targets=(p, n))  # the hybrid's tower: fixed targets
    w = torch.tensor(wb, requires_grad=True)
    z = torch.nn.functional.normalize(torch.tensor(xa) @ w.T, dim=-1)
    ref = torch.relu((z - torch.tensor(p)).norm(dim=1) - (z - torch.tensor(n)).norm(dim=1) + 1.5).mean()
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()))
    assert grad is not None
    np.testing.assert_allclose(grad, w.grad.numpy(), atol=1e-10)


def test_hybrid_without_ratings_is_refused() -> None:
    from shared.ml.training import train

    with pytest.raises(InvalidRequest, match="ratings"):
        train(np.zeros((3, 2), np.float32), np.array([[0, 1, 2], [1, 0, 2]]), TrainConfig(architecture="hybrid"),
              device=torch.device("cpu"))  # fmt: skip


def test_recipes_fill_pipeline_options_and_the_client_wins() -> None:
    assert DEFAULT_RECIPE == "auto" and "seed" in RECIPES and FALLBACK_RECIPE in RECIPES
    assert recipe_options(None, {"epochs": 3, "lr": None}) == {"epochs": 3, "recipe": "auto"}  # not chosen yet
    options = recipe_options("hybrid", {"epochs": 3, "lr": None})
    assert options["recipe"] == "hybrid" and options["epochs"] == 3
    assert options["lr"] == RECIPES["hybrid"].options["lr"]
    seed = recipe_options("seed", {})
    assert (seed["source"], seed["architecture"], seed["hidden_dim"], seed["profile"]) == (
        "descriptors", "linear", 50, "rating",
    )  # fmt: skip
    for recipe in RECIPES.values():  # every recipe is a valid configuration
        TrainConfig(**{k: v for k, v in recipe.options.items() if k in TrainConfig.__dataclass_fields__})
    with pytest.raises(InvalidRequest, match="unknown recipe"):
        recipe_options("nope", {})


def test_profile_weights_by_hand() -> None:
    indptr = np.array([0, 3, 5, 5])  # user 0 rated three movies, user 1 two, user 2 none
    values = np.array([5.0, 3.0, 1.0, 4.0, 4.0], dtype=np.float32)
    day = 86_400
    times = np.array([10 * day, 8 * day, 6 * day, 5 * day, 5 * day], dtype=np.int64)
    np.testing.assert_allclose(profile_weights(indptr, values, None, Profile("rating")), values / 5)
    centred = profile_weights(indptr, values, None, Profile("centred"))
    np.testing.assert_allclose(centred, [1 + (5 - 3) / 2, 1.0, 1 + (1 - 3) / 2, 1.0, 1.0])
    recent = profile_weights(indptr, values, times, Profile("rating", recency_days=2.0))
    np.testing.assert_allclose(recent, [1.0, 0.6 * 0.5, 0.2 * 0.25, 0.8, 0.8])  # 0, 2 and 4 days old; 0 and 0
    assert profile_weights(indptr, values, None, Profile("rating")).dtype == np.float32


def test_linear_profile_is_the_notebooks_and_hybrid_sums_movie_vectors() -> None:
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(4, 6)).astype(np.float32)
    weight, bias = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    emb = project(raw, weight, bias)
    indptr, movies = np.array([0, 2, 2, 3]), np.array([0, 2, 1])  # the second user rated nothing
    w = profile_weights(indptr, np.array([5.0, 2.5, 4.0]), None, Profile("rating"))
    kw = {"raw": raw, "embeddings": emb, "weight": weight, "bias": bias}
    linear = profile_queries(indptr, movies, w, profile=Profile("rating"), **kw)
    mean = (1.0 * raw[0] + 0.5 * raw[2]) / 1.5
    np.testing.assert_allclose(linear[0], project(mean[None, :], weight, bias)[0], atol=1e-6)
    np.testing.assert_allclose(linear[2], project(raw[1:2], weight, bias)[0], atol=1e-6)
    item = profile_queries(indptr, movies, w, profile=Profile("rating", item_space=True), **kw)
    q = 1.0 * emb[0] + 0.5 * emb[2]
    np.testing.assert_allclose(item[0], q / np.linalg.norm(q), atol=1e-6)
    assert not item[1].any()  # no rating, no direction


def test_deeper_networks_are_served_as_trained() -> None:
    from shared.ml.recommend import inner_layers
    from shared.ml.siamese import build_net

    torch.manual_seed(0)
    net = build_net(6, 3, layers=3, dropout=0.5).eval()
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    x = np.random.default_rng(5).normal(size=(4, 6)).astype(np.float32)
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    served = project(x, state["proj.weight"], state["proj.bias"], inner_layers(state))
    np.testing.assert_allclose(served, expected, atol=1e-6)
    assert len(inner_layers(state)) == 2
    with pytest.raises(InvalidRequest, match="layers"):
        TrainConfig(architecture="hybrid", layers=2)
