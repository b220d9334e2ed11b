"""Starting a worker: ``movierec worker --queues interactive|cpu|gpu[,...] [--concurrency N]``.

Interactive and CPU workers use Celery's prefork pool; each process of an interactive worker also answers the
fast lane (workers/interactive.py). A GPU worker is one solo-pool process per visible CUDA device;
with several devices this process becomes a small supervisor that starts one child per device (each with
``CUDA_VISIBLE_DEVICES`` set) and never touches CUDA itself. Each worker's main process runs three daemon
threads: a heartbeat, whose key ``/readyz`` reads; the lease keeper, which extends the lease of every unit its
pool processes run while they live (shared/jobs/leases.py); and the janitor (workers/janitor.py), which finds
lost work and expired ids.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

import redis
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.jobs.kinds import GPU_QUEUE, INTERACTIVE_QUEUE
from shared.jobs.sharded import message_unit
from shared.logic.services import HEARTBEAT_TTL_S, Services

from .janitor import Janitor

log = logging.getLogger(__name__)


def visible_cuda_devices() -> list[str]:
    """CUDA device ids this machine exposes, found without initialising CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


class LeaseKeeper:
    """Extends, from the worker's main process, the lease of every unit a live pool process of it runs.

    The units come from Celery's own record of the requests its pool has accepted (each with the pid of the
    process running it); the unit a request runs is named by its task and arguments (shared/jobs/sharded.py
    ``message_unit``). A child's own renewer thread does the same, but a child is busy by design: this thread
    lives in the process that only routes messages, so a lease outlives any starvation of its child's CPU.
    """

    def __init__(self, services: Services) -> None:
        self._svc = services
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, **_: Any) -> None:
        units = self._svc.units

        def loop() -> None:
            while not self._stop.wait(self._svc.settings.lease_ttl_s / 3):
                try:
                    units.renew_for_processes(running_units())
                except redis.RedisError:  # Redis away: the children's leases are as stuck as this; keep trying
                    log.warning("lease keeper: Redis unreachable", exc_info=True)
                except Exception:
                    log.exception("lease keeper failed; trying again")

        self._thread = threading.Thread(target=loop, name="movierec-lease-keeper", daemon=True)
        self._thread.start()

    def stop(self, **_: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def running_units() -> list[tuple[str, str, int]]:
    """(job, unit, pid) of every request this worker's pool has accepted and is running."""
    from celery.worker.state import active_requests

    found = []
    for request in list(active_requests):
        pid, args = request.worker_pid, request.args
        unit = message_unit(request.task_name, args) if pid and args and isinstance(args[0], str) else None
        if unit is not None:
            found.append((args[0], unit, int(pid)))
    return found


class Heartbeat:
    """Refreshes this worker's heartbeat key from a daemon thread of the worker's main process."""

    def __init__(self, settings: Settings, name: str, queues: list[str]) -> None:
        self._settings, self._name, self._queues = settings, name, queues
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, **_: Any) -> None:
        services = Services.from_settings(self._settings)

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    services.beat(self._name, self._queues)
                except redis.RedisError:  # Redis away: /readyz will say so; keep trying.
                    log.warning("heartbeat to Redis failed", exc_info=True)
                self._stop.wait(HEARTBEAT_TTL_S / 3)
            with contextlib.suppress(redis.RedisError):
                services.forget_worker(self._name)

        self._thread = threading.Thread(target=loop, name="movierec-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, **_: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


BATCH_NICE = 10
"""The CPU niceness a worker that takes no interactive queue runs at (``--nice`` overrides): on cores that batch
work keeps busy, the scheduler then runs an interactive answer first, so batch work costs answers little."""


def run_worker(
    settings: Settings,
    *,
    queues: Sequence[str],
    concurrency: int | None = None,
    loglevel: str = "INFO",
    device_slot: str | None = None,
    nice: int | None = None,
) -> int:
    queues = list(queues)
    nice = nice if nice is not None else (0 if INTERACTIVE_QUEUE in queues else BATCH_NICE)
    if nice:
        os.nice(nice)  # the pool's processes inherit it
    gpu = GPU_QUEUE in queues
    if gpu and device_slot is None:
        devices = visible_cuda_devices()
        if len(devices) > 1:
            return _supervise_gpu_children(devices, queues=queues, loglevel=loglevel)

    app = make_celery(settings)
    slot = f"-{device_slot}" if device_slot is not None else ""
    name = f"{'+'.join(queues)}{slot}-{os.getpid()}@{socket.gethostname()}"
    heartbeat = Heartbeat(settings, name, queues)
    worker_ready.connect(heartbeat.start, weak=False)
    worker_shutdown.connect(heartbeat.stop, weak=False)
    main_services = Services.from_settings(settings)  # the main process's threads share it
    keeper = LeaseKeeper(main_services)
    worker_ready.connect(keeper.start, weak=False)
    worker_shutdown.connect(keeper.stop, weak=False)
    janitor = Janitor(main_services, app, worker=name)
    worker_ready.connect(janitor.start, weak=False)
    worker_shutdown.connect(janitor.stop, weak=False)

    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--hostname={name}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if gpu:
        # One process owns the device: no fork after CUDA could be initialised.
        argv += ["--pool=solo", "--concurrency=1"]
    else:
        argv += ["--pool=prefork"]
        if concurrency:
            argv.append(f"--concurrency={concurrency}")
        processes = concurrency or os.cpu_count() or 1
        threads = max(1, (os.cpu_count() or 1) // processes)
        if queues == [INTERACTIVE_QUEUE]:  # one query at a time: a BLAS pool there only spins beside the API
            threads = 1

        def limit_threads(**_: Any) -> None:
            # N prefork children each running a BLAS (or torch's own pool) with all cores would oversubscribe the
            # machine: torch's top-k over a similarity build took twice as long with 2 threads in each of 2
            # processes on 2 cores as with 1 (issue #24). torch sizes its pool from OMP_NUM_THREADS on import.
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(threads)

        worker_process_init.connect(limit_threads, weak=False)
        if INTERACTIVE_QUEUE in queues:
            from .interactive import start_responder

            worker_process_init.connect(start_responder, weak=False)
    app.worker_main(argv)
    return 0


def _supervise_gpu_children(devices: list[str], *, queues: list[str], loglevel: str) -> int:
    children = []
    for dev in devices:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=dev)
        cmd = [sys.executable, "-m", "cli.main", "worker", "--queues", ",".join(queues), "--loglevel", loglevel]
        # Each child inherits this process's niceness: it adds none of its own.
        children.append(subprocess.Popen([*cmd, "--device-slot", dev, "--nice", "0"], env=env))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
