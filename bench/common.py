"""What the stack-level benchmarks share: the machine line, a fresh stack, waiting for a job over HTTP, a model
trained and warmed to serve."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from cli.stack import Stack
from shared.infra.settings import Settings

FINISHED = ("succeeded", "failed", "cancelled")


def machine(*more: str) -> str:
    """``# machine: x86_64, 2 cores, Python 3.11.7[, more...]``: the line every benchmark prints first."""
    cpu = platform.processor() or platform.machine()
    return ", ".join([f"# machine: {cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}", *more])


@contextmanager
def fresh_stack(settings: Settings, run_dir: Path, *, cpu_workers: int = 2) -> Iterator[Stack]:
    """A new ``movierec up`` stack: its own embedded Redis (AOF, fsync on every write), the API, a CPU worker
    with ``cpu_workers`` processes and the GPU-queue worker; ready when entered, stopped (Redis included) when
    left."""
    with Stack(settings, data_dir=run_dir, cpu_workers=cpu_workers, embedded_redis=True,
               log_dir=run_dir / "logs") as stack:  # fmt: skip
        yield stack


def wait_job(api: str, job_id: str, *, timeout_s: float = 600) -> dict[str, Any]:
    """The job's record once it has finished (polled over HTTP)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = requests.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
        if job.get("status") in FINISHED:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} unfinished after {timeout_s:.0f} s")


def train_on(api: str, directory: str) -> dict[str, Any]:
    """Run the default pipeline on ``directory`` (a name under the stack's data root): its finished record."""
    job = requests.post(f"{api}/v1/pipelines", json={"path": directory}, timeout=30).json()
    state = wait_job(api, job["id"])
    assert state["status"] == "succeeded", state
    return state


def warm(api: str) -> None:
    """A few users' recommendations, so that each worker process has loaded the active model."""
    for user in range(1, 9):
        requests.post(f"{api}/v1/recommendations?wait=30", json={"user_id": user}, timeout=60)
