"""The hnswlib index over a model's projected movie embeddings: one small typed wrapper.

One writer builds a version (``build``), stores it as bytes plus a JSON description, and never touches it
again; readers load it (``from_bytes``, after the sha256 check) and only query. A new version is loaded
beside the old one and swapped in by reference, so the graph of an index that serves queries never changes.
A query does set the index's search beam (``set_ef``, which hnswlib keeps on the index, not per call), so one
index answers one query at a time: a worker process runs one task at a time. ``query_many`` answers a batch's
queries exactly as ``query`` answers each, with one hnswlib call per search beam rather than per query.

Movies with the same descriptors have the same vector (on ml-latest-small 9,709 movies have 2,259
distinct vectors), and exact duplicates break an HNSW graph's navigability (recall@10 was 0.81). So the
graph holds each distinct vector once, and a ``group`` array maps every catalogue row to its vector; a
query expands the nearest vectors into their movies (equal scores), ordered by ``ties`` when the index was
given them (a served model's: each movie's ratings, most first), else by catalogue row.

Every knob is explicit and recorded, ``ef`` included (hnswlib does not save it):

    space            "cosine"  (scores are cosine similarities, 1 - hnswlib's distance), or "ip" (an ials
                               model's: scores are inner products, 1 - hnswlib's distance again)
    M                16        graph degree: more is better recall, more memory
    ef_construction  200       build-time beam: more is a better graph, slower builds
    ef               100       query-time beam, raised per query to at least k + exclusions
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF = 100
BUILD_SEED = 100
EXACT_SHARE = 1 / 32
"""A query whose graph search would need a beam of this share of the catalogue's movies or more (a user's k plus
the movies they rated, or a filter's left-out movies) is answered by an exact scan (``MovieIndex.scan``), whose cost
grows with the movies (the scores of the allowed ones) where the search's grows with its beam. On
ml-latest-small's sequence and hybrid models the scan took 0.04-0.17 ms at any filter, the search 1.4-3.3 ms with
1-50 % of the movies allowed and 0.16 ms with 97 % (a beam of about 300); over every user's own query, 1/32 of
the movies gave the lowest mean (hybrid 0.095 ms against 0.106 for 1/32 of its 4,913 vectors, 0.110 for 1/16,
0.117 never), BENCHMARKS.md."""
MIN_THREADED = 64
"""Queries of one beam below which ``query_many`` searches in one thread (hnswlib starts its threads per call)."""


class RowSets(NamedTuple):
    """Sets of catalogue rows, one per query: query i's are ``rows[indptr[i]:indptr[i + 1]]``."""

    indptr: np.ndarray  # (b + 1,)
    rows: np.ndarray  # int64

    def subset(self, at: np.ndarray) -> RowSets:
        """The sets of queries ``at`` (positions, in that order)."""
        lo = self.indptr[at]
        sizes = self.indptr[np.asarray(at) + 1] - lo
        return RowSets(np.r_[0, np.cumsum(sizes)].astype(np.int64), self.rows[concat_ranges(lo, sizes)])


class Found(NamedTuple):
    """Answers to many queries: query i's rows (best first) and scores at ``indptr[i]:indptr[i + 1]``."""

    indptr: np.ndarray  # (b + 1,) int64
    rows: np.ndarray  # int64 catalogue rows
    scores: np.ndarray  # float32 cosine


class _Labels(NamedTuple):
    """Search results of many queries, flat: each one's query, label (or row) and score."""

    queries: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


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

    def __init__(
        self, index: Any, group: np.ndarray, *, dim: int, params: IndexParams, ties: np.ndarray | None = None
    ) -> None:
        self._index = index
        self.group = group  # (n,) int32: row -> distinct vector (hnswlib label)
        self.n, self.dim, self.params = len(group), dim, params
        self.groups = int(group.max()) + 1 if len(group) else 0
        rows = np.arange(self.n)
        # Each row's place among movies of equal score: ``ties`` (more first, a movie's ratings), then the row.
        self._tie_rank = np.empty(self.n, dtype=np.int64)
        self._tie_rank[np.lexsort((rows, -ties)) if ties is not None else rows] = rows
        order = np.lexsort((self._tie_rank, group))  # rows by group, in tie order within a group
        self._members = order
        self._starts = np.searchsorted(group[order], np.arange(self.groups + 1))

    def with_ties(self, ties: np.ndarray) -> MovieIndex:
        """This index (the same graph) with movies of equal score ordered by ``ties`` (n,), more first, then by
        row: a served model's is each movie's ratings, so of ten movies with the same descriptors (one vector,
        one score) the most rated comes first."""
        return MovieIndex(self._index, self.group, dim=self.dim, params=self.params, ties=ties)

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

        Fewer than k come back only when fewer than k rows are allowed. A query that leaves out enough rows that
        its beam would pass ``scan_beats_search``'s bound is answered by the exact ``scan``; the others by the graph
        ``search``, which widens when exclusions and filters leave it short and ends as the scan, so a query never
        fails for being filtered.
        """
        k, want = self._beam(k, allowed)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self.scan_beats_search(want):
            return self.scan(vector, k, allowed)
        return self._search(vector, k, want, allowed)

    def _beam(self, k: int, allowed: np.ndarray | None) -> tuple[int, int]:
        """(k, or the allowed rows if fewer; the vectors a graph search must reach for them: k plus the rows left
        out, at most every vector)."""
        reachable = self.n if allowed is None else int(allowed.sum())
        k = min(k, reachable)
        return k, min(self.groups, k if allowed is None else k + (self.n - reachable))

    def search(self, vector: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``query``'s answer by the graph alone: a beam of k plus the rows ``allowed`` leaves out (at least
        ``ef``), four times wider while hnswlib cannot fill it or the allowed rows found fall short of k, and the
        exact ``scan`` once the beam is the whole graph."""
        k, want = self._beam(k, allowed)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return self._search(vector, k, want, allowed)

    def _search(
        self, vector: np.ndarray, k: int, want: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``search`` from its ``_beam`` (k > 0), which ``query`` has already computed."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)  # (1, d)
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
                return self.scan(query[0], k, allowed)
            want = min(self.groups, want * 4)

    def query_many(self, vectors: np.ndarray, k: int, *, excluded: RowSets, threads: int = 1) -> Found:
        """``query``'s answer to each of b queries ``vectors`` (b, d), query i's ``excluded`` rows left out: the
        same answers as b calls of ``query``, in fewer calls into hnswlib.

        Each query keeps the beam ``query`` gives it (ef = max(ef, want), want = k + its exclusions): a graph
        search with beam ef and k <= ef is the same search whatever k, so the queries of one beam are searched
        in one ``knn_query`` (in ``threads`` threads when they are many) and each keeps its first ``want``
        labels. A query whose labels, filtered, come short of k (or whose beam's call hnswlib refused), and one
        whose beam ``scan_beats_search``, is answered by ``query`` itself, which widens its search or scans.
        """
        b = len(vectors)
        owner = np.repeat(np.arange(b), np.diff(excluded.indptr))
        banned = np.sort(owner * self.n + excluded.rows)  # (e,) keys query * n + row, sorted ...
        banned = banned[np.r_[True, banned[1:] != banned[:-1]]] if len(banned) else banned  # ... each once
        distinct = np.bincount(banned // self.n, minlength=b)  # (b,) rows each query excludes
        ks = np.minimum(k, self.n - distinct)  # as ``query``: k, or what is left
        wants = np.minimum(self.groups, ks + distinct)
        beams = np.maximum(self.params.ef, wants)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        searched: list[_Labels] = []
        scanned = self.scan_beats_search(wants) & (ks > 0)  # answered by ``query``'s exact scan, as it does
        alone: list[np.ndarray] = [np.flatnonzero(scanned)]  # answered one by one, by ``query``
        order = np.argsort(beams, kind="stable")
        order = order[(ks[order] > 0) & ~scanned[order]]
        for group in np.split(order, np.flatnonzero(np.diff(beams[order])) + 1) if len(order) else []:
            want = wants[group]
            self._index.set_ef(int(beams[group[0]]))
            try:
                labels, distances = self._index.knn_query(
                    vectors[group], k=int(want.max()), num_threads=threads if len(group) >= MIN_THREADED else 1
                )  # (g, max want) each
            except RuntimeError:  # hnswlib: fewer vectors reachable than asked for, for one query of the group
                alone.append(group)
                continue
            first = np.arange(labels.shape[1]) < want[:, None]  # (g, max want): each query's first ``want``
            searched.append(_Labels(np.repeat(group, want), labels[first], 1.0 - distances[first]))
        kept = self._allowed_rows(searched, banned)
        return self._first_k(kept, ks=ks, vectors=vectors, excluded=excluded, alone=alone)

    def _allowed_rows(self, searched: list[_Labels], banned: np.ndarray) -> _Labels:
        """The searched labels expanded to their rows (``_expand``), each query's banned rows dropped: rows in
        place of labels, each query's contiguous and best first."""
        if not searched:
            return _Labels(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        queries, labels, scores = (np.concatenate(parts) for parts in zip(*searched, strict=True))
        starts = self._starts[labels]
        sizes = self._starts[labels + 1] - starts  # movies per vector
        rows = self._members[concat_ranges(starts, sizes)].astype(np.int64)
        queries, scores = np.repeat(queries, sizes), np.repeat(scores, sizes)
        keys = queries * self.n + rows
        at = np.minimum(np.searchsorted(banned, keys), max(len(banned) - 1, 0))
        keep = banned[at] != keys if len(banned) else np.ones(len(keys), dtype=bool)
        return _Labels(queries[keep], rows[keep], scores[keep].astype(np.float32))

    def _first_k(
        self, kept: _Labels, *, ks: np.ndarray, vectors: np.ndarray, excluded: RowSets, alone: list[np.ndarray]
    ) -> Found:
        """Each query's first ``ks`` kept rows; a query left short, or in ``alone``, answered by ``query``."""
        queries, rows, scores = kept
        begins, sizes = _runs(queries)
        place = np.arange(len(queries)) - np.repeat(begins, sizes)  # each row's place among its query's
        take = place < ks[queries]
        queries, rows, scores = queries[take], rows[take], scores[take]
        found = np.bincount(queries, minlength=len(ks))
        start = np.zeros(len(ks), dtype=np.int64)  # where each query's rows begin
        begins, _ = _runs(queries)
        start[queries[begins]] = begins
        more_rows, more_scores, at = [rows], [scores], len(rows)
        short = np.union1d(np.flatnonzero(found < ks), np.concatenate(alone) if alone else [])
        for i in short.astype(np.int64).tolist():
            allowed = np.ones(self.n, dtype=bool)
            allowed[excluded.rows[excluded.indptr[i] : excluded.indptr[i + 1]]] = False
            r, s = self.query(vectors[i], int(ks[i]), allowed=allowed)
            more_rows.append(r)
            more_scores.append(s)
            start[i], found[i], at = at, len(r), at + len(r)
        gather = concat_ranges(start, found)  # the answers in query order
        return Found(
            indptr=np.r_[0, np.cumsum(found)].astype(np.int64),
            rows=np.concatenate(more_rows)[gather],
            scores=np.concatenate(more_scores)[gather].astype(np.float32),
        )

    def _expand(self, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct vectors (best first) -> their movies, in tie order within a vector (``ties``)."""
        starts = self._starts[labels]
        sizes = self._starts[labels + 1] - starts  # (g,) movies per vector
        return self._members[concat_ranges(starts, sizes)].astype(np.int64), np.repeat(scores, sizes)

    def scan_beats_search(self, want: Any) -> Any:
        """Whether a query whose graph search needs ``want`` vectors (k plus the rows it leaves out; an int or an
        array of them) is answered sooner by an exact scan: its beam would pass the default ``ef`` and reach
        ``EXACT_SHARE`` of the movies."""
        return (want > self.params.ef) & (want >= EXACT_SHARE * self.n)

    @cached_property
    def distinct(self) -> np.ndarray:
        """(groups, d) float32: the graph's vectors (unit rows in the cosine space), read out of hnswlib once, on
        the first exact scan or ``with_scan``, and kept: hnswlib hands them over one label at a time (40-75 ms
        for ml-latest-small's 9,500, which every scan paid before)."""
        return np.asarray(self._index.get_items(np.arange(self.groups)), dtype=np.float32)

    def with_scan(self) -> MovieIndex:
        """This index with its vectors read out for exact scans now (``distinct``), not in the first answer that
        needs one: what a serving process loads."""
        _ = self.distinct
        return self

    def scan(self, vector: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The exact answer: every allowed row scored (its vector's score), the k best by score, equal scores in
        tie order."""
        vector = np.asarray(vector, dtype=np.float32)
        distinct = self.distinct
        if self.params.space == "ip":  # the index's own scores: dot products
            per_group = distinct @ vector
        else:  # unit rows (hnswlib normalises them), so the cosine
            per_group = distinct @ (vector / max(float(np.linalg.norm(vector)), 1e-12))  # (g,)
        rows = np.arange(self.n) if allowed is None else np.flatnonzero(allowed)
        scores = per_group[self.group[rows]]
        if len(rows) > k:  # only the rows scoring at least the k-th best (its ties included) need ordering
            keep = scores >= -np.partition(-scores, k - 1)[k - 1]
            rows, scores = rows[keep], scores[keep]
        best = np.lexsort((self._tie_rank[rows], -scores))[:k]
        return rows[best], scores[best].astype(np.float32)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal ``values`` begins, and its length."""
    begins = np.r_[0, np.flatnonzero(np.diff(values)) + 1] if len(values) else np.zeros(0, dtype=np.int64)
    return begins, np.diff(np.r_[begins, len(values)])


def concat_ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, sizes)])`` without the Python loop: the
    positions a CSR gather of several rows reads."""
    # Output position j of range g reads starts[g] + (j - where range g begins in the output).
    return np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
