"""An evaluation's data in Redis: a dataset's split, stored once, and its scoring shards' parts.

    source dataset (format 2 on: ratings with timestamps; format 3 on: tag events too)
      └─ derive(source, protocol) ─┬─> training dataset ds-<hash(source, protocol.training)>:
                                   │     the source's catalogue arrays; descriptors rebuilt from the tags each
                                   │     training user wrote before their cut (shared/logic/descriptors.py), and
                                   │     only those tag events kept; ratings = the training users' training part
                                   │     (in the source's order, timestamps kept); a record like an ingested
                                   │     dataset's plus "derived": {"from", "protocol", "tags"}
                                   └─> test part, beside it (``evaluation_split_artifact``):
                                         user_ids         int32 (u,)    the training dataset's users
                                         evaluated        int64 (e,)    their rows with a relevant test movie
                                         relevant_indptr  int64 (e + 1,) relevant test movies of evaluated user i:
                                         relevant_movie   int32 (m,)      relevant_movie[indptr[i]:indptr[i + 1]]
                                         cold             bool (n,)     movies with no training rating
                                         cohort_*         (c,), (c + 1,), (r,) x 3  the new users' timelines
                                         summary          JSON          counts and protocol; written last
    load_split(training dataset, relevant_at) ──> SplitData: the Split, the training timestamps, the cohort and
                                                  its new-user slices, per process
    score_shard(plan, cell) ──> top-k of one cell: a group of rows (one row of a test scoring; a grid's settings
                                that share a build, fitted together) by a chunk of users (a test scoring's
                                ``shard_users``; a grid's every validation user); a test scoring's baselines
                                are fitted once for the cluster, by the one cell that claims the fit,
                                and stored (``fitted_baseline``; a cell that finds it claimed: ``FitPending``)

The split is ``shared.ml.evaluate.split_ratings`` (``shared.ml.splits.assign``'s labels); the training dataset
is cut by the same labels and checked against the split (the same matrix, or the derivation fails). Both are
content addressed: the training dataset by (source, split, min_ratings, train_fraction, new_user_share,
max_users), the test part by that and ``relevant_at``, so a rerun (or another ``relevant_at``, or ``k``) reuses
what is stored. A validation split is ``derive`` of a training dataset under ``Protocol.validation``. Only the
training dataset reaches a recipe's pipeline and the baselines; the test part and the cohort are read by the
scoring shards and the join alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from shared.errors import Conflict, NotFound
from shared.infra.clock import utcnow_iso
from shared.infra.keys import dataset_artifact, evaluation_part, evaluation_split_artifact
from shared.infra.process import per_process
from shared.infra.settings import DEFAULT_TAGS_PER_MOVIE
from shared.jobs.sharded import Deferred
from shared.logic import fits
from shared.logic.descriptors import CutDescriptors, descriptors_before
from shared.logic.serving import VersionScorer, version_scorer
from shared.ml import baselines, evaluate, intervals, splits
from shared.ml.protocol import BASELINES, Protocol, training_dataset_id
from shared.store.artifacts import ArtifactStore
from shared.store.datasets import (
    FORMAT_VERSION,
    TIMESTAMPS_SINCE_FORMAT,
    DatasetRatings,
    DatasetStore,
    has_descriptor_parts,
    load_ratings,
)
from shared.store.models import ModelStore

SPLIT_CACHE = 2
"""Loaded splits a process keeps (one evaluation at a time, and the one before)."""


# -- the split -------------------------------------------------------------------------------------------
def ratings_matrix(indptr: np.ndarray, movie: np.ndarray, values: np.ndarray, n_movies: int) -> sp.csr_matrix:
    """(u, n_movies) CSR of one value per (user, movie) from per-user arrays, indices sorted (in copies: the
    arrays given keep their order)."""
    shape = (len(indptr) - 1, n_movies)
    m = sp.csr_matrix((values, movie.astype(np.int64), indptr.astype(np.int64)), shape=shape, copy=True)
    m.sort_indices()
    return m


@dataclass(frozen=True)
class Cut:
    """A dataset's ratings split by a protocol (``cut``): what the scoring reads, and what is stored to train on."""

    split: evaluate.Split
    cohort: evaluate.Cohort
    training: DatasetRatings  # the training part as a dataset's ratings arrays
    parts: splits.Parts  # every rating's label, and each training user's cut time (for their tags)


def cut(ratings: DatasetRatings, n_movies: int, protocol: Protocol) -> Cut:
    """A dataset's ratings split by ``protocol`` (``evaluate.split_ratings``): the ``Split``, the new-user cohort,
    and the training part as a dataset's ratings arrays (the training users, each one's training ratings in
    stored order, timestamps kept). Pure: no Redis."""
    if ratings.timestamps is None:
        raise ValueError("a split by time needs the ratings' timestamps")
    counts = np.diff(ratings.indptr)
    split, cohort, parts = evaluate.split_ratings(
        np.repeat(ratings.user_ids, counts),
        ratings.movie_index,
        ratings.values,
        ratings.timestamps,
        n_movies=n_movies,
        kind=protocol.split,
        min_ratings=protocol.min_ratings,
        train_fraction=protocol.train_fraction,
        relevant_at=protocol.relevant_at,
        new_user_share=protocol.new_user_share,
        cohort_from=protocol.cohort_from,
        max_users=protocol.max_users,
    )
    mask = parts.label == splits.TRAIN
    owner = np.repeat(np.arange(len(counts)), counts)  # (r,) row of each rating's user
    train_counts = np.bincount(owner[mask], minlength=len(counts))  # (u,)
    trained = train_counts > 0
    training = DatasetRatings(
        user_ids=ratings.user_ids[trained].astype(np.int32),
        indptr=np.concatenate([[0], np.cumsum(train_counts[trained])]).astype(np.int64),
        movie_index=ratings.movie_index[mask].astype(np.int32),
        values=ratings.values[mask].astype(np.float32),
        timestamps=ratings.timestamps[mask].astype(np.int64),
    )
    # The arrays stored must be the split's training part exactly: same users, same (user, movie, rating).
    train = ratings_matrix(training.indptr, training.movie_index, training.values, n_movies)
    same = np.array_equal(training.user_ids, split.user_ids) and train.shape == split.train.shape
    if not same or (train != split.train).nnz:
        raise RuntimeError("the training part does not match the split")
    return Cut(split=split, cohort=cohort, training=training, parts=parts)


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

    made = cut(load_ratings(artifacts, source, timestamps=True), int(record["counts"]["movies"]), protocol)
    split, cohort, training = made.split, made.cohort, made.training
    tags: dict[str, int] | None = None
    if datasets.get(train_id) is None:
        # Descriptors from the tags each training user wrote before their cut (nobody else's): no tag of the
        # test period, nor of a held-out new user, reaches what a recipe trains on.
        cut_tags = None
        if has_descriptor_parts(artifacts, source):
            tags_per_movie = int(record.get("options", {}).get("tags_per_movie", DEFAULT_TAGS_PER_MOVIE))
            cut_tags = descriptors_before(artifacts, source, (made.parts.cut_users, made.parts.cut_times),
                                          tags_per_movie=tags_per_movie)  # fmt: skip
            tags = cut_tags.stats
        datasets.put_derived(source, train_id, training, descriptors=cut_tags.descriptors if cut_tags else None,
                             tags_kept=cut_tags.kept if cut_tags else None)  # fmt: skip
        took = time.perf_counter() - started
        datasets.put(_training_record(record, train_id, protocol, users=len(training.user_ids),
                                      ratings=len(training.movie_index), seconds=took, cut=cut_tags))  # fmt: skip

    def put(part: str, array: np.ndarray) -> None:
        artifacts.put_array(evaluation_split_artifact(train_id, protocol.relevant_at, part), array)

    put("user_ids", split.user_ids.astype(np.int32))
    put("evaluated", split.evaluated.astype(np.int64))
    put("relevant_indptr", split.relevant.indptr.astype(np.int64))
    put("relevant_movie", split.relevant.indices.astype(np.int32))
    put("cold", split.cold.astype(bool))
    put("cohort_user_ids", cohort.user_ids.astype(np.int32))
    put("cohort_indptr", cohort.indptr.astype(np.int64))
    put("cohort_movie", cohort.movie_index.astype(np.int32))
    put("cohort_value", cohort.values.astype(np.float32))
    put("cohort_time", cohort.timestamps.astype(np.int64))
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
        "new_users": len(cohort.user_ids),
        "new_in_test": made.parts.new_in_test,
        "tags": tags if tags is not None else _stored_tags(datasets, train_id),
        "new_user_slices": new_user_counts(split, cohort, protocol.relevant_at),
        "seconds": round(time.perf_counter() - started, 3),
    }
    artifacts.put_json(summary_name, summary)  # last: its presence says the whole split is stored
    return Derived(summary, reused=False)


def new_user_counts(split: evaluate.Split, cohort: evaluate.Cohort, relevant_at: float) -> dict[str, int]:
    """Users each new-user slice evaluates (with a relevant rating after their first N), by N."""
    return {str(n): len(new_user_split(split, cohort, n, relevant_at)[0].evaluated) for n in splits.NEW_USER_RATINGS}


def new_user_split(
    split: evaluate.Split, cohort: evaluate.Cohort, first: int, relevant_at: float
) -> tuple[evaluate.Split, sp.csr_matrix]:
    """The new-user slice at ``first`` ratings (``evaluate.new_user_split``) against ``split``'s training part."""
    return evaluate.new_user_split(cohort, first, n_movies=split.n_movies, cold=split.cold, relevant_at=relevant_at)


def cold_users(split: evaluate.Split) -> int:
    """Evaluated users with at least one relevant test movie that nobody rated in the training part."""
    return int((np.asarray(split.relevant[:, split.cold].sum(axis=1)).ravel() > 0).sum())


def _stored_tags(datasets: DatasetStore, train_id: str) -> dict[str, int] | None:
    record = datasets.get(train_id) or {}
    tags: dict[str, int] | None = record.get("derived", {}).get("tags")
    return tags


def _training_record(
    source: dict[str, Any],
    train_id: str,
    protocol: Protocol,
    *,
    users: int,
    ratings: int,
    seconds: float,
    cut: CutDescriptors | None,
) -> dict[str, Any]:
    """A record like an ingested dataset's: the catalogue's counts as the source's, the ratings' and the
    descriptors' its own (rebuilt from the tags before the cut, when the source kept its tag events)."""
    counts = {**source["counts"], "users": users, "ratings": ratings, "ratings_kept": ratings}
    if cut is not None:
        counts |= {"vocabulary": len(cut.vocabulary), "descriptors": len(cut.desc_indices)}
    return {
        "id": train_id,
        "source": f"{source.get('source', source['id'])} ({protocol.split} training part of {source['id']})",
        "options": source.get("options", {}),
        "counts": counts,
        "tag_source": source.get("tag_source"),
        "created_at": utcnow_iso(),
        "ingest": {"seconds": round(seconds, 3), "peak_rss_mb": None},
        "format": source.get("format", FORMAT_VERSION),
        "derived": {"from": source["id"], "protocol": protocol.training, "tags": cut.stats if cut else None},
    }


@dataclass(frozen=True)
class SplitData:
    """A stored split, loaded: the ``Split`` the metrics and baselines take, the training timestamps (a CSR the
    shape of ``split.train``) that a recipe's scorer may weigh by recency, and the new-user cohort."""

    split: evaluate.Split
    times: sp.csr_matrix
    cohort: evaluate.Cohort
    summary: dict[str, Any]
    slices: dict[tuple[str, float, int], tuple[evaluate.Split, sp.csr_matrix]] = field(default_factory=dict, repr=False)
    """The segments built so far (the split is loaded once per process, and so are they)."""

    def segment(self, name: str, relevant_at: float, max_evaluated: int = 0) -> tuple[evaluate.Split, sp.csr_matrix]:
        """A segment of the scoring (``segments``): "all" (the test part), or "new-N" (the new-user slice at N
        ratings), as a ``Split`` whose ``train`` rows are the users' histories, with their timestamps; at most
        ``max_evaluated`` of its evaluated users, a hashed sample (``evaluate.sample_evaluated``; 0: all)."""
        key = (name, relevant_at, max_evaluated)
        if key not in self.slices:
            if name == "all":
                split, times = self.split, self.times
            else:
                split, times = new_user_split(self.split, self.cohort, int(name.removeprefix("new-")), relevant_at)
            self.slices[key] = (evaluate.sample_evaluated(split, max_evaluated), times)
        return self.slices[key]


def segments(summary: dict[str, Any], max_evaluated: int = 0) -> list[dict[str, Any]]:
    """What a test scoring ranks, in order: every evaluated user ("all"), then each new-user slice ("new-N")
    that has someone to evaluate, each at most ``max_evaluated`` of them (0: all); each {"name", "users"}."""

    def cap(users: int) -> int:
        return min(users, max_evaluated) if max_evaluated > 0 else users

    out = [{"name": "all", "users": cap(int(summary["evaluated"]))}]
    for n, users in summary.get("new_user_slices", {}).items():
        if users:
            out.append({"name": f"new-{n}", "users": cap(int(users))})
    return out


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
    cohort = evaluate.Cohort(
        user_ids=part("cohort_user_ids"),
        indptr=part("cohort_indptr").astype(np.int64),
        movie_index=part("cohort_movie").astype(np.int64),
        values=part("cohort_value").astype(np.float32),
        timestamps=part("cohort_time").astype(np.int64),
    )
    return SplitData(split=split, times=times, cohort=cohort, summary=artifacts.get_json(summary_name))


# -- baselines, fitted once per test scoring ------------------------------------------------------------------
@dataclass(frozen=True)
class Fitted:
    """A fitted baseline: its scorer (and model, for those ``baselines.STORED``), or why it was skipped; and
    how long fitting (or loading a stored fit) took."""

    scorer: evaluate.Scorer | None
    skipped: str | None
    seconds: float
    model: baselines.Baseline | None = None


def fit_baseline(
    artifacts: ArtifactStore,
    training_ds: str,
    relevant_at: float,
    name: str,
    params: str,
    *,
    seed: int,
    ease_max_bytes: int,
) -> Fitted:
    """Baseline ``name`` at ``params`` (JSON: hashable for ``fitted_baseline``'s cache) fitted on the split's
    training part (nothing of the test part reaches it). One of ``baselines.STORED`` is fitted once for the
    whole cluster: the first shard to need it fits it and stores it (shared/logic/fits.py, content addressed
    like the split), every later one loads it (an iALS row may find it stored by the ``ials`` recipe's
    training). A scoring cell fits it under a claim (``_fitted``), so that a second cell waits for the fit
    rather than making it again beside the first; two callers without one would both fit it and store the
    same arrays."""
    fit = fits.fit_id(name, params, seed)
    stored = name in baselines.STORED
    if stored:
        started = time.perf_counter()
        model = fits.load(artifacts, training_ds, fit)
        if model is not None:
            return Fitted(model.score, None, time.perf_counter() - started, model)
    split = load_split(artifacts, training_ds, relevant_at).split
    fitted = fit_settings(split, name, [json.loads(params)], seed=seed, max_bytes=ease_max_bytes)[0]
    if stored and fitted.model is not None:
        started = time.perf_counter()
        fits.store(artifacts, training_ds, fit, fitted.model, seconds=fitted.seconds, by="scoring")
        fitted = replace(fitted, seconds=fitted.seconds + time.perf_counter() - started)
    return fitted


def fit_settings(
    split: evaluate.Split, name: str, settings: list[dict[str, Any]], *, seed: int, max_bytes: int
) -> list[Fitted]:
    """Baseline ``name`` at each of ``settings`` fitted on ``split``'s training part, together
    (``baselines.fit_many``: one similarity build for the settings that share it), each charged an equal share
    of the time; all skipped, saying why, when the baseline cannot run on this data."""
    started = time.perf_counter()
    models: list[baselines.Baseline | None] = [None] * len(settings)
    try:
        if name == "random":
            scorers = [evaluate.random_scorer(split, seed=seed) for _ in settings]
        elif name == "most-popular":
            scorers = [evaluate.popular_scorer(split) for _ in settings]
        else:
            models = list(baselines.fit_many(name, split.train, settings, seed=seed, max_bytes=max_bytes))
            scorers = [m.score for m in models if m is not None]
    except evaluate.Skipped as why:
        share = (time.perf_counter() - started) / max(1, len(settings))
        return [Fitted(None, str(why), share) for _ in settings]
    share = (time.perf_counter() - started) / max(1, len(settings))
    return [Fitted(scorer, None, share, model) for scorer, model in zip(scorers, models, strict=True)]


fitted_baseline = per_process(maxsize=len(BASELINES))(fit_baseline)
"""``fit_baseline`` once per process: a test scoring's cells of one row each want the same fit. A validation
grid's shard fits its settings itself (``_fit_group``): no other shard wants them."""


# -- scoring shards ----------------------------------------------------------------------------------------
def store_part(artifacts: ArtifactStore, job_id: str, lo: int, top: np.ndarray, *, ttl_s: int) -> None:
    """A shard's top-k movie rows (int32, -1: nothing): (rows of its group, users of its chunk, k)."""
    artifacts.put_array(evaluation_part(job_id, lo), top.astype(np.int32), ttl_s=ttl_s)


def load_parts(artifacts: ArtifactStore, job_id: str, plan: dict[str, Any]) -> np.ndarray:
    """(rows of the table, users of every segment, k): every cell's part in its place."""
    total = _users(plan)
    top = np.full((len(plan["rows"]), total, int(plan["k"])), -1, dtype=np.int32)
    for item in range(plan_items(plan)):
        group, lo, hi = cell(plan, item)
        first, end = plan["groups"][group]
        top[first:end, lo:hi] = artifacts.get_array(evaluation_part(job_id, item))
    return top


def part_names(job_id: str, starts: Sequence[int]) -> tuple[str, ...]:
    """The parts of a job's shards: what its join reads, and drops once the job is marked done."""
    return tuple(evaluation_part(job_id, lo) for lo in starts)


def plan_items(plan: dict[str, Any]) -> int:
    """A scoring's cells: every group of rows (``plan["groups"]``, [start, end) of ``plan["rows"]``) by every
    chunk of ``plan["chunk"]`` users of the segments laid end to end. One shard scores one cell."""
    return len(plan["groups"]) * _chunks(plan)


def _users(plan: dict[str, Any]) -> int:
    """Users of every segment laid end to end."""
    return sum(int(s["users"]) for s in plan["segments"])


def _chunks(plan: dict[str, Any]) -> int:
    return max(1, -(-_users(plan) // max(1, int(plan["chunk"]))))


def cell(plan: dict[str, Any], item: int) -> tuple[int, int, int]:
    """Cell ``item``'s (group, first user, end user). The first chunk's cells come first, a group each, those
    whose fit is shared (``_shares_fit``) first of all, so the processes that start together start on different
    rows and the long fits begin at once; then the other chunks group by group, those whose fit is shared last,
    so that by the time a process reaches them the fit is stored and it does not fit it again."""
    total = _users(plan)
    groups, size = len(plan["groups"]), int(plan["chunk"])
    fitting = [g for g in range(groups) if _shares_fit(plan, g)]  # each in table order
    others = [g for g in range(groups) if not _shares_fit(plan, g)]
    if item < groups:
        group, chunk = (fitting + others)[item], 0
    else:
        late = others + fitting
        rest, later_chunks = item - groups, _chunks(plan) - 1
        group, chunk = late[rest // later_chunks], 1 + rest % later_chunks
    return group, min(total, chunk * size), min(total, (chunk + 1) * size)


def cell_stage(plan: dict[str, Any], item: int) -> str | None:
    """The recipe training cell ``item`` waits for: it ranks a recipe's row (the trained model), or a baseline's
    fitted by a recipe's training (an iALS row with a ``stage``: the ``ials`` recipe's factorisation,
    shared/logic/fits.py); None for any other baseline's cell, which needs nothing trained. A group's rows share
    one stage (a recipe's serve-time settings of one trained setting; a baseline row alone)."""
    first, end = plan["groups"][cell(plan, item)[0]]
    return next((row["stage"] for row in plan["rows"][first:end] if "stage" in row), None)


def trained_cell(plan: dict[str, Any], item: int) -> bool:
    """Whether cell ``item`` waits for a recipe's training (``cell_stage``)."""
    return cell_stage(plan, item) is not None


class NotTrained(Deferred):
    """A recipe's cell sent before its model was trained (the janitor resending it early): nothing scored."""


Claim = Callable[[str], AbstractContextManager[bool]]
"""Taken around fitting a baseline to store (by its fit id): True for the one process to fit it, False while
another live one is (a worker's lease, ``workers.evaluation``)."""


def no_claim(_: str) -> AbstractContextManager[bool]:
    """Every caller may fit (one process, or a test): the claim of a single scorer."""
    return nullcontext(True)


class FitPending(Deferred):
    """A test scoring's cell whose baseline another live process is fitting: nothing scored. The worker sends
    the cell again a little later, by when the fit is stored for it to load. Fitting it a second time beside
    the first (as cells did before) cost a 27M-rating evaluation 292 s of a core on iALS alone."""


def _shares_fit(plan: dict[str, Any], group: int) -> bool:
    """Whether a group's row is a baseline fitted once and stored for the others (a test scoring's)."""
    first, end = plan["groups"][group]
    rows = plan["rows"][first:end]
    return not plan.get("grid") and any(r["kind"] == "baseline" and r["family"] in baselines.STORED for r in rows)


def score_shard(
    artifacts: ArtifactStore,
    models: ModelStore,
    plan: dict[str, Any],
    lo: int,
    hi: int,
    *,
    trained: Mapping[str, str] | None = None,
    claim: Claim = no_claim,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cell ``lo`` of the plan ranked (a shard is one cell: ``hi`` is ``lo + 1``): ((rows of its group, users of
    its chunk, k) int32 top-k movie rows, -1 where nothing; stats {"items", "seconds" per row (fitting included
    where this shard fitted it), "skipped" per row that could not run}). A grid's group of settings is fitted
    together by its shard (``_fit_group``); a test scoring's row, once for the cluster (``fitted_baseline``).
    A recipe's row is ranked by the model ``trained`` names for its training stage (the plan is made while the
    recipes train); ``NotTrained`` when there is none yet. A baseline fitted to store is fitted under ``claim``
    (``FitPending`` while another process fits it)."""
    if hi != lo + 1:
        raise ValueError(f"an evaluation shard scores one cell, not [{lo}, {hi})")
    group, first_user, end_user = cell(plan, lo)
    first, end = plan["groups"][group]
    rows, pieces = plan["rows"][first:end], _pieces(plan["segments"], first_user, end_user)
    rows = [_with_model(row, trained or {}) for row in rows]
    data = load_split(artifacts, plan["training_dataset"], float(plan["relevant_at"]))
    k, relevant_at = int(plan["k"]), float(plan["relevant_at"])
    fitted_rows: list[Fitted | None]
    if plan.get("grid"):
        fitted_rows = _fit_group(artifacts, data.split, plan, rows)
        fit_seconds = [f.seconds if f is not None else 0.0 for f in fitted_rows]
    else:
        fitted_rows, fit_seconds = [], []
        for row in rows:
            started = time.perf_counter()
            fitted_rows.append(_fitted(artifacts, plan, row, claim) if row["kind"] == "baseline" else None)
            fit_seconds.append(time.perf_counter() - started)
    top = np.full((len(rows), end_user - first_user, k), -1, dtype=np.int32)
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    if all(row["kind"] == "recipe" for row in rows) and len({row["model"] for row in rows}) == 1 and len(rows) > 1:
        # One trained model at several serve-time settings (a grid's): its scores once, each setting's prior after.
        seconds = _score_settings(artifacts, models, data, plan, rows=rows, pieces=pieces, top=top)
        return top, {"items": [lo, hi], "seconds": seconds, "skipped": skipped}
    for i, row in enumerate(rows):
        started = time.perf_counter()
        scorer: evaluate.Scorer
        fitted = fitted_rows[i]
        if fitted is not None:
            if fitted.scorer is None:
                skipped[row["name"]] = str(fitted.skipped)
                continue
            scorer = fitted.scorer
        at = 0
        for segment, a, b in pieces:
            split, times = data.segment(segment, relevant_at, int(plan.get("max_evaluated", 0)))
            for start in range(a, b, BATCH_USERS):
                users = split.evaluated[start : min(b, start + BATCH_USERS)]  # (batch,) rows of split.train
                history = split.train[users]  # (batch, n): what they rated, and what top_k leaves out
                if row["kind"] == "baseline":  # a new array, ranked in place
                    top[i, at : at + len(users)] = evaluate.top_k(scorer(history), history, k, overwrite=True)
                else:
                    model = version_scorer(artifacts, models, row["model"])
                    scores = model.score(history, times[users], serve=row.get("serve"))
                    top[i, at : at + len(users)] = evaluate.top_k(scores, history, k)
                at += len(users)
        took = time.perf_counter() - started + fit_seconds[i]
        seconds[row["name"]] = round(took, 4)
    return top, {"items": [lo, hi], "seconds": seconds, "skipped": skipped}


def _score_settings(
    artifacts: ArtifactStore, models: ModelStore, data: SplitData, plan: dict[str, Any], *,
    rows: list[dict[str, Any]], pieces: list[tuple[str, int, int]], top: np.ndarray,
) -> dict[str, float]:  # fmt: skip
    """Rows of one trained model at several serve-time settings (``row["serve"]``), ranked into ``top``: a batch's
    scores without the prior or a cold bonus computed and ranked once; for each cold boost of the settings the
    cold movies' columns raised (``VersionScorer.raise_cold``), ranked once more, and put back after; then for
    each setting only the users its prior weighs on ranked again (the prior added to their scores, as
    ``VersionScorer.score`` adds it). Every row's time is the shared part's share plus its own."""
    scorer = version_scorer(artifacts, models, rows[0]["model"])
    k, relevant_at = int(plan["k"]), float(plan["relevant_at"])
    own = [0.0] * len(rows)
    shared = 0.0
    at = 0
    for segment, a, b in pieces:
        split, times = data.segment(segment, relevant_at, int(plan.get("max_evaluated", 0)))
        for start in range(a, b, BATCH_USERS):
            started = time.perf_counter()
            users = split.evaluated[start : min(b, start + BATCH_USERS)]
            history = split.train[users]
            queries = scorer.queries(history, times[users])
            base = scorer.score(history, None, serve={"prior": 0.0, "cold_boost": 0.0}, queries=queries)  # kept
            ranked = evaluate.top_k(base, history, k)
            shared += time.perf_counter() - started
            for boost, members in _by_cold_boost(scorer, rows).items():
                started = time.perf_counter()
                saved = base[:, scorer.cold].copy() if boost > 0 else None
                scorer.raise_cold(base, queries, boost)  # (in place: put back below)
                boosted = evaluate.top_k(base, history, k) if saved is not None else ranked
                own[members[0]] += time.perf_counter() - started
                for i in members:
                    started = time.perf_counter()
                    light, priors = scorer.light(history, serve=rows[i].get("serve"))
                    top[i, at : at + len(users)] = boosted
                    if len(light):
                        scores = base[light] + priors[:, None] * scorer.popularity[None, :]
                        top[i, at + light] = evaluate.top_k(scores, history[light], k, overwrite=True)
                    own[i] += time.perf_counter() - started
                if saved is not None:
                    base[:, scorer.cold] = saved
            at += len(users)
    return {row["name"]: round(shared / len(rows) + own[i], 4) for i, row in enumerate(rows)}


def _by_cold_boost(scorer: VersionScorer, rows: list[dict[str, Any]]) -> dict[float, list[int]]:
    """The rows' positions by the cold boost each setting serves with (0 where the model has no cold movie)."""
    groups: dict[float, list[int]] = {}
    for i, row in enumerate(rows):
        boost = float((row.get("serve") or {}).get("cold_boost", scorer.profile.cold_boost))
        groups.setdefault(boost if scorer.cold.any() else 0.0, []).append(i)
    return groups


def _with_model(row: dict[str, Any], trained: Mapping[str, str]) -> dict[str, Any]:
    """A recipe's row with the model its training stage made; a baseline's fitted by a recipe's training as it
    is, once that training is done (its fit stored); ``NotTrained`` before."""
    if "stage" not in row:
        return row
    model = trained.get(row["stage"])
    if model is None:
        raise NotTrained(f"{row['name']} is not trained yet ({row['stage']})")
    return {**row, "model": model} if row["kind"] == "recipe" else row


def _fitted(artifacts: ArtifactStore, plan: dict[str, Any], row: dict[str, Any], claim: Claim) -> Fitted:
    """A test scoring's baseline row, fitted once (stored where it can be) and loaded once per process. A fit
    to store is made under ``claim`` of its fit id: a cell that finds another live process fitting it raises
    ``FitPending`` rather than fitting it a second time beside it."""
    name, params, seed = row["family"], json.dumps(row.get("params", {}), sort_keys=True), int(plan["seed"])
    training_ds = plan["training_dataset"]

    def fitted() -> Fitted:
        return fitted_baseline(artifacts, training_ds, float(plan["relevant_at"]), name, params, seed=seed,
                               ease_max_bytes=int(plan["ease_max_bytes"]))  # fmt: skip

    fit = fits.fit_id(name, params, seed)
    if name not in baselines.STORED or fits.exists(artifacts, training_ds, fit):
        return fitted()
    with claim(fit) as mine:
        if not mine:
            raise FitPending(f"{row['name']} is being fitted by another process")
        return fitted()


def _fit_group(
    artifacts: ArtifactStore, split: evaluate.Split, plan: dict[str, Any], rows: list[dict[str, Any]]
) -> list[Fitted | None]:
    """A validation shard's rows fitted (None for a recipe), the settings of one baseline together
    (``fit_settings``). Nothing is cached, since no other shard fits these settings, except an iALS setting
    that a recipe's training fitted and stored (a row with a ``stage``): it is loaded."""
    out: list[Fitted | None] = [None] * len(rows)
    by_family: dict[str, list[int]] = {}
    seed, max_bytes = int(plan["seed"]), int(plan["ease_max_bytes"])
    for i, row in enumerate(rows):
        if row["kind"] != "baseline":
            continue
        if "stage" in row:
            started = time.perf_counter()
            fit = fits.setting_fit_id(row["family"], row.get("params", {}), seed)
            model = fits.load(artifacts, plan["training_dataset"], fit)
            if model is not None:
                out[i] = Fitted(model.score, None, time.perf_counter() - started, model)
                continue
        by_family.setdefault(row["family"], []).append(i)
    for family, members in by_family.items():
        settings = [rows[i].get("params", {}) for i in members]
        for i, fitted in zip(members, fit_settings(split, family, settings, seed=seed, max_bytes=max_bytes),
                             strict=True):  # fmt: skip
            out[i] = fitted
    return out


BATCH_USERS = 200
"""Users a shard scores at a time: (200, n_movies) float32 scores, 46 MB at 58k movies."""


def _pieces(segments: list[dict[str, Any]], lo: int, hi: int) -> list[tuple[str, int, int]]:
    """Items [lo, hi) of segments laid end to end, as (segment, first user, end user) of each segment touched."""
    out, offset = [], 0
    for s in segments:
        n = int(s["users"])
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            out.append((str(s["name"]), a - offset, b - offset))
        offset += n
    return out


@dataclass(frozen=True)
class RowScores:
    """One row of the table scored on one segment: its metrics, and per user NDCG and recall (for intervals)."""

    metrics: dict[str, Any]
    ndcg: np.ndarray  # (users of the segment,) float64
    recall: np.ndarray


def row_scores(
    artifacts: ArtifactStore, plan: dict[str, Any], job_id: str, skipped: Collection[str]
) -> dict[str, list[RowScores | None]]:
    """Per segment, ``evaluate.metrics`` and per-user values of each row of the plan's table from the shards'
    parts (None for a skipped row)."""
    data = load_split(artifacts, plan["training_dataset"], float(plan["relevant_at"]))
    k, relevant_at = int(plan["k"]), float(plan["relevant_at"])
    top = load_parts(artifacts, job_id, plan)
    names = [str(s["name"]) for s in plan["segments"]]
    out: dict[str, list[RowScores | None]] = {}
    offset = 0
    for name in names:
        split, _ = data.segment(name, relevant_at, int(plan.get("max_evaluated", 0)))
        n = len(split.evaluated)
        scored: list[RowScores | None] = []
        for i, row in enumerate(plan["rows"]):
            if row["name"] in skipped:
                scored.append(None)
                continue
            rec = top[i, offset : offset + n]
            per = intervals.per_user(rec, split.relevant, k=k) if n else {"ndcg": np.zeros(0), "recall": np.zeros(0)}
            scored.append(RowScores(evaluate.metrics(rec, split, k=k), per["ndcg"], per["recall"]))
        out[name] = scored
        offset += n
    return out
