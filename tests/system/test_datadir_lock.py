"""One owner per data dir (cli/datadir.py): a second ``movierec up`` on a data dir in use exits 2 naming the
holder's PID; once the holder is gone, however it went, the next start takes the lock over and writes its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cli.datadir import LOCK_FILE, DataDirBusy, DataDirLock
from cli.stack import free_port, log_tails, wait_ready
from shared.infra.settings import Settings
from tests.helpers import REPO, embedded_env, exit_status


def _up(settings: Settings, data_dir: Path, logs: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port), "--cpu-workers", "1",
         "--data-dir", str(data_dir), "--log-dir", str(logs)],
        env=embedded_env(settings, settings.data_root, fast=True), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    return process, port


def _ready(process: subprocess.Popen[str], port: int, logs: Path) -> None:
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout_s=120, died=lambda: exit_status(process))
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"movierec up never became ready: {exc}\n{log_tails(logs)}") from None


@pytest.fixture
def ups() -> Iterator[list[subprocess.Popen[str]]]:
    """Every ``movierec up`` the test starts, killed (whole tree) at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            process.kill()
            psutil.wait_procs(tree, timeout=30)


def test_a_second_up_on_one_data_dir_exits_2_naming_the_holder(
    settings: Settings, tmp_path: Path, ups: list[subprocess.Popen[str]]
) -> None:
    data_dir = tmp_path / "data"
    first, port = _up(settings, data_dir, tmp_path / "logs-1")
    ups.append(first)
    _ready(first, port, tmp_path / "logs-1")
    assert (data_dir / LOCK_FILE).read_text().strip() == str(first.pid)

    second, _ = _up(settings, data_dir, tmp_path / "logs-2")
    ups.append(second)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2, err
    assert f"PID {first.pid}" in err and str(data_dir) in err
    assert "Traceback" not in err
    assert not (tmp_path / "logs-2").exists()  # refused before it started anything
    assert first.poll() is None
    _ready(first, port, tmp_path / "logs-1")  # the holder serves on, untouched

    # Killed outright: the kernel drops the lock once up and its redis-server (which inherited it) are gone.
    tree = [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]
    first.kill()
    _, alive = psutil.wait_procs(tree, timeout=45)
    assert not alive, [p.name() for p in alive]
    third, port = _up(settings, data_dir, tmp_path / "logs-3")
    ups.append(third)
    _ready(third, port, tmp_path / "logs-3")
    assert (data_dir / LOCK_FILE).read_text().strip() == str(third.pid)
    third.send_signal(signal.SIGTERM)
    assert third.wait(timeout=60) == 0
    assert (data_dir / LOCK_FILE).read_text() == ""  # released: no stale PID left to read


HOLD = """
import sys, time
from pathlib import Path
from cli.datadir import DataDirLock
DataDirLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_whose_holder_was_killed_is_taken_over_and_its_pid_rewritten(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirBusy) as refused:
            DataDirLock(tmp_path).acquire()
        assert refused.value.holder == holder.pid
        assert f"PID {holder.pid}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    lock = DataDirLock(tmp_path)
    lock.acquire()
    try:
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


HOLD_THROUGH_A_CHILD = """
import subprocess, sys
from pathlib import Path
from cli.datadir import DataDirLock
lock = DataDirLock(Path(sys.argv[1]))
child = subprocess.Popen(["sleep", "600"], pass_fds=(lock.acquire(),), start_new_session=True)
print(child.pid, flush=True)
"""


def test_a_holder_gone_but_its_child_alive_is_named_as_such(tmp_path: Path) -> None:
    """As the redis-server of an ``up`` killed outright: it keeps the lock until it has exited too."""
    parent = subprocess.Popen([sys.executable, "-c", HOLD_THROUGH_A_CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)  # fmt: skip
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        assert parent.wait(timeout=30) == 0  # the holder has exited; its child holds the lock on
        with pytest.raises(DataDirBusy) as refused:
            DataDirLock(tmp_path).acquire()
        assert refused.value.holder == parent.pid
        assert "has exited" in str(refused.value)
    finally:
        child.kill()
        psutil.wait_procs([child], timeout=10)
    lock = DataDirLock(tmp_path)
    assert lock.acquire() >= 0
    lock.release()
