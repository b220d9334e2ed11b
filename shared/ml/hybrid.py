"""The hybrid model: a per-movie embedding learned from what users liked, and a content tower for the rest.

    ratings (users x movies) ──> liked L = [rating >= liked_at] ──> A = L D^-1/2   (D: likes per movie)
        └─ truncated SVD A ≈ U S V^T, rank ``hidden_dim`` ──> E = V S   (n, h)  the per-movie embedding
           (E E^T ≈ D^-1/2 L^T L D^-1/2, the cosine of co-likes: movies liked by the same people sit close)
    triplets (anchor, positive, negative) rows, co-liked or descriptor ones
        └─ content tower c(x) = normalise(x W^T + b) over the encoder's movie vector x, trained so that
           |c(x_a) - e_p| + margin < |c(x_a) - e_n|  (e = E normalised), plus (a, a, n) for every anchor:
           a movie's descriptors should land near where its likes put it
    movie vector z_j = e_j for a movie someone liked, else c(x_j)   (unit length; served by the hnswlib index)

The "ials" architecture is the same with iALS's item factors for E (every rating a positive, confidence
1 + alpha; ``ials_factorisation``): a rated movie keeps its factors as they are (norms included: the index is an
inner-product one), a cold one the tower's direction at the median rated norm, and the state carries Y^T Y,
so a user's query is their iALS fold-in, solved from their ratings at query time (shared/ml/recommend.py).

A movie nobody liked in the training data keeps a vector from its content alone; a keyword query goes
through the content tower (its weights are stored as the notebook's ``proj.weight`` / ``proj.bias``, so the
service projects keywords the same way for both architectures).

The SVD is ARPACK's with a fixed start vector; the tower is trained in numpy with Adam (the notebook's
step, written out: shared/ml/fitting.py's ``hinge_gradient`` against fixed targets; one linear layer is too
small for a GPU to pay for itself), batches drawn from a seeded permutation (fitting's ``run_epochs``): the same
inputs and seed give the same weights.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import InvalidRequest
from shared.ml.fitting import NORM_EPS, Adam, TrainResult, hinge_gradient, run_epochs, split, triplet_auc, with_ones

if TYPE_CHECKING:
    import scipy.sparse as sp

    from shared.ml.baselines import IalsModel
    from shared.ml.fitting import Progress, TrainConfig

NULL_SPACE = 1e-6
"""Singular values below this share of the largest are taken as zero."""
TOWER_BLAS_THREADS = 1
"""A step is two (B, d) x (d, h) products: threads cost more than they gain there."""


def spectral_embedding(ratings: sp.csr_matrix, *, liked_at: float, dim: int) -> np.ndarray:
    """(n, dim) float32 E = V S of the truncated SVD of the popularity-normalised liked matrix; rows of movies
    nobody liked are zero. A rank above what the data has is padded with zero columns."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    liked = ratings.copy().tocsr()
    liked.data = (liked.data >= liked_at).astype(np.float64)
    liked.eliminate_zeros()
    n = liked.shape[1]
    counts = np.asarray(liked.sum(axis=0)).ravel()  # (n,) likes per movie
    scale = np.divide(1.0, np.sqrt(counts), out=np.zeros(n), where=counts > 0)
    a = (liked @ sp.diags(scale)).tocsr()  # (u, n)
    rank = min(dim, min(a.shape) - 1)
    out = np.zeros((n, dim), dtype=np.float32)
    if rank < 1 or a.nnz == 0:
        return out
    v0 = np.full(min(a.shape), 1.0 / np.sqrt(min(a.shape)))  # ARPACK's start vector, fixed: deterministic
    _, s, vt = svds(a, k=rank, v0=v0, solver="arpack")
    order = np.argsort(-s, kind="stable")  # largest first
    s = np.where(s > NULL_SPACE * s[order[0]], s, 0.0)  # a direction of the null space is arbitrary: dropped
    e = (vt[order].T * s[order]).astype(np.float32)  # (n, rank)
    e *= np.sign(e.sum(axis=0, keepdims=True) + NORM_EPS)  # fix each component's sign
    out[:, :rank] = e
    out[counts == 0] = 0.0  # exactly: ARPACK leaves round-off there, and a nonzero row counts as liked
    return out


def train_hybrid(
    vectors: np.ndarray,
    triplets: np.ndarray,
    ratings: sp.csr_matrix,
    config: TrainConfig,
    *,
    progress: Progress | None = None,
) -> TrainResult:
    """The hybrid model of ``vectors`` (n, d) encoder movie vectors, ``triplets`` (m, 3) catalogue rows and
    ``ratings`` (u, n) rating values; answers the content tower's weights and every movie's vector."""
    import torch
    from threadpoolctl import threadpool_limits

    d = vectors.shape[1]
    h = config.hidden_dim
    factorisation = None
    if config.architecture == "ials":
        factorisation = ials_factorisation(ratings, config)
        e, gram = ials_embedding(ratings, factorisation)
    else:
        e, gram = spectral_embedding(ratings, liked_at=config.liked_at, dim=h), None  # (n, h)
    norms = np.linalg.norm(e, axis=1)
    warm = norms > 0  # (n,) someone liked it (rated it, for "ials")
    if not warm.any():
        raise InvalidRequest(f"the {config.architecture} model needs ratings; this dataset's give no movie a vector")
    targets = e / np.maximum(norms, NORM_EPS)[:, None]  # (n, h) unit rows (zero for cold movies)
    usable = triplets[warm[triplets[:, 1]] & warm[triplets[:, 2]]]  # the targets must exist
    if len(usable) < 2:
        raise InvalidRequest("the hybrid model needs at least 2 triplets whose positive and negative were liked")
    train_idx, test_idx = split(len(usable), test_fraction=config.test_fraction, seed=config.seed)
    train_rows = usable[train_idx]
    # Each anchor also pulls towards its own liked-space vector: (a, a, n) beside (a, p, n).
    own = train_rows[warm[train_rows[:, 0]]]
    train_rows = np.concatenate([train_rows, np.stack([own[:, 0], own[:, 0], own[:, 2]], axis=1)])
    test_rows = usable[test_idx]

    rng = np.random.default_rng(config.seed)
    x = with_ones(vectors)  # (n, d + 1)
    bound = 1.0 / np.sqrt(d)  # torch.nn.Linear's initial range
    wb = rng.uniform(-bound, bound, size=(h, d + 1)).astype(np.float32)  # (h, d + 1)
    result = TrainResult(state={}, projected=np.zeros(0), auc_before=triplet_auc(vectors, test_rows), auc_after=0.0)
    with threadpool_limits(TOWER_BLAS_THREADS, user_api="blas"):
        _fit_tower(x, targets, wb, train_rows=train_rows, test_rows=test_rows, config=config, result=result,
                   progress=progress)  # fmt: skip
    content = _unit(x @ wb.T)  # (n, h)
    if gram is None:  # cosine: every movie a unit vector
        projected = np.where(warm[:, None], targets, content).astype(np.float32)
    else:  # inner product: a rated movie keeps its factors, a cold one the tower's direction at the median norm
        projected = np.where(warm[:, None], e, content * np.float32(np.median(norms[warm]))).astype(np.float32)
    result.projected = projected
    result.auc_after = triplet_auc(projected, test_rows)
    result.state = {
        "proj.weight": torch.from_numpy(np.ascontiguousarray(wb[:, :-1])),
        "proj.bias": torch.from_numpy(np.ascontiguousarray(wb[:, -1])),
    }
    if gram is not None:
        result.state["fold_in.gram"] = torch.from_numpy(gram)
    result.warm = int(warm.sum())
    result.factorisation = factorisation
    return result


def ials_factorisation(ratings: sp.csr_matrix, config: TrainConfig) -> IalsModel:
    """The evaluation's iALS baseline at factors ``hidden_dim``, ``regularization``, ``alpha`` and ``seed``, fitted
    on ``ratings`` as ``baselines.fit`` fits it (``_binary``: who rated what, sorted; then ``_ials``), so the
    same bytes: an evaluation's iALS row at that setting loads this fit instead of making it again
    (shared/logic/fits.py). On every core this process may use (the bits do not depend on it)."""
    from shared.ml.baselines import _binary, _ials

    return _ials(_binary(ratings), factors=config.hidden_dim, regularization=config.regularization,
                 alpha=config.alpha, seed=config.seed, threads=len(os.sched_getaffinity(0)))  # fmt: skip


def ials_embedding(ratings: sp.csr_matrix, model: IalsModel) -> tuple[np.ndarray, np.ndarray]:
    """((n, f) float32 iALS item factors Y of ``model``, rows of movies nobody rated in ``ratings`` zero; (f, f)
    float64 Y^T Y over the rated ones): every rating a positive with confidence 1 + alpha, a user's query their
    fold-in (shared/ml/recommend.py)."""
    rated = np.bincount(ratings.indices, minlength=ratings.shape[1]) > 0
    factors = np.where(rated[:, None], model.item_factors, 0.0).astype(np.float32)
    y = factors[rated].astype(np.float64)
    return factors, y.T @ y


def _fit_tower(
    x: np.ndarray, targets: np.ndarray, wb: np.ndarray, *, train_rows: np.ndarray, test_rows: np.ndarray,
    config: TrainConfig, result: TrainResult, progress: Progress | None,
) -> None:  # fmt: skip
    """``config.epochs`` passes of Adam over ``train_rows`` in batches, updating ``wb`` in place."""
    rng = np.random.default_rng(config.seed)
    adam = Adam(wb, lr=config.lr)

    def step_batch(rows: np.ndarray) -> float:
        batch = train_rows[rows]  # (B, 3)
        fixed = (targets[batch[:, 1]], targets[batch[:, 2]])  # (B, h) each: the liked-space points
        loss, grad = hinge_gradient(x[batch[:, 0]], wb, margin=config.margin, targets=fixed)
        adam.step(grad)
        return loss

    def validation_loss() -> float:
        fixed = (targets[test_rows[:, 1]], targets[test_rows[:, 2]])
        return hinge_gradient(x[test_rows[:, 0]], wb, margin=config.margin, targets=fixed)[0]

    run_epochs(
        config.epochs,
        order_of_epoch=lambda: rng.permutation(len(train_rows)),
        step_batch=step_batch,
        validation_loss=validation_loss,
        batch_size=config.batch_size,
        progress=progress,
        result=result,
    )


def _unit(y: np.ndarray) -> np.ndarray:
    return np.asarray(y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), NORM_EPS), dtype=np.float32)
