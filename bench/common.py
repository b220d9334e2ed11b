"""What the stack-level benchmarks share: the machine line, a fresh stack, waiting for a job over HTTP, a model
trained and warmed to serve."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from cli.stack import Stack, free_port, wait_ready
from shared.infra.settings import Settings

REPO = Path(__file__).resolve().parents[1]
STOP_S = 60

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


HTTP = requests.Session()
"""The benchmarks' HTTP client for the helpers below: ``use_key`` makes it send a bearer key."""


def use_key(key: str | None) -> None:
    """Send ``Authorization: Bearer <key>`` on every request of the helpers below (None: none)."""
    HTTP.headers.pop("Authorization", None)
    if key:
        HTTP.headers["Authorization"] = f"Bearer {key}"


def wait_job(api: str, job_id: str, *, timeout_s: float = 600) -> dict[str, Any]:
    """The job's record once it has finished (polled over HTTP, every 0.1 s at first, then less often, up to once
    a second: a long job's thousands of polls would load the machine it is measured on)."""
    deadline = time.monotonic() + timeout_s
    pause = 0.1
    while time.monotonic() < deadline:
        job: dict[str, Any] = HTTP.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
        if job.get("status") in FINISHED:
            return job
        time.sleep(pause)
        pause = min(1.0, pause * 1.2)
    raise TimeoutError(f"job {job_id} unfinished after {timeout_s:.0f} s")


def train_on(api: str, directory: str, **options: Any) -> dict[str, Any]:
    """Run a pipeline on ``directory`` (a name under the stack's data root), the hybrid recipe unless ``options``
    name another (with any other pipeline option): its finished record."""
    body = {"path": directory, "recipe": "hybrid", **options}
    job = HTTP.post(f"{api}/v1/pipelines", json=body, timeout=30).json()
    state = wait_job(api, job["id"])
    assert state["status"] == "succeeded", state
    return state


def warm(api: str) -> None:
    """A few users' recommendations, so that each worker process has loaded the active model."""
    for user in range(1, 9):
        HTTP.post(f"{api}/v1/recommendations?wait=30", json={"user_id": user}, timeout=60)


@dataclass(frozen=True)
class TreeStack:
    """A running ``movierec up`` of some tree: its API and its supervisor's process."""

    api: str
    up: subprocess.Popen[bytes]

    def workers(self, queue: str) -> list[psutil.Process]:
        """The main processes of the stack's workers for ``queue`` (their pools are their children)."""
        return [p for p in psutil.Process(self.up.pid).children()
                if "worker" in p.cmdline() and queue in p.cmdline()]  # fmt: skip

    def kill_workers(self, queue: str) -> int:
        """SIGKILL every worker of ``queue`` whole (main process and pool), as a host dying would: ``movierec up``
        starts them again. Answers how many processes died."""
        victims = [child for main in self.workers(queue) for child in [main, *main.children(recursive=True)]]
        for victim in victims:
            with suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        return len(victims)


@contextmanager
def tree_stack(
    tree: Path, run_dir: Path, env: Mapping[str, str], *, cpu_workers: int = 2, ready_timeout_s: float = 180
) -> Iterator[TreeStack]:
    """``movierec up`` of ``tree`` (its supervisor, API and workers run that tree's code: it is their working
    directory and first on PYTHONPATH) over a new embedded Redis in ``run_dir``, with ``env`` (MOVIEREC_*
    settings) added; stopped (SIGTERM: every process, Redis last) when left. A side-by-side benchmark runs the
    same work on this tree and on a ``git worktree`` of another commit, with the same virtualenv."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # unset: the stack embeds its Redis
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "cli.main", "up", "--port", str(port), "--cpu-workers", str(cpu_workers),
               "--data-dir", str(run_dir), "--log-dir", str(logs)]  # fmt: skip
    with (logs / "up.log").open("ab") as out:
        up = subprocess.Popen(command, cwd=tree, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}"
    try:
        wait_ready(api, died=lambda: None if up.poll() is None else f"movierec up exited with {up.returncode}",
                   timeout_s=ready_timeout_s)  # fmt: skip
        yield TreeStack(api, up)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def commit_of(tree: Path) -> str:
    """The tree's commit, ``+changes`` when its tracked files differ from it."""
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return (done.stdout.strip() or "?") + ("+changes" if dirty else "")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; nan for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
