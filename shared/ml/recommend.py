"""Recommendations from the active model: queries, exclusions, filters, explanations.

    active pointer ──> ServingModel (loaded once per worker process and version; the old one kept beside it)
                         index (hnswlib over projected vectors), projection (W, b), raw movie vectors,
                         catalogue (ids, titles, descriptors), ratings CSR
    query ──> vector in the raw encoder space ──> projected (x W^T + b, unit length) ──> index ──> items

The three kinds of query:

- ``user_id``: the notebook's profile, the rating-weighted mean of the raw vectors of the movies the user
  rated, weights rating / 5: sum(w_i v_i) / sum(w_i); then projected. Rated movies are excluded unless
  ``exclude_seen`` is false.
- ``keywords``: each keyword encoded with the model's encoder and pooling (through the vector cache), the
  mean projected.
- ``liked`` / ``disliked`` movie ids: Qdrant's "average vector" example query in the projected space,
  q = mean(liked) + (mean(liked) - mean(disliked)); with no disliked, q = mean(liked); with no liked,
  q = -mean(disliked). The examples themselves are excluded.

``genres`` keeps movies having at least one of the listed genres (compared case-insensitively with the
movie's descriptors). When exclusions and filters leave fewer than k movies, the answer has what there is.
Each answer names the 10 most common descriptors among its items and, for a user, among their rated movies.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from shared.errors import NotFound
from shared.ml.index import MovieIndex, concat_ranges

TOP_DESCRIPTORS = 10

Encode = Callable[[list[str]], np.ndarray]
"""Strings -> (len, d) vectors in the model's raw encoder space (its encoder and pooling)."""


def project(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(q, d) raw vectors -> (q, hidden) unit vectors through the trained layer (W (hidden, d), b (hidden,))."""
    y = x @ weight.T + bias  # (q, hidden)
    return np.asarray(y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12), dtype=np.float32)


def check_ids(
    known_users: Collection[int], known_movies: Collection[int], *, user_id: int | None, movie_ids: list[int]
) -> None:
    """NotFound unless ``user_id`` (when given) and every movie id are known: the one check of a query's ids,
    made by the API before it queues a query and by the model that answers it."""
    if user_id is not None and user_id not in known_users:
        raise NotFound(f"unknown user id {user_id} in this model's dataset")
    unknown = [m for m in movie_ids if m not in known_movies]
    if unknown:
        raise NotFound(f"unknown movie id(s) {unknown[:10]} in this model's dataset")


@dataclass
class ServingModel:
    version: str
    record: dict[str, Any]
    index: MovieIndex
    weight: np.ndarray  # (hidden, d)
    bias: np.ndarray  # (hidden,)
    raw: np.ndarray  # (n, d) the encoder's movie vectors
    movie_ids: np.ndarray  # (n,) int32, catalogue order
    titles: list[str]
    descriptors: list[list[str]]
    vocabulary: list[str]
    desc_indptr: np.ndarray  # (n + 1,) the descriptors of row i are desc_indices[desc_indptr[i]:desc_indptr[i + 1]]
    desc_indices: np.ndarray  # vocabulary ids
    user_ids: np.ndarray  # (u,) ascending
    ratings_indptr: np.ndarray
    ratings_movie: np.ndarray
    ratings_value: np.ndarray

    def project(self, x: np.ndarray) -> np.ndarray:
        """(q, d) raw vectors -> (q, hidden) unit vectors, as the trained network does."""
        return project(x, self.weight, self.bias)

    @cached_property
    def _id_order(self) -> np.ndarray:
        return np.argsort(self.movie_ids, kind="stable")

    @cached_property
    def _rows_by_descriptor(self) -> dict[str, np.ndarray]:
        """Lower-cased descriptor -> the rows that have it (the genre filter's inverted index)."""
        rows: dict[str, list[int]] = {}
        for i, ds in enumerate(self.descriptors):
            for d in {d.lower() for d in ds}:
                rows.setdefault(d, []).append(i)
        return {d: np.asarray(r, dtype=np.int64) for d, r in rows.items()}

    def with_any(self, descriptors: list[str]) -> np.ndarray:
        """(n,) bool: rows having at least one of ``descriptors``, compared case-insensitively."""
        mask = np.zeros(len(self.movie_ids), dtype=bool)
        for d in descriptors:
            mask[self._rows_by_descriptor.get(d.lower(), np.zeros(0, dtype=np.int64))] = True
        return mask

    @cached_property
    def known_movies(self) -> frozenset[int]:
        return frozenset(self.movie_ids.tolist())

    @cached_property
    def known_users(self) -> frozenset[int]:
        return frozenset(self.user_ids.tolist())

    def rows_of(self, movie_ids: list[int]) -> np.ndarray:
        """Catalogue rows of ``movie_ids``; NotFound naming any that is not in the catalogue."""
        check_ids(self.known_users, self.known_movies, user_id=None, movie_ids=movie_ids)
        if not movie_ids:
            return np.zeros(0, dtype=np.int64)
        rows = self._id_order[np.searchsorted(self.movie_ids, movie_ids, sorter=self._id_order)]
        return np.asarray(rows, dtype=np.int64)

    def top_descriptors(self, rows: np.ndarray) -> list[list[Any]]:
        """The 10 descriptors most common among ``rows`` with their counts; ties in order of first appearance
        (rows in order, each row's descriptors in order), as ``Counter.most_common`` orders them."""
        if len(rows) == 0:
            return []
        lo = self.desc_indptr[rows]
        ids = self.desc_indices[concat_ranges(lo, self.desc_indptr[rows + 1] - lo)]
        distinct, first, counts = np.unique(ids, return_index=True, return_counts=True)
        best = np.lexsort((first, -counts))[:TOP_DESCRIPTORS]
        return [[self.vocabulary[distinct[i]], int(counts[i])] for i in best]

    def user_row(self, user_id: int) -> int:
        check_ids(self.known_users, self.known_movies, user_id=user_id, movie_ids=[])
        return int(np.searchsorted(self.user_ids, user_id))


def user_profile(model: ServingModel, user_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The user's projected profile (hidden,) and the rows they rated."""
    j = model.user_row(user_id)
    lo, hi = model.ratings_indptr[j], model.ratings_indptr[j + 1]
    rows = model.ratings_movie[lo:hi].astype(np.int64)
    weights = model.ratings_value[lo:hi].astype(np.float32) / 5.0  # (r,)
    mean = (weights[:, None] * model.raw[rows]).sum(axis=0) / weights.sum()  # (d,)
    return model.project(mean[None, :])[0], rows


def example_query(model: ServingModel, liked: np.ndarray, disliked: np.ndarray) -> np.ndarray:
    """mean(liked) + (mean(liked) - mean(disliked)) over projected vectors (see the module docstring)."""
    pos = model.project(model.raw[liked]).mean(axis=0) if len(liked) else None
    neg = model.project(model.raw[disliked]).mean(axis=0) if len(disliked) else None
    if pos is not None and neg is not None:
        return np.asarray(pos + (pos - neg), dtype=np.float32)
    if pos is not None:
        return np.asarray(pos, dtype=np.float32)
    assert neg is not None
    return np.asarray(-neg, dtype=np.float32)


def answer(
    model: ServingModel,
    query: np.ndarray,
    *,
    k: int,
    excluded: np.ndarray,
    genres: list[str] | None,
    history: np.ndarray | None,
    described_query: dict[str, Any],
) -> dict[str, Any]:
    allowed = np.ones(model.index.n, dtype=bool)
    allowed[excluded] = False
    if genres:
        allowed &= model.with_any(genres)
    rows, scores = model.index.query(query, k, allowed=allowed)
    items = [
        {
            "movie_id": int(model.movie_ids[r]),
            "title": model.titles[r],
            "descriptors": model.descriptors[r],
            "score": round(float(s), 6),
        }
        for r, s in zip(rows.tolist(), scores.tolist(), strict=True)
    ]
    result: dict[str, Any] = {
        "model": model.version,
        "query": described_query,
        "items": items,
        "top_descriptors": model.top_descriptors(rows),
        "history_top_descriptors": model.top_descriptors(history) if history is not None else [],
    }
    return result


def recommend(model: ServingModel, params: dict[str, Any], *, encode: Encode) -> dict[str, Any]:
    """Answer one query of a recommendation job's parameters: exactly one of ``user_id``, ``keywords`` or
    ``liked``/``disliked`` (the API checked that), plus ``k``, ``exclude_seen`` and ``genres``."""
    history = None
    if params.get("user_id") is not None:
        user_id = int(params["user_id"])
        query, rated = user_profile(model, user_id)
        excluded, history = (rated if params["exclude_seen"] else rated[:0]), rated
        described: dict[str, Any] = {"user_id": user_id}
    elif params.get("keywords"):
        # The keywords' mean in the raw encoder space, projected.
        query = model.project(encode(params["keywords"]).mean(axis=0, keepdims=True))[0]
        excluded = np.zeros(0, dtype=np.int64)
        described = {"keywords": params["keywords"]}
    else:
        liked, disliked = params.get("liked") or [], params.get("disliked") or []
        liked_rows, disliked_rows = model.rows_of(liked), model.rows_of(disliked)
        query = example_query(model, liked_rows, disliked_rows)
        excluded = np.concatenate([liked_rows, disliked_rows])
        described = {"liked": liked, "disliked": disliked}
    return answer(
        model, query, k=int(params["k"]), excluded=excluded, genres=params.get("genres"), history=history,
        described_query=described,
    )  # fmt: skip
