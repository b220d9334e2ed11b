"""A sharded mining job: planning the shards, storing their parts, joining them.

    POST /v1/jobs/triplets ──> workers.cpu.mine_triplets  (plans shards, sends one task per shard, returns)
                                  │ shard [lo, hi) of the anchors, each on the cpu queue, any worker
                                  ▼
                             workers.cpu.mine_shard ──> part triplets/<ds>/<strategy>-<seed>/part/<job>/<lo>
                                  │ records its stats in the job's shard hash (Lua: only while running);
                                  │ the shard that completes the set sends the join
                                  ▼
                             workers.cpu.join_triplets ──> triplets/<ds>/<strategy>-<seed>  (n, 3) int32 movieIds

Outputs are named by (dataset, strategy, seed) only, never by shard size or worker: a redelivered shard
rewrites its own part, a second join rewrites the same array, and a job whose array already exists is
answered from it without mining again. Parts also carry the job id: two jobs of the same spec running at
once (two clients asking at the same moment) each join and drop their own parts, never the other's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import NotFound
from shared.infra.keys import dataset_artifact, triplets_artifact, triplets_part
from shared.infra.process import per_process
from shared.ml.mining import Incidence, ShardResult, Strategy, build_incidence
from shared.store.artifacts import ArtifactStore

DEFAULT_SHARD_SIZE = 2000
MIN_SHARD_SIZE, MAX_SHARD_SIZE = 10, 100_000
DEFAULT_SEED = 42
INCIDENCE_CACHE_SIZE = 2
"""Datasets whose incidence a mining process keeps."""


@dataclass(frozen=True)
class TripletSpec:
    dataset: str
    seed: int
    strategy: Strategy

    @property
    def name(self) -> str:
        """Artifact name of the joined triplets."""
        return triplets_artifact(self.dataset, self.strategy, self.seed)

    def part(self, job_id: str, lo: int) -> str:
        """Artifact name of the part that job ``job_id``'s shard starting at anchor ``lo`` mines."""
        return triplets_part(self.name, job_id, lo)


def plan_shards(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + shard_size, n)) for lo in range(0, n, shard_size)]


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


def store_part(
    artifacts: ArtifactStore, spec: TripletSpec, job_id: str, lo: int, result: ShardResult, *, ttl_s: int
) -> None:
    artifacts.put_array(spec.part(job_id, lo), result.triplets, ttl_s=ttl_s)


def shard_stats(lo: int, hi: int, result: ShardResult, seconds: float) -> dict[str, Any]:
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
    The parts stay until ``drop_parts``, after the job is marked done.
    """
    if artifacts.exists(spec.name):
        return artifacts.get_array(spec.name)
    rows = np.concatenate([artifacts.get_array(spec.part(job_id, lo)) for lo, _ in shards])  # (n, 3) catalogue rows
    movie_ids = artifacts.get_array(dataset_artifact(spec.dataset, "movie_ids"))
    triplets: np.ndarray = movie_ids[rows].astype(np.int32)  # (n, 3) movieIds: anchor, positive, negative
    artifacts.put_array(spec.name, triplets)
    return triplets


def drop_parts(artifacts: ArtifactStore, spec: TripletSpec, job_id: str, shards: list[tuple[int, int]]) -> None:
    """Delete a finished job's parts (a join killed before this leaves them to their TTL)."""
    for lo, _ in shards:
        artifacts.delete(spec.part(job_id, lo))
