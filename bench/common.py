"""What the stack-level benchmarks share: the machine line, a fresh stack, waiting for a job over HTTP."""

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

from cli.stack import Stack, free_port
from shared.infra.settings import Settings

FINISHED = ("succeeded", "failed", "cancelled")


def machine() -> str:
    """``# machine: x86_64, 2 cores, Python 3.11.7``: the line every benchmark prints first."""
    cpu = platform.processor() or platform.machine()
    return f"# machine: {cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


@contextmanager
def fresh_stack(settings: Settings, run_dir: Path) -> Iterator[Stack]:
    """A new ``movierec up`` stack: its own embedded Redis (AOF, fsync on every write), the API, a CPU worker
    with 2 processes and the GPU-queue worker; ready when entered, stopped (Redis included) when left."""
    stack = Stack(settings, data_dir=run_dir, port=free_port(), cpu_workers=2, embedded_redis=True,
                  log_dir=run_dir / "logs")  # fmt: skip
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def wait_job(api: str, job_id: str, *, timeout_s: float = 600) -> dict[str, Any]:
    """The job's record once it has finished (polled over HTTP)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = requests.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
        if job.get("status") in FINISHED:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} unfinished after {timeout_s:.0f} s")
