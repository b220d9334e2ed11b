"""Offline evaluation of recommenders: the split as a ``Split``, the new-user slice, ranking and metrics, and the
two trivial rows (issues #11, #24).

Pure numpy/scipy, no Redis: the evaluation job and ``bench.quality`` both call these functions. Data flow:

    ratings as parallel arrays (user, movie row, rating, timestamp)
      └─ split_ratings (labels from shared/ml/splits.py) ──> Split: the training users' part (CSR users x
           movies), relevant test movies, cold movies; Cohort: the held-out new users' timelines
      └─ new_user_split(cohort, N) ──> a Split whose "training" rows are each new user's first N ratings
    Split ──> a scorer (random_scorer, popular_scorer, shared/ml/baselines.py's, or a model's own)
            fitted on the training part only; scorer(histories) -> (b, n_movies) scores
      └─ recommend: batches of ``batch_users`` evaluated users, top_k with their history excluded
           └─ metrics: recall, NDCG, HR, catalogue coverage, cold-start recall at k
              (per user: shared/ml/intervals.py, with the paired bootstrap)

The metrics:

- Relevant = test ratings >= ``relevant_at``; a user with no relevant test movie is not evaluated (their
  training part still feeds the models). Candidates: every catalogue movie not in the user's history.
- Recall@k = hits / min(k, |relevant|); NDCG@k with binary gains, the ideal DCG over min(k, |relevant|)
  positions; HR@k = share of users with a hit; coverage@k = distinct movies recommended / catalogue size.
- Cold-start recall: the same recall restricted to relevant movies that nobody rated in the training part,
  averaged over the users that have at least one.

Scorers see only ``Split.train`` and the histories they are given; nothing from the test part reaches them
(tests check this). Top-k ties go to the lower movie row, so every result is deterministic.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from shared.ml import splits
from shared.ml.protocol import DEFAULT_K

Scorer = Callable[[sp.csr_matrix], np.ndarray]
"""scorer(histories) -> (b, n_movies) float scores, higher is better, of b users given as a (b, n_movies) CSR of
their ratings: rows of ``Split.train``, or new users' (fold-in: nothing about a user is kept in the scorer)."""

K = DEFAULT_K
BATCH_USERS = 1000
"""Users scored at a time: a batch's float32 scores (and top_k's copy) are BATCH_USERS x n_movies x 4 bytes
each (240 MB at 60k movies)."""
EASE_MAX_BYTES = 4 << 30
"""EASE's memory budget (shared/ml/baselines.py): it holds two dense float64 item x item matrices (the Gram
matrix and its inverse)."""


class Skipped(Exception):
    """A baseline that cannot run on this data; the message says why."""


@dataclass(frozen=True)
class Split:
    """The training part and what each evaluated user should find in the test part."""

    user_ids: np.ndarray  # (u,) the user value of each row of ``train`` (users with >= min_ratings)
    train: sp.csr_matrix  # (u, n_movies) float32 rating values of the training part
    evaluated: np.ndarray  # (e,) int64 rows of ``train`` with at least one relevant test movie
    relevant: sp.csr_matrix  # (e, n_movies) bool: relevant test movies of each evaluated user
    cold: np.ndarray  # (n_movies,) bool: no rating at all in the training part

    @property
    def n_movies(self) -> int:
        return int(self.train.shape[1])


def split_ratings(
    user: np.ndarray,
    movie_index: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray,
    *,
    n_movies: int | None = None,
    kind: str = "temporal",
    min_ratings: int = 10,
    train_fraction: float = 0.8,
    relevant_at: float = 4.0,
    new_user_share: float = 0.0,
    cohort_from: float = 0.0,
    max_users: int = 0,
) -> tuple[Split, Cohort, splits.Parts]:
    """Ratings given as parallel (r,) arrays split by ``splits.assign``'s rules: the ``Split`` of the training
    users, the new-user ``Cohort``, and every rating's label. ``movie_index`` are catalogue rows and ``n_movies``
    the catalogue size (default: the largest row + 1). (user, movie) pairs are expected to be unique, as in
    MovieLens; a repeated pair's training values would add up."""
    user, movie_index = np.asarray(user), np.asarray(movie_index, dtype=np.int64)
    rating, timestamp = np.asarray(rating, dtype=np.float32), np.asarray(timestamp, dtype=np.int64)
    n = int(n_movies) if n_movies is not None else int(movie_index.max(initial=-1)) + 1
    parts = splits.assign(user, timestamp, kind=kind, min_ratings=min_ratings, train_fraction=train_fraction,
                          new_user_share=new_user_share, cohort_from=cohort_from, max_users=max_users)  # fmt: skip
    is_train = parts.label == splits.TRAIN
    user_ids = parts.cut_users  # the training users, ascending: the rows of ``train``
    row = np.searchsorted(user_ids, user)  # (r,) a training user's row (meaningless for the others)
    train = sp.csr_matrix((rating[is_train], (row[is_train], movie_index[is_train])), shape=(len(user_ids), n),
                          dtype=np.float32)  # fmt: skip
    train.sum_duplicates()
    is_relevant = (parts.label == splits.TEST) & (rating >= relevant_at)
    rel_rows = row[is_relevant]
    evaluated = np.unique(rel_rows).astype(np.int64)
    relevant = sp.csr_matrix(
        (np.ones(int(is_relevant.sum()), dtype=bool), (np.searchsorted(evaluated, rel_rows), movie_index[is_relevant])),
        shape=(len(evaluated), n),
    )
    relevant.sum_duplicates()
    cold = np.bincount(movie_index[is_train], minlength=n) == 0
    split = Split(user_ids=user_ids, train=train, evaluated=evaluated, relevant=relevant, cold=cold)
    # The cohort's timelines: by user, then time, then input order.
    mine = np.flatnonzero(parts.label == splits.NEW_USER)
    mine = mine[np.lexsort((mine, timestamp[mine], user[mine]))]
    cohort_ids, counts = np.unique(user[mine], return_counts=True)
    cohort = Cohort(
        user_ids=cohort_ids,
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        movie_index=movie_index[mine].astype(np.int64),
        values=rating[mine],
        timestamps=timestamp[mine],
    )
    return split, cohort, parts


def temporal_split(
    user_index: np.ndarray,
    movie_index: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray,
    *,
    n_movies: int | None = None,
    min_ratings: int = 10,
    train_fraction: float = 0.8,
    relevant_at: float = 4.0,
) -> Split:
    """The per-user temporal ``Split`` of ``split_ratings``, with no new-user cohort."""
    split, _, _ = split_ratings(user_index, movie_index, rating, timestamp, n_movies=n_movies,
                                min_ratings=min_ratings, train_fraction=train_fraction,
                                relevant_at=relevant_at)  # fmt: skip
    return split


@dataclass(frozen=True)
class Cohort:
    """The new-user cohort's ratings, each user's in time order: user i's are ``[indptr[i], indptr[i + 1])``."""

    user_ids: np.ndarray  # (c,) ascending
    indptr: np.ndarray  # (c + 1,) int64
    movie_index: np.ndarray  # (m,) int64 catalogue rows
    values: np.ndarray  # (m,) float32 ratings
    timestamps: np.ndarray  # (m,) int64 seconds


def new_user_split(
    cohort: Cohort, first: int, *, n_movies: int, cold: np.ndarray, relevant_at: float
) -> tuple[Split, sp.csr_matrix]:
    """The new-user slice at ``first`` ratings, as a ``Split``: its ``train`` rows are each cohort user's first
    ``first`` ratings (their history, posted as feedback), relevant = their later ratings >= ``relevant_at``;
    evaluated = the users with a relevant later rating; ``cold`` is the training part's (nothing of the cohort
    was trained on). Beside it, the histories' timestamps (a CSR the shape of ``train``)."""
    counts = np.diff(cohort.indptr)
    owner = np.repeat(np.arange(len(counts)), counts)  # (m,) cohort row of each rating
    rank = np.arange(len(owner)) - cohort.indptr[owner]  # (m,) place in the user's timeline
    early = rank < first
    shape = (len(counts), n_movies)
    history = sp.csr_matrix((cohort.values[early], (owner[early], cohort.movie_index[early])), shape=shape,
                            dtype=np.float32)  # fmt: skip
    times = sp.csr_matrix((cohort.timestamps[early], (owner[early], cohort.movie_index[early])), shape=shape,
                          dtype=np.int64)  # fmt: skip
    later = ~early & (cohort.values >= relevant_at)
    evaluated = np.unique(owner[later]).astype(np.int64)
    relevant = sp.csr_matrix(
        (np.ones(int(later.sum()), dtype=bool), (np.searchsorted(evaluated, owner[later]), cohort.movie_index[later])),
        shape=(len(evaluated), n_movies),
    )
    relevant.sum_duplicates()
    split = Split(user_ids=cohort.user_ids, train=history, evaluated=evaluated, relevant=relevant, cold=cold)
    return split, times


def sample_evaluated(split: Split, at_most: int) -> Split:
    """``split`` with at most ``at_most`` of its evaluated users, a hashed sample of them (``splits.sample``; 0:
    all): the training part, and so every model fitted on it, is unchanged."""
    keep = splits.sample(split.user_ids[split.evaluated], at_most)
    if len(keep) == len(split.evaluated):
        return split
    return replace(split, evaluated=split.evaluated[keep], relevant=split.relevant[keep])


def binary(split: Split) -> sp.csr_matrix:
    """(u, n_movies) float32 1/0: who rated what in the training part."""
    return as_binary(split.train)


def as_binary(ratings: sp.csr_matrix) -> sp.csr_matrix:
    """(b, n) float32 1/0 of a CSR of ratings: who rated what."""
    x = sp.csr_matrix(ratings, dtype=np.float32, copy=True)
    x.data = (x.data != 0).astype(np.float32)
    x.eliminate_zeros()
    return x


# -- ranking and metrics -----------------------------------------------------------------------------------
def top_k(scores: np.ndarray, exclude: sp.csr_matrix, k: int, *, overwrite: bool = False) -> np.ndarray:
    """(b, k) int64 movie rows of the k best scores per row, excluded movies (``exclude``'s nonzeros, a
    (b, n) CSR) left out; ties to the lower movie row; -1 pads a row with fewer than k candidates.

    ``overwrite``: ``scores`` is a float32 or float64 array the caller gives up, ranked in place rather than
    copied. Every user shares one row (a broadcast, as most-popular's) when its first stride is 0: ranked once.
    Otherwise torch's top-(k + 1) of each row decides it, unless the (k + 1)-th score equals the k-th: then that
    row's ties are settled by the exact rule (``_top_k_tied``)."""
    b, n = scores.shape
    out = np.full((b, k), -1, dtype=np.int64)
    if n == 0 or k == 0 or b == 0:
        return out
    if scores.strides[0] == 0:
        return _top_k_shared(np.asarray(scores[0]), exclude, k)
    dtype = np.result_type(scores.dtype, np.float32)
    owned = overwrite and scores.dtype == dtype and scores.flags.c_contiguous and scores.flags.writeable
    scores = scores if owned else np.array(scores, dtype=dtype)  # (b, n), overwritten below
    coo = exclude.tocoo()
    scores[coo.row, coo.col] = -np.inf
    np.copyto(scores, -np.inf, where=np.isnan(scores))  # a NaN score is no candidate
    import torch

    with torch.no_grad():
        top = torch.topk(torch.from_numpy(scores), min(k + 1, n), dim=1, sorted=True)
    values, rows = top.values.numpy(), top.indices.numpy()  # (b, k + 1) best first, ties in any order
    kk = min(k, n)
    tied = values[:, kk] == values[:, kk - 1] if n > k else np.zeros(b, dtype=bool)
    # The top k of an untied row are its k best: put them in order, ties within them to the lower movie row.
    values, rows = values[:, :kk], rows[:, :kk].astype(np.int64)
    by_movie = np.argsort(rows, axis=1)
    values, rows = np.take_along_axis(values, by_movie, 1), np.take_along_axis(rows, by_movie, 1)
    by_score = np.argsort(-values, axis=1, kind="stable")
    values, rows = np.take_along_axis(values, by_score, 1), np.take_along_axis(rows, by_score, 1)
    out[:, :kk] = np.where(values > -np.inf, rows, -1)
    for i in np.flatnonzero(tied):
        out[i] = _top_k_tied(scores[i], k)
    return out


def _top_k_tied(row: np.ndarray, k: int) -> np.ndarray:
    """(k,) the k best movie rows of one row of scores (excluded ones at -inf), ties to the lower row, -1 pads."""
    kth = np.partition(row, len(row) - k)[len(row) - k] if k <= len(row) else -np.inf
    idx = np.flatnonzero((row >= kth) & (row > -np.inf))  # the top k and anything tied with the k-th
    best = idx[np.lexsort((idx, -row[idx]))][:k]
    out = np.full(k, -1, dtype=np.int64)
    out[: len(best)] = best
    return out


def _top_k_shared(row: np.ndarray, exclude: sp.csr_matrix, k: int) -> np.ndarray:
    """``top_k`` when every user has the scores ``row`` (n,): the movies in one order (best first, ties to
    the lower row, NaN last), each user's k first that they have not rated."""
    exclude = sp.csr_matrix(exclude)
    row = np.where(np.isnan(row), -np.inf, row)
    order = np.lexsort((np.arange(len(row)), -row))  # (n,)
    order = order[row[order] > -np.inf]
    out = np.full((exclude.shape[0], k), -1, dtype=np.int64)
    for i in range(exclude.shape[0]):
        seen = exclude.indices[exclude.indptr[i] : exclude.indptr[i + 1]]
        head = order[: k + len(seen)]
        best = head[~np.isin(head, seen)][:k]
        out[i, : len(best)] = best
    return out


def recommend(scorer: Scorer, split: Split, *, k: int = K, batch_users: int = BATCH_USERS) -> np.ndarray:
    """(e, k) top-k movie rows for every evaluated user, in ``split.evaluated`` order, in batches of users."""
    parts = []
    for lo in range(0, len(split.evaluated), batch_users):
        history = split.train[split.evaluated[lo : lo + batch_users]]
        parts.append(top_k(scorer(history), history, k))
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def _recall(hits: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(hits.sum(axis=1) / np.minimum(k, relevant), dtype=np.float64)  # (users,)


def metrics(recommended: np.ndarray, split: Split, *, k: int = K) -> dict[str, float]:
    """Recall, NDCG, HR, coverage, cold-start recall and cold share (the share of the answers' slots that hold
    a movie nobody rated in the training part) at k of ``recommended`` ((e, k) movie rows of the evaluated users
    in order; -1 = nothing), with ``users`` (evaluated) and ``cold_users`` counted."""
    e = len(split.evaluated)
    if e == 0:
        zero = dict.fromkeys(("recall", "ndcg", "hr", "coverage", "cold_recall", "cold_share"), 0.0)
        return {**zero, "users": 0, "cold_users": 0}
    rec = np.asarray(recommended, dtype=np.int64)[:, :k]  # (e, k)
    if rec.shape[0] != e:
        raise ValueError(f"{rec.shape[0]} rows of recommendations for {e} evaluated users")
    valid = rec >= 0
    safe = np.where(valid, rec, 0)
    # hits[i, p]: the movie at position p is relevant for user i (a CSR lookup of every (i, movie) pair).
    looked_up = split.relevant[np.repeat(np.arange(e), rec.shape[1]), safe.ravel()]
    hits = valid & np.asarray(looked_up).reshape(rec.shape).astype(bool)  # (e, k)
    n_relevant = np.diff(split.relevant.indptr)  # (e,)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    dcg = (hits * discounts[: rec.shape[1]]).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(k, n_relevant) - 1]
    cold_hits = hits & split.cold[safe]
    n_cold = np.asarray(split.relevant[:, split.cold].sum(axis=1)).ravel()  # (e,) cold relevant per user
    has_cold = n_cold > 0
    distinct = np.unique(rec[valid])
    return {
        "recall": float(_recall(hits, n_relevant, k).mean()),
        "ndcg": float((dcg / ideal).mean()),
        "hr": float(hits.any(axis=1).mean()),
        "coverage": len(distinct) / split.n_movies if split.n_movies else 0.0,
        "cold_recall": float(_recall(cold_hits[has_cold], n_cold[has_cold], k).mean()) if has_cold.any() else 0.0,
        "cold_share": float((valid & split.cold[safe]).sum() / max(1, int(valid.sum()))),
        "users": e,
        "cold_users": int(has_cold.sum()),
    }


# -- baselines -------------------------------------------------------------------------------------------
def random_scorer(split: Split, *, seed: int = 0) -> Scorer:
    """Uniform random float32 scores; a user's draw depends only on (seed, their history), not on the batching."""
    n = split.n_movies

    def score(history: sp.csr_matrix) -> np.ndarray:
        bounds = zip(history.indptr[:-1], history.indptr[1:], strict=True)
        keys = [zlib.crc32(history.indices[a:b].tobytes()) for a, b in bounds]
        draws = [np.random.default_rng([seed, key]).random(n, dtype=np.float32) for key in keys]
        return np.stack(draws).reshape(len(keys), n)

    return score


def popular_scorer(split: Split) -> Scorer:
    """Every user gets the movies' rating counts in the training part (top_k removes what they have seen)."""
    counts = np.asarray(binary(split).sum(axis=0), dtype=np.float32).ravel()  # (n,)

    def score(history: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(counts, (history.shape[0], len(counts)))

    return score
