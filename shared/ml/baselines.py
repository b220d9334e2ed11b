"""The literature's baselines with their hyper-parameters, so each can be tuned before it is compared (issue #24).

Dacrema et al. (RecSys 2019) found that tuned simple baselines beat most neural recommenders, and Rendle et al.
(2021) that iALS, tuned, is still competitive; a baseline at its untuned default proves little. Here are four,
each a ``fit(name, train, params, ...)`` away, with the grid it is tuned over. Pure numpy/scipy/implicit, no
Redis. Data flow:

    train (u, n) float32 ratings of the training part
      └─ _binary ──> X (u, n) float32 1/0: who rated what (every model sees only this)
           fit("EASE")     X ──> B (m, m) dense over the m movies with a training rating   (_ease)
           fit("item-kNN") X ──> S (n, n) CSR: shrunk cosine, each row cut to its k best    (_item_knn)
           fit("RP3beta")  X ──> W (n, n) CSR: 3-step random walk, popularity^-beta, top k  (_rp3beta)
           fit("iALS")     X ──> Y (n, f) item factors by implicit's ALS                    (_ials)
    Baseline.score(history (b, n) CSR, any nonzero = rated) ──> (b, n) float32 scores
      h = _binary(history):  EASE h[:, items] @ B;  item-kNN h @ S;  RP3beta h @ W;
                             iALS  x = fold-in of h against Y (b, f);  x @ Y^T
    GRIDS / grid(name) ──> the settings a tuning runs over;  DEFAULTS ──> the untuned one;  label() ──> a table row

Nothing about a user is kept from training: ``score`` depends on the history it is given only, so a new user
(fold-in) and a training user with the same history get the same scores. Ties in every top-k cut go to the
lower movie row, and iALS is seeded (its threads solve independent rows), so the same inputs give the same
bytes.

Errors: ``ValueError`` for an unknown name, an unknown parameter or a value out of its range;
``evaluate.Skipped`` when a model cannot run on this data (EASE's two dense m x m matrices over ``max_bytes``;
the other three grow linearly with the catalogue and are not checked).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Protocol

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from shared.ml.evaluate import Skipped

__all__ = ["DEFAULTS", "GRIDS", "NAMES", "Baseline", "EaseModel", "IalsModel", "SimilarityModel", "Skipped"]
__all__ += ["build_key", "fit", "fit_many", "grid", "grid_groups", "label"]

Params = Mapping[str, float | int]

NAMES = ("EASE", "item-kNN", "RP3beta", "iALS")
"""The baselines ``fit`` knows, in table order."""

GRIDS: dict[str, dict[str, tuple[float | int, ...]]] = {
    "EASE": {"lam": (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)},
    "item-kNN": {"k": (20, 50, 100, 200), "shrink": (0.0, 10.0, 100.0)},
    "RP3beta": {"alpha": (0.5, 1.0), "beta": (0.0, 0.3, 0.6), "k": (50, 200), "normalize": (0, 1)},
    "iALS": {"factors": (64, 128), "regularization": (0.01, 0.1, 1.0), "alpha": (1.0, 10.0)},
}
"""The tuning grid of each baseline: every combination of its parameters' values (``grid``)."""

DEFAULTS: dict[str, dict[str, float | int]] = {
    "EASE": {"lam": 500.0},
    "item-kNN": {"k": 50, "shrink": 0.0},
    "RP3beta": {"alpha": 1.0, "beta": 0.6, "k": 100, "normalize": 1},
    "iALS": {"factors": 64, "regularization": 0.01, "alpha": 1.0},
}
"""One untuned setting per baseline: EASE and item-kNN as the evaluation ran them before tuning, RP3beta as
Dacrema et al.'s ``RP3betaRecommender.fit`` defaults, iALS as implicit's (with 64 factors, a grid point)."""

TINY = 1e-12
"""The smallest value of a parameter that must be positive (EASE's lam, iALS's regularization, RP3beta's alpha)."""

BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "EASE": {"lam": (TINY, np.inf)},
    "item-kNN": {"k": (1, np.inf), "shrink": (0.0, np.inf)},
    "RP3beta": {"alpha": (TINY, np.inf), "beta": (0.0, np.inf), "k": (1, np.inf), "normalize": (0, 1)},
    "iALS": {"factors": (1, np.inf), "regularization": (TINY, np.inf), "alpha": (0.0, np.inf)},
}
"""The closed range each parameter must lie in (infinity itself excluded: a value must be finite)."""

INTEGER_PARAMS = frozenset({"k", "factors", "normalize"})
"""Parameters that must be whole numbers (a float such as 50.0 is accepted and made an int)."""

IALS_ITERATIONS = 15
"""ALS sweeps (users then items) of every iALS fit: fixed, not tuned, as implicit's default."""

BLOCK_CELLS = 1 << 24
"""Similarity rows are built a block at a time, BLOCK_CELLS / n rows, each row's product summed and cut to its
top k at once (``_top_k_of_product``): a block's output is at most (b, k) entries, never an n x n matrix."""

FOLD_IN_USERS = 256
"""iALS users folded in at a time: their normal equations are FOLD_IN_USERS x f x f float64 (32 MB at f=128)."""


class Baseline(Protocol):
    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """(b, n_movies) float32 scores of b users given their histories: a (b, n_movies) CSR of rating values
        (any nonzero = rated). Users need not be in the training matrix (fold-in: new users). A new array each
        call: the caller may overwrite it (``evaluate.top_k(..., overwrite=True)``)."""
        ...


# -- parameters --------------------------------------------------------------------------------------------
def _resolve(name: str, params: Params) -> dict[str, float | int]:
    """``params`` checked against ``name``'s parameters, the missing ones from DEFAULTS; ValueError otherwise."""
    if name not in GRIDS:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(NAMES)}")
    unknown = sorted(set(params) - set(DEFAULTS[name]))
    if unknown:
        raise ValueError(f"{name} has no parameter {', '.join(unknown)}; it takes {', '.join(DEFAULTS[name])}")
    out: dict[str, float | int] = {}
    for key, default in DEFAULTS[name].items():
        value = float(params.get(key, default))
        low, high = BOUNDS[name][key]
        whole = key in INTEGER_PARAMS
        if not (np.isfinite(value) and low <= value <= high and (not whole or value.is_integer())):
            kind = "whole number" if whole else "number"
            raise ValueError(f"{name} {key}={params.get(key, default)!r} is not a finite {kind} in [{low}, {high}]")
        out[key] = int(value) if whole else value
    return out


def grid(name: str) -> list[dict[str, float | int]]:
    """Every setting of ``GRIDS[name]``: the product of its values, the last parameter varying fastest."""
    if name not in GRIDS:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(NAMES)}")
    keys = list(GRIDS[name])
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*GRIDS[name].values())]


def label(name: str, params: Params) -> str:
    """Short stable text for a table row, such as ``EASE lam=500``: every parameter (missing ones at their
    default), in DEFAULTS order."""
    resolved = _resolve(name, params)
    return " ".join([name, *(f"{key}={value:g}" for key, value in resolved.items())])


# -- fitting -----------------------------------------------------------------------------------------------
def fit(name: str, train: sp.csr_matrix, params: Params, *, seed: int, max_bytes: int) -> Baseline:
    """The baseline ``name`` fitted on ``train`` ((u, n_movies) ratings, any nonzero = rated) with ``params``
    (missing ones from DEFAULTS). ``seed`` drives iALS's initial factors; ``max_bytes`` bounds EASE."""
    p = _resolve(name, params)
    x = _binary(train)
    if name == "EASE":
        return _ease(x, lam=float(p["lam"]), max_bytes=max_bytes)
    if name == "item-kNN":
        return SimilarityModel(_item_knn(x, k=int(p["k"]), shrink=float(p["shrink"])))
    if name == "RP3beta":
        w = _rp3beta(x, alpha=float(p["alpha"]), beta=float(p["beta"]), k=int(p["k"]), normalize=bool(p["normalize"]))
        return SimilarityModel(w)
    return _ials(
        x, factors=int(p["factors"]), regularization=float(p["regularization"]), alpha=float(p["alpha"]), seed=seed
    )


# -- fitting a grid: one build per shared part ------------------------------------------------------------
SHARED_BUILD: dict[str, tuple[str, ...]] = {
    "item-kNN": ("shrink",),
    "RP3beta": ("alpha", "beta"),
}
"""The parameters a similarity build depends on; the others (k, normalize) only cut or scale its rows, so the
settings that agree on these share one build (``fit_many``)."""


STORED = ("item-kNN", "RP3beta", "iALS")
"""Baselines whose fitted form is small enough to store and share between processes (``to_arrays``): a
similarity CSR of at most k entries per movie, or item factors. EASE's is a dense m x m matrix, cheaper to fit
again than to ship."""


def to_arrays(model: Baseline) -> dict[str, np.ndarray]:
    """A fitted item-kNN, RP3beta or iALS model as arrays (``from_arrays`` gives it back, bit for bit)."""
    if isinstance(model, SimilarityModel):
        w = model.similarity
        return {"indptr": w.indptr.astype(np.int64), "indices": w.indices.astype(np.int32), "data": w.data}
    if isinstance(model, IalsModel):
        return {"item_factors": model.item_factors, "settings": np.array([model.regularization, model.alpha])}
    raise TypeError(f"a {type(model).__name__} is not stored")


def from_arrays(arrays: Mapping[str, np.ndarray]) -> Baseline:
    """The model ``to_arrays`` gave these arrays of."""
    if "item_factors" in arrays:
        regularization, alpha = (float(v) for v in arrays["settings"])
        return IalsModel(item_factors=arrays["item_factors"], regularization=regularization, alpha=alpha)
    n = len(arrays["indptr"]) - 1
    return SimilarityModel(sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=(n, n)))


def build_key(name: str, params: Params) -> tuple[float | int, ...]:
    """What ``name`` at ``params`` shares its build with: settings of one key are fitted by one build."""
    p = _resolve(name, params)
    return tuple(p[key] for key in SHARED_BUILD.get(name, tuple(p)))


def grid_groups(name: str) -> list[list[dict[str, float | int]]]:
    """``grid(name)`` in groups that share a build, each group's settings in grid order, groups in the order of
    their first setting."""
    groups: dict[tuple[float | int, ...], list[dict[str, float | int]]] = {}
    for setting in grid(name):
        groups.setdefault(build_key(name, setting), []).append(setting)
    return list(groups.values())


def fit_many(
    name: str, train: sp.csr_matrix, settings: Sequence[Params], *, seed: int, max_bytes: int
) -> list[Baseline]:
    """``fit`` of each setting, the same models bit for bit, with one similarity build per build key: item-kNN
    and RP3beta are built once at the largest k of the settings that share it, and each setting's rows are cut
    from that build (the top k of the top k_max, ties to the lower movie, are the top k) and then normalised."""
    if name not in SHARED_BUILD:
        return [fit(name, train, s, seed=seed, max_bytes=max_bytes) for s in settings]
    resolved = [_resolve(name, s) for s in settings]
    x = _binary(train)
    built: dict[tuple[float | int, ...], sp.csr_matrix] = {}
    out: list[Baseline] = []
    for p in resolved:
        key = build_key(name, p)
        if key not in built:
            k_max = max(int(q["k"]) for q in resolved if build_key(name, q) == key)
            if name == "item-kNN":
                built[key] = _item_knn(x, k=k_max, shrink=float(p["shrink"]))
            else:
                built[key] = _rp3beta(x, alpha=float(p["alpha"]), beta=float(p["beta"]), k=k_max, normalize=False)
        w = _top_k_rows(built[key], int(p["k"]))
        if name == "RP3beta" and p["normalize"]:
            w = _normalize_rows(w)
        out.append(SimilarityModel(w))
    return out


def _top_k_rows(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row of ``m`` cut to its k largest entries, ties to the lower column (``_top_k_entries``'s rule)."""
    counts = np.diff(m.indptr)
    if counts.max(initial=0) <= k:
        return m
    owner = np.repeat(np.arange(m.shape[0]), counts)  # (nnz,) row of each entry
    order = np.lexsort((m.indices, -m.data, owner))  # by row, then value descending, then column
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - m.indptr[owner[order]]  # (nnz,) place in its row by that order
    keep = rank < k
    out = sp.csr_matrix((m.data[keep], (owner[keep], m.indices[keep])), shape=m.shape, dtype=np.float32)
    out.sort_indices()
    return out


def _normalize_rows(w: sp.csr_matrix) -> sp.csr_matrix:
    """Rows L1-normalised (an empty row stays empty)."""
    sums = np.asarray(w.sum(axis=1), dtype=np.float64).ravel()  # (n,)
    return sp.csr_matrix(sp.diags(_inverse(sums)) @ w, dtype=np.float32)


def _binary(ratings: sp.csr_matrix) -> sp.csr_matrix:
    """(b, n) float32 1/0 CSR of a ratings CSR (any nonzero = rated), sorted indices, no explicit zeros."""
    x = sp.csr_matrix(ratings, dtype=np.float32, copy=True)
    x.sum_duplicates()  # (a repeated pair is one rating; ratings that cancel out to 0 are none)
    x.eliminate_zeros()
    x.data[:] = 1.0
    return x


def _history(history: sp.csr_matrix, n: int) -> sp.csr_matrix:
    if history.ndim != 2 or history.shape[1] != n:
        raise ValueError(f"histories of shape {history.shape} for a model of {n} movies")
    return _binary(history)


# -- EASE --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EaseModel:
    """EASE (Steck 2019): scores = h B over the movies with a training rating; the others score 0."""

    n_movies: int
    items: np.ndarray  # (m,) int64 movie rows with a training rating
    weights: np.ndarray  # (m, m) float32 B, zero diagonal

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        h = _history(history, self.n_movies)
        out = np.zeros((h.shape[0], self.n_movies), dtype=np.float32)  # (b, n)
        out[:, self.items] = h[:, self.items] @ self.weights
        return out


def ease_bytes(n_items: int) -> int:
    """Peak memory of EASE on ``n_items`` rated movies: two dense float64 item x item matrices."""
    return 2 * n_items * n_items * 8


def _ease(x: sp.csr_matrix, *, lam: float, max_bytes: int) -> EaseModel:
    """EASE's closed form B = I - P / diag(P), P = (X^T X + lam I)^-1, on the movies rated in the training part
    (the others' rows and columns of B are zero: with no rating, X^T X + lam I is diagonal there). ``Skipped``
    over ``max_bytes``; B is kept as float32, half of its float64 size once fitted."""
    n = x.shape[1]
    items = np.flatnonzero(np.diff(x.tocsc().indptr)).astype(np.int64)  # (m,) movies with a training rating
    need = ease_bytes(len(items))
    if need > max_bytes:
        raise Skipped(
            f"EASE needs {need / 2**30:.1f} GiB for {len(items):,} movies (two dense {len(items):,}^2 float64 "
            f"matrices), over the {max_bytes / 2**30:.1f} GiB budget"
        )
    xi = x[:, items]
    gram = (xi.T @ xi).toarray().astype(np.float64)  # (m, m)
    gram[np.diag_indices_from(gram)] += lam
    # Gram + lam I is symmetric positive definite: its inverse by Cholesky (potrf, potri) is ~1.3x faster
    # than np.linalg.inv's LU. potri fills the upper triangle only; the lower one is zero (clean=1).
    factor, info = scipy.linalg.lapack.dpotrf(gram, lower=0, clean=1, overwrite_a=1)
    if info != 0:
        raise ValueError(f"EASE: the regularised Gram matrix is not positive definite (potrf info {info})")
    del gram
    p, info = scipy.linalg.lapack.dpotri(factor, lower=0, overwrite_c=1)  # (m, m) upper triangle of P
    if info != 0:
        raise ValueError(f"EASE: the regularised Gram matrix is singular (potri info {info})")
    del factor
    p += np.triu(p, 1).T  # the lower triangle mirrored from the upper
    b = p / -np.diag(p)[None, :]  # B = I - P / diag(P), column j divided by P_jj
    b[np.diag_indices_from(b)] = 0.0
    return EaseModel(n_movies=n, items=items, weights=b.astype(np.float32))


# -- item-item similarity models: item-kNN and RP3beta ---------------------------------------------------
@dataclass(frozen=True, eq=False)
class SimilarityModel:
    """An item-item model: scores = h @ S, h the binary histories, S (n, n) CSR (row i: what movie i lends)."""

    similarity: sp.csr_matrix  # (n, n) float32, at most k entries per row, zero diagonal

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        h = _history(history, self.similarity.shape[0])
        return np.asarray((h @ self.similarity).toarray(), dtype=np.float32)  # (b, n)


def _block_rows(n: int) -> int:
    return max(1, min(n, BLOCK_CELLS // max(n, 1)))


def _top_k_of_product(
    left: sp.csr_matrix, right: sp.csr_matrix, lo: int, hi: int, k: int, *, scale: _Scale
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of each row i in lo..hi of ``left @ right`` ((n, u) and (u, n) float32 CSR), each
    entry scaled (``_Scale``), cut to the row's k largest positive entries but the diagonal one, ties to the
    lower column.

    One compiled pass per row (shared/ml/similarity_kernel.py): the row's products summed into a dense
    accumulator in the order of scipy's sparse product, so the same float32 bits, then scaled and ranked
    through a heap of k. Its cost is the co-rating pairs plus n per row, and no sparse matrix of the product
    is built: at the notebook's scale a block of co-rating rows is 98 % full, and scipy's product with its
    rows laid out for ranking took 10x as long (BENCHMARKS.md)."""
    from shared.ml.similarity_kernel import top_k_rows

    rows = np.empty((hi - lo) * k, dtype=np.int64)
    cols = np.empty((hi - lo) * k, dtype=np.int64)
    values = np.empty((hi - lo) * k, dtype=np.float32)
    found = top_k_rows(
        left.indptr, left.indices, left.data, right.indptr, right.indices, right.data, lo, hi, k,
        scale.mode, scale.row, scale.col, np.float32(scale.shift), rows, cols, values,
    )  # fmt: skip
    return rows[:found], cols[:found], values[:found]


@dataclass(frozen=True)
class _Scale:
    """How a product's entry (i, j) becomes a similarity, in float32 as numpy would compute it: ``COSINE``
    p / (row[i] * col[j] + shift) (item-kNN's shrunk cosine), ``COLUMN`` p * col[j] (RP3beta's popularity)."""

    mode: int
    row: np.ndarray  # (n,) float32
    col: np.ndarray  # (n,) float32
    shift: float = 0.0

    COSINE: ClassVar[int] = 0  # shared/ml/similarity_kernel.py's COSINE
    COLUMN: ClassVar[int] = 1  # and COLUMN


def _cut(blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int) -> sp.csr_matrix:
    if not blocks:
        return sp.csr_matrix((n, n), dtype=np.float32)
    rows, cols, vals = (np.concatenate(part) for part in zip(*blocks, strict=True))
    out = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n, n))
    out.sort_indices()
    return out


def _item_knn(x: sp.csr_matrix, *, k: int, shrink: float) -> sp.csr_matrix:
    """(n, n) item-kNN similarity: sim(i, j) = <x_i, x_j> / (|x_i| |x_j| + shrink) over the binary columns
    (cosine when shrink = 0; shrink damps pairs with few common users), row i cut to its k most similar."""
    n = x.shape[1]
    xt = sp.csr_matrix(x.T)  # (n, u)
    norms = np.sqrt(np.asarray(x.sum(axis=0), dtype=np.float64).ravel()).astype(np.float32)  # (n,) |x_i|
    scale = _Scale(_Scale.COSINE, row=norms, col=norms, shift=shrink)
    step = _block_rows(n)
    blocks = []
    for lo in range(0, n, step):
        # co-rating counts (float32: exact below 2^24) / (|x_i| |x_j| + shrink)
        blocks.append(_top_k_of_product(xt, x, lo, min(n, lo + step), k, scale=scale))
    return _cut(blocks, n)


def _rp3beta(x: sp.csr_matrix, *, alpha: float, beta: float, k: int, normalize: bool) -> sp.csr_matrix:
    """(n, n) RP3beta (Paudel et al. 2016) as Dacrema et al.'s ``RP3betaRecommender``: P_ui = X row-normalised,
    P_iu = X^T row-normalised, both raised elementwise to alpha; W = P_iu P_ui with column j times
    popularity_j^-beta, diagonal zeroed, each row cut to its k largest, then (``normalize``) rows L1-normalised."""
    n = x.shape[1]
    xc = sp.csr_matrix(x, dtype=np.float64)  # (u, n)
    per_user = np.asarray(xc.sum(axis=1)).ravel()  # (u,) movies each user rated
    popularity = np.asarray(xc.sum(axis=0)).ravel()  # (n,) users each movie has
    rated = popularity > 0
    degree = np.zeros(n)
    degree[rated] = popularity[rated] ** -beta
    p_ui = sp.diags(_inverse(per_user)) @ xc  # (u, n) a user's step to one of their movies
    p_iu = sp.csr_matrix(sp.diags(_inverse(popularity)) @ xc.T)  # (n, u) a movie's step to one of its users
    p_ui.data **= alpha
    p_iu.data **= alpha
    p_ui, p_iu = sp.csr_matrix(p_ui, dtype=np.float32), sp.csr_matrix(p_iu, dtype=np.float32)
    scale = _Scale(_Scale.COLUMN, row=np.ones(n, np.float32), col=degree.astype(np.float32))
    step = _block_rows(n)
    blocks = []
    for lo in range(0, n, step):
        # two-step walks (to the power alpha) x popularity_j^-beta
        blocks.append(_top_k_of_product(p_iu, p_ui, lo, min(n, lo + step), k, scale=scale))
    w = _cut(blocks, n)
    return _normalize_rows(w) if normalize else w


def _inverse(values: np.ndarray) -> np.ndarray:
    """1 / values where positive, 0 elsewhere (an empty row or column stays empty)."""
    out: np.ndarray = np.divide(1.0, values, out=np.zeros(len(values)), where=values > 0)
    return out


# -- iALS --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class IalsModel:
    """iALS (Hu, Koren, Volinsky 2008): a user's factors x minimise sum_i c_ui (p_ui - x.y_i)^2 + reg |x|^2 with
    p_ui = 1 where rated, c_ui = 1 + alpha p_ui; solved in closed form from the history (fold-in), so a
    training user is scored exactly as a new one with the same history."""

    item_factors: np.ndarray  # (n, f) float32 Y from implicit
    regularization: float
    alpha: float

    @cached_property
    def _factors64(self) -> np.ndarray:
        """(n, f) float64 Y, made once: converting it per batch of users cost as much as their fold-in."""
        return self.item_factors.astype(np.float64)

    @cached_property
    def _gram(self) -> np.ndarray:
        """(f, f) float64 Y^T Y + reg I, shared by every user: made once, not per batch (at 58,000 movies and
        f=128 a product of 1.9 GFLOP), on one BLAS thread as before, so its bits are the same."""
        from threadpoolctl import threadpool_limits

        y = self._factors64
        with threadpool_limits(1, user_api="blas"):
            gram: np.ndarray = y.T @ y + self.regularization * np.eye(y.shape[1])
        return gram

    def user_factors(self, history: sp.csr_matrix) -> np.ndarray:
        """(b, f) float64 x_u = (Y^T C_u Y + reg I)^-1 Y^T C_u p_u; Y^T C_u Y = Y^T Y + alpha Y_u^T Y_u."""
        from threadpoolctl import threadpool_limits

        y, gram = self._factors64, self._gram  # (n, f), (f, f)
        h = _history(history, y.shape[0])
        f = y.shape[1]
        out = np.zeros((h.shape[0], f))
        # One BLAS thread: the products and solves are f x f, too small for threads to pay; with OpenBLAS's
        # pool of 2 on a busy 2-core machine, folding in ml-latest-small's 610 users at f=128 took 1-11 s, not 0.4.
        with threadpool_limits(1, user_api="blas"):
            for lo in range(0, h.shape[0], FOLD_IN_USERS):
                part = h[lo : lo + FOLD_IN_USERS]
                a = np.repeat(gram[None], part.shape[0], axis=0)  # (b, f, f)
                for i in range(part.shape[0]):
                    rated = y[part.indices[part.indptr[i] : part.indptr[i + 1]]]  # (r, f)
                    a[i] += self.alpha * (rated.T @ rated)
                rhs = (1.0 + self.alpha) * (part @ y)  # (b, f): Y^T C_u p_u, p_u nonzero only where rated
                out[lo : lo + part.shape[0]] = np.linalg.solve(a, rhs[:, :, None])[:, :, 0]
        return out

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        # x @ Y^T in float64, rounded to float32: a float32 GEMM's last bits depend on how many users share
        # the call (1 or 1000 take different kernels), and a user's scores should not depend on their batch.
        h = _history(history, self.item_factors.shape[0])
        yt = self._factors64.T  # (f, n)
        out = np.empty((h.shape[0], yt.shape[1]), dtype=np.float32)  # (b, n)
        for lo in range(0, h.shape[0], FOLD_IN_USERS):
            out[lo : lo + FOLD_IN_USERS] = self.user_factors(h[lo : lo + FOLD_IN_USERS]) @ yt
        return out


def _ials(
    x: sp.csr_matrix, *, factors: int, regularization: float, alpha: float, seed: int, threads: int = 1
) -> IalsModel:
    """Item factors by implicit's CPU ALS (conjugate gradient, ``IALS_ITERATIONS`` sweeps) on ``threads`` threads
    and one BLAS thread: deterministic for a seed whatever ``threads`` (each user's and each movie's solve is its
    own, against a Y^T Y made before the sweep on one BLAS thread; checked by a unit test). A worker process
    that shares its cores with others keeps to 1; the ``ials`` recipe's training, alone on its queue, takes more."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    # implicit reads the matrix's values as confidences c_ui and uses c_ui - 1 as the extra weight of a rated
    # pair, multiplying them by its own alpha first: values 1 + alpha with its alpha at 1 give c = 1 + alpha x.
    confidence = sp.csr_matrix(x, dtype=np.float32, copy=True)  # (u, n) users x items, as implicit 0.7 takes
    confidence.data[:] = np.float32(1.0 + alpha)
    with threadpool_limits(1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=1.0,
            dtype=np.float32,
            iterations=IALS_ITERATIONS,
            calculate_training_loss=False,
            num_threads=threads,
            random_state=seed,
        )
        model.fit(confidence, show_progress=False)
    return IalsModel(
        item_factors=np.asarray(model.item_factors, dtype=np.float32), regularization=regularization, alpha=alpha
    )
