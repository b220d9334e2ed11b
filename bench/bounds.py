"""Bounded before it costs (issue 23, item 6): what a hostile client can make the service spend, side by side.

    python -m bench.bounds body       # the 600 KB {"liked": [1]*200000}: server CPU per refusal, /healthz median
                                      # idle and under 4 clients sending it back to back (one API process)
    python -m bench.bounds feedback   # 4 clients posting 10,000-row batches of new users for --seconds: rows,
                                      # users stored, Redis growth
    python -m bench.bounds zipbomb    # a zip of --unpacked-mb MB of rows (~0.2% of it compressed): the job's
                                      # outcome, the CPU worker's peak RSS growth, Redis's peak growth
    python -m bench.bounds all

Each starts its own processes on an embedded redis-server of its own (``movierec up``'s), nothing shared. To
measure a tree before a change, copy this file into it and run it there (``cd OLD && python -m bench.bounds``):
every process it starts runs the code of the directory it is run from. docs/bounds.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import redis
import requests

from cli.stack import EmbeddedRedis, Stack, free_port, stored_password
from shared.infra.keys import Keys
from shared.infra.settings import Settings

FLOOD = json.dumps({"liked": [1] * 200_000}).encode()
CLIENTS = 4
RAW_CLIENT = """
import json, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
host, port, path, body_file = sys.argv[1:5]
body = open(body_file, "rb").read()
sock = socket.create_connection((host, int(port)))
head = (f"POST {path} HTTP/1.1\\r\\nHost: {host}\\r\\nContent-Type: application/json\\r\\n"
        f"Content-Length: {len(body)}\\r\\n\\r\\n").encode()
while True:
    sock.sendall(head + body)
    answer = b""
    while b"\\r\\n\\r\\n" not in answer:
        answer += sock.recv(65536)
    top, _, rest = answer.partition(b"\\r\\n\\r\\n")
    length = int(top.lower().split(b"content-length:")[1].split(b"\\r\\n")[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    print(top.split()[1].decode(), flush=True)
"""
"""A client in a process of its own that sends one body back to back over one connection, as raw bytes (so the
clients take little of the machine's CPU from the server); it prints each answer's status."""


@contextmanager
def own_redis(where: Path) -> Iterator[str]:
    server = EmbeddedRedis(where / "redis", password=stored_password(where / "redis"), fsync="everysec")
    with server:
        yield server.url


def settings_for(url: str, **more: object) -> Settings:
    return Settings(redis_url=url, key_prefix=f"bench-{uuid.uuid4().hex[:6]}", **more)


@contextmanager
def api(settings: Settings, where: Path) -> Iterator[tuple[str, psutil.Process]]:
    """``movierec api --workers 1``: (its url, its one gunicorn worker process)."""
    port = free_port()
    with (where / "api.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "cli.main", "api", "--port", str(port), "--workers", "1"],
                                   env=settings.child_env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield url, psutil.Process(process.pid).children()[0]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@contextmanager
def flooding(url: str, path: str, body: bytes, where: Path) -> Iterator[list[subprocess.Popen[str]]]:
    body_file = where / f"body-{uuid.uuid4().hex[:6]}.json"
    body_file.write_bytes(body)
    host, port = url.removeprefix("http://").split(":")
    clients = [subprocess.Popen([sys.executable, "-c", RAW_CLIENT, host, port, path, str(body_file)],
                                stdout=subprocess.PIPE, text=True) for _ in range(CLIENTS)]  # fmt: skip
    try:
        yield clients
    finally:
        for client in clients:
            client.terminate()


def statuses(clients: list[subprocess.Popen[str]]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for client in clients:
        for line in client.communicate(timeout=60)[0].split():
            seen[line] = seen.get(line, 0) + 1
    return seen


def healthz_median(url: str, n: int = 40) -> float:
    times = []
    with requests.Session() as s:
        for _ in range(n):
            started = time.perf_counter()
            s.get(f"{url}/healthz", timeout=120)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def cpu_s(process: psutil.Process) -> float:
    t = process.cpu_times()
    return float(t.user + t.system)


def bench_body(where: Path) -> dict[str, object]:
    with own_redis(where) as url, api(settings_for(url), where) as (api_url, worker):
        with requests.Session() as s:
            s.post(f"{api_url}/v1/recommendations", data=FLOOD, headers={"Content-Type": "application/json"})
            n, before = 10, cpu_s(worker)
            for _ in range(n):
                r = s.post(f"{api_url}/v1/recommendations", data=FLOOD, headers={"Content-Type": "application/json"})
            per_refusal = (cpu_s(worker) - before) / n
        idle = healthz_median(api_url)
        with flooding(api_url, "/v1/recommendations", FLOOD, where) as clients:
            time.sleep(2)
            loaded = healthz_median(api_url, n=10 if per_refusal > 0.1 else 40)
        cpu_ms = round(per_refusal * 1e3, 2)
        return {"status": r.status_code, "code": r.json()["error"]["code"], "cpu_ms_per_refusal": cpu_ms,
                "healthz_idle_ms": round(idle * 1e3, 2), "healthz_4_clients_ms": round(loaded * 1e3, 2),
                "ratio": round(loaded / idle, 1), "flood_answers": statuses(clients)}  # fmt: skip


def tiny_dataset(settings: Settings, where: Path) -> str:
    from shared.logic.ingest import DatasetOptions, ingest
    from shared.logic.services import Services

    data = where / "tiny"
    data.mkdir(exist_ok=True)
    (data / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{m},M{m} (2000),Drama\n" for m in range(1, 201))
    )
    (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n2,2,3.0,2\n")
    record, _ = ingest(Services.from_settings(settings).datasets, data, DatasetOptions(tags_per_movie=5),
                       source="bench", progress=lambda *_: None)  # fmt: skip
    return str(record["id"])


def bench_feedback(where: Path, seconds: float) -> dict[str, object]:
    with own_redis(where) as url:
        settings = settings_for(url)
        dataset = tiny_dataset(settings, where)
        client = redis.Redis.from_url(url)
        before = int(client.info("memory")["used_memory"])
        with api(settings, where) as (api_url, _):
            stop = threading.Event()
            answers: dict[int, int] = {}

            def post(c: int) -> None:
                round_ = 0
                with requests.Session() as s:
                    while not stop.is_set():  # each batch: 500 new users x 20 movies = 10,000 rows
                        round_ += 1
                        rows = [{"user_id": 10_000 + c * 10_000_000 + round_ * 1000 + u,
                                 "movie_id": 1 + (u * 7 + m) % 200, "rating": 4.0}
                                for u in range(500) for m in range(20)]  # fmt: skip
                        r = s.post(f"{api_url}/v1/datasets/{dataset}/ratings", json={"ratings": rows}, timeout=120)
                        answers[r.status_code] = answers.get(r.status_code, 0) + 1

            threads = [threading.Thread(target=post, args=(c,)) for c in range(CLIENTS)]
            for t in threads:
                t.start()
            time.sleep(seconds)
            stop.set()
            for t in threads:
                t.join()
        keys = Keys(settings.key_prefix)
        user_ids = [int(u) for u in client.zrange(keys.feedback_users(dataset), 0, -1)]
        pipe = client.pipeline(transaction=False)
        for u in user_ids:
            pipe.hlen(keys.feedback_user(dataset, u))
        users, rows = len(user_ids), sum(int(n) for n in pipe.execute())
        return {"seconds": seconds, "answers": answers, "rows_stored": rows, "users_stored": users,
                "redis_growth_mib": round((int(client.info("memory")["used_memory"]) - before) / 2**20, 1)}  # fmt: skip


def bench_zipbomb(where: Path, unpacked_mb: int) -> dict[str, object]:
    archive = where / "bomb.zip"
    row = b"1,1,4.0,964982703\n"
    block = row * ((1 << 20) // len(row))
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml/movies.csv", b"movieId,title,genres\n1,Toy Story (1995),Animation\n")
        with zf.open("ml/ratings.csv", "w", force_zip64=True) as out:
            out.write(b"userId,movieId,rating,timestamp\n")
            for _ in range(unpacked_mb):
                out.write(block)
    settings = settings_for("redis://unused", redis_fsync="everysec")
    with Stack(settings, data_dir=where / "stack", cpu_workers=1, embedded_redis=True, log_dir=where / "logs") as stack:
        client = redis.Redis.from_url(stack.settings.redis_url)
        worker = psutil.Process(stack.child("cpu-worker").process.pid)

        def rss() -> int:
            return max(p.memory_info().rss for p in [worker, *worker.children(recursive=True)])

        rss0, redis0 = rss(), int(client.info("memory")["used_memory"])
        peak = {"rss": rss0, "redis": redis0}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                with suppress(psutil.Error):
                    peak["rss"] = max(peak["rss"], rss())
                peak["redis"] = max(peak["redis"], int(client.info("memory")["used_memory"]))

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        with archive.open("rb") as f:
            r = requests.post(f"{stack.api_url}/v1/datasets", files={"archive": ("bomb.zip", f)}, timeout=120)
        job = r.json()
        while job.get("status") not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.2)
            job = requests.get(f"{stack.api_url}/v1/jobs/{job['id']}", timeout=10).json()
        done.set()
        sampler.join()
        redis_after = int(client.info("memory")["used_memory"])
        return {"zip_bytes": archive.stat().st_size, "unpacked_mb": unpacked_mb, "job": job["status"],
                "error": (job.get("error") or {}).get("message"), "seconds": round(time.monotonic() - started, 1),
                "worker_peak_rss_growth_mib": round((peak["rss"] - rss0) / 2**20, 1),
                "redis_peak_growth_mib": round((peak["redis"] - redis0) / 2**20, 1),
                "redis_growth_after_mib": round((redis_after - redis0) / 2**20, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["body", "feedback", "zipbomb", "all"])
    parser.add_argument("--seconds", type=float, default=20.0, help="feedback flood length (default %(default)s)")
    parser.add_argument("--unpacked-mb", type=int, default=256, help="zip bomb size unpacked (default %(default)s)")
    args = parser.parse_args()
    print(f"# tree: {Path.cwd()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}", flush=True)
    for what in ["body", "feedback", "zipbomb"] if args.what == "all" else [args.what]:
        with tempfile.TemporaryDirectory(prefix="bench-bounds-") as tmp:
            where = Path(tmp)
            if what == "body":
                result = bench_body(where)
            elif what == "feedback":
                result = bench_feedback(where, args.seconds)
            else:
                result = bench_zipbomb(where, args.unpacked_mb)
        print(json.dumps({what: result}), flush=True)


if __name__ == "__main__":
    main()
