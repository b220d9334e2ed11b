"""The notebook's Siamese network: one linear layer to 50-d, L2-normalised, trained with a triplet loss.

    vectors (n, d) float32, the encoder's movie matrix     triplets (m, 3) catalogue rows (anchor, pos, neg)
        │                                                   │ 90/10 split by a seeded permutation
        ▼                                                   ▼
    X on the device (one tensor) ── batches are index tensors into X, never Python lists of vectors
        │
        ▼
    SiameseNet: x (B, d) -> Linear(d, hidden) -> L2 normalise -> (B, hidden)
    loss = mean(relu(|a - p| - |a - n| + margin)), Euclidean distances; Adam; ``epochs`` passes

Metrics, as the notebook computes them: ROC AUC on the test triplets, where (anchor, positive) pairs are the
positive class and (anchor, negative) pairs the negative class, scored by cosine similarity: on the raw
vectors before training, on the projections after. Seeded: the same inputs and seed give the same weights
on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import InvalidRequest

if TYPE_CHECKING:
    import scipy.sparse as sp
    import torch

LIMITS: dict[str, tuple[float, float]] = {
    "epochs": (1, 200),
    "hidden_dim": (2, 1024),
    "margin": (0.0, 10.0),
    "lr": (1e-6, 1.0),
    "batch_size": (1, 8192),
    "liked_at": (0.5, 5.0),
    "recency_days": (0.0, 36500.0),
    "layers": (1, 4),
    "dropout": (0.0, 0.9),
}
"""Accepted range of each hyper-parameter (inclusive; margin and lr must be above their lower bound)."""


ARCHITECTURES = ("linear", "hybrid")
PROFILES = ("rating", "centred")


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
    """"linear" (the notebook's one layer) or "hybrid" (shared/ml/hybrid.py)"""
    liked_at: float = 3.5
    """The hybrid's per-movie embedding: a rating at or above this is a like."""
    profile: str = "rating"
    """How a user's ratings become a query at serving time (shared/ml/recommend.py): "rating" or "centred"."""
    recency_days: float = 0.0
    """Half-life of a rating's weight in a user's profile, counted back from their last rating; 0 = off."""
    layers: int = 1
    """The linear architecture's depth: 1 is the notebook's; more adds inner ReLU layers (``build_net``)."""
    dropout: float = 0.0
    """Dropout after each inner layer, while training."""

    def __post_init__(self) -> None:
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            strict = name in ("margin", "lr")
            if not (low < value <= high if strict else low <= value <= high):
                raise InvalidRequest(f"{name} must be in {'(' if strict else '['}{low}, {high}], got {value}")
        if self.architecture == "hybrid" and self.layers != 1:
            raise InvalidRequest("the hybrid architecture's content tower has one layer; layers must be 1")
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


INNER_WIDTH = 256
"""Width of the inner layers of a network with ``layers`` > 1."""


def build_net(in_dim: int, hidden_dim: int, *, layers: int = 1, dropout: float = 0.0) -> torch.nn.Module:
    """The notebook's one linear layer (``layers`` 1), or the notebook author's listed improvement: ``layers`` - 1
    inner layers of INNER_WIDTH units, each Linear -> ReLU -> Dropout(``dropout``), before it. State names:
    ``inner.<k>.weight`` / ``.bias`` for inner layer k (k = 0, 3, 6, ...: torch's Sequential indices), and the last
    layer's ``proj.weight`` / ``proj.bias`` whatever the depth (what shared/ml/recommend.py's ``project`` reads)."""
    from torch import nn

    class SiameseNet(nn.Module):
        """x (B, d) -> (B, hidden), unit length."""

        def __init__(self) -> None:
            super().__init__()
            stack: list[nn.Module] = []
            width = in_dim
            for _ in range(layers - 1):
                stack += [nn.Linear(width, INNER_WIDTH), nn.ReLU(), nn.Dropout(dropout)]
                width = INNER_WIDTH
            self.inner = nn.Sequential(*stack)
            self.proj = nn.Linear(width, hidden_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.proj(self.inner(x)), dim=-1)  # (B, hidden)

    return SiameseNet()


def triplet_loss(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(relu(|a - p|_2 - |a - n|_2 + margin)) over the batch; a, p, n are (B, h)."""
    import torch

    return torch.relu((a - p).norm(dim=1) - (a - n).norm(dim=1) + margin).mean()


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


def train(
    vectors: np.ndarray,
    triplets: np.ndarray,
    config: TrainConfig,
    *,
    device: torch.device,
    progress: Progress | None = None,
    autograd: bool = False,
    ratings: sp.csr_matrix | None = None,
) -> TrainResult:
    """Train on ``triplets`` (catalogue rows) over ``vectors``; answers weights, projections and metrics.
    ``config.architecture`` "hybrid" goes to shared/ml/hybrid.py, which also needs ``ratings`` (u, n).

    On the CPU the steps run by hand in numpy (``_train_numpy``): with a 384 x 50 layer and batches of 32,
    torch's per-operation overhead is most of an autograd step. ``autograd=True`` forces the torch loop,
    which is what CUDA uses; a test holds the two to the same weights.
    """
    import torch

    if len(triplets) < 2:
        raise InvalidRequest("training needs at least 2 triplets")
    if config.architecture == "hybrid":
        from shared.ml.hybrid import train_hybrid

        if ratings is None:
            raise InvalidRequest("the hybrid architecture learns from ratings; none were given")
        return train_hybrid(vectors, triplets, ratings, config, progress=progress)
    torch.manual_seed(config.seed)
    train_idx, test_idx = split(len(triplets), test_fraction=config.test_fraction, seed=config.seed)
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)  # (n, d)
    trip = torch.from_numpy(triplets.astype(np.int64)).to(device)  # (m, 3)
    train_t, test_t = trip[torch.from_numpy(train_idx).to(device)], trip[torch.from_numpy(test_idx).to(device)]

    net = build_net(x.shape[1], config.hidden_dim, layers=config.layers, dropout=config.dropout).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    result = TrainResult(
        state={}, projected=np.zeros(0), auc_before=triplet_auc(vectors, triplets[test_idx]), auc_after=0.0
    )

    by_hand = device.type == "cpu" and not autograd and config.layers == 1  # the numpy steps know one layer only
    if by_hand:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(TRAIN_BLAS_THREADS, user_api="blas"):
            _train_numpy(
                net,
                vectors,
                train_rows=triplets[train_idx],
                test_rows=triplets[test_idx],
                config=config,
                generator=generator,
                result=result,
                progress=progress,
            )
    for epoch in range(0 if by_hand else config.epochs):
        net.train()
        order = torch.randperm(len(train_t), generator=generator).to(device)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = train_t[order[start : start + config.batch_size]]  # (B, 3) rows
            out = net(x[batch.T.reshape(-1)]).view(3, len(batch), -1)  # one pass: (3, B, hidden)
            loss = triplet_loss(out[0], out[1], out[2], config.margin)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += float(loss.detach())
            batches += 1
        result.train_losses.append(total / max(batches, 1))
        result.val_losses.append(_loss(net, x, test_t, config.margin))
        if progress is not None:
            progress(epoch + 1, result.train_losses[-1], result.val_losses[-1])

    net.eval()
    with torch.inference_mode():
        projected = net(x).float().cpu().numpy()  # (n, hidden)
    result.projected = projected.astype(np.float32)
    result.auc_after = triplet_auc(result.projected, triplets[test_idx])
    result.state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return result


ADAM_BETAS = (0.9, 0.999)
TRAIN_BLAS_THREADS = 2
"""The two matmuls of a step (96 x 385 by 385 x 50) are most of its time; two threads pay off there."""
ADAM_EPS = 1e-8
NORM_EPS = 1e-12  # as torch.nn.functional.normalize


def _train_numpy(
    net: torch.nn.Module,
    vectors: np.ndarray,
    *,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    config: TrainConfig,
    generator: torch.Generator,
    result: TrainResult,
    progress: Progress | None,
) -> None:
    """The same steps as the torch loop (same batches, same initial weights, Adam as torch computes it),
    with the loss's gradient written out: a few numpy calls a step instead of a hundred torch ones."""
    import torch

    # The bias rides along as one more input column of ones: one matrix, one matmul, one Adam update.
    x = np.hstack([vectors.astype(np.float32), np.ones((len(vectors), 1), dtype=np.float32)])  # (n, d + 1)
    proj: Any = net.proj
    wb = np.hstack([proj.weight.detach().cpu().numpy(), proj.bias.detach().cpu().numpy()[:, None]])  # (h, d + 1)
    adam = Adam(wb, lr=config.lr)
    for epoch in range(config.epochs):
        order = torch.randperm(len(train_rows), generator=generator).numpy()
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = train_rows[order[start : start + config.batch_size]]  # (B, 3) rows
            xs = x[batch.T.reshape(-1)]  # (3B, d + 1): anchors, then positives, then negatives
            loss, grad = _loss_and_gradient(xs, wb, config.margin)
            adam.step(grad)
            total += loss
            batches += 1
        result.train_losses.append(total / max(batches, 1))
        result.val_losses.append(_loss_and_gradient(x[test_rows.T.reshape(-1)], wb, config.margin)[0])
        if progress is not None:
            progress(epoch + 1, result.train_losses[-1], result.val_losses[-1])
    with torch.no_grad():
        proj.weight.copy_(torch.from_numpy(np.ascontiguousarray(wb[:, :-1])))
        proj.bias.copy_(torch.from_numpy(np.ascontiguousarray(wb[:, -1])))


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


def _loss_and_gradient(xs: np.ndarray, wb: np.ndarray, margin: float) -> tuple[float, np.ndarray | None]:
    """Triplet loss of (3B, d + 1) stacked inputs (last column ones) through normalize(x [W b]^T), and its
    gradient in [W b]: None when no triplet is active (the loss and its gradient are zero; once the model has
    learnt, most batches)."""
    y = xs @ wb.T  # (3B, h)
    norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", y, y)), NORM_EPS)[:, None]  # (3B, 1)
    z = y / norm
    n = len(z) // 3
    za, zp, zn = z[:n], z[n : 2 * n], z[2 * n :]  # (B, h) each
    to_p, to_n = za - zp, za - zn
    d_p, d_n = np.sqrt(np.einsum("ij,ij->i", to_p, to_p)), np.sqrt(np.einsum("ij,ij->i", to_n, to_n))  # (B,)
    hinge = d_p - d_n + margin
    if not (hinge > 0).any():
        return 0.0, None
    active = (hinge > 0).astype(np.float32) / len(hinge)  # d loss / d hinge_i
    g_p = (np.divide(active, d_p, out=np.zeros_like(d_p), where=d_p > 0))[:, None] * to_p  # d loss / d za via d_p
    g_n = (np.divide(active, d_n, out=np.zeros_like(d_n), where=d_n > 0))[:, None] * to_n
    gz = np.concatenate([g_p - g_n, -g_p, g_n])  # (3B, h)
    gy = (gz - z * np.einsum("ij,ij->i", z, gz)[:, None]) / norm  # through the normalisation
    return float(np.maximum(hinge, 0).mean()), gy.T @ xs  # loss, (h, d + 1)


def _loss(net: torch.nn.Module, x: torch.Tensor, triplets: torch.Tensor, margin: float) -> float:
    import torch

    net.eval()
    with torch.inference_mode():
        a, p, n = net(x[triplets[:, 0]]), net(x[triplets[:, 1]]), net(x[triplets[:, 2]])
        return float(triplet_loss(a, p, n, margin))
