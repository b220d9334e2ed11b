"""The hnswlib index over a model's projected movie embeddings: one small typed wrapper.

One writer builds a version (``build``), stores it as bytes plus a JSON description, and never touches it
again; readers load it (``from_bytes``, after the sha256 check) and only query. A new version is loaded
beside the old one and swapped in by reference, so the graph of an index that serves queries never changes.
A query does set the index's search beam (``set_ef``, which hnswlib keeps on the index, not per call), so one
index answers one query at a time: a worker process runs one task at a time.

Movies with the same descriptors have the same vector (on ml-latest-small 9,709 movies have 2,259
distinct vectors), and exact duplicates break an HNSW graph's navigability (recall@10 was 0.81). So the
graph holds each distinct vector once, and a ``group`` array maps every catalogue row to its vector; a
query expands the nearest vectors into their movies (equal scores, catalogue order).

Every knob is explicit and recorded, ``ef`` included (hnswlib does not save it):

    space            "cosine"  (scores are cosine similarities, 1 - hnswlib's distance)
    M                16        graph degree: more is better recall, more memory
    ef_construction  200       build-time beam: more is a better graph, slower builds
    ef               100       query-time beam, raised per query to at least k + exclusions
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF = 100
BUILD_SEED = 100


@dataclass(frozen=True)
class IndexParams:
    m: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    ef: int = DEFAULT_EF
    space: str = "cosine"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChecksumMismatch(Exception):
    """Stored index bytes do not match their recorded sha256; they are never handed to hnswlib."""


class MovieIndex:
    """Approximate nearest neighbours over catalogue rows 0..n-1."""

    def __init__(self, index: Any, group: np.ndarray, *, dim: int, params: IndexParams) -> None:
        self._index = index
        self.group = group  # (n,) int32: row -> distinct vector (hnswlib label)
        self.n, self.dim, self.params = len(group), dim, params
        self.groups = int(group.max()) + 1 if len(group) else 0
        order = np.argsort(group, kind="stable")  # rows by group, catalogue order within a group
        self._members = order
        self._starts = np.searchsorted(group[order], np.arange(self.groups + 1))

    @classmethod
    def build(cls, embeddings: np.ndarray, params: IndexParams) -> MovieIndex:
        import hnswlib

        distinct, group = np.unique(np.ascontiguousarray(embeddings, dtype=np.float32), axis=0, return_inverse=True)
        dim = embeddings.shape[1]
        index = hnswlib.Index(space=params.space, dim=dim)
        index.init_index(
            max_elements=len(distinct), M=params.m, ef_construction=params.ef_construction, random_seed=BUILD_SEED
        )
        index.add_items(distinct, np.arange(len(distinct)), num_threads=1)
        index.set_ef(params.ef)
        return cls(index, group.astype(np.int32).ravel(), dim=dim, params=params)

    def to_bytes(self) -> tuple[bytes, str]:
        """The index file's bytes and their sha256 (hnswlib writes files; no pickle involved)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "index.bin")
            self._index.save_index(path)
            with open(path, "rb") as f:
                data = f.read()
        return data, hashlib.sha256(data).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, *, sha256: str, group: np.ndarray, dim: int, params: IndexParams) -> MovieIndex:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ChecksumMismatch("index bytes do not match their checksum")
        import hnswlib

        index = hnswlib.Index(space=params.space, dim=dim)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "index.bin")
            with open(path, "wb") as f:
                f.write(data)
            index.load_index(path, max_elements=int(group.max()) + 1)
        index.set_ef(params.ef)
        return cls(index, group.astype(np.int32), dim=dim, params=params)

    def query(self, vector: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k rows nearest ``vector`` (d,) among ``allowed`` (a boolean mask over rows), best first.

        Fewer than k come back only when fewer than k rows are allowed. When exclusions and filters leave
        the graph search short (hnswlib raises when it cannot reach enough vectors), the search widens, and
        ends as an exact scan of the allowed rows, so a query never fails for being filtered.
        """
        reachable = self.n if allowed is None else int(allowed.sum())
        k = min(k, reachable)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)  # (1, d)
        want = min(self.groups, k if allowed is None else k + (self.n - reachable))
        while True:
            try:
                self._index.set_ef(max(self.params.ef, want))
                labels, distances = self._index.knn_query(query, k=want, num_threads=1)
            except RuntimeError:  # hnswlib: fewer vectors reachable than asked for
                labels = None
            if labels is not None:
                rows, scores = self._expand(labels[0], 1.0 - distances[0])
                if allowed is not None:
                    keep = allowed[rows]
                    rows, scores = rows[keep], scores[keep]
                if len(rows) >= k:
                    return rows[:k], scores[:k].astype(np.float32)
            if want >= self.groups:
                return self._exact(query[0], k, allowed)
            want = min(self.groups, want * 4)

    def _expand(self, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct vectors (best first) -> their movies, in catalogue order within a vector."""
        starts = self._starts[labels]
        sizes = self._starts[labels + 1] - starts  # (g,) movies per vector
        return self._members[concat_ranges(starts, sizes)].astype(np.int64), np.repeat(scores, sizes)

    def _exact(self, vector: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        distinct = np.asarray(self._index.get_items(np.arange(self.groups)), dtype=np.float32)  # (g, d), unit
        per_group = distinct @ (vector / max(float(np.linalg.norm(vector)), 1e-12))  # (g,)
        rows = np.arange(self.n) if allowed is None else np.flatnonzero(allowed)
        scores = per_group[self.group[rows]]
        best = np.argsort(-scores, kind="stable")[:k]
        return rows[best], scores[best].astype(np.float32)


def concat_ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, sizes)])`` without the Python loop: the
    positions a CSR gather of several rows reads."""
    # Output position j of range g reads starts[g] + (j - where range g begins in the output).
    return np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
