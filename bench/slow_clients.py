"""Slow and idle clients against the API (issue #14, finding 1): does ``/healthz`` still answer, and do
recommendations, while connections that send half a request and idle, and bodies trickling at 1 byte/s, are
open?

    python -m bench.slow_clients [--idle 0,8,300,1000] [--trickle 20] [--probes 12]

A fresh stack (embedded Redis, the API with its default gunicorn processes, a CPU worker of 2 processes), the
pipeline on ml-latest-small, then for each count in ``--idle``: that many sockets send ``GET /healthz
HTTP/1.1`` and one header line, never the blank line that ends the request, and stay open; ``--trickle`` more
send a recommendation request whose 64-byte body comes one byte a second. While they are open, ``--probes``
``GET /healthz`` and as many recommendations are sent one after the other, each with a 5 s timeout. Reported:
probes answered, their p50/p99, and then how long, from their opening, the server took to close all the
half-open connections and all the trickling ones (watched for up to ``--watch`` seconds; a bounded server
closes them, one that waits for ever holds them).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from shared.infra.settings import Settings

from .common import fresh_stack, machine, train_on, warm

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
PROBE_TIMEOUT_S = 5.0
TRICKLE_BODY = b'{"user_id": 1, "k": 10}'.ljust(64)


def _open(host: str, port: int, first: bytes) -> socket.socket | None:
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(first)
        return s
    except OSError:
        return None


def _closed_by_server(s: socket.socket) -> bool:
    """Whether the server has closed (or reset) the connection: what it sent (a 408) read, then the end."""
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _probe(api: str, count: int) -> tuple[list[float], list[float], int]:
    """``count`` /healthz and ``count`` recommendations, one at a time: (their latencies when 200, failures)."""
    health, recs, failed = [], [], 0
    for i in range(count):
        for url, method, body, into in (
            (f"{api}/healthz", "GET", None, health),
            (f"{api}/v1/recommendations?wait=4", "POST", {"user_id": 1 + i}, recs),
        ):
            t = time.perf_counter()
            try:
                r = requests.request(method, url, json=body, timeout=PROBE_TIMEOUT_S)
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                into.append(time.perf_counter() - t)
            else:
                failed += 1
    return health, recs, failed


def _ms(latencies: list[float], q: int) -> str:
    if len(latencies) < 2:
        return f"{latencies[0] * 1000:.1f}" if latencies else "-"
    return f"{statistics.quantiles(latencies, n=100)[q - 1] * 1000:.1f}"


def _closed_after(conns: list[socket.socket], since: float, watch_s: float) -> str:
    """Seconds from ``since`` until every one of ``conns`` is closed by the server, or how many still are not."""
    open_ = list(conns)
    while open_ and time.perf_counter() - since < watch_s:
        open_ = [s for s in open_ if not _closed_by_server(s)]
        time.sleep(0.25)
    if open_:
        return f"{len(open_)} of {len(conns)} still open after {watch_s:.0f} s"
    return f"all {len(conns)} closed within {time.perf_counter() - since:.1f} s"


def _phase(api: str, *, idle: int, trickle: int, probes: int, watch_s: float) -> None:
    where = urlsplit(api)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    half = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n"  # no blank line: the request never ends
    opened = time.perf_counter()
    slow = [s for s in (_open(host, port, half) for _ in range(idle)) if s is not None]
    trickling: list[socket.socket] = []
    stop = threading.Event()

    def trickler() -> None:
        head = (
            f"POST /v1/recommendations HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(TRICKLE_BODY)}\r\n\r\n"
        ).encode()
        s = _open(host, port, head)
        if s is None:
            return
        trickling.append(s)
        for byte in TRICKLE_BODY:
            if stop.wait(1.0):
                return
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return

    threads = [threading.Thread(target=trickler, daemon=True) for _ in range(trickle)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # let them reach the server
    started = time.perf_counter()
    health, recs, failed = _probe(api, probes)
    took = time.perf_counter() - started
    print(
        f"{idle:5d} idle half-open + {trickle:2d} trickling: /healthz {len(health)}/{probes} answered "
        f"(p50 {_ms(health, 50)} ms, p99 {_ms(health, 99)} ms), recommendations {len(recs)}/{probes} "
        f"(p50 {_ms(recs, 50)} ms, p99 {_ms(recs, 99)} ms), {failed} failed in {took:.0f} s",
        flush=True,
    )
    if idle:
        print(f"      half-open: {_closed_after(slow, opened, watch_s)}; "
              f"trickling: {_closed_after(trickling, opened, watch_s)}", flush=True)  # fmt: skip
    stop.set()
    for s in slow + trickling:
        s.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--idle", default="0,8,300,1000", help="comma-separated counts of idle half-open sockets")
    parser.add_argument("--trickle", type=int, default=20, help="bodies trickling at 1 byte/s (with idle > 0)")
    parser.add_argument("--probes", type=int, default=12)
    parser.add_argument("--watch", type=float, default=60.0, help="seconds to watch for the server closing them")
    args = parser.parse_args()
    print(machine())
    settings = Settings(key_prefix="bench", data_root=SMALL.parent)
    with fresh_stack(settings, Path(tempfile.mkdtemp(prefix="bench-slow-"))) as stack:
        api = stack.api_url
        train_on(api, SMALL.name)
        warm(api)
        for idle in (int(n) for n in args.idle.split(",")):
            _phase(api, idle=idle, trickle=args.trickle if idle else 0, probes=args.probes, watch_s=args.watch)
            time.sleep(2.0)  # let the server drop what was closed
    return 0


if __name__ == "__main__":
    sys.exit(main())
