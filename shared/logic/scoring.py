"""An evaluation's data in Redis: a dataset's temporal split, stored once, and its scoring shards' parts.

    source dataset (format 2 on: ratings with timestamps)
      └─ derive(source, protocol) ─┬─> training dataset ds-<hash(source, min_ratings, train_fraction)>:
                                   │     the source's catalogue arrays copied; ratings = each kept user's training
                                   │     part (in the source's order, timestamps kept); a record like an ingested
                                   │     dataset's plus "derived": {"from", "protocol"}
                                   └─> test part, beside it (``evaluation_split_artifact``):
                                         user_ids         int32 (u,)    the training dataset's users (>= min_ratings)
                                         evaluated        int64 (e,)    their rows with a relevant test movie
                                         relevant_indptr  int64 (e + 1,) relevant test movies of evaluated user i:
                                         relevant_movie   int32 (m,)      relevant_movie[indptr[i]:indptr[i + 1]]
                                         cold             bool (n,)     movies with no training rating
                                         summary          JSON          counts and protocol; written last
    load_split(training dataset, relevant_at) ──> shared.ml.evaluate.Split (+ the training timestamps), per process
    fitted_baseline(...) ──> a baseline fitted on the training part, per process (EASE: ~10 s on ml-latest-small)

The split is ``shared.ml.evaluate.temporal_split``; the training dataset is cut by ``train_mask``, the same
rule per rating, and checked against it (the same matrix, or the derivation fails). Both are content
addressed: the training dataset by (source, min_ratings, train_fraction), the test part by that and
``relevant_at``, so a rerun (or another ``relevant_at``, or ``k``) reuses what is stored. Only the training
dataset reaches a recipe's pipeline; the test part is read by the scoring shards and the join alone.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from shared.errors import Conflict, NotFound
from shared.infra.clock import utcnow_iso
from shared.infra.keys import dataset_artifact, evaluation_part, evaluation_split_artifact
from shared.infra.process import per_process
from shared.logic.serving import version_scorer
from shared.ml import evaluate
from shared.ml.protocol import BASELINES, Protocol, training_dataset_id
from shared.store.artifacts import ArtifactStore
from shared.store.datasets import (
    FORMAT_VERSION,
    TIMESTAMPS_SINCE_FORMAT,
    DatasetRatings,
    DatasetStore,
    load_ratings,
)
from shared.store.models import ModelStore

SPLIT_CACHE = 2
"""Loaded splits a process keeps (one evaluation at a time, and the one before)."""


# -- the split -------------------------------------------------------------------------------------------
def train_mask(indptr: np.ndarray, timestamps: np.ndarray, *, min_ratings: int, train_fraction: float) -> np.ndarray:
    """(r,) bool: the ratings of a dataset (grouped by user, ``indptr``) that ``temporal_split`` puts in the
    training part: users with >= ``min_ratings`` ratings, the first round(train_fraction n) of each by time
    (ties in stored order)."""
    counts = np.diff(indptr)  # (u,)
    owner = np.repeat(np.arange(len(counts)), counts)  # (r,)
    order = np.lexsort((np.arange(len(owner)), timestamps, owner))  # by user, then time, then stored order
    rank = np.empty(len(owner), dtype=np.int64)
    rank[order] = np.arange(len(owner)) - indptr[owner[order]]  # (r,) place in the user's timeline
    n_train = np.array([round(train_fraction * c) for c in counts.tolist()], dtype=np.int64)  # as temporal_split
    kept = counts >= min_ratings
    return np.asarray(kept[owner] & (rank < n_train[owner]), dtype=bool)


def ratings_matrix(indptr: np.ndarray, movie: np.ndarray, values: np.ndarray, n_movies: int) -> sp.csr_matrix:
    """(u, n_movies) CSR of one value per (user, movie) from per-user arrays, indices sorted (in copies: the
    arrays given keep their order)."""
    shape = (len(indptr) - 1, n_movies)
    m = sp.csr_matrix((values, movie.astype(np.int64), indptr.astype(np.int64)), shape=shape, copy=True)
    m.sort_indices()
    return m


def cut(ratings: DatasetRatings, n_movies: int, protocol: Protocol) -> tuple[evaluate.Split, DatasetRatings]:
    """A dataset's ratings split by ``protocol``: the ``Split``, and its training part as a dataset's ratings
    arrays (the kept users, each one's training ratings in stored order, timestamps kept). Pure: no Redis."""
    if ratings.timestamps is None:
        raise ValueError("a temporal split needs the ratings' timestamps")
    counts = np.diff(ratings.indptr)
    split = evaluate.temporal_split(
        np.repeat(ratings.user_ids, counts),
        ratings.movie_index,
        ratings.values,
        ratings.timestamps,
        n_movies=n_movies,
        min_ratings=protocol.min_ratings,
        train_fraction=protocol.train_fraction,
        relevant_at=protocol.relevant_at,
    )
    mask = train_mask(ratings.indptr, ratings.timestamps, min_ratings=protocol.min_ratings,
                      train_fraction=protocol.train_fraction)  # fmt: skip
    kept = counts >= protocol.min_ratings
    owner = np.repeat(np.arange(len(counts)), counts)  # (r,) row of each rating's user
    train_counts = np.bincount(owner[mask], minlength=len(counts))[kept]  # (u',) training ratings of kept users
    part = DatasetRatings(
        user_ids=ratings.user_ids[kept].astype(np.int32),
        indptr=np.concatenate([[0], np.cumsum(train_counts)]).astype(np.int64),
        movie_index=ratings.movie_index[mask].astype(np.int32),
        values=ratings.values[mask].astype(np.float32),
        timestamps=ratings.timestamps[mask].astype(np.int64),
    )
    # The arrays stored must be the split's training part exactly: same users, same (user, movie, rating).
    train = ratings_matrix(part.indptr, part.movie_index, part.values, n_movies)
    same = np.array_equal(part.user_ids, split.user_ids) and train.shape == split.train.shape
    if not same or (train != split.train).nnz:
        raise RuntimeError("the training part does not match the temporal split")
    return split, part


@dataclass(frozen=True)
class Derived:
    """What ``derive`` answers: the split's summary (JSON, as stored) and whether it was all there already."""

    summary: dict[str, Any]
    reused: bool

    @property
    def training_dataset(self) -> str:
        return str(self.summary["training_dataset"])


def stored_split(datasets: DatasetStore, source: str, protocol: Protocol) -> dict[str, Any] | None:
    """The summary of ``source``'s split under ``protocol`` when it is stored whole, else None."""
    train_id = training_dataset_id(source, protocol)
    summary_name = evaluation_split_artifact(train_id, protocol.relevant_at, "summary")
    if datasets.get(train_id) is None or not datasets.artifacts.exists(summary_name):
        return None
    summary: dict[str, Any] = datasets.artifacts.get_json(summary_name)
    return summary


def derive(datasets: DatasetStore, source: str, protocol: Protocol) -> Derived:
    """The training dataset and test part of ``source`` under ``protocol``, stored unless they are already."""
    artifacts = datasets.artifacts
    record = datasets.get(source)
    if record is None:
        raise NotFound(f"dataset {source!r} does not exist")
    if record.get("format", 1) < TIMESTAMPS_SINCE_FORMAT:
        raise Conflict(
            f"dataset {source!r} was ingested before rating timestamps were kept (format {record.get('format', 1)}), "
            "so it cannot be split by time: re-ingest its directory (POST /v1/datasets) and evaluate the new dataset",
            details={"dataset": source},
        )
    started = time.perf_counter()
    stored = stored_split(datasets, source, protocol)
    if stored is not None:
        return Derived(stored, reused=True)
    train_id = training_dataset_id(source, protocol)
    summary_name = evaluation_split_artifact(train_id, protocol.relevant_at, "summary")

    split, training = cut(load_ratings(artifacts, source, timestamps=True), int(record["counts"]["movies"]), protocol)
    assert training.timestamps is not None
    if datasets.get(train_id) is None:
        datasets.put_derived(source, train_id, training)
        took = time.perf_counter() - started
        datasets.put(_training_record(record, train_id, protocol, users=len(training.user_ids),
                                      ratings=len(training.movie_index), seconds=took))  # fmt: skip

    def put(part: str, array: np.ndarray) -> None:
        artifacts.put_array(evaluation_split_artifact(train_id, protocol.relevant_at, part), array)

    put("user_ids", split.user_ids.astype(np.int32))
    put("evaluated", split.evaluated.astype(np.int64))
    put("relevant_indptr", split.relevant.indptr.astype(np.int64))
    put("relevant_movie", split.relevant.indices.astype(np.int32))
    put("cold", split.cold.astype(bool))
    summary = {
        "dataset": source,
        "training_dataset": train_id,
        "protocol": {**protocol.training, "relevant_at": protocol.relevant_at},
        "users": len(split.user_ids),
        "evaluated": len(split.evaluated),
        "cold_users": cold_users(split),
        "cold_movies": int(split.cold.sum()),
        "training_ratings": int(split.train.nnz),
        "relevant_ratings": int(split.relevant.nnz),
        "seconds": round(time.perf_counter() - started, 3),
    }
    artifacts.put_json(summary_name, summary)  # last: its presence says the whole split is stored
    return Derived(summary, reused=False)


def cold_users(split: evaluate.Split) -> int:
    """Evaluated users with at least one relevant test movie that nobody rated in the training part."""
    return int((np.asarray(split.relevant[:, split.cold].sum(axis=1)).ravel() > 0).sum())


def _training_record(
    source: dict[str, Any], train_id: str, protocol: Protocol, *, users: int, ratings: int, seconds: float
) -> dict[str, Any]:
    """A record like an ingested dataset's: the catalogue's counts as the source's, the ratings' its own."""
    counts = {**source["counts"], "users": users, "ratings": ratings, "ratings_kept": ratings}
    return {
        "id": train_id,
        "source": f"{source.get('source', source['id'])} (temporal training part of {source['id']})",
        "options": source.get("options", {}),
        "counts": counts,
        "tag_source": source.get("tag_source"),
        "created_at": utcnow_iso(),
        "ingest": {"seconds": round(seconds, 3), "peak_rss_mb": None},
        "format": FORMAT_VERSION,
        "derived": {"from": source["id"], "protocol": protocol.training},
    }


@dataclass(frozen=True)
class SplitData:
    """A stored split, loaded: the ``Split`` the metrics and baselines take, and the training timestamps
    (a CSR the shape of ``split.train``) that a recipe's scorer may weigh by recency."""

    split: evaluate.Split
    times: sp.csr_matrix
    summary: dict[str, Any]


@per_process(maxsize=SPLIT_CACHE)
def load_split(artifacts: ArtifactStore, training_ds: str, relevant_at: float) -> SplitData:
    """The split stored by ``derive``, loaded once per process."""
    summary_name = evaluation_split_artifact(training_ds, relevant_at, "summary")
    if not artifacts.exists(summary_name):
        raise NotFound(f"no evaluation split of {training_ds!r} at relevant_at {relevant_at}")

    def part(name: str) -> np.ndarray:
        return artifacts.get_array(evaluation_split_artifact(training_ds, relevant_at, name))

    n_movies = len(artifacts.get_array(dataset_artifact(training_ds, "movie_ids")))
    ratings = load_ratings(artifacts, training_ds, timestamps=True)
    assert ratings.timestamps is not None
    train = ratings_matrix(ratings.indptr, ratings.movie_index, ratings.values.astype(np.float32), n_movies)
    times = ratings_matrix(ratings.indptr, ratings.movie_index, ratings.timestamps.astype(np.int64), n_movies)
    evaluated = part("evaluated")
    relevant_indptr, relevant_movie = part("relevant_indptr"), part("relevant_movie")
    relevant = sp.csr_matrix(
        (np.ones(len(relevant_movie), dtype=bool), relevant_movie.astype(np.int64), relevant_indptr),
        shape=(len(evaluated), n_movies),
    )
    split = evaluate.Split(
        user_ids=part("user_ids"), train=train, evaluated=evaluated, relevant=relevant, cold=part("cold").astype(bool)
    )
    return SplitData(split=split, times=times, summary=artifacts.get_json(summary_name))


# -- baselines, fitted once per process --------------------------------------------------------------------
@dataclass(frozen=True)
class Fitted:
    """A fitted baseline: its scorer, or why it was skipped; and how long fitting took."""

    scorer: evaluate.Scorer | None
    skipped: str | None
    seconds: float


@per_process(maxsize=len(BASELINES))
def fitted_baseline(
    artifacts: ArtifactStore, training_ds: str, relevant_at: float, name: str, *, seed: int, ease_max_bytes: int
) -> Fitted:
    """Baseline ``name`` fitted on the split's training part (nothing of the test part reaches it)."""
    split = load_split(artifacts, training_ds, relevant_at).split
    started = time.perf_counter()
    try:
        if name == "random":
            scorer = evaluate.random_scorer(split, seed=seed)
        elif name == "most-popular":
            scorer = evaluate.popular_scorer(split)
        elif name == "item-kNN":
            scorer = evaluate.item_knn_scorer(split)
        elif name == "EASE":
            scorer = evaluate.ease_scorer(split, max_bytes=ease_max_bytes)
        else:
            raise ValueError(f"unknown baseline {name!r}")
    except evaluate.Skipped as skipped:
        return Fitted(None, str(skipped), time.perf_counter() - started)
    return Fitted(scorer, None, time.perf_counter() - started)


# -- scoring shards ----------------------------------------------------------------------------------------
def store_part(artifacts: ArtifactStore, job_id: str, lo: int, top: np.ndarray, *, ttl_s: int) -> None:
    """A shard's (rows of the table, its users, k) int32 top-k movie rows (-1: nothing)."""
    artifacts.put_array(evaluation_part(job_id, lo), top.astype(np.int32), ttl_s=ttl_s)


def load_parts(artifacts: ArtifactStore, job_id: str, starts: Sequence[int]) -> np.ndarray:
    """(rows of the table, evaluated users, k): the shards' parts side by side, in user order."""
    return np.concatenate([artifacts.get_array(name) for name in part_names(job_id, starts)], axis=1)


def part_names(job_id: str, starts: Sequence[int]) -> tuple[str, ...]:
    """The parts of a job's shards: what its join reads, and drops once the job is marked done."""
    return tuple(evaluation_part(job_id, lo) for lo in starts)


def score_shard(
    artifacts: ArtifactStore, models: ModelStore, plan: dict[str, Any], lo: int, hi: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Evaluated users [lo, hi) ranked by every row of the plan's table: ((rows, hi - lo, k) int32 top-k movie
    rows, -1 where nothing; stats {"users", "seconds" per row (fitting included when this process fitted it),
    "skipped" per row that could not run})."""
    data = load_split(artifacts, plan["training_dataset"], float(plan["relevant_at"]))
    split, k = data.split, int(plan["k"])
    users = split.evaluated[lo:hi]  # (b,) rows of split.train
    seen = split.train[users]  # (b, n) what top_k leaves out
    top = np.full((len(plan["rows"]), len(users), k), -1, dtype=np.int32)
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for i, row in enumerate(plan["rows"]):
        started = time.perf_counter()
        if row["kind"] == "baseline":
            fitted = fitted_baseline(artifacts, plan["training_dataset"], float(plan["relevant_at"]), row["name"],
                                     seed=int(plan["seed"]), ease_max_bytes=int(plan["ease_max_bytes"]))  # fmt: skip
            if fitted.scorer is None:
                skipped[row["name"]] = str(fitted.skipped)
                continue
            scores = fitted.scorer(users)
        else:
            scores = version_scorer(artifacts, models, row["model"]).score(seen, data.times[users])
        top[i] = evaluate.top_k(scores, seen, k)
        seconds[row["name"]] = round(time.perf_counter() - started, 4)
    return top, {"users": [lo, hi], "seconds": seconds, "skipped": skipped}


def row_metrics(
    artifacts: ArtifactStore, plan: dict[str, Any], job_id: str, starts: Sequence[int], skipped: Collection[str]
) -> list[dict[str, Any] | None]:
    """``evaluate.metrics`` of each row of the plan's table from the shards' parts (None for a skipped row)."""
    split = load_split(artifacts, plan["training_dataset"], float(plan["relevant_at"])).split
    k = int(plan["k"])
    top = load_parts(artifacts, job_id, starts) if starts else np.zeros((len(plan["rows"]), 0, k), dtype=np.int32)
    return [None if row["name"] in skipped else evaluate.metrics(top[i], split, k=k)
            for i, row in enumerate(plan["rows"])]  # fmt: skip
