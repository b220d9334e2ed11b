"""The command line: ``up`` supervises and cleans up; ``submit``/``status`` talk HTTP (``demo``: test_demo.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from cli.client import Client
from cli.stack import free_port, log_tails, wait_ready
from shared.infra.settings import Settings
from tests.helpers import REPO, cli, embedded_env, exit_status, wait_until


@pytest.fixture
def up(settings: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port), "--cpu-workers", "1",
         "--data-dir", str(tmp_path / "up"), "--log-dir", str(tmp_path / "logs")],
        env=embedded_env(settings, settings.data_root, fast=True), stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}", timeout_s=120, died=lambda: exit_status(process))
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"movierec up never became ready: {exc}\n{log_tails(tmp_path / 'logs')}") from None
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()


def _tree(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def test_up_serves_and_sigterm_leaves_no_process(up: tuple[subprocess.Popen[str], int], tmp_path: Path) -> None:
    process, port = up
    tree = _tree(process.pid)
    names = [p.name() for p in tree]
    assert any("redis-server" in n for n in names), names
    assert (tmp_path / "up" / "redis" / "appendonly.aof").exists()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert process.stdout is not None
    assert f"API at http://127.0.0.1:{port}" in process.stdout.read()
    _, alive = psutil.wait_procs(tree, timeout=15)
    assert not alive, [p.name() for p in alive]


def _cpu_workers(up_pid: int, *, besides: int = 0) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(up_pid).children():
        try:
            if child.pid != besides and "cpu" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:  # a process that is going, or gone
            continue
    return found


def test_up_starts_a_worker_that_died_again(up: tuple[subprocess.Popen[str], int]) -> None:
    process, port = up
    workers = _cpu_workers(process.pid)
    assert len(workers) == 1
    os.killpg(workers[0].pid, signal.SIGKILL)  # the worker and its pool, as an OOM kill or a crash would
    wait_until(
        lambda: _cpu_workers(process.pid, besides=workers[0].pid),
        timeout_s=60,
        every_s=0.2,
        failure="the CPU worker was not started again",
    )
    assert process.poll() is None  # `up` itself carries on
    done = cli("submit", "dataset", "ml-latest-small", "--wait", "--api", f"http://127.0.0.1:{port}")
    assert done.returncode == 0 and '"status": "succeeded"' in done.stdout, done.stderr  # the new worker ran it


def _redis_server(up_pid: int) -> psutil.Process:
    found = [p for p in psutil.Process(up_pid).children() if "redis-server" in p.name() and p.is_running()]
    found = [p for p in found if p.status() != psutil.STATUS_ZOMBIE]
    assert len(found) == 1, found
    return found[0]


def _readyz(port: int) -> tuple[int, str | None]:
    try:
        r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    except requests.RequestException:
        return 0, None
    body = r.json()
    return r.status_code, (body.get("error") or {}).get("details", {}).get("cause")


def test_up_starts_its_redis_again_after_a_sigkill_and_loses_no_job(
    up: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    process, port = up
    api = f"http://127.0.0.1:{port}"
    redis_dir = tmp_path / "up" / "redis"
    assert (redis_dir / "password").stat().st_mode & 0o777 == 0o600  # made by `up`, used by every child
    assert redis_dir.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in redis_dir.iterdir() if f.is_file())
    password = (redis_dir / "password").read_text().strip()
    server = _redis_server(process.pid)
    job = Client(api).submit_dataset("ml-latest-small")  # accepted (on disk) just before the kill
    server.kill()  # as the kernel does when Redis exits on an AOF write error (a full disk)
    killed = time.monotonic()
    causes = []
    status = 0
    while time.monotonic() - killed < 30:
        status, cause = _readyz(port)
        if status == 200:
            break
        causes.append(cause)
        time.sleep(0.1)
    recovered_s = time.monotonic() - killed
    print(f"redis-server SIGKILLed under `up`: /readyz 200 again after {recovered_s:.2f} s; causes {set(causes)}")
    assert status == 200, f"not ready {recovered_s:.0f} s after the kill: {causes[-3:]}\n{log_tails(tmp_path / 'logs')}"
    assert set(causes) <= {"redis_down", "no_worker", None}, causes
    assert process.poll() is None
    again = _redis_server(process.pid)
    assert again.pid != server.pid and f"requirepass {password}" in (redis_dir / "redis.conf").read_text()
    final = Client(api).wait(job["id"], timeout_s=120, progress=False)
    assert final["status"] == "succeeded", final
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert process.stdout is not None
    out = process.stdout.read()
    assert password not in out and "embedded Redis at redis://:***@127.0.0.1:" in out, out


def test_api_refuses_a_public_address_without_keys_unless_insecure(settings: Settings) -> None:
    env = {**settings.child_env(), "MOVIEREC_API_KEYS": ""}
    port = free_port()
    refused = cli("api", "--host", "0.0.0.0", "--port", str(port), env=env, timeout=60)
    assert refused.returncode == 2 and "--insecure" in refused.stderr and "MOVIEREC_API_KEYS" in refused.stderr
    api = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "api", "--host", "0.0.0.0", "--port", str(port), "--insecure",
         "--workers", "1"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout_s=60, failure="--insecure did not serve"
        )
    finally:
        os.killpg(api.pid, signal.SIGKILL)
        api.wait()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_up_killed_outright_still_leaves_no_process(up: tuple[subprocess.Popen[str], int]) -> None:
    process, _ = up
    tree = _tree(process.pid)
    process.kill()  # no chance to clean up: the children's PDEATHSIG must do it
    _, alive = psutil.wait_procs(tree, timeout=45)
    assert not alive, [p.name() for p in alive]


def test_submit_and_status_over_http(api_url: str) -> None:
    done = cli("submit", "dataset", "ml-latest-small", "--wait", "--api", api_url)
    assert done.returncode == 0, done.stderr
    assert '"status": "succeeded"' in done.stdout
    assert "users" in done.stdout and "610" in done.stdout
    job_id = done.stdout.split()[1]
    status = cli("status", job_id, "--api", api_url)
    assert status.returncode == 0 and job_id in status.stdout
    missing = cli("status", "no-such-job", "--api", api_url)
    assert missing.returncode == 1 and "404 not_found" in missing.stderr
    outside = cli("submit", "dataset", "../..", "--api", api_url)
    assert outside.returncode == 1 and "path_not_allowed" in outside.stderr
