"""The compiled row loop of item-kNN's and RP3beta's similarity builds (shared/ml/baselines.py).

    left (n, u) CSR, right (u, n) CSR, rows lo..hi
      └─ per row i: acc = left[i] @ right, dense (n,) float32, summed in scipy's SMMP order (each entry of
         left's row in turn adds its weight times right's row: the same float32 bits as ``left @ right``)
         └─ scaled in place (``COSINE``: acc / (row[i] * col + shift); ``COLUMN``: acc * col), diagonal zeroed
            └─ a heap of the k best by (value descending, column ascending), positive values only
               └─ (rows, cols, values) appended to the caller's arrays

Imported on first use (numba's import and the compilation cost about a second), so that importing
shared.ml.baselines stays cheap for the API. The compiled code is cached under ``NUMBA_CACHE_DIR``, by default
a directory of the system's temporary one: numba's own default, beside the source or in the home directory,
is not writable in every deployment (an image's read-only site-packages, a user without a home), and with no
writable place numba refuses to compile a cached function at all.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "movierec-numba"))

import numba  # after its cache directory is set
import numpy as np

COSINE = 0
"""acc / (row[i] * col[j] + shift): item-kNN's shrunk cosine."""
COLUMN = 1
"""acc * col[j]: RP3beta's popularity^-beta."""

_jit = numba.njit(nogil=True, cache=True, error_model="numpy")  # error_model: 0 / 0 is NaN, no exception


@_jit
def _worse(av: float, ac: int, bv: float, bc: int) -> bool:
    """Whether entry (av, ac) ranks below (bv, bc): a lower value, or the same value in a higher column."""
    return av < bv or (av == bv and ac > bc)


@_jit
def _push(heap_v: np.ndarray, heap_c: np.ndarray, size: int, v: float, j: int) -> None:
    """Add (v, j) to a heap of ``size`` entries whose root is its worst: sifted up from a new leaf."""
    pos = size
    while pos > 0:
        up = (pos - 1) >> 1
        if not _worse(v, j, heap_v[up], heap_c[up]):
            break
        heap_v[pos], heap_c[pos] = heap_v[up], heap_c[up]
        pos = up
    heap_v[pos], heap_c[pos] = v, j


@_jit
def _replace_worst(heap_v: np.ndarray, heap_c: np.ndarray, size: int, v: float, j: int) -> None:
    """Put (v, j) in place of a full heap's root (its worst entry), sifted down."""
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(heap_v[child + 1], heap_c[child + 1], heap_v[child], heap_c[child]):
            child += 1
        if not _worse(heap_v[child], heap_c[child], v, j):
            break
        heap_v[pos], heap_c[pos] = heap_v[child], heap_c[child]
        pos = child
    heap_v[pos], heap_c[pos] = v, j


@_jit
def top_k_rows(  # noqa: PLR0917 - numba takes arrays, not objects
    lp: np.ndarray, li: np.ndarray, ld: np.ndarray, rp: np.ndarray, ri: np.ndarray, rd: np.ndarray,
    lo: int, hi: int, k: int, mode: int, row_s: np.ndarray, col_s: np.ndarray, shift: np.float32,
    out_r: np.ndarray, out_c: np.ndarray, out_v: np.ndarray,
) -> int:  # fmt: skip
    """Rows lo..hi of left (indptr lp, indices li, data ld) @ right (rp, ri, rd), scaled, each cut to its k
    best positive off-diagonal entries, ties to the lower column, written to out_r/out_c/out_v (room for
    (hi - lo) * k); answers how many were written."""
    n = len(col_s)
    acc = np.empty(n, dtype=np.float32)
    heap_v = np.empty(max(k, 1), dtype=np.float32)
    heap_c = np.empty(max(k, 1), dtype=np.int64)
    found = 0
    for i in range(lo, hi):
        acc[:] = 0  # dense: tracking the columns a row touches cost more than zeroing and scanning them all
        for p in range(lp[i], lp[i + 1]):
            u, w = li[p], ld[p]
            for q in range(rp[u], rp[u + 1]):
                acc[ri[q]] += w * rd[q]
        if mode == COSINE:  # a column that shares nobody with row i scales to 0 (or NaN): never kept
            for j in range(n):
                acc[j] = acc[j] / (row_s[i] * col_s[j] + shift)
        else:
            for j in range(n):
                acc[j] = acc[j] * col_s[j]
        acc[i] = 0  # no movie is its own neighbour
        size = 0
        for j in range(n):  # by column: of two equal values, the one met first ranks above
            v = acc[j]
            if size < k:
                if v > 0:  # positive only (a NaN is not)
                    _push(heap_v, heap_c, size, v, j)
                    size += 1
            elif v > heap_v[0]:  # above the worst kept, which is positive (an equal value, met later, is below)
                _replace_worst(heap_v, heap_c, size, v, j)
        for s in range(size):
            out_r[found], out_c[found], out_v[found] = i, heap_c[s], heap_v[s]
            found += 1
    return found
