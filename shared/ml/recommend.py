"""Recommendations from the active model: queries, exclusions, filters, explanations.

    active pointer ──> ServingModel (loaded once per worker process and version; the old one kept beside it)
                         index (hnswlib over projected vectors), projection (W, b), raw movie vectors,
                         catalogue (ids, titles, descriptors), ratings CSR
    query ──> vector in the raw encoder space ──> projected (x W^T + b, unit length) ──> index ──> items

The three kinds of query:

- ``user_id``: a profile of the movies the user rated (``profile_queries``, the model's ``profile`` option):
  weights rating / 5 (the notebook's, "rating") or 1 + (rating - the user's mean) / 2 ("centred"), each
  halved every ``recency_days`` back from the user's last rating when that is set. A linear model (the
  notebook's) takes the weighted mean of the raw vectors, sum(w_i v_i) / sum(|w_i|), and projects it; a
  hybrid one sums the movies' own vectors, sum(w_i z_i) (a movie's vector there is learned, not a projection
  of its content). Rated movies are excluded unless ``exclude_seen`` is false. The evaluation job scores
  users with the same function.
- ``keywords``: each keyword encoded with the model's encoder and pooling (through the vector cache), the
  mean projected.
- ``liked`` / ``disliked`` movie ids: Qdrant's "average vector" example query over the movies' vectors,
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
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import NotFound
from shared.ml.index import MovieIndex, concat_ranges

if TYPE_CHECKING:
    import scipy.sparse as sp

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
    embeddings: np.ndarray  # (n, hidden) the model's unit movie vectors, those the index holds
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
    ratings_time: np.ndarray | None = None  # loaded when the profile weighs recency

    @property
    def profile(self) -> Profile:
        return Profile.of(self.record.get("config", {}))

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


@dataclass(frozen=True)
class Profile:
    """How ratings become a query: a model's ``profile``, ``recency_days`` and architecture (its config)."""

    kind: str = "rating"
    recency_days: float = 0.0
    item_space: bool = False  # sum the movies' own vectors (hybrid) instead of projecting the raw mean

    @classmethod
    def of(cls, config: dict[str, Any]) -> Profile:
        return cls(
            kind=config.get("profile", "rating"),
            recency_days=float(config.get("recency_days", 0.0)),
            item_space=config.get("architecture", "linear") == "hybrid",
        )


SECONDS_PER_DAY = 86_400


def profile_weights(ratings: sp.csr_matrix, times: sp.csr_matrix | None, profile: Profile) -> sp.csr_matrix:
    """(b, n) weights of ``ratings`` (b, n) rating values; ``times`` (same pattern, seconds) for recency."""
    w = ratings.astype(np.float64).tocsr(copy=True)
    if profile.kind == "centred":
        counts = np.diff(w.indptr)
        means = np.add.reduceat(w.data, w.indptr[:-1]) / np.maximum(counts, 1) if len(w.data) else np.zeros(0)
        w.data = 1.0 + (w.data - np.repeat(means[: len(counts)], counts)) / 2.0
    else:
        w.data = w.data / 5.0
    if profile.recency_days > 0 and times is not None:
        t = times.tocsr().data.astype(np.float64)
        counts = np.diff(w.indptr)
        last = np.maximum.reduceat(t, w.indptr[:-1]) if len(t) else np.zeros(0)
        age_days = (np.repeat(last[: len(counts)], counts) - t) / SECONDS_PER_DAY
        w.data = w.data * 0.5 ** (age_days / profile.recency_days)
    return w


def profile_queries(
    weights: sp.csr_matrix, *, profile: Profile, raw: np.ndarray, embeddings: np.ndarray, weight: np.ndarray,
    bias: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """(b, hidden) unit query vectors of ``weights`` (b, n) (``profile_weights``)."""
    if profile.item_space:
        q = np.asarray(weights @ embeddings, dtype=np.float64)  # (b, hidden)
        return np.asarray(q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12), dtype=np.float32)
    total = np.asarray(abs(weights).sum(axis=1)).reshape(-1, 1)  # (b, 1)
    mean = np.asarray(weights @ raw) / np.maximum(total, 1e-12)  # (b, d): the notebook's weighted mean
    return project(mean, weight, bias)


def user_profile(model: ServingModel, user_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The user's query vector (hidden,) and the rows they rated."""
    import scipy.sparse as sp

    j = model.user_row(user_id)
    lo, hi = model.ratings_indptr[j], model.ratings_indptr[j + 1]
    rows = model.ratings_movie[lo:hi].astype(np.int64)
    n, one = len(model.movie_ids), np.array([0, hi - lo])

    def row_of(values: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((values, rows, one), shape=(1, n))

    times = row_of(model.ratings_time[lo:hi]) if model.ratings_time is not None else None
    weights = profile_weights(row_of(model.ratings_value[lo:hi]), times, model.profile)
    query = profile_queries(weights, profile=model.profile, raw=model.raw, embeddings=model.embeddings,
                            weight=model.weight, bias=model.bias)  # fmt: skip
    return query[0], rows


def example_query(model: ServingModel, liked: np.ndarray, disliked: np.ndarray) -> np.ndarray:
    """mean(liked) + (mean(liked) - mean(disliked)) over the movies' vectors (see the module docstring)."""
    pos = model.embeddings[liked].mean(axis=0) if len(liked) else None
    neg = model.embeddings[disliked].mean(axis=0) if len(disliked) else None
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
