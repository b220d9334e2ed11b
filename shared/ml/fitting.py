"""The training core both architectures share: hyper-parameters, the result, the split, the metric, Adam, the
triplet hinge's gradient and the epoch loop. numpy only: the API imports the limits from here, and must never
import torch.

    TrainConfig ──> shared/ml/training.py ``train`` ──┬─> shared/ml/siamese.py (the notebook's network)
                                                       └─> shared/ml/hybrid.py  (liked-space targets, content tower)
    each: split ──> run_epochs(order_of_epoch, step_batch, validation_loss) ──> TrainResult
          a step by hand: hinge_gradient (loss, gradient in [W b]) ──> Adam.step

Metrics, as the notebook computes them: ROC AUC on the test triplets, where (anchor, positive) pairs are the
positive class and (anchor, negative) pairs the negative class, scored by cosine similarity: on the raw
vectors before training, on the projections after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

import numpy as np

from shared.errors import InvalidRequest

if TYPE_CHECKING:
    from shared.ml.baselines import IalsModel

LIMITS: dict[str, tuple[float, float]] = {
    "epochs": (1, 200),
    "hidden_dim": (2, 1024),
    "margin": (0.0, 10.0),
    "lr": (1e-6, 1.0),
    "batch_size": (1, 8192),
    "liked_at": (0.5, 5.0),
    "recency_days": (0.0, 36500.0),
    "prior": (0.0, 100.0),
    "regularization": (0.0, 10000.0),
    "alpha": (0.0, 10000.0),
    "prior_until": (0.0, 100000.0),
    "cold_boost": (0.0, 10.0),
    "layers": (1, 4),
    "dropout": (0.0, 0.9),
}
"""Accepted range of each hyper-parameter (inclusive; margin and lr must be above their lower bound)."""


ARCHITECTURES = ("linear", "hybrid", "ials", "sequence")
PROFILES = ("rating", "centred")

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
NORM_EPS = 1e-12  # as torch.nn.functional.normalize


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    hidden_dim: int = 50
    margin: float = 0.3
    lr: float = 0.01
    batch_size: int = 32
    test_fraction: float = 0.1
    seed: int = 42
    architecture: str = "linear"
    """"linear" (the notebook's one layer, shared/ml/siamese.py), "hybrid" or "ials" (shared/ml/hybrid.py), or
    "sequence" (a self-attentive model over each user's time-ordered ratings, shared/ml/sequence.py)"""
    liked_at: float = 3.5
    """The hybrid's per-movie embedding: a rating at or above this is a like."""
    profile: str = "rating"
    """How a user's ratings become a query at serving time (shared/ml/recommend.py): "rating" or "centred"."""
    recency_days: float = 0.0
    """Half-life of a rating's weight in a user's profile, counted back from their last rating; 0 = off."""
    prior: float = 0.0
    """A light user's popularity prior at serving time (shared/ml/recommend.py): its weight at no rating; 0 = off."""
    prior_until: float = 0.0
    """... and the ratings at which it has shrunk to nothing."""
    cold_boost: float = 0.0
    """A movie nobody rated in the model's dataset gets this share of the best score it could have added to its
    score at serving time (shared/ml/recommend.py ``cold_bonus``); 0 = off."""
    regularization: float = 1.0
    """"ials": the factorisation's L2 weight (a user's fold-in solves with it too)."""
    alpha: float = 1.0
    """"ials": a rated pair's confidence is 1 + alpha (an unrated one's 1)."""
    layers: int = 1
    """The linear architecture's depth: 1 is the notebook's; more adds inner ReLU layers (siamese ``build_net``).
    "sequence": its self-attention blocks."""
    dropout: float = 0.0
    """Dropout after each inner layer (each block's sublayers for "sequence"), while training."""

    def __post_init__(self) -> None:
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            strict = name in ("margin", "lr")
            if not (low < value <= high if strict else low <= value <= high):
                raise InvalidRequest(f"{name} must be in {'(' if strict else '['}{low}, {high}], got {value}")
        if self.architecture in ("hybrid", "ials") and self.layers != 1:
            raise InvalidRequest(f"the {self.architecture} architecture's tower has one layer; layers must be 1")
        if self.architecture == "ials" and self.regularization <= 0:
            raise InvalidRequest("the ials architecture's regularization must be above 0")
        for name, allowed in (("architecture", ARCHITECTURES), ("profile", PROFILES)):
            if getattr(self, name) not in allowed:
                raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[int, float, float], None]
"""progress(epoch done, train loss, validation loss)"""


@dataclass
class TrainResult:
    state: dict[str, Any]  # the network's tensors, on the CPU
    projected: np.ndarray  # (n, hidden) float32, every movie through the trained network
    auc_before: float
    auc_after: float
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    warm: int | None = None  # the hybrid: movies with a learned per-movie embedding
    factorisation: IalsModel | None = None
    """"ials": the iALS model (``baselines.IalsModel``: every movie's factors as implicit made them) that the
    vectors were taken from; an evaluation stores it for its iALS row (shared/logic/fits.py)."""


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half (the Mann-Whitney U)."""
    scores = np.concatenate([positive, negative])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    average = (starts + ends + 1) / 2.0  # 1-based mean rank of each tie group
    ranks[order] = np.repeat(average, ends - starts)
    n_pos, n_neg = len(positive), len(negative)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def triplet_auc(vectors: np.ndarray, triplets: np.ndarray) -> float:
    """ROC AUC of cosine similarity: (anchor, positive) against (anchor, negative)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    a, p, n = unit[triplets[:, 0]], unit[triplets[:, 1]], unit[triplets[:, 2]]
    return roc_auc((a * p).sum(1), (a * n).sum(1))


def split(m: int, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(m)
    n_test = max(1, round(m * test_fraction)) if m > 1 else 0
    return order[n_test:], order[:n_test]


class Adam:
    """torch.optim.Adam's update (no weight decay, no amsgrad), in place, with one scratch buffer."""

    def __init__(self, param: np.ndarray, *, lr: float) -> None:
        self.param, self.lr, self.t = param, lr, 0
        self.m, self.v, self.scratch = np.zeros_like(param), np.zeros_like(param), np.empty_like(param)

    def step(self, grad: np.ndarray | None) -> None:
        """One update; ``grad=None`` is a zero gradient (a batch with no active triplet), which still moves the
        parameters through the moments, as torch does, but needs no arithmetic on the gradient."""
        beta1, beta2 = ADAM_BETAS
        self.t += 1
        m, v, tmp = self.m, self.v, self.scratch
        m *= beta1
        v *= beta2
        if grad is not None:
            np.multiply(grad, 1 - beta1, out=tmp)
            m += tmp
            np.multiply(grad, grad, out=tmp)
            tmp *= 1 - beta2
            v += tmp
        np.sqrt(v, out=tmp)
        tmp *= 1 / np.sqrt(1 - beta2**self.t)
        tmp += ADAM_EPS  # the denominator, as torch: sqrt(v) / sqrt(1 - beta2^t) + eps
        np.divide(m, tmp, out=tmp)
        tmp *= self.lr / (1 - beta1**self.t)
        self.param -= tmp


def with_ones(vectors: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d + 1) float32, a last column of ones: the bias rides along as one more input column,
    so a linear layer is one matrix [W b], one matmul and one Adam update."""
    return np.hstack([vectors.astype(np.float32), np.ones((len(vectors), 1), dtype=np.float32)])  # (n, d + 1)


def hinge_gradient(
    xs: np.ndarray, wb: np.ndarray, *, margin: float, targets: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[float, np.ndarray | None]:
    """Triplet loss mean(relu(|za - zp| - |za - zn| + margin)) of inputs (last column ones) through
    z = normalise(x [W b]^T), and its gradient in [W b]: None when no triplet is active (the loss and its
    gradient are zero; once the model has learnt, most batches).

    ``targets`` None (the siamese network): ``xs`` (3B, d + 1) stacks anchors, then positives, then negatives, all
    three through the layer. ``targets`` (positives, negatives), (B, h) unit rows each (the hybrid's tower): ``xs``
    (B, d + 1) holds the anchors only, and the targets are fixed points: no gradient flows into them."""
    y = xs @ wb.T  # (3B, h), or (B, h) with targets
    norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", y, y)), NORM_EPS)[:, None]  # (3B, 1) or (B, 1)
    z = y / norm
    if targets is None:
        n = len(z) // 3
        za, zp, zn = z[:n], z[n : 2 * n], z[2 * n :]  # (B, h) each
    else:
        za, (zp, zn) = z, targets
    to_p, to_n = za - zp, za - zn
    d_p, d_n = np.sqrt(np.einsum("ij,ij->i", to_p, to_p)), np.sqrt(np.einsum("ij,ij->i", to_n, to_n))  # (B,)
    hinge = d_p - d_n + margin
    if not (hinge > 0).any():
        return 0.0, None
    active = (hinge > 0).astype(np.float32) / len(hinge)  # d loss / d hinge_i
    g_p = (np.divide(active, d_p, out=np.zeros_like(d_p), where=d_p > 0))[:, None] * to_p  # d loss / d za via d_p
    g_n = (np.divide(active, d_n, out=np.zeros_like(d_n), where=d_n > 0))[:, None] * to_n
    # d loss / d z: za moves both distances; zp and zn, when they went through the layer, one each.
    gz = g_p - g_n if targets is not None else np.concatenate([g_p - g_n, -g_p, g_n])  # like z
    gy = (gz - z * np.einsum("ij,ij->i", z, gz)[:, None]) / norm  # through the normalisation
    return float(np.maximum(hinge, 0).mean()), gy.T @ xs  # loss, (h, d + 1)


class Order(Protocol):
    """A permutation of training rows: a numpy array or a torch tensor, whichever the caller draws."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice, /) -> Self: ...


OrderT = TypeVar("OrderT", bound=Order)


def run_epochs(
    epochs: int,
    *,
    order_of_epoch: Callable[[], OrderT],
    step_batch: Callable[[OrderT], float],
    validation_loss: Callable[[], float],
    batch_size: int,
    progress: Progress | None,
    result: TrainResult,
) -> None:
    """``epochs`` passes: each draws its order of the training rows (``order_of_epoch``: each architecture its own
    random stream), steps through it ``batch_size`` rows at a time (``step_batch`` takes a slice of the order and
    answers the batch's loss), then appends the mean training loss and ``validation_loss()`` to ``result``."""
    for epoch in range(epochs):
        order = order_of_epoch()
        total, batches = 0.0, 0
        for start in range(0, len(order), batch_size):
            total += step_batch(order[start : start + batch_size])
            batches += 1
        result.train_losses.append(total / max(batches, 1))
        result.val_losses.append(validation_loss())
        if progress is not None:
            progress(epoch + 1, result.train_losses[-1], result.val_losses[-1])
