"""Batch recommendations, the pure part: a shard of users answered at once, each exactly as the single-user
query answers them, and the rows written out as CSV or ``.npy`` a piece at a time.

A batch row is one recommended movie of one user: ``(user_id, rank, movie_id, score)``, rank 1 the best, a user's
rows in rank order, users in the batch's order. ``answer_users`` takes a shard's users through the steps the
single-user answer (``user_ranking`` behind ``recommend``, shared/ml/recommend.py) takes one user through, each
step once for the whole shard:

    users ──> users_ratings: stored ratings gathered at once (CSR), feedback laid over those who have any
          ──> profile_weights, profile_queries (exact_rows): one query vector per user with ratings
          ──> MovieIndex.query_many: the index searched per beam, not per user; each user's rated movies excluded
              (a light user, whom the model's popularity prior still weighs on: ``blended_top``, as the single
              answer ranks them)
          ──> user_rows: the rows in user order; a user with no ratings gets the most popular movies

A shard reads a ``ShardModel`` (the version's network, vectors and index) and ``StoredRatings`` (the dataset's
ratings), both loaded once per process by shared/logic/batch.py. A batch row is the single answer's item, bit for
bit (tests/unit/test_batch.py compares them user by user): same ratings, profile, exclusions and index search
(each user's own ef and k); only the titles and descriptor counts a JSON answer carries are not made. A user may
have fewer than k rows (exclusions leave fewer movies).

The ``.npy`` form is one structured array of ``ROW`` (one element per CSV row), written as its header followed by
each part's bytes, so neither form is ever built whole in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from shared.ml.index import Found, MovieIndex, RowSets, concat_ranges
from shared.ml.recommend import (
    LIGHT_PROFILE,
    Layers,
    Profile,
    Rules,
    ServingModel,
    UserRatings,
    blended_top,
    check_ids,
    cold_bonus,
    profile_queries,
    profile_weights,
    user_ranking,
    vector_scale,
    with_cold,
)
from shared.ml.sequence import SequenceNet

ROW = np.dtype([("user_id", "<i4"), ("rank", "<i2"), ("movie_id", "<i4"), ("score", "<f4")])
"""One batch row, as the ``.npy`` result stores it (little-endian, packed: 14 bytes); ``score`` is the float32
cosine the single-user answer rounds to 6 decimals for its JSON (the CSV writes it so rounded: the same text)."""

CSV_HEADER = "user_id,rank,movie_id,score,recommendation_id\n"
CSV_ROWS_PER_CHUNK = 20_000
"""Rows formatted per piece of a streamed CSV (about 0.5 MB of text)."""


@dataclass
class ShardModel:
    """What answering a shard reads of a model version (``ServingModel`` less the catalogue's text and the
    ratings, which are the dataset's: ``StoredRatings``): its network, movie vectors and index."""

    record: dict[str, Any]
    index: MovieIndex
    weight: np.ndarray  # (hidden, d)
    bias: np.ndarray  # (hidden,)
    inner: Layers
    raw: np.ndarray  # (n, d) the encoder's movie vectors; empty for a hybrid model, whose profile never reads them
    embeddings: np.ndarray  # (n, hidden) the movies' vectors, those the index holds
    movie_ids: np.ndarray  # (n,) catalogue order
    gram: np.ndarray | None = None  # an ials model's Y^T Y
    sequence: SequenceNet | None = None  # a sequence model's network

    @classmethod
    def of(cls, model: ServingModel) -> ShardModel:
        return cls(record=model.record, index=model.index, weight=model.weight, bias=model.bias, inner=model.inner,
                   raw=model.raw, embeddings=model.embeddings, movie_ids=model.movie_ids,
                   gram=model.gram, sequence=model.sequence)  # fmt: skip

    @cached_property
    def profile(self) -> Profile:
        return Profile.of(self.record.get("config", {}))

    @cached_property
    def _id_order(self) -> np.ndarray:
        return np.argsort(self.movie_ids, kind="stable")

    @cached_property
    def _known_movies(self) -> frozenset[int]:
        return frozenset(self.movie_ids.tolist())

    def rows_of(self, movie_ids: list[int]) -> np.ndarray:
        """Catalogue rows of ``movie_ids`` (as ``ServingModel.rows_of``: NotFound naming any unknown one); what
        ``serving.feedback_for`` maps a shard's feedback with."""
        check_ids((), self._known_movies, user_id=None, movie_ids=movie_ids)
        if not movie_ids:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self._id_order[np.searchsorted(self.movie_ids, movie_ids, sorter=self._id_order)], np.int64)


@dataclass(frozen=True)
class StoredRatings:
    """A dataset's ratings as ingested, by user: user ``user_ids[j]``'s at ``indptr[j]:indptr[j + 1]``."""

    user_ids: np.ndarray  # (u,) ascending
    indptr: np.ndarray  # (u + 1,)
    movie: np.ndarray  # (r,) int32 catalogue rows
    value: np.ndarray  # (r,) float32
    time: np.ndarray | None  # (r,) int64 seconds; None where the model's profile reads no times (Profile.timed)

    @classmethod
    def of(cls, model: ServingModel) -> StoredRatings:
        return cls(model.user_ids, model.ratings_indptr, model.ratings_movie, model.ratings_value, model.ratings_time)

    def ranges(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each of ``users`` (b,) has their ratings: (first position, count), count 0 for a user unknown
        at ingest (``ServingModel.stored_ratings``, for many users at once)."""
        users = np.asarray(users, dtype=np.int64)
        if not len(self.user_ids):
            return np.zeros(len(users), dtype=np.int64), np.zeros(len(users), dtype=np.int64)
        j = np.minimum(np.searchsorted(self.user_ids, users), len(self.user_ids) - 1)
        known = self.user_ids[j] == users
        lo = np.where(known, self.indptr[j], 0).astype(np.int64)
        return lo, np.where(known, self.indptr[j + 1] - lo, 0).astype(np.int64)


def answer_users(
    model: ShardModel,
    users: np.ndarray,
    *,
    stored: StoredRatings,
    popular: Callable[[], tuple[np.ndarray, np.ndarray]],
    popularity: Callable[[], np.ndarray],
    k: int,
    exclude_seen: bool = True,
    feedback: dict[int, UserRatings] | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``users`` (b,) answered in order: (rows (r,) of ``ROW``, stats {"users", "rows", "popular", "light",
    "seconds"}). ``stored``: the dataset's ratings as ingested; ``popular``: the model's most popular movies
    (``ServingModel.popular``), called only when a user has no ratings; ``popularity``: its popularity prior
    (``ServingModel.popularity``), called only when a user is light; ``feedback``: the ratings given after
    ingest of those users that have any (``serving.feedback_for``); ``threads``: how many the index search may
    use (the cores this process is meant to have)."""
    started = time.perf_counter()
    ratings = users_ratings(stored, users, feedback or {})
    counts = np.diff(ratings.indptr)
    rated = np.flatnonzero(counts)
    indptr = np.r_[0, np.cumsum(counts[rated])].astype(np.int64)  # the rated users' ratings, all of them
    weights = profile_weights(indptr, ratings.values, ratings.times, model.profile)
    queries = profile_queries(indptr, ratings.rows, weights, profile=model.profile, raw=model.raw,
                              embeddings=model.embeddings, weight=model.weight, bias=model.bias, inner=model.inner,
                              exact_rows=True, gram=model.gram, times=ratings.times,
                              sequence=model.sequence)  # fmt: skip
    excluded = RowSets(indptr, ratings.rows) if exclude_seen else RowSets(indptr * 0, ratings.rows[:0])
    priors = model.profile.prior_weights(counts[rated])
    light = np.flatnonzero(priors > 0)  # of the rated users: those the popularity prior still weighs on
    bonuses = np.zeros(len(rated), dtype=np.float32)
    if model.profile.cold_boost > 0 and (popularity() == 0).any():  # a cold movie's bonus, as the single answer's
        bonuses = cold_bonus(model.profile.cold_boost, queries, vector_scale(model.embeddings, popularity()))
    if not len(light):
        found = model.index.query_many(queries, k, excluded=excluded, threads=threads)
        found = cold_found(found, model.embeddings, queries, bonuses, popularity, k=k, excluded=excluded)
    else:
        heavy = np.flatnonzero(priors == 0)
        by_index = model.index.query_many(queries[heavy], k, excluded=excluded.subset(heavy), threads=threads)
        by_index = cold_found(by_index, model.embeddings, queries[heavy], bonuses[heavy], popularity, k=k,
                              excluded=excluded.subset(heavy))  # fmt: skip
        blended = light_rows(model.embeddings, queries[light], priors[light], popularity(), k,
                             excluded=excluded.subset(light), bonuses=bonuses[light])  # fmt: skip
        found = merge_found([(heavy, by_index), (light, blended)], len(rated))
    rows = user_rows(model.movie_ids, users, rated, found, popular=popular, k=k)
    stats = {"users": len(users), "rows": len(rows), "popular": len(users) - len(rated), "light": len(light),
             "seconds": round(time.perf_counter() - started, 4)}  # fmt: skip
    return rows, stats


def ruled_rows(
    model: ServingModel, users: np.ndarray, *, k: int, exclude_seen: bool, rules: Rules,
    feedback: dict[int, UserRatings],
) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """``users`` answered with serve-time ``rules`` (genres, years, excluded ids, diversity): each by the single
    answer's own ``user_ranking``, one user at a time, since a rule reads the catalogue's text (genres, years)
    that ``ShardModel`` leaves out and diversity ranks each user's own pool. Rows and stats as ``answer_users``'."""
    started = time.perf_counter()
    parts, strategies = [], []
    for user in users.tolist():
        ranking = user_ranking(model, int(user), k=k, exclude_seen=exclude_seen, rules=rules,
                               feedback=feedback.get(int(user)))  # fmt: skip
        part = np.zeros(len(ranking.rows), dtype=ROW)
        part["user_id"], part["rank"] = user, np.arange(1, len(ranking.rows) + 1)
        part["movie_id"], part["score"] = model.movie_ids[ranking.rows], ranking.scores
        parts.append(part)
        strategies.append(ranking.strategy)
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=ROW)
    stats = {"users": len(users), "rows": len(rows), "popular": strategies.count("popular"),
             "light": strategies.count(LIGHT_PROFILE), "seconds": round(time.perf_counter() - started, 4)}  # fmt: skip
    return rows, stats


def light_rows(
    embeddings: np.ndarray, queries: np.ndarray, priors: np.ndarray, popularity: np.ndarray, k: int, *,
    excluded: RowSets, bonuses: np.ndarray | None = None,
) -> Found:  # fmt: skip
    """Light users' answers, each exactly as the single answer makes it (``blended_top``, one user at a time;
    ``bonuses`` (b,): each one's cold bonus, none when not given)."""
    rows, scores, counts = [], [], []
    for i in range(len(queries)):
        allowed = np.ones(len(embeddings), dtype=bool)
        allowed[excluded.rows[excluded.indptr[i] : excluded.indptr[i + 1]]] = False
        bonus = float(bonuses[i]) if bonuses is not None else 0.0
        r, sc = blended_top(embeddings, queries[i], float(priors[i]), popularity, k=k, allowed=allowed, bonus=bonus)
        rows.append(r)
        scores.append(sc)
        counts.append(len(r))
    return Found(
        indptr=np.r_[0, np.cumsum(counts)].astype(np.int64),
        rows=np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
        scores=np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32),
    )


def cold_found(
    found: Found, embeddings: np.ndarray, queries: np.ndarray, bonuses: np.ndarray,
    popularity: Callable[[], np.ndarray], *, k: int, excluded: RowSets,
) -> Found:  # fmt: skip
    """The index's answers with the cold movies each user may get (``with_cold``, one user at a time, as the
    single answer does), where a user's bonus is above 0; ``found`` as it is when none is."""
    if not (bonuses > 0).any():
        return found
    cold = popularity() == 0
    cold_rows = np.flatnonzero(cold)
    rows, scores, counts = [], [], []
    for i in range(len(queries)):
        lo, hi = found.indptr[i], found.indptr[i + 1]
        seen = excluded.rows[excluded.indptr[i] : excluded.indptr[i + 1]]
        r, sc = with_cold(found.rows[lo:hi], found.scores[lo:hi], queries[i], embeddings, bonus=float(bonuses[i]),
                          cold=cold, candidates=np.setdiff1d(cold_rows, seen), k=k)  # fmt: skip
        rows.append(r)
        scores.append(sc)
        counts.append(len(r))
    return Found(
        indptr=np.r_[0, np.cumsum(counts)].astype(np.int64),
        rows=np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, dtype=np.int64),
        scores=np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, dtype=np.float32),
    )


def merge_found(parts: list[tuple[np.ndarray, Found]], n: int) -> Found:
    """One ``Found`` of ``n`` queries from parts that each answer the queries at their positions."""
    counts = np.zeros(n, dtype=np.int64)
    for at, found in parts:
        counts[at] = np.diff(found.indptr)
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    rows, scores = np.zeros(int(indptr[-1]), dtype=np.int64), np.zeros(int(indptr[-1]), dtype=np.float32)
    for at, found in parts:
        place = concat_ranges(indptr[at], np.diff(found.indptr))
        rows[place], scores[place] = found.rows, found.scores
    return Found(indptr=indptr, rows=rows, scores=scores)


def users_ratings(stored: StoredRatings, users: np.ndarray, feedback: dict[int, UserRatings]) -> ShardRatings:
    """The ratings of ``users`` (b,) a profile reads, as a single query reads them one user at a time
    (``UserRatings.over(ServingModel.stored_ratings)``): stored ones gathered at once, feedback laid over the
    few users that have any."""
    lo, counts = stored.ranges(users)
    at = concat_ranges(lo, counts)
    ratings = ShardRatings(
        indptr=np.r_[0, np.cumsum(counts)].astype(np.int64),
        rows=stored.movie[at].astype(np.int64),
        values=stored.value[at].astype(np.float32),
        times=stored.time[at].astype(np.int64) if stored.time is not None else None,
    )
    given = [i for i, user in enumerate(users.tolist()) if user in feedback]
    if not given:
        return ratings
    return ratings.replaced({i: feedback[int(users[i])].over(ratings.user(i)) for i in given})


@dataclass(frozen=True)
class ShardRatings:
    """Many users' ratings, user i's at ``indptr[i]:indptr[i + 1]``, in the order a profile reads them."""

    indptr: np.ndarray  # (b + 1,) int64
    rows: np.ndarray  # (r,) int64 catalogue rows
    values: np.ndarray  # (r,) float32
    times: np.ndarray | None  # (r,) int64 seconds; None where the model's profile reads no times (Profile.timed)

    def user(self, i: int) -> UserRatings:
        lo, hi = int(self.indptr[i]), int(self.indptr[i + 1])
        times = self.times[lo:hi] if self.times is not None else None
        return UserRatings(rows=self.rows[lo:hi], values=self.values[lo:hi], times=times)

    def replaced(self, by: dict[int, UserRatings]) -> ShardRatings:
        """These ratings with user i's replaced by ``by[i]`` for each i given."""
        parts: list[UserRatings] = []
        done = 0
        for i in sorted(by):
            parts += [self.users(done, i), by[i]]
            done = i + 1
        parts.append(self.users(done, len(self.indptr) - 1))
        counts = np.diff(self.indptr).copy()
        for i, ratings in by.items():
            counts[i] = len(ratings)
        times = np.concatenate([p.times for p in parts if p.times is not None]) if self.times is not None else None
        return ShardRatings(
            indptr=np.r_[0, np.cumsum(counts)].astype(np.int64),
            rows=np.concatenate([p.rows for p in parts]).astype(np.int64),
            values=np.concatenate([p.values for p in parts]).astype(np.float32),
            times=times,
        )

    def users(self, lo: int, hi: int) -> UserRatings:
        """Users [lo, hi)'s ratings, one after the other."""
        a, b = int(self.indptr[lo]), int(self.indptr[hi])
        return UserRatings(rows=self.rows[a:b], values=self.values[a:b],
                           times=self.times[a:b] if self.times is not None else None)  # fmt: skip


def user_rows(
    movie_ids: np.ndarray,
    users: np.ndarray,
    rated: np.ndarray,
    found: Found,
    *,
    popular: Callable[[], tuple[np.ndarray, np.ndarray]],
    k: int,
) -> np.ndarray:
    """The batch rows (of ``ROW``) of ``users``: those at ``rated`` answered by ``found`` (in the order of
    ``rated``), the others the ``popular`` movies."""
    counts = np.zeros(len(users), dtype=np.int64)
    counts[rated] = np.diff(found.indptr)
    is_rated = np.zeros(len(users), dtype=bool)
    is_rated[rated] = True
    order, popular_scores = popular() if not is_rated.all() else (np.zeros(0, np.int64), np.zeros(0, np.float32))
    counts[~is_rated] = min(k, len(order))
    out = np.empty(int(counts.sum()), dtype=ROW)
    owner = np.repeat(np.arange(len(users)), counts)
    begins = np.r_[0, np.cumsum(counts)[:-1]] if len(users) else np.zeros(0, dtype=np.int64)
    out["user_id"] = users[owner]
    out["rank"] = np.arange(len(out)) - begins[owner] + 1
    mine = is_rated[owner]
    out["movie_id"][mine] = movie_ids[found.rows]
    out["score"][mine] = found.scores
    place = out["rank"][~mine].astype(np.int64) - 1
    out["movie_id"][~mine] = movie_ids[order[place]]
    out["score"][~mine] = popular_scores[place]
    return out


def csv_text(rows: np.ndarray, ids: Sequence[str]) -> Iterator[str]:
    """``rows`` (of ``ROW``) as CSV lines, ``CSV_ROWS_PER_CHUNK`` at a time (no header), each ending in its
    recommendation id from ``ids`` (one per row). A score is written as the single-user answer's JSON carries it
    (rounded to 6 decimals), the shortest text that reads back to it."""
    for lo in range(0, len(rows), CSV_ROWS_PER_CHUNK):
        part = rows[lo : lo + CSV_ROWS_PER_CHUNK]
        yield "".join(
            f"{u},{r},{m},{s!r},{i}\n"
            for u, r, m, s, i in zip(part["user_id"].tolist(), part["rank"].tolist(), part["movie_id"].tolist(),
                                     part["score"].astype(np.float64).round(6).tolist(),
                                     ids[lo : lo + CSV_ROWS_PER_CHUNK], strict=True)
        )  # fmt: skip


def npy_header(rows: int) -> bytes:
    """The ``.npy`` header (format 1.0) of a (rows,) array of ``ROW``: what precedes the rows' raw bytes."""
    import io

    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(ROW), "fortran_order": False, "shape": (rows,)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()
