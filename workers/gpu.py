"""Tasks of the ``gpu`` queue, and the one place a worker picks its torch device.

A GPU worker is one process per device with the solo pool, so CUDA is initialised in the process that
uses it and never in a parent that forks. torch is imported inside functions: importing this module (as
the worker's parent and the API's Celery app do) must not load it.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

from celery import shared_task

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
