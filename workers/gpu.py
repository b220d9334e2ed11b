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

from shared.errors import NotFound
from shared.jobs.store import utcnow_iso
from shared.ml.encoder import EncodeStats, VectorCache, load_encoder, mean_by_rows

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
        result = {**described, "count": len(items), **stats.__dict__}
        # The input goes once the job is marked done, so a run killed before that finds it again.
        return Outcome(result, artifact=name, inline="vectors", message=f"{len(items):,} vectors",
                       drop=(params["input"],))  # fmt: skip

    return run_job(job_id, stage="encoding", body=body)


def _encode_dataset(
    ctx: JobContext, encoder: Any, cache: VectorCache, *, dataset: str, described: dict[str, Any], on_batch: Any
) -> Outcome:
    name, movies, stats, n_strings = dataset_embeddings(ctx, encoder, cache, dataset=dataset, on_batch=on_batch)
    result = {**described, "dataset": dataset, "embeddings": name, "count": len(movies)}
    result |= {"descriptor_strings": n_strings, **stats.__dict__}
    return Outcome(result, artifact=name, message=f"{len(movies):,} movies, {stats.encoded:,} strings encoded")


def dataset_embeddings(
    ctx: JobContext, encoder: Any, cache: VectorCache, *, dataset: str, on_batch: Any = None
) -> tuple[str, np.ndarray, EncodeStats, int]:
    """The dataset's (n, dim) movie matrix for this encoder, stored under a name fixed by (dataset, model, pooling)."""
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
    described = {"model": encoder.name, "identity": encoder.identity, "pooling": encoder.pooling, "dim": encoder.dim}
    artifacts.put_json(f"{name}/meta", {**described, "dataset": dataset})
    return name, movies, stats, len(indices)


@shared_task(name="workers.gpu.train")
def train_model(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Train the Siamese projection on a dataset's triplets; store weights, projections and a version record."""

    def body(ctx: JobContext) -> Outcome:
        from safetensors.torch import save

        from shared.ml.training import TrainConfig, train
        from shared.store.models import model_version

        config = TrainConfig(**{k: params[k] for k in _TRAIN_KNOBS if params.get(k) is not None})
        dataset, triplets_name = params["dataset"], params["triplets"]
        artifacts, models = ctx.services.artifacts, ctx.services.models
        encoder = _encoder_for(ctx, params)
        cache = VectorCache(ctx.services.redis, prefix=ctx.services.settings.key_prefix)
        version = model_version(
            dataset=dataset,
            triplets=triplets_name,
            encoder_identity=encoder.identity,
            pooling=encoder.pooling,
            config=config.as_dict(),
        )
        existing = models.get(version)
        if existing is not None:
            return Outcome({**existing, "reused": True}, artifact=existing["artifacts"]["embeddings"])

        ctx.progress(0.05, "encoding", "movie embeddings")
        embeddings_name, vectors, _, _ = dataset_embeddings(ctx, encoder, cache, dataset=dataset)
        if not artifacts.exists(triplets_name):
            raise NotFound(f"triplets {triplets_name!r} do not exist; mine them first")
        movie_ids = artifacts.get_array(f"dataset/{dataset}/movie_ids")
        triplets = _rows_of(movie_ids, artifacts.get_array(triplets_name))  # (m, 3) catalogue rows

        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            ctx.progress(0.1 + 0.85 * epoch / config.epochs, "training", f"epoch {epoch}/{config.epochs}: "
                         f"train loss {train_loss:.4f}, validation loss {val_loss:.4f}")  # fmt: skip

        result = train(vectors, triplets, config, device=device(), progress=on_epoch)
        weights, projected = f"models/{version}/weights", f"models/{version}/embeddings"
        artifacts.put_bytes(weights, save(result.state, metadata={"version": version}))
        artifacts.put_array(projected, result.projected)
        record = {
            "version": version,
            "created_at": utcnow_iso(),
            "dataset": dataset,
            "triplets": triplets_name,
            "encoder": {"model": encoder.name, "identity": encoder.identity, "pooling": encoder.pooling},
            "input_dim": encoder.dim,
            "config": config.as_dict(),
            "metrics": {
                "test_auc_before": round(result.auc_before, 6),
                "test_auc_after": round(result.auc_after, 6),
                "train_losses": [round(v, 6) for v in result.train_losses],
                "val_losses": [round(v, 6) for v in result.val_losses],
            },
            "artifacts": {"weights": weights, "embeddings": projected, "input_embeddings": embeddings_name},
            "device": str(device()),
        }
        models.put(record)
        message = f"test AUC {result.auc_before:.4f} -> {result.auc_after:.4f}"
        return Outcome({**record, "reused": False}, artifact=projected, message=message)

    return run_job(job_id, stage="training", body=body)


_TRAIN_KNOBS = ("epochs", "hidden_dim", "margin", "lr", "batch_size", "seed")


def _rows_of(movie_ids: np.ndarray, triplets: np.ndarray) -> np.ndarray:
    """(m, 3) movieIds -> catalogue rows (movie_ids is the catalogue, in order)."""
    order = np.argsort(movie_ids)
    rows = order[np.searchsorted(movie_ids, triplets, sorter=order)]
    if not (movie_ids[rows] == triplets).all():
        raise NotFound("the triplets name movies that are not in the dataset")
    return np.asarray(rows, dtype=np.int64)
