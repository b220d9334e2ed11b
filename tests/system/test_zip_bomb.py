"""A real zip bomb, uploaded to a real stack (its own embedded Redis, a CPU worker): 256 MB of ratings rows in a
~0.5 MB zip. Its ingest fails with a data_error that says why, nothing of it is kept, and neither the worker's
memory nor Redis's grows by more than a few tens of MB (it was 3 GB of worker RSS and 1.08 GiB of Redis for a
1 GB bomb under the old 8 x upload-limit cap)."""

from __future__ import annotations

import threading
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import psutil
import redis
import requests

from cli.stack import Stack
from shared.infra.keys import Keys, upload_artifacts
from shared.infra.settings import Settings
from tests.helpers import wait_job

UNPACKED = 256 << 20
MAX_WORKER_GROWTH = 150 << 20
"""RSS a CPU worker process may gain while it refuses the bomb (it unpacks 1 MiB at a time; 20 x 0.5 MB in all)."""
MAX_REDIS_GROWTH = 32 << 20
"""Redis's used memory during the job, over before it (the 0.5 MB upload, the job's record)."""


def bomb(path: Path) -> Path:
    row = b"1,1,4.0,964982703\n"
    block = row * ((1 << 20) // len(row))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml/movies.csv", b"movieId,title,genres\n1,Toy Story (1995),Animation\n")
        with zf.open("ml/ratings.csv", "w", force_zip64=True) as out:
            out.write(b"userId,movieId,rating,timestamp\n")
            for _ in range(UNPACKED // len(block)):
                out.write(block)
    return path


def worker_rss(stack: Stack) -> int:
    """The largest RSS among the CPU worker's processes (its prefork children run the tasks)."""
    parent = psutil.Process(stack.child("cpu-worker").process.pid)
    rss = 0
    for process in [parent, *parent.children(recursive=True)]:
        try:
            rss = max(rss, process.memory_info().rss)
        except psutil.Error:
            continue
    return rss


def test_a_zip_bomb_is_refused_with_memory_bounded(
    settings: Settings, make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-zb{uuid.uuid4().hex[:6]}"})
    stack = make_stack(own, embedded_redis=True, cpu_workers=1)
    client = redis.Redis.from_url(stack.settings.redis_url)
    archive = bomb(tmp_path / "bomb.zip")
    assert archive.stat().st_size < 1 << 20

    rss_before, redis_before = worker_rss(stack), int(client.info("memory")["used_memory"])
    peaks = {"rss": rss_before, "redis": redis_before}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peaks["rss"] = max(peaks["rss"], worker_rss(stack))
            peaks["redis"] = max(peaks["redis"], int(client.info("memory")["used_memory"]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with archive.open("rb") as f:
            r = requests.post(f"{stack.api_url}/v1/datasets", files={"archive": ("bomb.zip", f)}, timeout=60)
        assert r.status_code == 202, r.text
        job = wait_job(stack.api_url, r.json()["id"], timeout_s=120)
    finally:
        done.set()
        sampler.join()
    assert job["status"] == "failed" and job["error"]["code"] == "data_error", job
    assert "times its compressed size" in job["error"]["message"], job["error"]
    assert "Traceback" not in job["error"]["message"]
    assert peaks["rss"] - rss_before < MAX_WORKER_GROWTH, (peaks["rss"] - rss_before) >> 20
    assert peaks["redis"] - redis_before < MAX_REDIS_GROWTH, (peaks["redis"] - redis_before) >> 20
    keys = Keys(stack.settings.key_prefix)
    assert list(client.scan_iter(match=keys.artifacts_under(upload_artifacts("")))) == []  # the upload is dropped
    assert requests.get(f"{stack.api_url}/v1/datasets", timeout=10).json()["datasets"] == []
