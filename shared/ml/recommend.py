"""Recommendations from the active model: queries, exclusions, rules, explanations.

    active pointer ──> ServingModel (loaded once per worker process and version; the old one kept beside it)
                         index (hnswlib over projected vectors), projection (W, b), raw movie vectors,
                         catalogue (ids, titles, descriptors), ratings CSR
    query ──> vector in the raw encoder space ──> projected (x W^T + b, unit length) ──> index ──> items

The four kinds of query (each answer names its ``strategy``):

- ``user_id``: a profile of the movies the user rated (``profile_queries``, the model's ``profile`` option):
  weights rating / 5 (the notebook's, "rating") or 1 + (rating - the user's mean) / 2 ("centred"), each
  halved every ``recency_days`` back from the user's last rating when that is set. A linear model (the
  notebook's) takes the weighted mean of the raw vectors, sum(w_i v_i) / sum(|w_i|), and projects it; a
  hybrid one sums the movies' own vectors, sum(w_i z_i) (a movie's vector there is learned, not a projection
  of its content). An ials model's query is the user's iALS fold-in (``fold_in``); a sequence model's is its
  network's last hidden state over the user's last ratings in time order (shared/ml/sequence.py), whatever
  their values: both are scored by inner product, as their indexes are. Rated movies are excluded unless
  ``exclude_seen`` is false. The evaluation job scores users with the same function.
- ``keywords``: each keyword encoded with the model's encoder and pooling (through the vector cache), the
  mean projected. Movies with the same descriptors share a vector, so a keywords answer often ties; in every
  answer from the index tied movies come most rated first (``MovieIndex.with_ties``), and a keywords answer's
  ``explanation`` says so.
- ``liked`` / ``disliked`` movie ids: Qdrant's "average vector" example query over the movies' vectors,
  q = mean(liked) + (mean(liked) - mean(disliked)); with no disliked, q = mean(liked); with no liked,
  q = -mean(disliked). The examples themselves are excluded. Strategy "examples".
- ``similar_to`` a movie id: the movie's own vector, the movie excluded; each item names the descriptors it
  shares with the movie (``shared_descriptors``, compared case-insensitively, in the item's order). Strategy
  "similar".

A user's ratings are those stored at ingest with the ratings given since (feedback, ``shared/store/feedback.py``)
over them: the last rating of a (user, movie) wins, as in MovieLens, so a new rating is in the next answer
without retraining. A user with ratings gets strategy "profile"; a user with none (unknown at ingest and no
feedback yet) gets the dataset's most-rated movies, strategy "popular" (the evaluation's most-popular
baseline: rating counts, ties to the lower catalogue row; score = count / the top count). One rating is
already a profile: its movie's vector, so the answer is that movie's neighbours. A keywords query's strategy
is "keywords".

A light user (fewer ratings than the model's ``prior_until``, when its ``prior`` is set) gets strategy
"light-profile": each movie's cosine to the profile plus a popularity prior (``popularity_prior``: log ratings,
scaled to 1) weighted ``prior`` x (1 - ratings / ``prior_until``), so the prior shrinks as ratings arrive and
the answer becomes the profile's alone. Its top k is an exact scan (``blended_top``), not the index's: the
index ranks by cosine only. An evaluation chooses ``prior`` and ``prior_until`` on validation, where held-out
users come back with 1, 3 and 10 ratings (shared/ml/recipes.py ``SERVE_GRIDS``); the evaluation job scores
the same blend (shared/logic/serving.py ``VersionScorer``). The answer's ``explanation`` says how it ranked.

Serve-time rules (``Rules``, every query's): ``genres`` keeps movies having at least one of the listed genres
(compared case-insensitively with the movie's descriptors); ``year_min`` / ``year_max`` keep movies whose title's
year lies in that range, both ends included (a title with no year is kept by no range); ``exclude`` leaves those
movie ids out (an id the catalogue does not hold excludes nothing). Each is a mask over the catalogue that the
index search honours, so the k answered are the k best of the movies allowed, not k filtered after the fact.
``diversity`` (0 to 1) chooses the k by maximal marginal relevance from a pool several times wider
(``diversified``).
When exclusions and rules leave fewer than k movies, the answer has what there is.
Each answer names the 10 most common descriptors among its items and, for a user, among their rated movies.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any, cast

import numpy as np

from shared.errors import NotFound
from shared.ml.index import MovieIndex, concat_ranges
from shared.ml.pages import next_cursor
from shared.ml.sequence import SequenceNet
from shared.ml.titles import year_of

TOP_DESCRIPTORS = 10

Encode = Callable[[list[str]], np.ndarray]
"""Strings -> (len, d) vectors in the model's raw encoder space (its encoder and pooling)."""


Layers = tuple[tuple[np.ndarray, np.ndarray], ...]
"""Inner layers (W, b) of a deeper network, each followed by a ReLU (dropout is off at inference)."""


def project(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, inner: Layers = ()) -> np.ndarray:
    """(q, d) raw vectors -> (q, hidden) unit vectors through the trained network: the ``inner`` layers, if any,
    then the last layer (W (hidden, d'), b (hidden,))."""
    for w, b in inner:
        x = np.maximum(x @ w.T + b, 0.0)
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
    embeddings: np.ndarray  # (n, hidden) the model's movie vectors, those the index holds (unit, but ials')
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
    ratings_time: np.ndarray | None = None  # loaded when the profile reads times (Profile.timed)
    inner: Layers = ()  # a deeper network's inner layers
    gram: np.ndarray | None = None  # an ials model's Y^T Y (its users' fold-in)
    sequence: SequenceNet | None = None  # a sequence model's network (its users' queries)

    @cached_property
    def profile(self) -> Profile:
        return Profile.of(self.record.get("config", {}))

    def project(self, x: np.ndarray) -> np.ndarray:
        """(q, d) raw vectors -> (q, hidden) unit vectors, as the trained network does."""
        return project(x, self.weight, self.bias, self.inner)

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

    @cached_property
    def years(self) -> np.ndarray:
        """(n,) int32: each movie's year from its title, 0 where the title has none (the year filter's)."""
        return np.array([year_of(title) or 0 for title in self.titles], dtype=np.int32)

    def known_rows(self, movie_ids: list[int]) -> np.ndarray:
        """Catalogue rows of those of ``movie_ids`` the catalogue holds (the others have none)."""
        return self.rows_of([m for m in movie_ids if m in self.known_movies])

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

    @cached_property
    def popularity(self) -> np.ndarray:
        """(n,) the popularity prior a light user's scores are blended with (``popularity_prior``)."""
        return popularity_prior(self.ratings_movie, len(self.movie_ids))

    @cached_property
    def cold(self) -> np.ndarray:
        """(n,) bool: the movies nobody rated in the model's dataset (their vectors are the content tower's)."""
        return np.asarray(self.popularity == 0)

    @cached_property
    def scale(self) -> float:
        """The median length of the rated movies' vectors (``vector_scale``): a cold bonus's unit."""
        return vector_scale(self.embeddings, self.popularity)

    @cached_property
    def popular(self) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue rows by rating count, most first (ties to the lower row), and each one's score (count /
        the top count): what a user with no ratings is answered."""
        return most_popular(self.ratings_movie, len(self.movie_ids))

    def stored_ratings(self, user_id: int) -> UserRatings:
        """The user's ratings as ingested (none for a user unknown at ingest)."""
        j = int(np.searchsorted(self.user_ids, user_id))
        if j == len(self.user_ids) or self.user_ids[j] != user_id:
            return UserRatings.empty()
        lo, hi = int(self.ratings_indptr[j]), int(self.ratings_indptr[j + 1])
        return UserRatings(
            rows=self.ratings_movie[lo:hi].astype(np.int64),
            values=self.ratings_value[lo:hi].astype(np.float32),
            times=self.ratings_time[lo:hi].astype(np.int64) if self.ratings_time is not None else None,
        )


def most_popular(ratings_movie: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n catalogue rows by how often ``ratings_movie`` names them, most first (ties to the lower row), and
    each one's score (count / the top count)."""
    counts = np.bincount(ratings_movie, minlength=n).astype(np.float64)
    order = np.argsort(-counts, kind="stable")
    return order, (counts[order] / max(float(counts.max(initial=0.0)), 1.0)).astype(np.float32)


@dataclass(frozen=True)
class UserRatings:
    """One user's ratings as a profile reads them, in the order they were given."""

    rows: np.ndarray  # (r,) int64 catalogue rows
    values: np.ndarray  # (r,) float32
    times: np.ndarray | None = None  # (r,) int64 seconds; None where the model's profile reads no times (Profile.timed)

    @classmethod
    def empty(cls) -> UserRatings:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def over(self, stored: UserRatings) -> UserRatings:
        """These (newer) ratings over ``stored``: a stored rating of a movie rated again is dropped, the newer
        ones follow the stored ones (the last rating of a (user, movie) wins, as in MovieLens)."""
        if not len(self):
            return stored
        keep = ~np.isin(stored.rows, self.rows)
        times = None
        if stored.times is not None and self.times is not None:
            times = np.concatenate([stored.times[keep], self.times])
        return UserRatings(
            rows=np.concatenate([stored.rows[keep], self.rows]),
            values=np.concatenate([stored.values[keep], self.values]).astype(np.float32),
            times=times,
        )


@dataclass(frozen=True)
class Profile:
    """How ratings become a query: a model's ``profile``, ``recency_days`` and architecture (its config)."""

    kind: str = "rating"
    recency_days: float = 0.0
    item_space: bool = False  # sum the movies' own vectors (hybrid) instead of projecting the raw mean
    fold_in: bool = False  # "ials": the user's factors solved from the movies they rated (``fold_in``)
    sequence: bool = False  # "sequence": the network's last hidden state over the user's ratings in time order
    alpha: float = 1.0  # ... a rated movie's confidence 1 + alpha
    regularization: float = 1.0
    prior: float = 0.0
    """The popularity prior's weight for a user with no rating (see ``prior_weights``); 0 = off."""
    prior_until: float = 0.0
    """Ratings at which the prior has shrunk to nothing."""
    cold_boost: float = 0.0
    """A cold movie's bonus (``cold_bonus``) as a share of the best score it could have; 0 = off."""

    @classmethod
    def of(cls, config: dict[str, Any]) -> Profile:
        return cls(
            kind=config.get("profile", "rating"),
            recency_days=float(config.get("recency_days", 0.0)),
            item_space=config.get("architecture", "linear") in ("hybrid", "ials", "sequence"),
            fold_in=config.get("architecture") == "ials",
            sequence=config.get("architecture") == "sequence",
            alpha=float(config.get("alpha", 1.0)),
            regularization=float(config.get("regularization", 1.0)),
            prior=float(config.get("prior", 0.0)),
            prior_until=float(config.get("prior_until", 0.0)),
            cold_boost=float(config.get("cold_boost", 0.0)),
        )

    @property
    def timed(self) -> bool:
        """Whether the profile reads its ratings' times: to weigh them by recency, or to read them in order."""
        return self.recency_days > 0 or self.sequence

    @property
    def inner_product(self) -> bool:
        """Whether the model's scores are inner products (its movie vectors keep their norms, as its index does)
        rather than cosines of unit vectors."""
        return self.fold_in or self.sequence

    def prior_weights(self, counts: np.ndarray) -> np.ndarray:
        """(b,) float32 weight of the popularity prior for users with ``counts`` (b,) ratings: ``prior`` x
        max(0, 1 - count / ``prior_until``), so it shrinks as ratings arrive and is 0 from ``prior_until`` on."""
        counts = np.asarray(counts, dtype=np.float64)
        if self.prior <= 0 or self.prior_until <= 0:
            return np.zeros(len(counts), dtype=np.float32)
        return (self.prior * np.maximum(0.0, 1.0 - counts / self.prior_until)).astype(np.float32)


def cold_bonus(boost: float, queries: np.ndarray, scale: float) -> np.ndarray:
    """(b,) float32 what a cold movie (one nobody rated in the model's dataset: ``popularity`` 0) gets added to
    its score for each of b ``queries`` (b, h): ``boost`` x |query| x ``scale`` (the median length of the rated
    movies' vectors, ``vector_scale``), a share of the best score a typical movie could have. Scale-free: for a
    cosine model (unit vectors) it is ``boost`` itself, and an inner-product model's users get the same share
    whatever their query's length. Cold movies then reach an answer when their score is within the bonus of the
    best: a new film whose content matches the user's taste. ``Profile.cold_boost`` is chosen on validation."""
    if boost <= 0:
        return np.zeros(len(queries), dtype=np.float32)
    norms = np.linalg.norm(np.asarray(queries, dtype=np.float32), axis=1)
    return np.asarray(np.float32(boost * scale) * norms, dtype=np.float32)


def vector_scale(embeddings: np.ndarray, popularity: np.ndarray) -> float:
    """The median length of the rated movies' vectors (1.0 for unit vectors; 1.0 when none is rated)."""
    rated = np.asarray(embeddings)[np.asarray(popularity) > 0]
    return float(np.median(np.linalg.norm(rated, axis=1))) if len(rated) else 1.0


def with_cold(
    rows: np.ndarray, scores: np.ndarray, query: np.ndarray, embeddings: np.ndarray, *, bonus: float,
    cold: np.ndarray, candidates: np.ndarray, k: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The k best of an index's answer (``rows``, ``scores``: its best k by the model's score alone) and the cold
    movies an answer may hold (``candidates``: their rows, ascending), each cold one scored exactly (its vector
    times ``query``) plus ``bonus``. Exact: the bonus only raises cold movies, so a rated movie in the best k
    with it was in the best k without it. Ties: the index's movies first (in its order), then cold ones by row."""
    if bonus <= 0 or not len(candidates):
        return rows, scores
    rated = ~cold[rows]  # the index's cold movies come back among the candidates, scored the same way
    raised = np.asarray(embeddings[candidates] @ query, dtype=np.float32) + np.float32(bonus)
    all_rows = np.concatenate([rows[rated], candidates]).astype(np.int64)
    all_scores = np.concatenate([np.asarray(scores, dtype=np.float32)[rated], raised])
    best = np.argsort(-all_scores, kind="stable")[:k]
    return all_rows[best], all_scores[best]


def popularity_prior(ratings_movie: np.ndarray, n: int) -> np.ndarray:
    """(n,) float32 in [0, 1]: each movie's log(1 + ratings) / log(1 + the most-rated movie's): the prior a light
    user's scores are blended with (a log, so the head does not swamp what the user's few ratings say)."""
    counts = np.bincount(ratings_movie, minlength=n).astype(np.float64)
    return (np.log1p(counts) / max(float(np.log1p(counts.max(initial=0.0))), 1e-12)).astype(np.float32)


def blended_top(
    embeddings: np.ndarray, query: np.ndarray, weight: float, popularity: np.ndarray, *, k: int, allowed: np.ndarray,
    bonus: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A light user's k rows among ``allowed`` (a boolean mask) by cosine to ``query`` plus ``weight`` x the
    popularity prior (plus ``bonus`` for a cold movie: popularity 0), best first (ties to the lower row), and
    those scores: an exact scan of every movie, since the index ranks by cosine alone (a light user is one whose
    profile is a few ratings: a (n, hidden) product)."""
    scores = np.asarray(embeddings @ query, dtype=np.float32) + np.float32(weight) * popularity  # (n,)
    if bonus > 0:
        scores[popularity == 0] += np.float32(bonus)
    rows = np.flatnonzero(allowed)
    k = min(k, len(rows))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    candidates = scores[rows]
    if k < len(rows):  # the k best, and every row tied with the k-th, so ties go to the lower row
        kth = np.partition(candidates, len(rows) - k)[len(rows) - k]
        keep = candidates >= kth
        rows, candidates = rows[keep], candidates[keep]
    best = np.argsort(-candidates, kind="stable")[:k]
    return rows[best].astype(np.int64), candidates[best].astype(np.float32)


SECONDS_PER_DAY = 86_400


def profile_weights(indptr: np.ndarray, values: np.ndarray, times: np.ndarray | None, profile: Profile) -> np.ndarray:
    """(r,) float32 weights of ratings grouped by user (user i's are ``values[indptr[i]:indptr[i + 1]]``);
    ``times`` (r,) seconds, for recency. Plain arrays: a single user's query pays no sparse-matrix overhead."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.diff(indptr)
    owner = np.repeat(np.arange(len(counts)), counts)  # (r,) the user of each rating
    if profile.kind == "centred":
        means = np.bincount(owner, weights=values, minlength=len(counts)) / np.maximum(counts, 1)
        weights = 1.0 + (values - means[owner]) / 2.0
    else:
        weights = values / 5.0
    if profile.recency_days > 0 and times is not None and len(values):
        t = np.asarray(times, dtype=np.float64)
        last = np.zeros(len(counts))
        rated = counts > 0
        last[rated] = np.maximum.reduceat(t, indptr[:-1][rated])
        weights = weights * 0.5 ** ((last[owner] - t) / SECONDS_PER_DAY / profile.recency_days)
    return weights.astype(np.float32)


def profile_queries(
    indptr: np.ndarray, movies: np.ndarray, weights: np.ndarray, *, profile: Profile, raw: np.ndarray,
    embeddings: np.ndarray, weight: np.ndarray, bias: np.ndarray, inner: Layers = (), exact_rows: bool = False,
    gram: np.ndarray | None = None, times: np.ndarray | None = None, sequence: SequenceNet | None = None,
) -> np.ndarray:  # fmt: skip
    """(b, hidden) unit query vectors of b users' rated ``movies`` (catalogue rows, grouped by ``indptr``) and
    their ``weights`` (``profile_weights``); for a ``fold_in`` profile, the users' iALS factors (``fold_in``,
    with the model's ``gram``); for a ``sequence`` one, the network's last hidden state over each user's movies
    in time order (``times`` (r,), aligned with ``movies``). ``exact_rows``: each user's vector bit for bit the
    one a batch of that user alone gets (a batch recommendation's promise): the network is applied one row at a
    time, since BLAS sums a (b, d) x (d, h) product in another order than a (1, d) one. (The fold-in and the
    sequence network always go one user at a time.)"""
    if profile.fold_in:
        if gram is None:
            raise ValueError("an ials model's profile needs its Y^T Y (the weights' fold_in.gram)")
        return fold_in(indptr, movies, embeddings, gram, alpha=profile.alpha, regularization=profile.regularization)
    if profile.sequence:
        if sequence is None:
            raise ValueError("a sequence model's profile needs its network (the weights' seq.* tensors)")
        with one_blas_thread():  # (50, h) products: one thread, the same bits in any process
            return sequence.queries(embeddings, indptr, movies, times)
    counts = np.diff(indptr)
    space = embeddings if profile.item_space else raw
    sums = np.zeros((len(counts), space.shape[1]), dtype=np.float32)  # (b, d or hidden)
    for i, (lo, hi) in enumerate(zip(indptr[:-1].tolist(), indptr[1:].tolist(), strict=True)):
        sums[i] = weights[lo:hi] @ space[movies[lo:hi]]  # a gather and a matvec: no reduceat's strided sums
    if profile.item_space:
        return np.asarray(sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12), dtype=np.float32)
    total = np.bincount(np.repeat(np.arange(len(counts)), counts), weights=np.abs(weights), minlength=len(counts))
    mean = sums / np.maximum(total, 1e-12).astype(np.float32)[:, None]  # (b, d): the notebook's weighted mean
    if exact_rows:
        return np.concatenate([project(mean[i : i + 1], weight, bias, inner) for i in range(len(mean))] or
                              [np.zeros((0, weight.shape[0]), dtype=np.float32)])  # fmt: skip
    return project(mean, weight, bias, inner)


def fold_in(
    indptr: np.ndarray, movies: np.ndarray, factors: np.ndarray, gram: np.ndarray, *, alpha: float,
    regularization: float,
) -> np.ndarray:  # fmt: skip
    """(b, f) float32 iALS user factors of b users' rated ``movies`` (grouped by ``indptr``; each a positive,
    whatever its value): x_u = (G + reg I + alpha Y_u^T Y_u)^-1 (1 + alpha) Y_u^T 1, ``gram`` G = Y^T Y over the
    rated movies (Hu, Koren, Volinsky 2008; the evaluation's iALS baseline folds users in the same way). One
    user at a time, in float64, so a user's factors never depend on who shares their batch."""
    f = gram.shape[0]
    base = gram.astype(np.float64) + regularization * np.eye(f)
    out = np.zeros((len(indptr) - 1, f), dtype=np.float32)
    with one_blas_thread():  # f x f: too small for threads, and the same bits in any process
        for i, (lo, hi) in enumerate(zip(indptr[:-1].tolist(), indptr[1:].tolist(), strict=True)):
            if hi == lo:
                continue
            rated = factors[np.unique(movies[lo:hi])].astype(np.float64)  # (r, f)
            a = base + alpha * (rated.T @ rated)
            out[i] = np.linalg.solve(a, (1.0 + alpha) * rated.sum(axis=0))
    return out


@cache
def blas() -> Any:
    """This process's BLAS libraries, found once: ``threadpool_limits`` looks for them on every call (reading
    /proc/self/maps, 0.35 ms: most of an ials answer's time)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@cache
def _blas_libraries() -> tuple[Any, ...]:
    return tuple(blas().select(user_api="blas").lib_controllers)


def one_blas_thread() -> AbstractContextManager[object]:
    """A context in which BLAS runs on one thread: nothing to do where every BLAS library of the process is on one
    already (an interactive worker's pool process, workers/main.py), else a ``limit`` for its span. Setting and
    restoring the limit costs 50-70 us, a quarter of a sequence answer's forward."""
    if all(lib.num_threads == 1 for lib in _blas_libraries()):
        return nullcontext()
    return cast(AbstractContextManager[object], blas().limit(limits=1, user_api="blas"))


def inner_layers(state: dict[str, np.ndarray]) -> Layers:
    """The inner layers of a stored network's state (``build_net``'s names), in order."""
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("inner.")})
    return tuple((state[f"inner.{i}.weight"].astype(np.float32), state[f"inner.{i}.bias"].astype(np.float32))
                 for i in indices)  # fmt: skip


def user_query(model: ServingModel, ratings: UserRatings) -> np.ndarray:
    """The (hidden,) query vector of one user's ratings (not empty)."""
    indptr = np.array([0, len(ratings)])
    times = ratings.times if model.ratings_time is not None else None
    weights = profile_weights(indptr, ratings.values, times, model.profile)
    query = profile_queries(indptr, ratings.rows, weights, profile=model.profile, raw=model.raw,
                            embeddings=model.embeddings, weight=model.weight, bias=model.bias,
                            inner=model.inner, gram=model.gram, times=times,
                            sequence=model.sequence)  # fmt: skip
    return np.asarray(query[0], dtype=np.float32)


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


@dataclass(frozen=True)
class Rules:
    """A query's serve-time rules (see the module docstring): what an answer may hold."""

    genres: tuple[str, ...] = ()
    year_min: int | None = None
    year_max: int | None = None
    exclude: tuple[int, ...] = ()  # movie ids
    diversity: float = 0.0  # MMR's weight: 0 ranks by relevance alone
    shown: tuple[int, ...] = ()  # movie ids a page's cursor carries (shared/ml/pages.py): excluded too

    @classmethod
    def of(cls, params: dict[str, Any]) -> Rules:
        """The rules a recommendation job's parameters name (absent ones: none; the body's ``exclude`` is
        ``exclude_ids`` there, and ``shown`` the movies its ``cursor`` carries: api/schemas.py ``RecommendIn``)."""
        return cls(
            genres=tuple(params.get("genres") or ()),
            year_min=params.get("year_min"),
            year_max=params.get("year_max"),
            exclude=tuple(params.get("exclude_ids") or ()),
            diversity=float(params.get("diversity") or 0.0),
            shown=tuple(params.get("shown") or ()),
        )

    def described(self) -> dict[str, Any]:
        """The rules given, as an answer's ``query`` states them (a cursor's movies are the session's, not the
        query's)."""
        given = {"genres": list(self.genres), "year_min": self.year_min, "year_max": self.year_max,
                 "exclude": list(self.exclude), "diversity": self.diversity or None}  # fmt: skip
        return {name: value for name, value in given.items() if value not in (None, [])}

    def pool(self, k: int) -> int:
        """How many candidates to rank before the answer's k are chosen: k itself, or with ``diversity`` a pool
        ``MMR_POOL`` times as wide (at least ``MMR_MIN_POOL``), since MMR over k candidates could only reorder
        them."""
        return max(k * MMR_POOL, MMR_MIN_POOL) if self.diversity > 0 else k

    def mask(self, model: ServingModel) -> np.ndarray | None:
        """(n,) bool: the rows these rules allow; None when they allow every row."""
        if not (self.genres or self.exclude or self.shown) and self.year_min is None and self.year_max is None:
            return None
        mask = model.with_any(list(self.genres)) if self.genres else np.ones(len(model.movie_ids), dtype=bool)
        if self.year_min is not None or self.year_max is not None:
            years = model.years  # 0: the title has none, kept by no range
            lo, hi = self.year_min if self.year_min is not None else 1, self.year_max or np.iinfo(np.int32).max
            mask &= (years >= lo) & (years <= hi)
        if self.exclude or self.shown:
            mask[model.known_rows([*self.exclude, *self.shown])] = False
        return mask


NO_RULES = Rules()

MMR_POOL = 5
"""With ``diversity``, the candidates MMR chooses among: this many times k (``Rules.pool``)."""

MMR_MIN_POOL = 50
"""... and at least this many."""


def diversified(
    model: ServingModel, rows: np.ndarray, scores: np.ndarray, *, k: int, rules: Rules
) -> tuple[np.ndarray, np.ndarray]:
    """The answer's k of the candidates ``rows`` (best first, with their ``scores``): the first k without
    ``diversity``; with it, maximal marginal relevance (Carbonell and Goldstein, 1998): k times, the candidate
    maximising (1 - diversity) x relevance - diversity x its highest cosine to those already chosen, relevance
    the candidates' scores scaled to [0, 1] over the pool (so the weight means the same for a cosine, an inner
    product or a blended score). Each keeps its own score; the answer is in the order chosen."""
    if rules.diversity <= 0 or len(rows) <= 1:
        return rows[:k], scores[:k]
    vectors = model.embeddings[rows].astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    spread = float(scores.max() - scores.min())
    relevance = (scores - scores.min()) / spread if spread > 0 else np.ones(len(rows), dtype=np.float32)
    weight = rules.diversity
    closest = np.full(len(rows), -np.inf, dtype=np.float32)  # each candidate's highest cosine to the chosen
    chosen: list[int] = []
    free = np.ones(len(rows), dtype=bool)
    for _ in range(min(k, len(rows))):
        redundancy = np.where(np.isfinite(closest), closest, 0.0)
        value = np.where(free, (1 - weight) * relevance - weight * redundancy, -np.inf)
        best = int(np.argmax(value))  # ties to the more relevant (earlier) candidate
        chosen.append(best)
        free[best] = False
        closest = np.maximum(closest, vectors @ vectors[best])
    picked = np.asarray(chosen, dtype=np.int64)
    return rows[picked], scores[picked]


def search(
    model: ServingModel, query: np.ndarray, *, k: int, excluded: np.ndarray, rules: Rules = NO_RULES
) -> tuple[np.ndarray, np.ndarray]:
    """The k rows (and their cosine scores) nearest ``query`` in the index, ``excluded`` rows left out, only
    the movies ``rules`` allow."""
    return model.index.query(query, k, allowed=allowed(model, excluded, rules))


def allowed(model: ServingModel, excluded: np.ndarray, rules: Rules = NO_RULES) -> np.ndarray:
    """(n,) bool: the rows an answer may hold, ``excluded`` left out, only those ``rules`` allow."""
    mask = rules.mask(model)
    mask = np.ones(len(model.movie_ids), dtype=bool) if mask is None else mask
    mask[excluded] = False
    return mask


def describe(
    model: ServingModel,
    rows: np.ndarray,
    scores: np.ndarray,
    *,
    history: np.ndarray | None,
    described_query: dict[str, Any],
) -> dict[str, Any]:
    """An answer's JSON: its items (id, title, descriptors, score rounded to 6 decimals) and descriptor counts."""
    items = [
        {
            "movie_id": int(model.movie_ids[r]),
            "title": model.titles[r],
            "descriptors": model.descriptors[r],
            "score": round(float(s), 6),
        }
        for r, s in zip(rows.tolist(), scores.tolist(), strict=True)
    ]
    return {
        "model": model.version,
        "query": described_query,
        "items": items,
        "top_descriptors": model.top_descriptors(rows),
        "history_top_descriptors": model.top_descriptors(history) if history is not None else [],
    }


def answer(
    model: ServingModel,
    query: np.ndarray,
    *,
    k: int,
    excluded: np.ndarray,
    rules: Rules = NO_RULES,
    history: np.ndarray | None,
    described_query: dict[str, Any],
) -> dict[str, Any]:
    rows, scores = search(model, query, k=rules.pool(k), excluded=excluded, rules=rules)
    rows, scores = diversified(model, rows, scores, k=k, rules=rules)
    return describe(model, rows, scores, history=history, described_query=described_query)


@dataclass(frozen=True)
class Ranking:
    """A user's answer before it is described: what a batch row is made of."""

    rows: np.ndarray  # (<= k,) catalogue rows, best first
    scores: np.ndarray  # (<= k,) float32
    strategy: str  # "profile", LIGHT_PROFILE or "popular"
    history: np.ndarray | None  # the rows the user rated (None: no ratings)
    prior: float = 0.0  # LIGHT_PROFILE: the popularity prior's weight
    bonus: float = 0.0  # what a cold movie's score got (``cold_bonus``); 0 when the model's cold_boost is off


LIGHT_PROFILE = "light-profile"
"""The strategy of a user with fewer ratings than the model's ``prior_until``: profile and popularity prior."""


def user_ranking(
    model: ServingModel,
    user_id: int,
    *,
    k: int,
    exclude_seen: bool = True,
    rules: Rules = NO_RULES,
    feedback: UserRatings | None = None,
) -> Ranking:
    """A user's k movies: from their ratings (stored, with ``feedback`` over them), else the most popular."""
    ratings = (feedback or UserRatings.empty()).over(model.stored_ratings(user_id))
    if not len(ratings):
        order, scores = model.popular
        if (mask := rules.mask(model)) is not None:
            keep = mask[order]
            order, scores = order[keep], scores[keep]
        rows, scores = diversified(model, order[: rules.pool(k)], scores[: rules.pool(k)], k=k, rules=rules)
        return Ranking(rows, scores, "popular", None)
    rated = ratings.rows
    excluded = rated if exclude_seen else rated[:0]
    query = user_query(model, ratings)
    prior = float(model.profile.prior_weights(np.array([len(ratings)]))[0])
    bonus = float(cold_bonus(model.profile.cold_boost, query[None, :], model.scale)[0]) if model.cold.any() else 0.0
    mask, pool = allowed(model, excluded, rules), rules.pool(k)
    if prior > 0:  # a light user: the popularity prior, shrinking as ratings arrive, beside the profile
        rows, scores = blended_top(model.embeddings, query, prior, model.popularity, k=pool, allowed=mask,
                                   bonus=bonus)  # fmt: skip
        rows, scores = diversified(model, rows, scores, k=k, rules=rules)
        return Ranking(rows, scores, LIGHT_PROFILE, rated, prior, bonus)
    rows, scores = model.index.query(query, pool, allowed=mask)
    rows, scores = with_cold(rows, scores, query, model.embeddings, bonus=bonus, cold=model.cold,
                             candidates=np.flatnonzero(model.cold & mask), k=pool)  # fmt: skip
    rows, scores = diversified(model, rows, scores, k=k, rules=rules)
    return Ranking(rows, scores, "profile", rated, bonus=bonus)


def recommend(
    model: ServingModel, params: dict[str, Any], *, encode: Encode, feedback: UserRatings | None = None
) -> dict[str, Any]:
    """Answer one query of a recommendation job's parameters: exactly one of ``user_id``, ``keywords``,
    ``liked``/``disliked`` or ``similar_to`` (the API checked that), plus ``k``, ``exclude_seen`` and the
    serve-time rules (``Rules``). ``feedback``: the user's ratings given after ingest (catalogue rows), over their
    stored ones."""
    rules = Rules.of(params)
    result = _answer(model, params, rules, encode=encode, feedback=feedback)
    result["query"] = {**result["query"], **rules.described()}
    if "shown" in params:  # a page of a session (POST /v1/recommendations): the cursor to the next one
        result["next_cursor"] = next_cursor(params["shown"], (item["movie_id"] for item in result["items"]))
    if rules.diversity > 0:
        pool = rules.pool(int(params["k"]))
        weight = f"{rules.diversity:g}"
        mmr = (f"diversified: each item chosen from the best {pool} by (1 - {weight}) x relevance - {weight} x its "
               "highest cosine to the items before it (maximal marginal relevance)")  # fmt: skip
        result["explanation"] = "; ".join(filter(None, [result.get("explanation"), mmr]))
    return result


def _answer(
    model: ServingModel, params: dict[str, Any], rules: Rules, *, encode: Encode, feedback: UserRatings | None
) -> dict[str, Any]:
    if params.get("similar_to") is not None:
        return similar(model, int(params["similar_to"]), k=int(params["k"]), rules=rules)
    if params.get("user_id") is not None:
        user_id = int(params["user_id"])
        ranking = user_ranking(model, user_id, k=int(params["k"]), exclude_seen=params["exclude_seen"],
                               rules=rules, feedback=feedback)  # fmt: skip
        result = describe(model, ranking.rows, ranking.scores, history=ranking.history,
                          described_query={"user_id": user_id})  # fmt: skip
        result["strategy"] = ranking.strategy
        similarity = "inner product" if model.profile.inner_product else "cosine"
        lines = []
        if ranking.strategy == LIGHT_PROFILE:
            lines.append(
                f"{len(ranking.history) if ranking.history is not None else 0} rating(s), fewer than the model's "
                f"{model.profile.prior_until:g}: score = the profile's {similarity} + {ranking.prior:.3f} x "
                "popularity (log of the movie's ratings, scaled to 1), the weight shrinking to 0 as ratings arrive"
            )
        cold = int(model.cold[ranking.rows].sum()) if ranking.bonus > 0 else 0
        if cold:
            lines.append(
                f"{cold} of these movies nobody has rated yet: each scored its {similarity} to the profile + "
                f"{ranking.bonus:.3f} (the model's cold_boost {model.profile.cold_boost:g} of the best score a "
                "movie could have), so a new film reaches the answer when its content is close to the user's taste"
            )
        if lines:
            result["explanation"] = "; ".join(lines)
        return result
    if params.get("keywords"):
        # The keywords' mean in the raw encoder space, projected.
        query = model.project(encode(params["keywords"]).mean(axis=0, keepdims=True))[0]
        excluded = np.zeros(0, dtype=np.int64)
        described: dict[str, Any] = {"keywords": params["keywords"]}
        strategy = "keywords"
        explanation = KEYWORDS_EXPLANATION
    else:
        liked, disliked = params.get("liked") or [], params.get("disliked") or []
        liked_rows, disliked_rows = model.rows_of(liked), model.rows_of(disliked)
        query = example_query(model, liked_rows, disliked_rows)
        excluded = np.concatenate([liked_rows, disliked_rows])
        described = {"liked": liked, "disliked": disliked}
        strategy, explanation = "examples", None
    result = answer(
        model, query, k=int(params["k"]), excluded=excluded, rules=rules, history=None,
        described_query=described,
    )  # fmt: skip
    return {**result, "strategy": strategy, **({"explanation": explanation} if explanation else {})}


KEYWORDS_EXPLANATION = (
    "score = cosine of each movie's vector to the keywords' mean vector; movies with the same descriptors share "
    "a vector and tie, and tied movies come most rated first (ratings in the model's dataset)"
)


def similar(model: ServingModel, movie_id: int, *, k: int, rules: Rules = NO_RULES) -> dict[str, Any]:
    """The ``k`` movies nearest to ``movie_id`` (its own vector the query, itself excluded), each with the
    descriptors it shares with the movie."""
    rows = model.rows_of([movie_id])
    result = answer(model, model.embeddings[rows[0]], k=k, excluded=rows, rules=rules, history=None,
                    described_query={"similar_to": movie_id})  # fmt: skip
    own = {d.lower() for d in model.descriptors[int(rows[0])]}
    for item in result["items"]:
        item["shared_descriptors"] = [d for d in item["descriptors"] if d.lower() in own]
    return {**result, "strategy": "similar"}
