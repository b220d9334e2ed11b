"""A batch recommendation job: its users, its shards' parts, and the result streamed from them.

    POST /v1/jobs/recommend-batch ──> workers.batch.recommend_batch   (the model pinned by the API)
        resolves the users ("all": the model dataset's users and those with feedback; or the list given,
        duplicates dropped) and stores them once as ``recommend-batch/<job>/user_ids``; plans one shard per
        ``shard_users`` users and sends them (the sharded-job frame, shared/jobs/sharded.py)
                                  │
                                  ▼
    workers.batch.batch_shard [lo, hi) ──> part ``recommend-batch/<job>/part/<lo>``: its rows (shared/ml/batch.py)
        │ the shard's users answered at once (``answer_users``: profiles in one call, one index search per
        │ beam, in ``search_threads`` threads), each as the single-user endpoint answers them; read for it:
        │ the version's network, vectors and index (``shard_model``) and the dataset's ratings
        │ (``stored_ratings``), each once per process, no catalogue text; the users' feedback in one round
        │ trip; stats into the job's shard hash; progress and an ETA; the shard that completes the set
        ▼ sends the join
    workers.batch.batch_join ──> the job succeeds with a summary (users, rows, parts, users per second)

With serve-time rules (genres, years, excluded ids, diversity) a shard answers its users one at a time by the
single answer's own path over the whole loaded model (``ruled_rows``): the rules read the catalogue's text, which
``ShardModel`` leaves out, and MMR ranks each user's own pool.

The parts are the result: ``GET /v1/jobs/<id>/result?format=csv|npy`` reads them one after the other and
streams them (``csv_stream``, ``npy_stream``), so no process ever holds all the rows. They and the users array
live as long as the job's record (the result TTL). A redelivered shard rewrites its own part; the users are
resolved once per job, so a replanning (the janitor resending a lost planning task) sends the same shards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from shared.errors import Conflict
from shared.infra.keys import batch_part, batch_result, dataset_artifact
from shared.infra.process import per_process
from shared.jobs.sharded import ShardPlan
from shared.logic.online import batch_ids
from shared.logic.services import Services
from shared.logic.serving import SERVED_VERSIONS, feedback_for, load_index, load_serving, network
from shared.ml.batch import (
    CSV_HEADER,
    ROW,
    ShardModel,
    StoredRatings,
    answer_users,
    csv_text,
    npy_header,
    ruled_rows,
)
from shared.ml.recommend import NO_RULES, Profile, Rules, most_popular, popularity_prior
from shared.store.artifacts import ArtifactStore
from shared.store.datasets import load_ratings
from shared.store.models import ModelStore

DEFAULT_SHARD_USERS = 2_000
"""Users a shard answers: at the notebook's scale about 2-4 s of one process, 28 KB of rows at k = 10."""
MIN_SHARD_USERS, MAX_SHARD_USERS = 1, 50_000
MAX_LISTED_USERS = 50_000
"""Ids a request may list (50,000 ids of 10 digits fit the 1 MiB body limit); ``"all"`` has no limit."""
STAGE = "recommending"


def listed_users(ids: list[int]) -> np.ndarray:
    """A request's user ids, in its order, each once (its first place)."""
    array = np.asarray(ids, dtype=np.int64)
    _, first = np.unique(array, return_index=True)
    return array[np.sort(first)]


def all_users(svc: Services, dataset: str) -> np.ndarray:
    """The users of a model's dataset and those who gave feedback on its base since, ascending."""
    stored = svc.artifacts.get_array(dataset_artifact(dataset, "user_ids")).astype(np.int64)
    base = svc.catalogue.feedback_base(dataset)
    return np.union1d(stored, svc.feedback.users(base).astype(np.int64))


def plan(svc: Services, job_id: str, params: dict[str, Any], *, ttl_s: int) -> ShardPlan:
    """The job's users, resolved and stored once (a second call reads them back), and its plan: the users cut
    into shards of ``shard_users``, each sent the job's params."""
    name = batch_result(job_id, "user_ids")
    if svc.artifacts.exists(name):
        users = svc.artifacts.get_array(name)
    else:
        given = params["users"]
        users = all_users(svc, params["dataset"]) if given == "all" else listed_users(given)
        svc.artifacts.put_array(name, users.astype(np.int64), ttl_s=ttl_s)
    return ShardPlan(items=len(users), size=int(params.get("shard_users") or DEFAULT_SHARD_USERS), payload=params)


def answer_part(
    svc: Services, job_id: str, params: dict[str, Any], *, lo: int, hi: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """The rows of the job's users [lo, hi) and the shard's stats; the shard's feedback read in one round trip
    (``serving.feedback_for``, as a single query reads it)."""
    users = svc.artifacts.get_array(batch_result(job_id, "user_ids"))[lo:hi]
    rules = Rules.of(params)
    if rules != NO_RULES:  # the single answer's path, user by user (shared/ml/batch.py ``ruled_rows``)
        whole = load_serving(svc.artifacts, svc.models, params["model"])
        rows, stats = ruled_rows(whole, users, k=int(params["k"]), exclude_seen=bool(params.get("exclude_seen", True)),
                                 rules=rules, feedback=feedback_for(svc, whole, users.tolist()))  # fmt: skip
        return rows, {**stats, "range": [lo, hi]}
    model = shard_model(svc.artifacts, svc.models, params["model"])
    dataset = model.record["dataset"]
    timed = model.profile.timed
    stored = stored_ratings(svc.artifacts, dataset, timestamps=timed)
    rows, stats = answer_users(
        model, users, stored=stored, popular=lambda: popular(svc.artifacts, dataset, len(model.movie_ids), timed),
        popularity=lambda: popularity(svc.artifacts, dataset, len(model.movie_ids), timed),
        k=int(params["k"]), exclude_seen=bool(params.get("exclude_seen", True)),
        feedback=feedback_for(svc, model, users.tolist()), threads=search_threads(),
    )  # fmt: skip
    return rows, {**stats, "range": [lo, hi]}


@per_process(maxsize=SERVED_VERSIONS)
def shard_model(artifacts: ArtifactStore, models: ModelStore, version: str) -> ShardModel:
    """What a shard reads of a model version, loaded once per process: ``serving.load_serving`` less the
    catalogue's text, the ratings (``stored_ratings``, whose counts order the index's ties as the single answer's
    do) and, for a hybrid model, the raw vectors its profiles never read (89 MB at the notebook's scale)."""
    from safetensors.numpy import load

    record = models.get(version)
    if record is None:
        raise Conflict(f"model {version!r} no longer exists")
    embeddings = artifacts.get_array(record["artifacts"]["embeddings"])
    profile = Profile.of(record.get("config", {}))
    hybrid = profile.item_space
    rated = stored_ratings(artifacts, record["dataset"], timestamps=profile.timed).movie
    raw = artifacts.get_array(record["artifacts"]["input_embeddings"]) if not hybrid else None
    return ShardModel(
        record=record,
        index=load_index(artifacts, record).with_ties(np.bincount(rated, minlength=len(embeddings))),
        **network(load(artifacts.get_bytes(record["artifacts"]["weights"]))),
        raw=raw if raw is not None else np.zeros((0, 0), dtype=np.float32),
        embeddings=embeddings,
        movie_ids=artifacts.get_array(dataset_artifact(record["dataset"], "movie_ids")),
    )


@per_process(maxsize=1)
def stored_ratings(artifacts: ArtifactStore, dataset: str, *, timestamps: bool) -> StoredRatings:
    """A dataset's ratings as ingested, once per process: every shard's users are in them. (Reading a shard's
    span alone would not read less: ``get_rows`` fetches whole chunks, and a chunk is 256 MB.)"""
    ratings = load_ratings(artifacts, dataset, timestamps=timestamps)
    return StoredRatings(ratings.user_ids, ratings.indptr, ratings.movie_index, ratings.values, ratings.timestamps)


@per_process(maxsize=SERVED_VERSIONS)
def popular(artifacts: ArtifactStore, dataset: str, n: int, timestamps: bool) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's most rated movies (``ServingModel.popular``), once per process: counted only for a shard
    with a user who has no ratings (a listed id unknown to the dataset and to feedback)."""
    return most_popular(stored_ratings(artifacts, dataset, timestamps=timestamps).movie, n)


@per_process(maxsize=SERVED_VERSIONS)
def popularity(artifacts: ArtifactStore, dataset: str, n: int, timestamps: bool) -> np.ndarray:
    """The dataset's popularity prior (``ServingModel.popularity``), once per process: made only for a shard
    with a light user."""
    return popularity_prior(stored_ratings(artifacts, dataset, timestamps=timestamps).movie, n)


@per_process()
def search_threads() -> int:
    """Threads a shard's index search may use: those this process's BLAS may (a CPU worker limits each of its N
    processes to cores / N, workers/main.py), so N processes together keep to the cores."""
    from threadpoolctl import threadpool_info

    blas = [int(lib["num_threads"]) for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return max(1, min(blas, default=1))


def store_part(artifacts: ArtifactStore, job_id: str, lo: int, rows: np.ndarray, *, ttl_s: int) -> None:
    artifacts.put_array(batch_part(job_id, lo), rows.astype(ROW, copy=False), ttl_s=ttl_s)


def summary(params: dict[str, Any], plan: ShardPlan, stats: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The job's JSON result from its shards' stats (in user order)."""
    rows = sum(int(s["rows"]) for s in stats)
    return {
        "model": params["model"],
        "dataset": params["dataset"],
        "users": plan.items,
        "k": int(params["k"]),
        "exclude_seen": bool(params.get("exclude_seen", True)),
        "rules": Rules.of(params).described(),
        "rows": rows,
        "popular": sum(int(s["popular"]) for s in stats),
        "light": sum(int(s.get("light", 0)) for s in stats),
        "columns": list(ROW.names or ()),
        "parts": [{"range": s["range"], "rows": int(s["rows"])} for s in stats],
        "seconds": round(seconds, 3),
        "users_per_second": round(plan.items / seconds, 1) if seconds > 0 else None,
        "shard_seconds": round(sum(float(s["seconds"]) for s in stats), 3),
    }


def parts_stored(artifacts: ArtifactStore, job_id: str, result: dict[str, Any]) -> bool:
    """Whether every part of a finished job is still there (they expire with the job's record)."""
    return all(artifacts.exists(batch_part(job_id, int(p["range"][0]))) for p in result["parts"])


def _parts(artifacts: ArtifactStore, job_id: str, result: dict[str, Any]) -> Iterator[np.ndarray]:
    for part in result["parts"]:
        yield artifacts.get_array(batch_part(job_id, int(part["range"][0])))


def csv_stream(artifacts: ArtifactStore, job_id: str, result: dict[str, Any], *, secret: bytes) -> Iterator[bytes]:
    """The result as CSV (``user_id,rank,movie_id,score,recommendation_id``), a part at a time: each user's rows
    carry the id of their answer (shared/logic/online.py ``batch_ids``), made as they are sent."""
    yield CSV_HEADER.encode()
    at = int(time.time())
    for rows in _parts(artifacts, job_id, result):
        for text in csv_text(rows, batch_ids(secret, rows["user_id"], rows["movie_id"], at=at)):
            yield text.encode()


def npy_stream(artifacts: ArtifactStore, job_id: str, result: dict[str, Any]) -> Iterator[bytes]:
    """The result as one ``.npy`` structured array of ``ROW``: the header, then each part's bytes."""
    yield npy_header(int(result["rows"]))
    for rows in _parts(artifacts, job_id, result):
        yield rows.astype(ROW, copy=False).tobytes()


def npy_size(result: dict[str, Any]) -> int:
    """The streamed ``.npy``'s length in bytes (its Content-Length)."""
    return len(npy_header(int(result["rows"]))) + int(result["rows"]) * ROW.itemsize
