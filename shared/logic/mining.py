"""A sharded mining job: planning the shards, storing their parts, joining them.

    POST /v1/jobs/triplets ──> workers.cpu.mine_triplets  (plans shards, sends one task per shard, returns:
                                  │                         the sharded-job frame, shared/jobs/sharded.py)
                                  │ shard [lo, hi) of the anchors, each on the cpu queue, any worker
                                  ▼
                             workers.cpu.mine_shard ──> part triplets/<ds>/<strategy>-<seed>/part/<job>/<lo>
                                  │ records its stats in the job's shard hash (Lua: only while running);
                                  │ the shard that completes the set sends the join
                                  ▼
                             workers.cpu.join_triplets ──> triplets/<ds>/<strategy>-<seed>  (m, 3) int32 movieIds

Two sources, one job shape. ``descriptors`` (the default) mines one triplet per anchor from shared descriptors
(shared/ml/mining.py), named ``triplets/<ds>/<strategy>-<seed>``; ``ratings`` mines up to ``positives`` per
anchor from what users liked (shared/ml/coliked.py), named ``triplets/<ds>/coliked-p<positives>-l<liked_at>-
a<alpha>-<seed>``; ``both`` mines each shard's anchors both ways, descriptor triplets first, named by the two
names joined with "+". Either way a shard is a range of anchor movies and ``mine_part`` mines it.

Outputs are named by (dataset, source, its parameters, seed) only, never by shard size or worker: a
redelivered shard rewrites its own part, a second join rewrites the same array, and a job whose array already
exists is answered from it without mining again. Parts also carry the job id: two jobs of the same spec running at
once (two clients asking at the same moment, or an evaluation's recipes that share their triplets) each join and
drop their own parts, never the other's. They do not mine twice (``mine_shard_part``): a shard records which job
mined its range (``triplets/<name>/range/<lo>-<hi>``), and the same range of an identical job takes a copy of
that part, or nothing once the triplets are joined (its join answers them as stored). At the notebook's scale
an evaluation's `hybrid` and `ials` pipelines mine the same co-liked triplets at the same moment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shared.errors import NotFound
from shared.infra.keys import (
    both_triplets_artifact,
    coliked_triplets_artifact,
    dataset_artifact,
    triplets_artifact,
    triplets_part,
    triplets_range,
)
from shared.infra.process import per_process
from shared.ml import coliked
from shared.ml.coliked import ColikedResult, Likes, build_likes
from shared.ml.mining import Incidence, ShardResult, Strategy, build_incidence, mine_range
from shared.store.artifacts import ArtifactStore

DEFAULT_SHARD_SIZE = 2000
MIN_SHARD_SIZE, MAX_SHARD_SIZE = 10, 100_000
DEFAULT_SEED = 42
INCIDENCE_CACHE_SIZE = 2
"""Datasets whose incidence a mining process keeps."""
LIKES_CACHE_SIZE = 2
"""(dataset, liked_at) pairs whose likes a mining process keeps."""

Source = Literal["descriptors", "ratings", "both"]
SOURCES: tuple[Source, ...] = ("descriptors", "ratings", "both")


@dataclass(frozen=True)
class BothResult:
    """A shard of source "both": the descriptor triplets of its anchors, then their co-liked ones."""

    descriptors: ShardResult
    ratings: ColikedResult

    @property
    def triplets(self) -> np.ndarray:
        return np.concatenate([self.descriptors.triplets, self.ratings.triplets])


PartResult = ShardResult | ColikedResult | BothResult
"""What a shard mines: one triplet per anchor (descriptors), up to ``positives`` (ratings), or both."""


@dataclass(frozen=True)
class TripletSpec:
    """What a mining job mines. ``strategy`` applies to descriptors, ``positives`` and ``liked_at`` to ratings."""

    dataset: str
    seed: int
    strategy: Strategy = "uniform-min"
    source: Source = "descriptors"
    positives: int = coliked.DEFAULT_POSITIVES
    liked_at: float = coliked.DEFAULT_LIKED_AT

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown triplet source {self.source!r}")

    @classmethod
    def of(cls, params: dict[str, Any]) -> TripletSpec:
        """The spec of a mining job's params (the API's TripletsIn; absent ratings fields take the defaults)."""
        return cls(
            dataset=params["dataset"],
            seed=int(params["seed"]),
            strategy=params.get("negatives") or "uniform-min",
            source=params.get("source") or "descriptors",
            positives=int(params.get("positives") or coliked.DEFAULT_POSITIVES),
            liked_at=float(params.get("liked_at") or coliked.DEFAULT_LIKED_AT),
        )

    @property
    def name(self) -> str:
        """Artifact name of the joined triplets."""
        ratings = coliked_triplets_artifact(
            self.dataset, positives=self.positives, liked_at=self.liked_at, alpha=coliked.ALPHA, seed=self.seed
        )
        descriptors = triplets_artifact(self.dataset, self.strategy, self.seed)
        if self.source == "both":
            return both_triplets_artifact(descriptors, ratings)
        return ratings if self.source == "ratings" else descriptors

    def describe(self) -> dict[str, Any]:
        """The fields of a job summary that say what was mined."""
        described: dict[str, Any] = {"seed": self.seed, "source": self.source}
        if self.source != "ratings":
            described["strategy"] = self.strategy
        if self.source != "descriptors":
            described |= {"positives": self.positives, "liked_at": self.liked_at}
        return described

    def part(self, job_id: str, lo: int) -> str:
        """Artifact name of the part that job ``job_id``'s shard starting at anchor ``lo`` mines."""
        return triplets_part(self.name, job_id, lo)


@per_process(maxsize=INCIDENCE_CACHE_SIZE)
def load_incidence(artifacts: ArtifactStore, dataset: str) -> Incidence:
    """The dataset's descriptor incidence, built once per process and kept for the next shards (datasets
    never change, so an entry never goes stale)."""
    if not artifacts.exists(dataset_artifact(dataset, "desc_indptr")):
        raise NotFound(f"dataset {dataset!r} does not exist")
    inc = build_incidence(
        artifacts.get_array(dataset_artifact(dataset, "desc_indptr")),
        artifacts.get_array(dataset_artifact(dataset, "desc_indices")),
        artifacts.get_json(dataset_artifact(dataset, "vocabulary")),
    )
    return inc


@per_process(maxsize=LIKES_CACHE_SIZE)
def load_likes(artifacts: ArtifactStore, dataset: str, liked_at: float) -> Likes:
    """The dataset's likes (ratings >= ``liked_at``) and negative-sampling weights, built once per process."""
    if not artifacts.exists(dataset_artifact(dataset, "ratings_indptr")):
        raise NotFound(f"dataset {dataset!r} does not exist")
    return build_likes(
        artifacts.get_array(dataset_artifact(dataset, "ratings_indptr")),
        artifacts.get_array(dataset_artifact(dataset, "ratings_movie")),
        artifacts.get_array(dataset_artifact(dataset, "ratings_value")),
        len(artifacts.get_array(dataset_artifact(dataset, "movie_ids"))),
        liked_at=liked_at,
    )


def mine_part(artifacts: ArtifactStore, spec: TripletSpec, lo: int, hi: int) -> PartResult:
    """Mine anchors [lo, hi) of ``spec`` (catalogue rows), from the source it names."""
    if spec.source == "descriptors":
        return mine_range(load_incidence(artifacts, spec.dataset), lo, hi, seed=spec.seed, strategy=spec.strategy)
    likes = load_likes(artifacts, spec.dataset, spec.liked_at)
    ratings = coliked.mine_range(likes, lo, hi, seed=spec.seed, positives=spec.positives)
    if spec.source == "ratings":
        return ratings
    descriptors = mine_range(load_incidence(artifacts, spec.dataset), lo, hi, seed=spec.seed, strategy=spec.strategy)
    return BothResult(descriptors, ratings)


def stored_count(artifacts: ArtifactStore, name: str) -> int:
    """Triplets in a stored array (its manifest's shape: the array is not read)."""
    manifest = artifacts.manifest(name)
    if manifest is None:
        raise NotFound(f"artifact {name!r} does not exist")
    if manifest.shape is None:
        return len(artifacts.get_array(name))
    return int(manifest.shape[0])


def store_part(
    artifacts: ArtifactStore, spec: TripletSpec, job_id: str, lo: int, result: PartResult, *, ttl_s: int
) -> None:
    artifacts.put_array(spec.part(job_id, lo), result.triplets, ttl_s=ttl_s)


def mine_shard_part(
    artifacts: ArtifactStore, spec: TripletSpec, job_id: str, lo: int, hi: int, *, ttl_s: int
) -> dict[str, Any]:
    """Anchors [lo, hi) of ``spec`` mined and stored as job ``job_id``'s part (``store_part``); answers the
    shard's stats. Mining is deterministic for a spec, so an identical job's part of the same range is this
    one's: when one is stored, it is copied instead (stats ``"reused": true``), and when the joined triplets
    are stored already, nothing is (the job's join answers them as stored)."""
    started = time.perf_counter()
    if artifacts.exists(spec.name):
        return {"anchors": [lo, hi], "seconds": 0.0, "reused": True}
    mined = _mined_by_another(artifacts, spec, job_id, lo, hi)
    if mined is not None:
        artifacts.put_array(spec.part(job_id, lo), mined, ttl_s=ttl_s)
        return {"anchors": [lo, hi], "seconds": round(time.perf_counter() - started, 3), "reused": True,
                "triplets": len(mined)}  # fmt: skip
    result = mine_part(artifacts, spec, lo, hi)
    store_part(artifacts, spec, job_id, lo, result, ttl_s=ttl_s)
    artifacts.put_json(triplets_range(spec.name, lo, hi), {"job": job_id}, ttl_s=ttl_s)
    return shard_stats(lo, hi, result, time.perf_counter() - started)


def _mined_by_another(artifacts: ArtifactStore, spec: TripletSpec, job_id: str, lo: int, hi: int) -> np.ndarray | None:
    """The part of anchors [lo, hi) that another job of the same spec stored, or None (none did; or it has
    finished and dropped its parts, or they expired)."""
    try:
        owner = str(artifacts.get_json(triplets_range(spec.name, lo, hi))["job"])
        return None if owner == job_id else artifacts.get_array(spec.part(owner, lo))
    except NotFound:
        return None


def shard_stats(lo: int, hi: int, result: PartResult, seconds: float) -> dict[str, Any]:
    if isinstance(result, BothResult):
        parts: dict[str, PartResult] = {"descriptors": result.descriptors, "ratings": result.ratings}
        stats = {name: shard_stats(lo, hi, part, seconds) for name, part in parts.items()}
        return {"anchors": [lo, hi], "seconds": round(seconds, 3), **stats}
    if isinstance(result, ColikedResult):
        found = len(result.triplets)
        return {
            "anchors": [lo, hi],
            "seconds": round(seconds, 3),
            "triplets": found,
            "anchors_with_triplets": len(np.unique(result.triplets[:, 0])),
            "mean_co_likes": round(float(result.co_likes.mean()), 4) if found else 0.0,
            "mean_cosine": round(float(result.cosine.mean()), 4) if found else 0.0,
            "distinct_negatives": len(np.unique(result.triplets[:, 2])),
        }
    return {
        "anchors": [lo, hi],
        "seconds": round(seconds, 3),
        "mean_positive_overlap": round(float(result.positive_overlap.mean()), 4) if hi > lo else 0.0,
        "mean_negative_overlap": round(float(result.negative_overlap.mean()), 4) if hi > lo else 0.0,
        "distinct_negatives": len(np.unique(result.triplets[:, 2])),
    }


def join(artifacts: ArtifactStore, spec: TripletSpec, job_id: str, shards: list[tuple[int, int]]) -> np.ndarray:
    """The job's parts concatenated in anchor order, as movieIds, stored under the spec's name.

    Idempotent: when that array exists already (a join of this job that died before finishing it, or an
    identical job's), it is answered as stored; it is written in one step, so it is whole if it is there.
    The parts stay until the job is marked done (the sharded-job frame drops them then).
    """
    if artifacts.exists(spec.name):
        return artifacts.get_array(spec.name)
    rows = np.concatenate([artifacts.get_array(spec.part(job_id, lo)) for lo, _ in shards])  # (m, 3) catalogue rows
    movie_ids = artifacts.get_array(dataset_artifact(spec.dataset, "movie_ids"))
    triplets: np.ndarray = movie_ids[rows].astype(np.int32)  # (m, 3) movieIds: anchor, positive, negative
    artifacts.put_array(spec.name, triplets)
    return triplets


def part_names(spec: TripletSpec, job_id: str, shards: list[tuple[int, int]]) -> tuple[str, ...]:
    """The parts of a job's shards: what its join reads, and drops once the job is marked done."""
    return tuple(spec.part(job_id, lo) for lo, _ in shards)
