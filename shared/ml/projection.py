"""Vectors projected to two dimensions for drawing: principal component analysis (PCA).

The method: centre the rows (subtract the column means) into ``Xc`` (n, d) and project each row on the first
two right singular vectors of ``Xc = U S Vt`` (``Xc @ Vt[:2].T``, the same as ``U[:, :2] * S[:2]``). Axis ``i``
explains ``S[i]**2 / sum(S**2)`` of the total variance. The SVD is taken of the (d, d) scatter matrix
``Xc.T @ Xc = V S**2 Vt`` (symmetric, so its singular vectors are ``Xc``'s right ones and its singular values
``S**2``): the same axes without building ``U`` (measured on a 2-core VM: 1.3 s instead of 4.4 s for 58k
movies at d = 256, 4 ms instead of 1 s for 9.7k at d = 64); squaring the condition number costs nothing that
the two leading axes need. An SVD fixes each axis only up to its sign, so each
is turned to make its loading of largest magnitude (the first such, on ties) positive: the same vectors draw
the same picture on any machine. Where there are fewer than two directions of variance (one row, two rows,
identical rows, one column), the missing axes are all zeros and explain 0.

``main_genres`` colours the points: a movie's main genre is the most specific of the MovieLens genres its
descriptors begin with (``shared.ml.movielens``): the one the fewest movies have; else ``NO_MAIN_GENRE``.

Pure numpy; the index job stores the map of each model version (``models/<version>/map``, shared/logic/maps.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

AXES = 2
GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir",
    "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""The genre names of MovieLens' movies.csv (ml-latest, ml-25m, ml-32m; ``shared.ml.movielens.NO_GENRES`` aside),
alphabetical as the files list them. Here rather than beside ``NO_GENRES`` because shared.ml.movielens imports
pandas, which the API process, where maps are computed, never loads (tests/api/test_imports.py)."""
NO_MAIN_GENRE = "(none)"
MAIN_GENRES = (*GENRES, NO_MAIN_GENRE)
"""What ``main_genres`` answers indexes into: the MovieLens genres, then ``NO_MAIN_GENRE``."""


@dataclass(frozen=True)
class Projection:
    coords: np.ndarray  # (n, 2) float64: each row's coordinates on the two axes
    explained_variance: tuple[float, float]  # fraction of the total variance each axis explains
    components: np.ndarray  # (2, d) float64: the axes (unit rows, or zeros where there is no variance)


def pca_2d(vectors: np.ndarray) -> Projection:
    """The rows of ``vectors`` (n, d) on their first two principal axes, signs fixed (module docstring)."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a (rows, dims) matrix, got shape {x.shape}")
    n, d = x.shape
    coords = np.zeros((n, AXES), dtype=np.float64)
    components = np.zeros((AXES, d), dtype=np.float64)
    if n == 0 or d == 0:
        return Projection(coords, (0.0, 0.0), components)
    if not np.isfinite(x).all():
        raise ValueError("vectors must be finite")
    centred = x - x.mean(axis=0)  # (n, d)
    scatter = centred.T @ centred  # (d, d)
    _, variance, vt = np.linalg.svd(scatter)  # variance (d,) = S**2, descending; vt (d, d): the axes as rows
    total = float(np.trace(scatter))  # sum(S**2), every axis
    tolerance = max(n, d) * np.finfo(np.float64).eps * float(variance[0])
    ratios = [0.0, 0.0]
    for i in range(min(AXES, d)):
        if variance[i] <= tolerance or total <= 0.0:
            break  # no variance left: this axis and the next stay zero
        axis = vt[i]
        if axis[int(np.argmax(np.abs(axis)))] < 0:
            axis = -axis
        components[i] = axis
        coords[:, i] = centred @ axis  # (n,)
        ratios[i] = float(variance[i] / total)
    return Projection(coords, (ratios[0], ratios[1]), components)


def main_genres(vocabulary: list[str], desc_indptr: np.ndarray, desc_indices: np.ndarray) -> np.ndarray:
    """(n,) int16: each movie's main genre, an index into ``MAIN_GENRES``, from descriptors stored as a CSR
    (movie i's are ``vocabulary[desc_indices[desc_indptr[i]:desc_indptr[i + 1]]]``).

    A movie's genres are the MovieLens genres its descriptors begin with; its main genre is the most specific
    of them, the one the fewest movies of the catalogue have (ties: the first alphabetically). MovieLens lists
    genres alphabetically, so the first one would colour most of a map Action or Adventure; Toy Story's
    Adventure|Animation|Children|Comedy|Fantasy is Animation here. No genre: ``NO_MAIN_GENRE``."""
    position = {name: i for i, name in enumerate(GENRES)}
    none = len(MAIN_GENRES) - 1
    of_word = [position.get(word, none) for word in vocabulary]
    indptr, indices = np.asarray(desc_indptr, dtype=np.int64), np.asarray(desc_indices)
    genres_of: list[list[int]] = []
    for start, stop in itertools.pairwise(indptr.tolist()):
        leading = []
        for word in indices[start:stop]:
            genre = of_word[word]
            if genre == none:
                break
            leading.append(genre)
        genres_of.append(leading)
    movies_with = np.bincount([g for genres in genres_of for g in set(genres)], minlength=len(GENRES))
    return np.array(
        [min(genres, key=lambda g: (movies_with[g], g)) if genres else none for genres in genres_of], dtype=np.int16
    )
