"""Tasks of the ``gpu`` queue, and the one place a worker picks its torch device.

A GPU worker is one process per device with the solo pool, so CUDA is initialised in the process that
uses it and never in a parent that forks. torch is imported inside functions: importing this module (as
the worker's parent and the API's Celery app do) must not load it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from celery import shared_task

from shared.infra.clock import utcnow_iso
from shared.infra.keys import encoded_artifact
from shared.infra.process import per_process
from shared.logic.encoding import describe, encode_dataset, encode_items
from shared.logic.versions import train_version
from shared.ml.encoder import Encoder, load_encoder
from shared.ml.fitting import TrainConfig

from .base import JobContext, Outcome, run_job, services

if TYPE_CHECKING:
    import torch


@per_process(maxsize=1)
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


def _encoder_for(ctx: JobContext, params: dict[str, Any]) -> Encoder:
    settings = ctx.services.settings
    model = params.get("model") or settings.encoder_model
    pooling = params.get("pooling") or settings.encoder_pooling
    ctx.progress(0.01, "loading model", f"{model} ({pooling})")
    return load_encoder(model, pooling, device(), autocast=settings.autocast, batch_size=settings.encode_batch_size,
                        data_root=settings.data_root, hub_download=settings.hub_download)  # fmt: skip


@shared_task(name="workers.gpu.encode")
def encode(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Encode a dataset's descriptors into a movie matrix, or a user's texts or items into vectors."""

    def body(ctx: JobContext) -> Outcome:
        encoder = _encoder_for(ctx, params)
        artifacts = ctx.services.artifacts

        def on_batch(done: int, total: int) -> None:
            ctx.progress(0.05 + 0.9 * done / max(total, 1), "encoding", f"{done:,} of {total:,} new strings")

        if params.get("dataset"):
            vectors = ctx.services.vectors
            movies = encode_dataset(artifacts, vectors, encoder, dataset=params["dataset"], on_batch=on_batch)
            result = {**describe(encoder), "dataset": params["dataset"], "embeddings": movies.name}
            result |= {"count": len(movies.vectors), "descriptor_strings": movies.strings, **movies.stats.__dict__}
            message = f"{len(movies.vectors):,} movies, {movies.stats.encoded:,} strings encoded"
            return Outcome(result, artifact=movies.name, message=message)
        inputs = artifacts.get_json(params["input"])
        items: list[list[str]] = inputs if params["shape"] == "items" else [[t] for t in inputs]
        encoded = encode_items(artifacts, ctx.services.vectors, encoder, items=items, name=encoded_artifact(job_id),
                               ttl_s=ctx.services.settings.result_ttl_s, on_batch=on_batch)  # fmt: skip
        result = {**describe(encoder), "count": len(items), **encoded.stats.__dict__}
        # The input goes once the job is marked done, so a run killed before that finds it again.
        return Outcome(result, artifact=encoded.name, inline="vectors", message=f"{len(items):,} vectors",
                       drop=(params["input"],))  # fmt: skip

    return run_job(job_id, stage="encoding", body=body)


@shared_task(name="workers.gpu.train")
def train_model(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Train the Siamese projection on a dataset's triplets; store weights, projections and a version record."""

    def body(ctx: JobContext) -> Outcome:
        config = TrainConfig(**{k: params[k] for k in _TRAIN_KNOBS if params.get(k) is not None})
        encoder = _encoder_for(ctx, params)

        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            ctx.progress(0.1 + 0.85 * epoch / config.epochs, "training", f"epoch {epoch}/{config.epochs}: "
                         f"train loss {train_loss:.4f}, validation loss {val_loss:.4f}")  # fmt: skip

        ctx.progress(0.05, "encoding", "movie embeddings")
        record, reused = train_version(
            ctx.services.artifacts, ctx.services.models, ctx.services.vectors, encoder, dataset=params["dataset"],
            triplets=params["triplets"], config=config, device=device(), created_at=utcnow_iso(), on_epoch=on_epoch,
            store_fit=params.get("store_fit"),
        )  # fmt: skip
        metrics = record["metrics"]
        message = f"test AUC {metrics['test_auc_before']:.4f} -> {metrics['test_auc_after']:.4f}"
        return Outcome({**record, "reused": reused}, artifact=record["artifacts"]["embeddings"], message=message)

    return run_job(job_id, stage="training", body=body)


_TRAIN_KNOBS = (
    "epochs", "hidden_dim", "margin", "lr", "batch_size", "seed", "architecture", "liked_at", "profile", "recency_days",
    "prior", "prior_until", "cold_boost", "regularization", "alpha", "layers", "dropout",
)  # fmt: skip
