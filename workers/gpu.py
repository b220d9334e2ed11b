"""Tasks of the ``gpu`` queue, and the one place a worker picks its torch device.

A GPU worker is one process per device with the solo pool, so CUDA is initialised in the process that
uses it and never in a parent that forks. torch is imported inside functions: importing this module (as
the worker's parent and the API's Celery app do) must not load it.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from celery import shared_task

from shared.encoder import VectorCache, load_encoder, mean_by_rows
from shared.errors import NotFound

from .base import JobContext, Outcome, run_job, services

if TYPE_CHECKING:
    import torch


@cache
def device() -> torch.device:
    """The device of this process, resolved once: ``MOVIEREC_DEVICE``, where "auto" prefers CUDA."""
    import torch

    wanted = services().settings.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


@shared_task(name="workers.gpu.describe_device")
def describe_device(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Report the device, torch build and process this GPU-queue worker runs with."""

    def body(ctx: JobContext) -> Outcome:
        import torch

        dev = device()
        info: dict[str, Any] = {
            "device": str(dev),
            "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(),
            "pid": os.getpid(),
        }
        if dev.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(dev)
        return Outcome(info)

    return run_job(job_id, stage="describe", body=body)


def _encoder_for(ctx: JobContext, params: dict[str, Any]) -> Any:
    settings = ctx.services.settings
    model = params.get("model") or settings.encoder_model
    pooling = params.get("pooling") or settings.encoder_pooling
    ctx.progress(0.01, "loading model", f"{model} ({pooling})")
    return load_encoder(model, pooling, device(), autocast=settings.autocast, batch_size=settings.encode_batch_size)


@shared_task(name="workers.gpu.encode")
def encode(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Encode a dataset's descriptors into a movie matrix, or a user's texts or items into vectors."""

    def body(ctx: JobContext) -> Outcome:
        encoder = _encoder_for(ctx, params)
        cache = VectorCache(ctx.services.redis, prefix=ctx.services.settings.key_prefix)

        def on_batch(done: int, total: int) -> None:
            ctx.progress(0.05 + 0.9 * done / max(total, 1), "encoding", f"{done:,} of {total:,} new strings")

        described = {"model": encoder.name, "identity": encoder.identity, "pooling": encoder.pooling}
        described["dim"] = encoder.dim
        if params.get("dataset"):
            return _encode_dataset(
                ctx, encoder, cache, dataset=params["dataset"], described=described, on_batch=on_batch
            )
        artifacts = ctx.services.artifacts
        inputs = artifacts.get_json(params["input"])
        items: list[list[str]] = inputs if params["shape"] == "items" else [[t] for t in inputs]
        flat = [t for item in items for t in item]
        vectors, stats = cache.encode(encoder, flat, on_batch=on_batch)
        indptr = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum([len(i) for i in items], out=indptr[1:])
        matrix = mean_by_rows(indptr, np.arange(len(flat)), vectors)  # (items, dim): an item is its strings' mean
        name = f"encoded/{job_id}"
        artifacts.put_array(name, matrix, ttl_s=ctx.services.settings.result_ttl_s)
        artifacts.delete(params["input"])
        result = {**described, "count": len(items), **stats.__dict__}
        return Outcome(result, artifact=name, inline="vectors", message=f"{len(items):,} vectors")

    return run_job(job_id, stage="encoding", body=body)


def _encode_dataset(
    ctx: JobContext, encoder: Any, cache: VectorCache, *, dataset: str, described: dict[str, Any], on_batch: Any
) -> Outcome:
    artifacts = ctx.services.artifacts
    base = f"dataset/{dataset}"
    if not artifacts.exists(f"{base}/vocabulary"):
        raise NotFound(f"dataset {dataset!r} does not exist")
    vocabulary: list[str] = artifacts.get_json(f"{base}/vocabulary")
    indptr, indices = artifacts.get_array(f"{base}/desc_indptr"), artifacts.get_array(f"{base}/desc_indices")
    vectors, stats = cache.encode(encoder, vocabulary, on_batch=on_batch)  # (V, dim), each string once
    movies = mean_by_rows(indptr, indices, vectors)  # (n, dim): a movie is the mean of its descriptors
    name = f"embeddings/{dataset}/{encoder.identity[:16]}-{encoder.pooling}"
    artifacts.put_array(name, movies)
    artifacts.put_json(f"{name}/meta", {**described, "dataset": dataset})
    result = {**described, "dataset": dataset, "embeddings": name, "count": len(movies)}
    result |= {"descriptor_strings": len(indices), **stats.__dict__}
    return Outcome(result, artifact=name, message=f"{len(movies):,} movies, {stats.encoded:,} strings encoded")
