"""The 2-D PCA of shared/ml/projection.py on small hand-made arrays, against what the geometry says."""

from __future__ import annotations

import numpy as np
import pytest

from shared.ml.movielens import NO_GENRES, read_movies
from shared.ml.projection import GENRES, MAIN_GENRES, NO_MAIN_GENRE, main_genres, pca_2d
from tests.helpers import SMALL


def test_points_on_a_line_are_one_axis() -> None:
    direction = np.array([3.0, -4.0, 0.0]) / 5.0
    t = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 5.0])
    points = np.array([1.0, 2.0, 3.0]) + t[:, None] * direction  # (6, 3)
    p = pca_2d(points)
    assert p.coords.shape == (6, 2) and p.components.shape == (2, 3)
    assert p.explained_variance[0] == pytest.approx(1.0)
    assert p.explained_variance[1] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(p.coords[:, 1], 0.0, atol=1e-9)
    # the line's largest loading (-4/5) made positive: the axis is -direction, so x runs against t
    assert np.allclose(p.components[0], -direction)
    assert np.allclose(p.coords[:, 0], -(t - t.mean()))


def test_two_axes_of_a_plane_and_their_variance() -> None:
    # x spread 3 times as wide as y, z constant: variances 9 : 1
    grid = np.array([[x, y, 7.0] for x in (-3.0, 3.0) for y in (-1.0, 1.0)])
    p = pca_2d(grid)
    assert p.explained_variance == pytest.approx((0.9, 0.1))
    assert np.allclose(np.abs(p.components), [[1, 0, 0], [0, 1, 0]])
    assert np.allclose(p.coords, grid[:, :2])  # signs: each axis' only loading is positive
    assert sum(p.explained_variance) == pytest.approx(1.0)


def test_sign_is_deterministic_whatever_the_input_sign() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)) * np.arange(8, 0, -1)
    a, b = pca_2d(vectors), pca_2d(-vectors)
    for p in (a, b):
        for axis in p.components:
            assert axis[np.argmax(np.abs(axis))] > 0
    assert np.allclose(a.components, b.components)  # the axes do not depend on the data's sign ...
    assert np.allclose(a.coords, -b.coords)  # ... so the picture is mirrored, as the data is
    assert np.array_equal(pca_2d(vectors).coords, a.coords)  # and the same input gives the same bits


def test_against_the_covariance_eigenvectors() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    p = pca_2d(vectors.astype(np.float32))
    centred = vectors - vectors.mean(axis=0)
    values, vecs = np.linalg.eigh(centred.T @ centred)
    top = vecs[:, ::-1][:, :2].T  # (2, 5)
    assert np.allclose(np.abs(p.components @ top.T), np.eye(2), atol=1e-4)
    assert p.explained_variance == pytest.approx(tuple(values[::-1][:2] / values.sum()), rel=1e-4)
    assert np.allclose(p.coords.var(axis=0), values[::-1][:2] / len(vectors), rtol=1e-4)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)  # the textbook way: U S, each axis up to its sign
    assert np.allclose(np.abs(p.coords), np.abs(u[:, :2] * s[:2]), atol=1e-3)


def test_one_movie() -> None:
    p = pca_2d(np.array([[0.5, -0.2, 0.1]]))
    assert p.coords.shape == (1, 2) and np.array_equal(p.coords, np.zeros((1, 2)))
    assert p.explained_variance == (0.0, 0.0)


def test_two_movies() -> None:
    p = pca_2d(np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert p.explained_variance[0] == pytest.approx(1.0) and p.explained_variance[1] == 0.0
    # the one axis is (2, -1, 0)/sqrt(5), its largest loading positive; the movies lie half the gap each side
    assert np.allclose(p.components[0], np.array([2.0, -1.0, 0.0]) / np.sqrt(5))
    assert np.allclose(p.coords[:, 0], [np.sqrt(5) / 2, -np.sqrt(5) / 2]) and np.array_equal(p.coords[:, 1], [0, 0])


def test_zero_variance() -> None:
    p = pca_2d(np.tile([1.0, 2.0, 3.0], (10, 1)))
    assert np.array_equal(p.coords, np.zeros((10, 2))) and p.explained_variance == (0.0, 0.0)
    assert np.array_equal(p.components, np.zeros((2, 3)))


def test_one_dimension_and_empty_inputs() -> None:
    p = pca_2d(np.array([[1.0], [3.0], [2.0]]))
    assert p.explained_variance == pytest.approx((1.0, 0.0))
    assert np.allclose(p.coords, [[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    empty = pca_2d(np.zeros((0, 4), dtype=np.float32))
    assert empty.coords.shape == (0, 2) and empty.explained_variance == (0.0, 0.0)


def test_refuses_what_is_not_a_finite_matrix() -> None:
    with pytest.raises(ValueError, match="matrix"):
        pca_2d(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        pca_2d(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_main_genre_is_the_rarest_of_the_leading_genres() -> None:
    vocabulary = ["Comedy", "war", "Drama", "comedy", "Sci-Fi"]
    # movies: [Drama, war], [comedy, Comedy] (a tag first: no genre), [], [Sci-Fi], [Comedy],
    # [Comedy, Drama, Sci-Fi, war], [Comedy, war, Sci-Fi] (Sci-Fi after a tag is not a genre of it)
    indptr = np.array([0, 2, 4, 4, 5, 6, 10, 13])
    indices = np.array([2, 1, 3, 0, 4, 0, 0, 2, 4, 1, 0, 1, 4])
    got = [MAIN_GENRES[i] for i in main_genres(vocabulary, indptr, indices)]
    # movies with each genre: Comedy 3, Drama 2, Sci-Fi 2: Drama and Sci-Fi tie, the first alphabetically wins
    assert got == ["Drama", NO_MAIN_GENRE, NO_MAIN_GENRE, "Sci-Fi", "Comedy", "Drama", "Comedy"]
    assert MAIN_GENRES[: len(GENRES)] == GENRES and NO_GENRES not in MAIN_GENRES
    assert main_genres([], np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)).shape == (0,)


def test_genres_are_those_of_movielens() -> None:
    listed = {g for genres in read_movies(SMALL / "movies.csv")["genres"] for g in genres.split("|")}
    assert listed - {NO_GENRES} == set(GENRES) and list(GENRES) == sorted(GENRES)
