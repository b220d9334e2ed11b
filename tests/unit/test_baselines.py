"""The tuned baselines (shared/ml/baselines.py): each model against a slow, obviously correct reference on a
small random fixture, iALS's fold-in against implicit's own, and the grids, labels, errors and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from shared.ml import baselines
from shared.ml.baselines import ease_bytes
from shared.ml.evaluate import Skipped

U, N = 40, 30
"""Fixture size: 40 training users x 30 movies, the last movie rated by nobody."""


def _ratings(rng: np.random.Generator, users: int, density: float) -> sp.csr_matrix:
    """(users, N) float32 CSR of half-star ratings; movie N - 1 is never rated."""
    rated = rng.random((users, N)) < density
    rated[:, N - 1] = False
    values = rng.integers(1, 11, size=(users, N)).astype(np.float32) / 2  # 0.5 .. 5.0
    return sp.csr_matrix(np.where(rated, values, 0).astype(np.float32))


@pytest.fixture(scope="module")
def train() -> sp.csr_matrix:
    m = _ratings(np.random.default_rng(7), U, 0.3).toarray()
    m[3] = 0  # a training user with no rating at all
    return sp.csr_matrix(m)


@pytest.fixture(scope="module")
def history() -> sp.csr_matrix:
    """(8, N) new users, not in the training matrix; one of them has rated nothing."""
    h = _ratings(np.random.default_rng(11), 8, 0.25).tolil()
    h[5, :] = 0
    h[6, N - 1] = 4.0  # a rating of the movie nobody rated in training
    return sp.csr_matrix(h)


def _dense_binary(m: sp.csr_matrix) -> np.ndarray:
    return np.asarray(m.toarray() != 0, dtype=np.float64)


def fit(name: str, train: sp.csr_matrix, seed: int = 0, **params: float) -> baselines.Baseline:
    return baselines.fit(name, train, params, seed=seed, max_bytes=1 << 30)


def similarity(name: str, train: sp.csr_matrix, **params: float) -> np.ndarray:
    """(N, N) float32 dense item-item matrix of an item-kNN or RP3beta fit."""
    model = fit(name, train, **params)
    assert isinstance(model, baselines.SimilarityModel)
    return np.asarray(model.similarity.toarray())


# -- EASE ---------------------------------------------------------------------------------------------------
def test_ease_matches_the_inverse_formula(train, history) -> None:
    x = _dense_binary(train)
    items = np.flatnonzero(x.sum(axis=0) > 0)
    lam = 7.0
    p = np.linalg.inv(x[:, items].T @ x[:, items] + lam * np.eye(len(items)))
    b = np.eye(len(items)) - p / np.diag(p)[None, :]  # B = I - P diag(P)^-1
    np.testing.assert_allclose(np.diag(b), 0.0, atol=1e-12)
    h = _dense_binary(history)
    want = np.zeros((h.shape[0], N))
    want[:, items] = h[:, items] @ b
    got = fit("EASE", train, lam=lam).score(history)
    assert got.dtype == np.float32 and got.shape == (8, N)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not got[:, N - 1].any()  # a movie with no training rating scores 0


def test_ease_skipped_over_its_memory_budget(train) -> None:
    m = int((train.getnnz(axis=0) > 0).sum())
    with pytest.raises(Skipped, match="EASE needs"):
        baselines.fit("EASE", train, {"lam": 10}, seed=0, max_bytes=ease_bytes(m) - 1)
    baselines.fit("EASE", train, {"lam": 10}, seed=0, max_bytes=ease_bytes(m))  # exactly the budget fits


# -- item-kNN -----------------------------------------------------------------------------------------------
def _knn_reference(train: sp.csr_matrix, k: int, shrink: float) -> np.ndarray:
    """Double loop: shrunk cosine of every pair of movies, each row's k best (positive, off-diagonal) kept,
    ties to the lower movie, in the float32 arithmetic the model uses."""
    x = train.toarray() != 0
    counts = x.sum(axis=0)
    norms = [np.float32(math.sqrt(c)) for c in counts]
    s = np.zeros((N, N), dtype=np.float32)
    for i in range(N):
        sims = []
        for j in range(N):
            dot = sum(int(x[u, i] and x[u, j]) for u in range(x.shape[0]))
            if j != i and dot > 0:
                sims.append((np.float32(dot) / (norms[i] * norms[j] + np.float32(shrink)), j))
        for sim, j in sorted(sims, key=lambda t: (-t[0], t[1]))[:k]:
            s[i, j] = sim
    return s


@pytest.mark.parametrize(("k", "shrink"), [(3, 0.0), (5, 10.0), (100, 2.5)])
def test_item_knn_matches_a_double_loop(train, history, k, shrink) -> None:
    want = _knn_reference(train, k, shrink)
    got = similarity("item-kNN", train, k=k, shrink=shrink)
    np.testing.assert_array_equal(got, want)  # ties broken the same way, bit for bit
    assert ((got != 0).sum(axis=1) <= k).all()
    scores = fit("item-kNN", train, k=k, shrink=shrink).score(history)
    np.testing.assert_allclose(scores, _dense_binary(history) @ want, rtol=1e-6)


def test_item_knn_ties_go_to_the_lower_movie() -> None:
    # Movie 0 is rated by users 0 and 1; movies 1, 2 and 3 by user 0 only: cosine(0, 1) = cosine(0, 2) =
    # cosine(0, 3) = 1/sqrt(2). With k = 2, movie 0 keeps movies 1 and 2.
    train = sp.csr_matrix(np.array([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=np.float32))
    s = similarity("item-kNN", train, k=2)
    np.testing.assert_allclose(s[0], [0, 1 / math.sqrt(2), 1 / math.sqrt(2), 0], rtol=1e-6)


# -- RP3beta ------------------------------------------------------------------------------------------------
def _rp3beta_dense(train: sp.csr_matrix, alpha: float, beta: float) -> np.ndarray:
    """The walk in dense algebra: P_ui and P_iu row-normalised, to the power alpha, W = P_iu P_ui times
    popularity^-beta per column, zero diagonal (no cut, no normalisation)."""
    x = _dense_binary(train)
    per_user, popularity = x.sum(axis=1, keepdims=True), x.sum(axis=0, keepdims=True)
    p_ui = np.divide(x, per_user, out=np.zeros_like(x), where=per_user > 0) ** alpha
    p_iu = np.divide(x.T, popularity.T, out=np.zeros_like(x.T), where=popularity.T > 0) ** alpha
    degree = np.divide(1.0, popularity**beta, out=np.zeros_like(popularity), where=popularity > 0)
    w: np.ndarray = (p_iu @ p_ui) * degree
    np.fill_diagonal(w, 0.0)
    return w


def _product_reference(left, right, lo, hi, k, scale) -> list[tuple[int, int, float]]:
    """scipy's sparse product of rows lo..hi, scaled by numpy in float32, each row's k largest positive entries
    but the diagonal by a sort (value descending, then column)."""
    block = (left[lo:hi] @ right).toarray()
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale.mode == baselines._Scale.COSINE:
            block = block / (scale.row[lo:hi, None] * scale.col[None, :] + np.float32(scale.shift))
        else:
            block = block * scale.col[None, :]
    assert block.dtype == np.float32
    want = []
    for r, row in enumerate(block):
        candidates = [j for j in range(len(row)) if row[j] > 0 and j != lo + r]
        want += [(lo + r, j, float(row[j])) for j in sorted(candidates, key=lambda j: (-row[j], j))[:k]]
    return sorted(want)


@pytest.mark.parametrize("k", [1, 3, 20, 200])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("mode", ["cosine", "column"])
def test_top_k_of_a_product_matches_scipys_product_and_a_sort(k: int, binary: bool, mode: str) -> None:
    """Each row's top k of a product against scipy's product, bit for bit, ranked by a sort: 0/1 weights (counts
    tie often at the k-th), rounding weights (a walk's powers), an empty row, a user who rated nothing, rows
    from empty to full, the diagonal that must go, and a block in the middle."""
    rng = np.random.default_rng(11)
    n, users, lo, hi = 120, 90, 40, 80
    x = sp.random(users, n, density=0.15, random_state=rng, dtype=np.float64).tocsr()
    x.data = np.ones_like(x.data) if binary else x.data**0.37
    x = sp.csr_matrix(x, dtype=np.float32)
    left = sp.lil_matrix(x.T)  # (n, u)
    left[lo + 3, :] = 0  # a movie nobody rated
    right = x.tolil()
    right[5, :] = 0  # a user who rated nothing
    left, right = sp.csr_matrix(left), sp.csr_matrix(right)
    left.eliminate_zeros()
    right.eliminate_zeros()
    norms = rng.random(n).astype(np.float32) + 0.5
    scale = (baselines._Scale(baselines._Scale.COSINE, row=norms, col=norms, shift=2.5) if mode == "cosine" else
             baselines._Scale(baselines._Scale.COLUMN, row=np.ones(n, np.float32), col=norms))  # fmt: skip
    rows, cols, values = baselines._top_k_of_product(left, right, lo, hi, k, scale=scale)
    got = sorted(zip(rows.tolist(), cols.tolist(), values.tolist(), strict=True))
    assert got == _product_reference(left, right, lo, hi, k, scale)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.5, 0.6), (1.3, 0.3)])
def test_rp3beta_without_cut_matches_the_dense_formula(train, history, alpha, beta) -> None:
    want = _rp3beta_dense(train, alpha, beta)
    raw = fit("RP3beta", train, alpha=alpha, beta=beta, k=N, normalize=0)
    np.testing.assert_allclose(
        similarity("RP3beta", train, alpha=alpha, beta=beta, k=N, normalize=0), want, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(raw.score(history), _dense_binary(history) @ want, rtol=1e-5, atol=1e-7)
    normalised = similarity("RP3beta", train, alpha=alpha, beta=beta, k=N, normalize=1)
    sums = want.sum(axis=1, keepdims=True)
    want_normalised = np.divide(want, sums, out=np.zeros_like(want), where=sums > 0)
    np.testing.assert_allclose(normalised, want_normalised, rtol=1e-5, atol=1e-7)


def test_rp3beta_keeps_each_rows_k_largest(train) -> None:
    k = 4
    want = _rp3beta_dense(train, 0.8, 0.4)
    got = similarity("RP3beta", train, alpha=0.8, beta=0.4, k=k, normalize=0)
    for i in range(N):
        kept = np.flatnonzero(got[i])
        positive = int((want[i] > 0).sum())
        assert len(kept) == min(k, positive)
        np.testing.assert_allclose(got[i, kept], want[i, kept], rtol=1e-5)
        dropped = np.setdiff1d(np.arange(N), kept)
        if len(kept):
            assert want[i, kept].min() >= want[i, dropped].max() * (1 - 1e-5)
    # normalize=1: the same cut, each row summing to 1
    normalised = similarity("RP3beta", train, alpha=0.8, beta=0.4, k=k, normalize=1)
    np.testing.assert_array_equal(normalised != 0, got != 0)
    nonempty = got.any(axis=1)
    np.testing.assert_allclose(normalised[nonempty].sum(axis=1), 1.0, rtol=1e-5)


# -- iALS ---------------------------------------------------------------------------------------------------
IALS = {"factors": 8, "regularization": 0.1, "alpha": 4.0}


@pytest.fixture(scope="module")
def ials(train) -> baselines.IalsModel:
    model = baselines.fit("iALS", train, IALS, seed=3, max_bytes=0)
    assert isinstance(model, baselines.IalsModel)
    return model


def test_ials_fold_in_solves_each_users_normal_equations(ials, history) -> None:
    y = ials.item_factors.astype(np.float64)  # (n, f)
    h = _dense_binary(history)
    want = np.zeros((h.shape[0], y.shape[1]))
    for u in range(h.shape[0]):
        c = 1.0 + IALS["alpha"] * h[u]  # (n,) confidence of every movie, rated or not
        a = y.T @ (c[:, None] * y) + IALS["regularization"] * np.eye(y.shape[1])
        want[u] = np.linalg.solve(a, y.T @ (c * h[u]))  # preference p = h[u]
    np.testing.assert_allclose(ials.user_factors(history), want, rtol=1e-8, atol=1e-10)
    assert not want[5].any()  # nothing rated: the zero vector
    scores = ials.score(history)
    assert scores.dtype == np.float32 and scores.shape == (8, N)
    np.testing.assert_allclose(scores, want @ y.T, rtol=1e-5, atol=1e-6)


def test_ials_matches_implicits_training_and_fold_in(train, ials, history) -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    # implicit 0.7 takes users x items values as confidences c (with its own alpha at 1): 1 + alpha where rated.
    confidence = sp.csr_matrix(train, copy=True)
    confidence.data[:] = 1.0 + IALS["alpha"]
    reference = AlternatingLeastSquares(
        factors=IALS["factors"], regularization=IALS["regularization"], alpha=1.0, num_threads=1, random_state=3
    )
    reference.fit(confidence, show_progress=False)
    np.testing.assert_array_equal(ials.item_factors, reference.item_factors)
    new = sp.csr_matrix(history, copy=True)
    new.data[:] = 1.0 + IALS["alpha"]
    theirs = reference.recalculate_user(np.arange(new.shape[0]), new)  # implicit's Cholesky fold-in
    np.testing.assert_allclose(ials.user_factors(history), theirs, rtol=1e-3, atol=1e-5)


def test_ials_training_user_is_scored_like_a_new_user_with_the_same_history(train, ials) -> None:
    rows = np.array([0, 1, 2, 3, 9])
    together = ials.score(train[rows])
    alone = np.concatenate([ials.score(train[[r]]) for r in rows])
    np.testing.assert_array_equal(together, alone)
    # A few rated movies score above the user's average: the fold-in fits their history.
    x = _dense_binary(train[rows])
    for i in (0, 1, 2, 4):
        assert together[i][x[i] > 0].mean() > together[i][x[i] == 0].mean()


def test_ials_same_seed_same_bytes_other_seed_other_model(train, history) -> None:
    a = baselines.fit("iALS", train, IALS, seed=5, max_bytes=0).score(history)
    b = baselines.fit("iALS", train, IALS, seed=5, max_bytes=0).score(history)
    c = baselines.fit("iALS", train, IALS, seed=6, max_bytes=0).score(history)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# -- every model --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", baselines.NAMES)
def test_defaults_score_ratings_as_binary_deterministically_whatever_the_batch(name, train, history) -> None:
    model = baselines.fit(name, train, baselines.DEFAULTS[name], seed=0, max_bytes=1 << 30)
    scores = model.score(history)
    assert scores.dtype == np.float32 and scores.shape == (8, N) and np.isfinite(scores).all()
    ones = sp.csr_matrix(history, copy=True)
    ones.data[:] = 1.0
    assert np.array_equal(model.score(ones), scores)  # rating values do not matter, only that there is one
    again = baselines.fit(name, train, baselines.DEFAULTS[name], seed=0, max_bytes=1 << 30).score(history)
    assert np.array_equal(again, scores)
    alone = np.concatenate([model.score(history[[i]]) for i in range(history.shape[0])])
    assert np.array_equal(alone, scores)  # a user's scores do not depend on who shares their batch
    with pytest.raises(ValueError, match="histories of shape"):
        model.score(sp.csr_matrix((2, N + 1), dtype=np.float32))


# -- grids, labels, parameters ------------------------------------------------------------------------------
def test_grid_order_and_sizes() -> None:
    sizes = {name: len(baselines.grid(name)) for name in baselines.NAMES}
    assert sizes == {"EASE": 7, "item-kNN": 12, "RP3beta": 24, "iALS": 12}
    assert baselines.grid("item-kNN")[:4] == [
        {"k": 20, "shrink": 0.0},
        {"k": 20, "shrink": 10.0},
        {"k": 20, "shrink": 100.0},
        {"k": 50, "shrink": 0.0},
    ]
    assert baselines.grid("EASE") == [{"lam": lam} for lam in (50, 100, 200, 500, 1000, 2000, 5000)]
    assert baselines.grid("iALS")[-1] == {"factors": 128, "regularization": 1.0, "alpha": 10.0}
    for name in baselines.NAMES:  # every grid point and every default is a valid setting of every parameter
        assert list(baselines.GRIDS[name]) == list(baselines.DEFAULTS[name])
        assert all(baselines.label(name, p) for p in baselines.grid(name))
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.grid("SLIM")


def test_labels_are_short_stable_and_distinct() -> None:
    assert baselines.label("EASE", {"lam": 500}) == "EASE lam=500"
    assert baselines.label("item-kNN", baselines.DEFAULTS["item-kNN"]) == "item-kNN k=50 shrink=0"
    assert baselines.label("iALS", {"alpha": 10.0}) == "iALS factors=64 regularization=0.01 alpha=10"
    assert baselines.label("RP3beta", {"k": 50.0, "beta": 0.3}) == "RP3beta alpha=1 beta=0.3 k=50 normalize=1"
    for name in baselines.NAMES:
        labels = [baselines.label(name, p) for p in baselines.grid(name)]
        assert len(set(labels)) == len(labels)
        assert baselines.label(name, baselines.DEFAULTS[name]).startswith(name + " ")


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("SLIM", {}, "unknown baseline"),
        ("EASE", {"lambda": 1.0}, "no parameter lambda"),
        ("EASE", {"lam": 0.0}, "lam=0.0"),
        ("item-kNN", {"k": 2.5}, "whole number"),
        ("item-kNN", {"shrink": -1.0}, "shrink"),
        ("RP3beta", {"normalize": 2}, "normalize"),
        ("iALS", {"factors": float("nan")}, "factors"),
        ("iALS", {"regularization": float("inf")}, "regularization"),
    ],
)
def test_unknown_names_parameters_and_values_are_refused(train, name, params, match) -> None:
    with pytest.raises(ValueError, match=match):
        baselines.fit(name, train, params, seed=0, max_bytes=1 << 30)


@pytest.mark.parametrize("name", ["item-kNN", "RP3beta"])
def test_a_grid_fitted_with_shared_builds_is_each_setting_fitted_alone(train, name) -> None:
    """One build per build key, every k cut from it: the same matrices, bit for bit, as a fit per setting (k
    from 1 to past the row length, so cuts among ties and rows shorter than k are both met)."""
    settings = [{**s, "k": k} for s in baselines.grid(name)[:4] for k in (1, 2, 5, 40)]
    many = baselines.fit_many(name, train, settings, seed=0, max_bytes=1 << 30)
    for setting, model in zip(settings, many, strict=True):
        alone = baselines.fit(name, train, setting, seed=0, max_bytes=1 << 30)
        assert isinstance(model, baselines.SimilarityModel) and isinstance(alone, baselines.SimilarityModel)
        a, b = model.similarity, alone.similarity
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices), setting
        assert np.array_equal(a.data, b.data), setting


def test_grid_groups_share_a_build_and_cover_the_grid() -> None:
    for name in baselines.NAMES:
        groups = baselines.grid_groups(name)
        flat = [s for g in groups for s in g]
        assert sorted(map(str, flat)) == sorted(map(str, baselines.grid(name)))
        for g in groups:
            assert len({baselines.build_key(name, s) for s in g}) == 1
    assert [len(g) for g in baselines.grid_groups("item-kNN")] == [4, 4, 4]  # one build per shrink
    assert [len(g) for g in baselines.grid_groups("RP3beta")] == [4] * 6  # one per (alpha, beta)
    assert [len(g) for g in baselines.grid_groups("EASE")] == [1] * 7  # nothing to share
