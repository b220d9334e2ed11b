"""The notebook's Siamese network: one linear layer to 50-d, L2-normalised, trained with a triplet loss.

    vectors (n, d) float32, the encoder's movie matrix     triplets (m, 3) catalogue rows (anchor, pos, neg)
        │                                                   │ 90/10 split by a seeded permutation
        ▼                                                   ▼
    X on the device (one tensor) ── batches are index tensors into X, never Python lists of vectors
        │
        ▼
    SiameseNet: x (B, d) -> Linear(d, hidden) -> L2 normalise -> (B, hidden)
    loss = mean(relu(|a - p| - |a - n| + margin)), Euclidean distances; Adam; ``epochs`` passes

Two loops over the same batches (shared/ml/fitting.py's ``run_epochs``): torch's autograd (CUDA, and deeper
networks), and on the CPU the same steps by hand in numpy (fitting's ``hinge_gradient`` and ``Adam``). Seeded:
the same inputs and seed give the same weights on the CPU. Imports torch: shared/ml/training.py imports this
module only when it trains one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from shared.ml.fitting import Adam, TrainResult, hinge_gradient, run_epochs, split, triplet_auc, with_ones

if TYPE_CHECKING:
    from shared.ml.fitting import Progress, TrainConfig

INNER_WIDTH = 256
"""Width of the inner layers of a network with ``layers`` > 1."""
TRAIN_BLAS_THREADS = 2
"""The two matmuls of a step (96 x 385 by 385 x 50) are most of its time; two threads pay off there."""


class SiameseNet(nn.Module):
    """x (B, d) -> (B, hidden), unit length. The notebook's one linear layer (``layers`` 1), or the notebook
    author's listed improvement: ``layers`` - 1 inner layers of INNER_WIDTH units, each Linear -> ReLU ->
    Dropout(``dropout``), before it. State names: ``inner.<k>.weight`` / ``.bias`` for inner layer k (k = 0, 3, 6,
    ...: torch's Sequential indices), and the last layer's ``proj.weight`` / ``proj.bias`` whatever the depth
    (what shared/ml/recommend.py's ``project`` reads)."""

    def __init__(self, in_dim: int, hidden_dim: int, *, layers: int = 1, dropout: float = 0.0) -> None:
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


def build_net(in_dim: int, hidden_dim: int, *, layers: int = 1, dropout: float = 0.0) -> SiameseNet:
    """A fresh ``SiameseNet``, its weights drawn from torch's global generator (seed it first)."""
    return SiameseNet(in_dim, hidden_dim, layers=layers, dropout=dropout)


def triplet_loss(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(relu(|a - p|_2 - |a - n|_2 + margin)) over the batch; a, p, n are (B, h)."""
    return torch.relu((a - p).norm(dim=1) - (a - n).norm(dim=1) + margin).mean()


def train_siamese(
    vectors: np.ndarray,
    triplets: np.ndarray,
    config: TrainConfig,
    *,
    device: torch.device,
    progress: Progress | None = None,
    autograd: bool = False,
) -> TrainResult:
    """Train the network on ``triplets`` (m, 3) catalogue rows over ``vectors`` (n, d).

    On the CPU the steps run by hand in numpy (``_train_numpy``): with a 384 x 50 layer and batches of 32,
    torch's per-operation overhead is most of an autograd step. ``autograd=True`` forces the torch loop,
    which is what CUDA uses; a test holds the two to the same weights.
    """
    torch.manual_seed(config.seed)
    train_idx, test_idx = split(len(triplets), test_fraction=config.test_fraction, seed=config.seed)
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)  # (n, d)
    trip = torch.from_numpy(triplets.astype(np.int64)).to(device)  # (m, 3)
    train_t, test_t = trip[torch.from_numpy(train_idx).to(device)], trip[torch.from_numpy(test_idx).to(device)]

    net = build_net(x.shape[1], config.hidden_dim, layers=config.layers, dropout=config.dropout).to(device)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    result = TrainResult(
        state={}, projected=np.zeros(0), auc_before=triplet_auc(vectors, triplets[test_idx]), auc_after=0.0
    )

    if device.type == "cpu" and not autograd and config.layers == 1:  # the numpy steps know one layer only
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
    else:
        _train_autograd(
            net,
            x,
            train_t=train_t,
            test_t=test_t,
            config=config,
            generator=generator,
            result=result,
            progress=progress,
        )

    net.eval()
    with torch.inference_mode():
        projected = net(x).float().cpu().numpy()  # (n, hidden)
    result.projected = projected.astype(np.float32)
    result.auc_after = triplet_auc(result.projected, triplets[test_idx])
    result.state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return result


def _train_autograd(
    net: SiameseNet,
    x: torch.Tensor,
    *,
    train_t: torch.Tensor,
    test_t: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    result: TrainResult,
    progress: Progress | None,
) -> None:
    """torch's loop: ``train_t`` / ``test_t`` (m, 3) row tensors into ``x`` (n, d), both on the device."""
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)

    def order_of_epoch() -> torch.Tensor:
        net.train()  # the validation pass left it in eval mode (dropout off)
        return torch.randperm(len(train_t), generator=generator).to(device=x.device)

    def step_batch(rows: torch.Tensor) -> float:
        batch = train_t[rows]  # (B, 3) rows
        out = net(x[batch.T.reshape(-1)]).view(3, len(batch), -1)  # one pass: (3, B, hidden)
        loss = triplet_loss(out[0], out[1], out[2], config.margin)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        return float(loss.detach())

    run_epochs(
        config.epochs,
        order_of_epoch=order_of_epoch,
        step_batch=step_batch,
        validation_loss=lambda: _loss(net, x, test_t, config.margin),
        batch_size=config.batch_size,
        progress=progress,
        result=result,
    )


def _train_numpy(
    net: SiameseNet,
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
    x = with_ones(vectors)  # (n, d + 1)
    proj = net.proj
    wb = np.hstack([proj.weight.detach().cpu().numpy(), proj.bias.detach().cpu().numpy()[:, None]])  # (h, d + 1)
    adam = Adam(wb, lr=config.lr)

    def step_batch(rows: np.ndarray) -> float:
        batch = train_rows[rows]  # (B, 3) rows
        xs = x[batch.T.reshape(-1)]  # (3B, d + 1): anchors, then positives, then negatives
        loss, grad = hinge_gradient(xs, wb, margin=config.margin)
        adam.step(grad)
        return loss

    run_epochs(
        config.epochs,
        # The torch loop's generator, so that both loops see the same batches.
        order_of_epoch=lambda: torch.randperm(len(train_rows), generator=generator).numpy(),
        step_batch=step_batch,
        validation_loss=lambda: hinge_gradient(x[test_rows.T.reshape(-1)], wb, margin=config.margin)[0],
        batch_size=config.batch_size,
        progress=progress,
        result=result,
    )
    with torch.no_grad():
        proj.weight.copy_(torch.from_numpy(np.ascontiguousarray(wb[:, :-1])))
        proj.bias.copy_(torch.from_numpy(np.ascontiguousarray(wb[:, -1])))


def _loss(net: SiameseNet, x: torch.Tensor, triplets: torch.Tensor, margin: float) -> float:
    net.eval()
    with torch.inference_mode():
        a, p, n = net(x[triplets[:, 0]]), net(x[triplets[:, 1]]), net(x[triplets[:, 2]])
        return float(triplet_loss(a, p, n, margin))
