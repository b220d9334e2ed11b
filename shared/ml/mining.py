"""Exact triplet mining: for every anchor movie a positive (most shared descriptors) and a negative.

Meaning, as the notebook's exact method: descriptors are compared as lower-cased sets. For anchor ``a``,
overlap(a, b) = |D(a) ∩ D(b)|.

- **positive**: the other movie with the largest overlap; ties go to the earliest movie in catalogue order
  (what the notebook's stable sort gives).
- **negative**, drawn among the movies other than ``a`` and its positive, by ``strategy``:
  ``uniform-min``  uniform among *all* movies with the smallest overlap (the default);
  ``notebook``     the notebook's choice: sort by overlap ascending (stable), pick uniformly among the first 3;
  ``semi-hard``    uniform among movies whose overlap is above the minimum and below the positive's; an
                   anchor that has none (every other movie sits at the minimum or at the positive's level)
                   falls back to ``uniform-min``.

Randomness depends only on (seed, anchor row): ``draws(seed, anchors, j)`` is the j-th uniform number of
an anchor's stream (a SplitMix64 hash, vectorised). So the same seed gives byte-identical triplets whatever
the shard size, the number of workers or the order shards run in. ``uniform-min`` and ``semi-hard`` draw
candidates from the stream and keep the first that qualifies (rejection sampling is exactly uniform over
the qualifying set); an anchor whose set is too rare for ``MAX_TRIES`` draws picks by rank instead.

Computation, per block of ``BLOCK`` anchors (a shard is a range of anchors, mined block by block):

    X   (n, V) binary incidence of lower-cased descriptors, split by document frequency into
        Xd  (n, K) the K most frequent columns, dense float32    Xs  (n, V - K) the rest, sparse CSR
    for each column tile of ``TILE`` movies:
        tile (B, T) = Xd[block] @ Xd[tile].T  (one small GEMM)  +  the tile's entries of Xs[block] @ Xs.T
        -> running first-argmax (the positive) and an int8 copy into O (B, n)
    O   -> minimum per row, then the negative draw

so the work is a dense product and a very sparse one, never a Python loop over pairs, and each float
tile is reduced while it is still in cache. Memory per shard is bounded by the block, not the shard:
O is B x n bytes (128 x 58,000 = 7 MB), a tile B x T x 4 bytes (1 MB), Xd n x K x 4 bytes (7 MB) twice
(row- and column-major), and the block's sparse product (a few hundred entries per anchor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

Strategy = Literal["uniform-min", "notebook", "semi-hard"]
STRATEGIES: tuple[Strategy, ...] = ("uniform-min", "notebook", "semi-hard")

BLOCK = 128
"""Anchors mined together: their overlaps with every movie are held as int8, B x n bytes."""

TILE = 4096
"""Movies per column tile: a B x TILE float32 tile (2 MB) stays in cache while it is reduced. A catalogue
of at most 3 tiles is done in one (fewer, larger calls win there)."""

EXCLUDED = np.int8(127)
"""Overlap written for the anchor and its positive so that no minimum search picks them."""

DENSE_COLUMNS = 32
"""Most frequent descriptors handled by the dense product; the long tail goes through the sparse one."""

MAX_TRIES = 64
"""Rejection-sampling draws per anchor before picking by rank."""

NOTEBOOK_POOL = 3
"""The notebook draws its negative among the first 3 of the ascending sort."""

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def draws(seed: int, anchors: np.ndarray, j: int) -> np.ndarray:
    """The j-th uniform number in [0, 1) of each anchor's stream (SplitMix64 of seed, anchor, j)."""
    with np.errstate(over="ignore"):
        base = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z: np.ndarray = base ^ (anchors.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9))
        z = z + np.uint64(j) * np.uint64(0x94D049BB133111EB) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.asarray((z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)), dtype=np.float64)


@dataclass(frozen=True)
class Incidence:
    """Lower-cased descriptor incidence, split into a dense head and a sparse tail."""

    dense: np.ndarray  # (n, K) float32
    dense_t: np.ndarray  # (K, n) float32, contiguous, so column tiles are cheap to slice
    sparse: sp.csr_matrix  # (n, V - K) float32
    sparse_t: sp.csr_matrix  # (V - K, n) float32

    @property
    def n(self) -> int:
        return int(self.dense.shape[0])


def build_incidence(
    desc_indptr: np.ndarray, desc_indices: np.ndarray, vocabulary: list[str], *, dense_columns: int = DENSE_COLUMNS
) -> Incidence:
    import scipy.sparse as sp  # here, not at import: the API names strategies without loading scipy

    lowered: dict[str, int] = {}
    column_of = np.array([lowered.setdefault(v.lower(), len(lowered)) for v in vocabulary], dtype=np.int64)
    n = len(desc_indptr) - 1
    data = np.ones(len(desc_indices), dtype=np.float32)
    x = sp.csr_matrix((data, column_of[desc_indices], desc_indptr), shape=(n, len(lowered)))
    x.sum_duplicates()
    x.data[:] = 1.0  # sets: "Comedy" and "comedy" count once
    df = np.asarray(x.sum(axis=0)).ravel()
    order = np.argsort(-df, kind="stable")
    head, tail = order[:dense_columns], order[dense_columns:]
    sparse = x[:, tail].tocsr()
    if x.shape[0] and np.diff(x.indptr).max() >= EXCLUDED:
        raise ValueError(f"a movie has {np.diff(x.indptr).max()} descriptors; overlaps must stay below {EXCLUDED}")
    dense = x[:, head].toarray()
    return Incidence(dense=dense, dense_t=np.ascontiguousarray(dense.T), sparse=sparse, sparse_t=sparse.T.tocsr())


def _overlaps_and_positives(inc: Incidence, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlaps of anchors lo..hi-1 with every movie as int8, and each anchor's positive.

    Column tile by column tile: one GEMM of the dense head, the sparse tail's entries of that tile added,
    then the tile's argmax (first maximum, so earlier tiles win ties: the earliest movie overall) and its
    int8 copy, all while the tile is still in cache. Memory traffic per anchor is n bytes, not 4n x 3.
    """
    b, n = hi - lo, inc.n
    rows, anchors = np.arange(b), np.arange(lo, hi)
    tail = (inc.sparse[lo:hi] @ inc.sparse_t).tocsc()  # (B, n), sliced by column tile below
    compact = np.empty((b, n), dtype=np.int8)
    best = np.full(b, -1.0, dtype=np.float32)
    positive = np.zeros(b, dtype=np.int64)
    head = inc.dense[lo:hi]  # (B, K)
    width = n if n <= 3 * TILE else TILE
    for t0 in range(0, n, width):
        t1 = min(t0 + width, n)
        tile = head @ inc.dense_t[:, t0:t1]  # (B, T) float32
        part = tail[:, t0:t1].tocoo()
        tile[part.row, part.col] += part.data
        own = (anchors >= t0) & (anchors < t1)
        tile[rows[own], anchors[own] - t0] = -1.0  # the anchor is never its own positive
        arg = tile.argmax(axis=1)
        value = tile[rows, arg]
        better = value > best  # strictly: on a tie the earlier tile keeps it
        best[better], positive[better] = value[better], arg[better] + t0
        compact[:, t0:t1] = tile
    return compact, positive, best.astype(np.int16)


def overlaps(inc: Incidence, lo: int, hi: int) -> np.ndarray:
    """(hi - lo, n) float32: overlap of anchors lo..hi-1 with every movie (exact small integers)."""
    block = inc.dense[lo:hi] @ inc.dense.T  # (B, n)
    tail = (inc.sparse[lo:hi] @ inc.sparse_t).tocoo()  # canonical: each (row, col) once
    block[tail.row, tail.col] += tail.data
    return np.asarray(block, dtype=np.float32)


@dataclass(frozen=True)
class ShardResult:
    """Catalogue rows (anchor, positive, negative) and the overlaps that chose them."""

    triplets: np.ndarray  # (m, 3) int32 rows of the catalogue
    positive_overlap: np.ndarray  # (m,) int16
    negative_overlap: np.ndarray  # (m,) int16


def mine_range(inc: Incidence, lo: int, hi: int, *, seed: int, strategy: Strategy, block: int = BLOCK) -> ShardResult:
    """Mine anchors lo..hi-1 (catalogue rows); the answer does not depend on how ranges are cut.

    One BLAS thread: the GEMMs are small (B x K by K x TILE), so threads cost more in synchronisation than
    they gain; parallelism comes from shards running in separate worker processes.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        parts = [_mine_block(inc, b, min(b + block, hi), seed=seed, strategy=strategy) for b in range(lo, hi, block)]
    if not parts:
        empty = np.zeros(0, dtype=np.int16)
        return ShardResult(np.zeros((0, 3), dtype=np.int32), empty, empty)
    return ShardResult(
        triplets=np.concatenate([p.triplets for p in parts]),
        positive_overlap=np.concatenate([p.positive_overlap for p in parts]),
        negative_overlap=np.concatenate([p.negative_overlap for p in parts]),
    )


def _mine_block(inc: Incidence, lo: int, hi: int, *, seed: int, strategy: Strategy) -> ShardResult:
    n, rows = inc.n, np.arange(hi - lo)
    anchors = np.arange(lo, hi)
    if n < 3:
        raise ValueError(f"mining needs at least 3 movies, the catalogue has {n}")
    o, positive, pos_overlap = _overlaps_and_positives(inc, lo, hi)  # (B, n) int8, (B,), (B,)
    o[rows, anchors] = EXCLUDED  # neither the anchor nor its positive can be a negative
    o[rows, positive] = EXCLUDED
    minimum = o.min(axis=1)

    if strategy == "notebook":
        negative = _first_k_pick(o, minimum, draws(seed, anchors, 0))
    else:
        low, high = minimum, minimum  # uniform-min: overlap == minimum
        if strategy == "semi-hard":
            # Overlaps are integers: "above the minimum, below the positive's" is min + 1 .. pos - 1.
            between = ((o > minimum[:, None]) & (o < pos_overlap[:, None])).any(axis=1)
            low = np.where(between, minimum + 1, minimum)
            high = np.where(between, pos_overlap - 1, minimum)
        negative = _sample(o, anchors, seed, low, high)

    neg_overlap = o[rows, negative]
    triplets = np.stack([anchors, positive, negative], axis=1).astype(np.int32)
    return ShardResult(triplets, pos_overlap.astype(np.int16), neg_overlap.astype(np.int16))


def _sample(o: np.ndarray, anchors: np.ndarray, seed: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per row i, a uniform pick among movies with low[i] <= overlap <= high[i].

    The anchor's random candidates are tried in stream order and the first that qualifies is kept
    (exactly uniform over the qualifying set); a row none of whose MAX_TRIES candidates qualifies picks
    by rank among its qualifying movies instead, with the stream's first number.
    """
    n = o.shape[1]
    rows = np.arange(len(anchors))
    chosen = np.full(len(anchors), -1, dtype=np.int64)
    for j in range(1, MAX_TRIES + 1):
        todo = chosen < 0
        if not todo.any():
            break
        candidate = np.minimum((draws(seed, anchors, j) * n).astype(np.int64), n - 1)
        value = o[rows, candidate]
        good = todo & (value >= low) & (value <= high)
        chosen[good] = candidate[good]
    for i in np.flatnonzero(chosen < 0):
        members = np.flatnonzero((o[i] >= low[i]) & (o[i] <= high[i]))
        u = draws(seed, anchors[i : i + 1], 0)[0]
        chosen[i] = members[min(int(u * len(members)), len(members) - 1)]
    return chosen


def _first_k_pick(o: np.ndarray, minimum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The notebook: a uniform pick among the first NOTEBOOK_POOL movies of the stable ascending sort."""
    window = min(o.shape[1], 1024)
    head = o[:, :window] == minimum[:, None]
    seen = np.cumsum(head, axis=1)  # (B, window) how many minimum-overlap movies so far
    enough = seen[:, -1] >= NOTEBOOK_POOL
    pick = np.minimum((u * NOTEBOOK_POOL).astype(np.int64), NOTEBOOK_POOL - 1)
    chosen = np.argmax(seen >= (pick + 1)[:, None], axis=1)
    for i in np.flatnonzero(~enough):
        finite = np.flatnonzero(o[i] != EXCLUDED)
        ranked = finite[np.argsort(o[i][finite], kind="stable")]
        pool = ranked[:NOTEBOOK_POOL]
        chosen[i] = pool[min(int(u[i] * len(pool)), len(pool) - 1)]
    return np.asarray(chosen, dtype=np.int64)
