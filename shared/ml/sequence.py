"""The sequence model: SASRec (Kang & McAuley 2018) over each user's ratings in time order, trained with a full
softmax (Klenitskiy & Vasilev 2023), its movie vectors tied to a content tower so that a movie nobody rated
still has a place.

    ratings (indptr, movies, times) ──> each user's movies in ``time_order`` (time, ties by movie row)
        └─ ``windows``: MAX_LEN + 1 movies at a time from the end backwards, stride MAX_LEN (neighbours share one
           movie, so every rating after a user's first is a target exactly once), left-padded with PAD = n
           ──> inputs w[:, :-1], targets w[:, 1:]   (w, MAX_LEN) each; ``test_fraction`` of them validates
    vectors x (n, d) ──> content tower c(x) = x W^T + b ──> z_j = c(x_j) + r_j   (n, h), tied: input and output
        (r: a per-movie residual, zero at start, L2-penalised; held at zero for movies nobody rated, whose z
        is c(x) alone, in training as in the export)
    inputs ──> z[inputs] sqrt(h) + P[MAX_LEN - l:] (right-aligned: the latest movie at position MAX_LEN - 1)
        ──> dropout ──> ``layers`` x pre-LN block ──> LayerNorm ──> H (B, MAX_LEN, h)
            block: x += drop(attn(LN1 x)); x += drop(W2 gelu(W1 LN2 x) + b2)
            attn: one head, softmax(Q K^T / sqrt(h)) V then O; causal, padded keys masked (a padded row
            attends to itself alone: finite, never read)
    loss: cross-entropy of H[valid] Z^T (valid: a real input; gathered before the product) against the
        targets, over all n movies (``_full_softmax``: fused with its gradients, a chunk of rows at a time);
        above FULL_SOFTMAX_LIMIT movies, over each row's target and SAMPLED_NEGATIVES movies drawn uniformly
        per batch (accidental hits masked);
        + RESIDUAL_DECAY |r|^2. Adam, ``batch_size`` windows a step, ``epochs`` passes (fitting's ``run_epochs``)
    serving (``SequenceNet``, numpy): query = H at the last position over the user's last MAX_LEN movies in
        time order; score of movie j = query . z_j (an inner-product index over ``projected`` = z)

The state holds the content tower as ``proj.weight`` / ``proj.bias`` (keyword queries go through it, as for
the other architectures) and the network under ``seq.`` names (``seq.pos``, ``seq.blocks.<k>.<part>``,
``seq.norm``); the movie vectors travel as ``projected``, not in the state. The torch forward
(``hidden_states``) and the numpy one (``SequenceNet``) are the same arithmetic, operation by operation.

Seeded: torch's global generator draws the initial weights and the dropout masks, a generator of its own the
order of the windows and the sampled negatives: the same inputs and seed give the same weights on one CPU. On
CUDA the forward runs under bfloat16 autocast; on a CPU with native bfloat16 the full softmax's products do
(``_product_dtype``; MOVIEREC_SEQUENCE_FP32=1 keeps them float32). This module imports numpy only: torch comes in with
``train_sequence`` and ``hidden_states``, so serving processes that never train do not load it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import InvalidRequest
from shared.ml.fitting import TrainResult, run_epochs, split, triplet_auc

if TYPE_CHECKING:
    import torch

    from shared.ml.fitting import Progress, TrainConfig

MAX_LEN: int = 50
"""Movies a user's query reads: their last MAX_LEN, the latest at position MAX_LEN - 1."""
FULL_SOFTMAX_LIMIT = 20_000
"""Up to this many movies, a step's loss is the softmax over all of them; above, a sampled one."""
SAMPLED_NEGATIVES = 2048
"""The sampled softmax's negatives: drawn uniformly (no correction needed), one set shared by a batch."""
RESIDUAL_DECAY = 1e-3
"""L2 weight of the per-movie residual, on sum_j |r_j|^2 beside the mean cross-entropy: keeps a rarely seen
movie near where its content puts it (and the warm movies' vectors comparable with the cold ones'). On
ml-latest-small (hidden 64, 2 blocks, dropout 0.2, lr 1e-3) 1e-4 overfits after 15 epochs (validation loss
7.49 then rising) and leaves the triplet AUC at 0.80; 1e-3 reaches 7.49 at 20 epochs, AUC 0.90."""
LN_EPS = 1e-5
"""LayerNorm's epsilon (torch's default), in both forwards."""
POSITION_STD = 0.02
"""Initial standard deviation of the position embedding."""
CPU_HOURS = 1.0
"""A training on the CPU that would take longer than this many hours (MOVIEREC_SEQUENCE_CPU_HOURS overrides) stops
after its first steps with an InvalidRequest saying so: at the notebook's scale (27M ratings, about 540,000
windows) 20 CPU epochs would take hours, where ml-latest-small's take 2 minutes."""
PROBE_STEPS = 5
"""The steps timed (after a first, warm-up one) to project a CPU training's time."""
SOFTMAX_CHUNK = 1 << 22
"""Training's full softmax computes its logits this many at a time (rows x movies, 16 MiB of float32): small
enough to stay in the cache between the softmax and the two gradient products (``_full_softmax``)."""
LOGIT_CHUNK = 1 << 24
"""Validation computes its logits this many at a time (rows x movies): its memory bound."""


def time_order(rows: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    """Permutation putting one user's ratings in the order the model reads them: by time, ties by movie row
    (by row alone when times is None)."""
    if times is None:
        return np.argsort(rows, kind="stable")
    return np.lexsort((rows, times))


def windows(
    indptr: np.ndarray, movies: np.ndarray, times: np.ndarray | None, *, pad: int, max_len: int = MAX_LEN
) -> np.ndarray:
    """(w, max_len + 1) int64 training windows: each user's movies (``movies[indptr[i]:indptr[i + 1]]``) in
    ``time_order``, cut from the end backwards into windows of max_len + 1 with stride max_len (a window's first
    movie is the one before's last: its input there, its target here), right-aligned and left-padded with
    ``pad``. A user with c >= 2 ratings gives ceil((c - 1) / max_len) windows of 2 movies or more, latest first;
    one with fewer gives none. Users in order."""
    indptr = np.asarray(indptr, dtype=np.int64)
    movies = np.asarray(movies, dtype=np.int64)
    counts = np.diff(indptr)  # (u,)
    users = np.repeat(np.arange(len(counts)), counts)  # (r,) ascending, as the ranges are
    keys = (movies, users) if times is None else (movies, np.asarray(times), users)
    ordered = movies[np.lexsort(keys)]  # (r,) grouped by user, each in time_order
    per_user = np.where(counts >= 2, -(-(counts - 1) // max_len), 0)  # (u,) ceil((c - 1) / max_len)
    owner = np.repeat(np.arange(len(counts)), per_user)  # (w,)
    back = np.arange(len(owner)) - np.repeat(np.cumsum(per_user) - per_user, per_user)  # (w,) 0 = the latest
    end = counts[owner] - back * max_len  # (w,) exclusive, within the user
    start = np.maximum(end - max_len - 1, 0)
    length = end - start  # (w,) >= 2
    out = np.full((len(owner), max_len + 1), pad, dtype=np.int64)
    row = np.repeat(np.arange(len(owner)), length)
    offset = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length)
    source = np.repeat(indptr[owner] + start, length) + offset  # (sum length,) into ordered
    out[row, max_len + 1 - np.repeat(length, length) + offset] = ordered[source]
    return out


def train_sequence(  # noqa: PLR0917 - the service calls it with these six positionally
    vectors: np.ndarray,
    triplets: np.ndarray,
    indptr: np.ndarray,
    movies: np.ndarray,
    times: np.ndarray | None,
    config: TrainConfig,
    *,
    device: torch.device,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the sequence model on users' ratings (user i's are catalogue rows ``movies[indptr[i]:indptr[i+1]]``
    with ``times`` (r,) int64 seconds, aligned; None: ordered by row) over ``vectors`` (n, d) float32 encoder
    movie vectors; every rating is an interaction, whatever its value. ``triplets`` (m, 3) catalogue rows
    (anchor, positive, negative) serve the AUC metric only.

    result.state: dict[str, torch.Tensor] on the CPU, float32: "proj.weight" (h, d) and "proj.bias" (h,) = the
    content tower W, b (the service projects keyword queries with them), and every tensor the numpy forward
    needs under names starting "seq." (position embedding, blocks, final norm; NOT the movie embeddings).
    result.projected: (n, h) float32 movie vectors z (cold ones c(x) alone). result.auc_before / auc_after:
    fitting.triplet_auc of all ``triplets`` on ``vectors`` and on ``projected``. result.warm: movies with at
    least one rating. train_losses: each epoch's mean step cross-entropy (the sampled one above
    FULL_SOFTMAX_LIMIT movies; the residual's penalty left out); val_losses: the full softmax's on the held-out
    windows, dropout off. Raises InvalidRequest when the ratings give fewer than 2 windows (nobody has 2
    ratings, or one user alone has 2 to MAX_LEN + 1), and on the CPU after its first steps when the whole
    training would take more than CPU_HOURS."""
    import torch

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    cut = windows(indptr, movies, times, pad=n)  # (w, MAX_LEN + 1)
    if len(cut) < 2:
        raise InvalidRequest(
            f"the sequence model needs at least 2 training windows of 2 ratings or more in time order; these "
            f"ratings give {len(cut)} (a user needs 2 ratings for one)"
        )
    warm = np.bincount(np.asarray(movies, dtype=np.int64), minlength=n)[:n] > 0  # (n,) rated at least once
    train_idx, test_idx = split(len(cut), test_fraction=config.test_fraction, seed=config.seed)
    torch.manual_seed(config.seed)
    fit = _Fit(vectors, cut, warm, train_idx=train_idx, test_idx=test_idx, config=config, device=device)
    result = TrainResult(state={}, projected=np.zeros(0), auc_before=_auc(vectors, triplets), auc_after=0.0)
    run_epochs(
        config.epochs,
        order_of_epoch=lambda: torch.randperm(len(fit.train_rows), generator=fit.generator).to(device),
        step_batch=fit.step_batch,
        validation_loss=fit.validation_loss,
        batch_size=config.batch_size,
        progress=progress,
        result=result,
    )

    state = {k: v.detach().float().cpu().contiguous() for k, v in fit.params.items()}
    residual = state.pop("residual").numpy()  # (n, h)
    projected = vectors @ state["proj.weight"].numpy().T + state["proj.bias"].numpy()  # (n, h): c(x)
    projected[warm] += residual[warm]
    result.state = state
    result.projected = np.ascontiguousarray(projected, dtype=np.float32)
    result.auc_after = _auc(result.projected, triplets)
    result.warm = int(warm.sum())
    return result


class _Fit:
    """One training run's tensors on the device, its optimiser and generator, and its two losses: the windows'
    inputs and targets (w, MAX_LEN) stay on the device and a batch is an index tensor into them."""

    def __init__(
        self, vectors: np.ndarray, cut: np.ndarray, warm: np.ndarray, *, train_idx: np.ndarray,
        test_idx: np.ndarray, config: TrainConfig, device: torch.device,
    ) -> None:  # fmt: skip
        import torch

        self.n, self.config, self.device = len(vectors), config, device
        self.params = _init_params(vectors.shape[1], config.hidden_dim, self.n, config.layers, device=device)
        self.x = torch.from_numpy(vectors).to(device)  # (n, d)
        self.warm = torch.from_numpy(warm).to(device)[:, None]  # (n, 1)
        self.inputs = torch.from_numpy(cut[:, :-1]).to(device)  # (w, MAX_LEN)
        self.targets = torch.from_numpy(cut[:, 1:]).to(device)  # (w, MAX_LEN)
        self.train_rows = torch.from_numpy(train_idx).to(device)
        self.test_rows = torch.from_numpy(test_idx).to(device)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)  # the order and the negatives
        self.optimiser = torch.optim.Adam(list(self.params.values()), lr=config.lr)
        self.sampled = self.n > FULL_SOFTMAX_LIMIT
        self.steps = config.epochs * -(-len(train_idx) // config.batch_size)  # the whole training's
        self.done, self.probe_started = 0, 0.0

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """bfloat16 autocast on CUDA, plain float32 elsewhere."""
        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def movie_vectors(self) -> torch.Tensor:
        """(n, h) z = c(x) + r, the residual of a movie nobody rated held at zero."""
        import torch.nn.functional as F

        p = self.params
        return F.linear(self.x, p["proj.weight"], p["proj.bias"]) + p["residual"] * self.warm

    def step_batch(self, rows: torch.Tensor) -> float:
        """One Adam step on the training windows ``train_rows[rows]``; answers its cross-entropy."""
        import torch
        import torch.nn.functional as F

        batch = self.train_rows[rows]  # (B,) windows
        inp, tgt = self.inputs[batch], self.targets[batch]  # (B, MAX_LEN) each
        with self.autocast():
            z = self.movie_vectors()
            hidden = hidden_states(self.params, z, inp, dropout=self.config.dropout, training=True)  # (B, L, h)
            valid = inp != self.n  # a real input predicts a real target
            hv, tv = hidden[valid], tgt[valid]  # (V, h), (V,): gathered before the product with z
            if self.sampled:
                negatives = torch.randint(self.n, (SAMPLED_NEGATIVES,), generator=self.generator).to(self.device)
                positive = (hv * z[tv]).sum(-1, keepdim=True)  # (V, 1)
                against = (hv @ z[negatives].T).masked_fill(negatives[None, :] == tv[:, None], float("-inf"))
                loss = F.cross_entropy(torch.cat([positive, against], dim=1).float(), torch.zeros_like(tv))
            else:
                loss = _full_softmax()(hv, z, tv)  # (V, n) logits, inside
        total = loss + RESIDUAL_DECAY * self.params["residual"].square().sum()
        self.optimiser.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        self.optimiser.step()
        self._check_cpu_time()
        return float(loss.detach())

    def _check_cpu_time(self) -> None:
        """On the CPU, after PROBE_STEPS timed steps: an InvalidRequest when the whole training would take more
        than CPU_HOURS (MOVIEREC_SEQUENCE_CPU_HOURS), naming what it would take and what to do instead."""
        self.done += 1
        if self.device.type != "cpu" or self.done not in (1, 1 + PROBE_STEPS):
            return
        if self.done == 1:  # the warm-up step is done: the probe starts
            self.probe_started = time.perf_counter()
            return
        per_step = (time.perf_counter() - self.probe_started) / PROBE_STEPS
        hours = per_step * self.steps / 3600
        limit = float(os.environ.get("MOVIEREC_SEQUENCE_CPU_HOURS") or CPU_HOURS)
        if hours > limit:
            raise InvalidRequest(
                f"the sequence model would train for about {hours:.1f} hours on this worker's CPU "
                f"({self.steps:,} steps of {self.config.batch_size} windows over {self.n:,} movies, "
                f"{per_step * 1000:.0f} ms a step), over the limit of {limit:g} (MOVIEREC_SEQUENCE_CPU_HOURS); "
                "train it on a gpu worker with CUDA, with fewer epochs, or choose another recipe"
            )

    def validation_loss(self) -> float:
        """The full softmax's mean cross-entropy over the held-out windows' targets, dropout off; its logits
        LOGIT_CHUNK at a time."""
        import torch
        import torch.nn.functional as F

        chunk = max(1, LOGIT_CHUNK // self.n)
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0  # one sync, at the end
        with torch.no_grad(), self.autocast():
            z = self.movie_vectors()
            for start in range(0, len(self.test_rows), self.config.batch_size):
                batch = self.test_rows[start : start + self.config.batch_size]
                inp, tgt = self.inputs[batch], self.targets[batch]
                valid = inp != self.n
                hv, tv = hidden_states(self.params, z, inp)[valid], tgt[valid]
                for first in range(0, len(hv), chunk):
                    logits = (hv[first : first + chunk] @ z.T).float()
                    total += F.cross_entropy(logits, tv[first : first + chunk], reduction="sum")
                count += len(hv)
        return float(total) / max(count, 1)


def hidden_states(
    params: Mapping[str, torch.Tensor],
    z: torch.Tensor,
    inputs: torch.Tensor,
    *,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """The torch forward: (B, L, h) final hidden states of ``inputs`` (B, L) catalogue rows, right-aligned,
    left-padded with n (= len(``z``)), over the movie vectors ``z`` (n, h) and the network's "seq." tensors in
    ``params``. Dropout ``dropout`` only when ``training``. ``SequenceNet`` is the same in numpy."""
    import torch
    import torch.nn.functional as F

    n, h = z.shape
    length = inputs.shape[1]
    pos = params["seq.pos"]  # (MAX_LEN, h)
    padded = torch.cat([z, z.new_zeros(1, h)])  # (n + 1, h): PAD's vector is zero
    x = F.dropout(padded[inputs] * h**0.5 + pos[len(pos) - length :], dropout, training)  # (B, L, h)
    eye = torch.eye(length, dtype=torch.bool, device=inputs.device)
    causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).tril()
    allowed = causal & ((inputs != n)[:, None, :] | eye)  # (B, L, L) query i reads key j
    for k in range(_layers(params)):
        p = f"seq.blocks.{k}."
        y = F.layer_norm(x, (h,), params[p + "ln1.weight"], params[p + "ln1.bias"], LN_EPS)
        q, key, v = (F.linear(y, params[f"{p}attn.{c}.weight"], params[f"{p}attn.{c}.bias"]) for c in "qkv")
        scores = (q @ key.transpose(-1, -2) * h**-0.5).masked_fill(~allowed, float("-inf"))  # (B, L, L)
        attended = F.linear(torch.softmax(scores, dim=-1) @ v, params[p + "attn.o.weight"], params[p + "attn.o.bias"])
        x = x + F.dropout(attended, dropout, training)
        y = F.layer_norm(x, (h,), params[p + "ln2.weight"], params[p + "ln2.bias"], LN_EPS)
        inner = F.gelu(F.linear(y, params[p + "ffn.in.weight"], params[p + "ffn.in.bias"]))
        x = x + F.dropout(F.linear(inner, params[p + "ffn.out.weight"], params[p + "ffn.out.bias"]), dropout, training)
    return F.layer_norm(x, (h,), params["seq.norm.weight"], params["seq.norm.bias"], LN_EPS)


class SequenceNet:
    """The trained network in numpy (float32) for serving: no torch import. The arithmetic of
    ``hidden_states``, on one unpadded history at a time (no padding, so no key mask), and only the last
    position through the last block.

    An answer's whole forward is some 40 small products (up to 50 x h by h x h), so its cost is numpy's calls,
    not their arithmetic: the weights are kept transposed and contiguous, a block's Q, K and V are one product
    (K and V alone in the last block, whose one query row is its own), and the causal mask is added, not
    assigned through a boolean index."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.w = dict(weights)
        self.layers = _layers(self.w)
        self.max_len, self.hidden_dim = self.w["seq.pos"].shape
        self.scale = np.float32(self.hidden_dim**0.5)
        future = np.triu(np.ones((self.max_len, self.max_len), dtype=bool), k=1)  # key j after query i
        self.mask = np.where(future, np.float32(-np.inf), np.float32(0.0)).astype(np.float32)
        self.blocks = [self._block(f"seq.blocks.{k}.") for k in range(self.layers)]
        self.norm_w = self.w["seq.norm.weight"] * np.float32(self.hidden_dim**0.5)
        self.norm_b = self.w["seq.norm.bias"]

    def _block(self, p: str) -> dict[str, np.ndarray]:
        """One block's weights as the forward reads them, folded so that fewer numpy calls do the same sums:

        - (in, out) matrices, Q K V side by side (K V alone for the last block's one query row);
        - each LayerNorm's gain and shift, and the sqrt(h) of its standardisation, folded into the product after
          it (``_standardise`` leaves them out);
        - 1 / sqrt(h) of the attention's scores folded into Q;
        - GELU's 1 / sqrt(2) folded into the FFN's first product and its 1 / 2 into the second, which leaves
          u + u erf(u) (``_gelu_folded``)."""
        h = self.hidden_dim
        root_h, root_2 = np.float64(h) ** 0.5, np.float64(2.0) ** 0.5

        def folded(norm: str, parts: list[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray]:
            # y = s(x) sqrt(h) g + b, then y W^T + c = s(x) (sqrt(h) g[:, None] W^T) + (b W^T + c), all times a
            gain = self.w[norm + ".weight"].astype(np.float64)
            shift = self.w[norm + ".bias"].astype(np.float64)
            mats, biases = [], []
            for name, a in parts:
                wt = self.w[name + ".weight"].astype(np.float64).T  # (in, out)
                mats.append(a * root_h * gain[:, None] * wt)
                biases.append(a * (shift @ wt + self.w[name + ".bias"].astype(np.float64)))
            return (np.ascontiguousarray(np.concatenate(mats, axis=1), dtype=np.float32),
                    np.concatenate(biases).astype(np.float32))  # fmt: skip

        inv_sqrt = 1.0 / root_h
        qkv, qkv_b = folded(p + "ln1", [(p + "attn.q", inv_sqrt), (p + "attn.k", 1.0), (p + "attn.v", 1.0)])
        ffn_in, ffn_in_b = folded(p + "ln2", [(p + "ffn.in", 1.0 / root_2)])

        def plain(name: str, a: float = 1.0) -> np.ndarray:
            return np.ascontiguousarray(self.w[name + ".weight"].astype(np.float64).T * a, dtype=np.float32)

        return {
            "qkv": qkv, "qkv_b": qkv_b,
            "q": np.ascontiguousarray(qkv[:, :h]), "q_b": qkv_b[:h],
            "kv": np.ascontiguousarray(qkv[:, h:]), "kv_b": qkv_b[h:],
            "o": plain(p + "attn.o"), "o_b": self.w[p + "attn.o.bias"],
            "in": ffn_in, "in_b": ffn_in_b,
            "out": plain(p + "ffn.out", root_2 / 2.0), "out_b": self.w[p + "ffn.out.bias"],
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> SequenceNet | None:
        """The network of a model's state (its "seq." tensors, as float32); None when it has none."""
        weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items() if k.startswith("seq.")}
        return cls(weights) if weights else None

    def query(self, embeddings: np.ndarray, history: np.ndarray) -> np.ndarray:
        """(h,) float32 final hidden state over ``history``: catalogue rows already in time order, of which
        only the last ``max_len`` are read, the latest at the last position, through ``embeddings`` (n, h) the
        model's movie vectors. An empty history gives zeros."""
        history = np.asarray(history, dtype=np.int64)[-self.max_len :]
        length = len(history)
        h = self.hidden_dim
        if length == 0:
            return np.zeros(h, dtype=np.float32)
        x = embeddings[history].astype(np.float32, copy=False) * self.scale + self.w["seq.pos"][self.max_len - length :]
        last = len(self.blocks) - 1
        for k, b in enumerate(self.blocks):
            y = _standardise(x)
            if k == last:  # only the last position is read, and it sees every key: no mask
                q = y[-1:] @ b["q"] + b["q_b"]
                kv = y @ b["kv"] + b["kv_b"]
                key, v = kv[:, :h], kv[:, h:]
                x = x[-1:]
                scores = q @ key.T
            else:
                qkv = y @ b["qkv"] + b["qkv_b"]
                q, key, v = qkv[:, :h], qkv[:, h : 2 * h], qkv[:, 2 * h :]
                scores = q @ key.T + self.mask[:length, :length]  # (length, length)
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            x = x + (scores / scores.sum(axis=1, keepdims=True) @ v) @ b["o"] + b["o_b"]
            x = x + _gelu_folded(_standardise(x) @ b["in"] + b["in_b"]) @ b["out"] + b["out_b"]
        return np.asarray((_standardise(x) * self.norm_w + self.norm_b)[0], dtype=np.float32)

    def queries(
        self, embeddings: np.ndarray, indptr: np.ndarray, rows: np.ndarray, times: np.ndarray | None
    ) -> np.ndarray:
        """(b, h) float32: user i's ``rows[indptr[i]:indptr[i + 1]]`` (with their ``times``, aligned; None:
        ordered by row) put in ``time_order``, then ``query``. One user at a time, so a user's vector never
        depends on who shares the batch (bit-identical to ``queries`` over that user alone)."""
        out = np.zeros((len(indptr) - 1, self.hidden_dim), dtype=np.float32)
        for i in range(len(indptr) - 1):
            user = np.asarray(rows[indptr[i] : indptr[i + 1]])
            order = time_order(user, None if times is None else np.asarray(times[indptr[i] : indptr[i + 1]]))
            out[i] = self.query(embeddings, user[order])
        return out


def _standardise(x: np.ndarray) -> np.ndarray:
    """LayerNorm's standardisation over the last axis divided by sqrt(width) (``SequenceNet`` folds that factor,
    the gain and the shift into what follows): (x - mean) / sqrt(sum of squares + width ``LN_EPS``), the biased
    variance as torch's."""
    width = x.shape[-1]
    centred = x - np.add.reduce(x, axis=-1, keepdims=True) / np.float32(width)
    return centred / np.sqrt(np.add.reduce(centred * centred, axis=-1, keepdims=True) + np.float32(width * LN_EPS))


def _gelu_folded(u: np.ndarray) -> np.ndarray:
    """sqrt(2) GELU(sqrt(2) u) = u (1 + erf(u)): GELU's exact (erf) form with its constants folded into the
    products around it (``SequenceNet._block``)."""
    from scipy.special import erf

    return np.asarray(u + u * erf(u), dtype=np.float32)


def _layers(weights: Mapping[str, object]) -> int:
    """The number of blocks among ``weights``' names (``seq.blocks.<k>.``)."""
    return sum(1 for name in weights if name.startswith("seq.blocks.") and name.endswith(".ln1.weight"))


def _init_params(d: int, h: int, n: int, layers: int, *, device: torch.device) -> dict[str, torch.Tensor]:
    """The trainable tensors, named as the state (plus "residual" (n, h), zero), on ``device``, drawn from
    torch's global generator: each linear layer as torch.nn.Linear's (uniform in +-1/sqrt(fan_in)), LayerNorms
    one and zero, positions normal with POSITION_STD."""
    import torch

    params: dict[str, torch.Tensor] = {}

    def linear(name: str, fan_out: int, fan_in: int) -> None:
        bound = fan_in**-0.5
        params[name + ".weight"] = torch.empty(fan_out, fan_in).uniform_(-bound, bound)
        params[name + ".bias"] = torch.empty(fan_out).uniform_(-bound, bound)

    def norm(name: str) -> None:
        params[name + ".weight"], params[name + ".bias"] = torch.ones(h), torch.zeros(h)

    linear("proj", h, d)
    params["residual"] = torch.zeros(n, h)
    params["seq.pos"] = torch.randn(MAX_LEN, h) * POSITION_STD
    for k in range(layers):
        p = f"seq.blocks.{k}."
        norm(p + "ln1")
        for c in "qkvo":
            linear(f"{p}attn.{c}", h, h)
        norm(p + "ln2")
        linear(p + "ffn.in", h, h)
        linear(p + "ffn.out", h, h)
    norm("seq.norm")
    return {k: v.to(device).requires_grad_() for k, v in params.items()}


def _auc(vectors: np.ndarray, triplets: np.ndarray) -> float:
    return triplet_auc(vectors, triplets) if len(triplets) else float("nan")


def _product_dtype(hv: torch.Tensor) -> torch.dtype:
    """The full softmax's three products' input type: bfloat16 under CUDA autocast, and on a CPU with native
    bfloat16 (AVX512-BF16 or AMX, which oneDNN uses; the products accumulate in float32 either way) for float32
    inputs unless MOVIEREC_SEQUENCE_FP32 is set; else the inputs' own."""
    import torch

    if hv.is_cuda:
        return torch.bfloat16 if torch.is_autocast_enabled("cuda") else hv.dtype
    if hv.dtype == torch.float32 and _cpu_bf16() and not os.environ.get("MOVIEREC_SEQUENCE_FP32"):
        return torch.bfloat16
    return hv.dtype


@functools.cache
def _cpu_bf16() -> bool:
    import torch

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported
    return bool(torch.backends.mkldnn.is_available() and native())  # type: ignore[no-untyped-call]


@functools.cache
def _full_softmax() -> Any:
    """The autograd function ``apply(hv, z, targets)``: the mean cross-entropy of the logits hv z^T (V, n) (in
    float32) against ``targets`` (V,), fused with its gradients: the forward takes the rows SOFTMAX_CHUNK // n
    at a time, turns each chunk's logits into the softmax's gradient (softmax - one-hot) / V in place and
    multiplies it into hv's rows' gradient and into z's (summed over chunks), and keeps those two; the backward
    scales them by the upstream gradient. One chunk-sized buffer, reused while it is in the cache, and torch's
    cross_entropy on the logits keeps four (V, n) buffers. The three products take ``_product_dtype``'s inputs
    (bfloat16 under CUDA autocast and on a CPU with native bfloat16) and sum in float32; the softmax itself is
    float32. 3 epochs on ml-latest-small, 2 cores with AVX512-BF16: 24.8 s with one (V, n) float32 buffer,
    15.5-19.0 s fused in float32, 11.2-11.5 s with bfloat16 products, the losses equal to 3 decimals."""
    import torch

    class FullSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hv: torch.Tensor, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            low = _product_dtype(hv)
            rows, n = len(hv), len(z)
            z_low = z.to(low)
            grad_hv = torch.empty(hv.shape, dtype=hv.dtype, device=hv.device)
            grad_z = torch.zeros(z.shape, dtype=z.dtype, device=z.device)
            loss = torch.zeros((), dtype=torch.float32, device=hv.device)
            step = max(1, SOFTMAX_CHUNK // max(n, 1))
            for first in range(0, rows, step):
                part, wanted = hv[first : first + step], targets[first : first + step, None]
                grad = (part.to(low) @ z_low.T).float()  # (c, n) the logits, then their gradient, in place
                grad -= grad.amax(dim=1, keepdim=True)
                picked = grad.gather(1, wanted)  # (c, 1)
                grad.exp_()
                total = grad.sum(dim=1, keepdim=True)  # (c, 1)
                loss += (total.log() - picked).sum()
                grad /= total * rows
                grad.scatter_add_(1, wanted, torch.full_like(picked, -1.0 / rows))
                grad_low = grad.to(low)
                grad_hv[first : first + step] = grad_low @ z_low
                grad_z += grad_low.T @ part.to(low)
            ctx.save_for_backward(grad_hv, grad_z)
            return loss / max(rows, 1)

        @staticmethod
        def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
            grad_hv, grad_z = ctx.saved_tensors
            return grad_hv * upstream, grad_z * upstream, None

    return FullSoftmax.apply
