"""The embedded Redis of ``movierec up``: a password of its own, private files, and (slow) a full disk."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from cli.client import Client
from cli.stack import EmbeddedRedis, free_port, is_loopback, masked_url, stored_password, wait_ready
from shared.infra.settings import Settings
from tests.helpers import REPO, embedded_env, exit_status


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_password_is_generated_private_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    password = stored_password(data)
    assert len(password) >= 40 and _mode(data / "password") == 0o600 and _mode(data) == 0o700
    with EmbeddedRedis(data, password=password) as server:
        r = redis.Redis.from_url(server.url)
        r.set("kept", "yes")
        once = Retry(NoBackoff(), 0)  # redis-py would retry an AuthenticationError for seconds
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):  # NOAUTH: any local user
            redis.Redis(port=server.port, retry=once).set("x", "y")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, password="guess", retry=once).ping()
        files = [p for p in data.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"appendonly.aof", "redis.conf", "redis.log", "password"}
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert _mode(data) == 0o700
        port = server.port
    assert stored_password(data) == password  # a second start in the same data dir: the same password
    (data / "appendonly.aof").chmod(0o644)  # as an older movierec left it
    with EmbeddedRedis(data, port=port, password=stored_password(data)) as again:
        assert redis.Redis.from_url(again.url).get("kept") == b"yes"
        assert _mode(data / "appendonly.aof") == 0o600


def test_helpers() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com", ""))
    assert masked_url("redis://:p%40ss@127.0.0.1:1234/0") == "redis://:***@127.0.0.1:1234/0"
    assert masked_url("redis://127.0.0.1:1234/0") == "redis://127.0.0.1:1234/0"


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_up_recovers_by_itself_once_a_full_disk_is_freed(settings: Settings, tmp_path: Path) -> None:
    """The true case of issue #14 finding 2: Redis's data dir on a 16 MB tmpfs, filled, then freed."""
    with _tmpfs(tmp_path / "disk", "16m") as disk:
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        up = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--port", str(port), "--cpu-workers", "1",
             "--data-dir", str(disk), "--log-dir", str(tmp_path / "logs")],
            env=embedded_env(settings, settings.data_root, fast=True), stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "up.err").open("w"), text=True, cwd=REPO,
        )  # fmt: skip
        try:
            wait_ready(api, timeout_s=120, died=lambda: exit_status(up))
            job = Client(api).submit_dataset("ml-latest-small")  # accepted: on disk before the 202
            filler = disk / "filler"
            with filler.open("wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * (1 << 20))
            full_at = time.monotonic()
            causes = set()
            while time.monotonic() - full_at < 30:  # every write now fails; Redis exits and `up` retries
                r = requests.get(f"{api}/readyz", timeout=15)
                if r.status_code == 503:
                    causes.add(r.json()["error"]["details"]["cause"])
                if "redis_down" in causes and time.monotonic() - full_at > 10:
                    break
                time.sleep(0.2)
            assert causes & {"redis_down", "redis_read_only"}, causes
            assert up.poll() is None, (tmp_path / "up.err").read_text()[-3000:]
            filler.unlink()
            freed_at = time.monotonic()
            wait_ready(api, timeout_s=90, died=lambda: exit_status(up))
            print(f"full disk: /readyz causes {causes}; ready again {time.monotonic() - freed_at:.1f} s after freeing")
            final = Client(api).wait(job["id"], timeout_s=180, progress=False)
            assert final["status"] == "succeeded", final
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=60) == 0
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
