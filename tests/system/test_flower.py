"""Flower on our Celery app (``movierec flower``, ``movierec up --flower``), real processes, no mocks.

The session stack's workers are watched by a ``movierec flower`` started here with the stack's environment: the
broker URL comes from REDIS_URL and our key prefix reaches Flower's events, inspect and queue lengths. A
``movierec up --flower`` of its own shows the supervised child: it answers, lists its stack's workers, is
started again when killed, and stops with the rest.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import requests

from cli.stack import Stack, free_port, log_tails, wait_answering, wait_ready
from shared.infra.keys import Keys
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.jobs.submit import submit
from shared.logic.services import Services
from tests.conftest import delete_prefix
from tests.helpers import REPO, wait_job, wait_until

LOGIN = ("ops", "fl0wer-pw")
START_TIMEOUT_S = 60.0


def start_flower(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``movierec flower`` on a free loopback port with ``settings``'s environment and LOGIN, answering."""
    port = free_port()
    env = settings.child_env()
    env["FLOWER_BASIC_AUTH"] = ":".join(LOGIN)
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "flower", "--port", str(port)],
        env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(f"{url}/healthcheck", timeout_s=START_TIMEOUT_S, died=lambda: exit_status(process))
    except BaseException:
        stop(process)
        raise AssertionError(f"movierec flower did not answer:\n{log.read_text(errors='replace')[-3000:]}") from None
    return process, url


def exit_status(process: subprocess.Popen[Any]) -> str | None:
    return None if process.poll() is None else f"exited with status {process.returncode}"


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def flower(settings: Settings, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a ``movierec flower`` watching the session stack."""
    process, url = start_flower(settings, tmp_path_factory.mktemp("flower") / "flower.log")
    try:
        yield url
    finally:
        stop(process)


def get(url: str, path: str, **kw: Any) -> requests.Response:
    return requests.get(f"{url}{path}", auth=LOGIN, timeout=30, **kw)


def worker_names(stack: Stack) -> set[str]:
    """The Celery names of the stack's workers (``<queues>-<pid>@<host>``, workers/main.py)."""
    host = socket.gethostname()
    return {f"{queue}-{stack.child(f'{queue}-worker').process.pid}@{host}" for queue in ("cpu", "gpu")}


def flower_sees(url: str, names: set[str]) -> dict[str, Any] | None:
    r = get(url, "/api/workers", params={"refresh": 1})
    assert r.status_code == 200, r.text
    workers: dict[str, Any] = r.json()
    return workers if names <= set(workers) else None


def test_flower_wants_its_login(flower: str) -> None:
    assert requests.get(f"{flower}/api/workers", timeout=30).status_code == 401
    assert requests.get(f"{flower}/", auth=("ops", "wrong"), timeout=30).status_code == 401
    assert get(flower, "/").status_code == 200


def test_flower_lists_the_stacks_live_workers_by_name(
    flower: str, stack: Stack, settings: Settings, redis_client: redis.Redis
) -> None:
    names = worker_names(stack)
    key = Keys(settings.key_prefix).worker("")
    beating = {k.decode().removeprefix(key) for k in redis_client.scan_iter(match=f"{key}*")}
    assert names <= beating, (names, beating)  # the names our heartbeats carry
    workers = wait_until(lambda: flower_sees(flower, names), timeout_s=30, every_s=1, failure=f"{names} never listed")
    cpu = next(n for n in names if n.startswith("cpu-"))
    assert {q["name"] for q in workers[cpu]["active_queues"]} == {"cpu"}
    assert workers[cpu]["stats"]["pool"]["max-concurrency"] == stack.cpu_workers

    def alive() -> bool:  # from the workers' heartbeat events (every 2 s)
        status = get(flower, "/api/workers", params={"status": 1}).json()
        return all(status.get(n) for n in names)

    # (Heartbeat events flow once Flower has turned events on: within its first 5 s.)
    wait_until(alive, timeout_s=30, every_s=0.5, failure=lambda: get(flower, "/api/workers?status=1").text)


def test_flower_turns_task_events_on_and_follows_a_jobs_task(flower: str, stack: Stack, settings: Settings) -> None:
    """Workers send no task events until Flower asks (its ``enable_events`` control, every 5 s while it runs)."""
    services, celery = Services.from_settings(settings), make_celery(settings)
    gpu = next(n for n in worker_names(stack) if n.startswith("gpu-"))

    def followed() -> dict[str, Any] | None:
        job = submit(celery, services.jobs, kind="device", params={})
        assert wait_job(lambda: services.jobs.get(job.id)).status == "succeeded"
        for _ in range(10):
            r = get(flower, f"/api/task/info/{job.id}")
            if r.status_code == 200 and r.json().get("state") == "SUCCESS":
                return {**r.json(), "job": job.id}
            time.sleep(0.3)
        return None

    task = wait_until(followed, timeout_s=60, every_s=0.1, failure="Flower never saw a task's events")
    assert task["name"] == "workers.gpu.describe_device" and task["worker"] == gpu
    assert task["received"] and task["started"] and task["succeeded"]  # every worker event arrived
    assert task["args"] == f"[{task['job']!r}, ...]"  # the parameters stay in the job record


def test_the_broker_view_counts_our_prefixed_queues(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # A prefix with no worker, so the messages wait: Flower then shows the default queue, cpu.
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-fl{uuid.uuid4().hex[:6]}"})
    process = None
    try:
        app = make_celery(own)
        for priority in (0, 3, 9):  # three of kombu's priority steps, each its own list
            app.send_task("workers.cpu.mine_shard", args=["none", {}, 0, 1, 1], queue="cpu", priority=priority)
        process, url = start_flower(own, tmp_path / "flower.log")
        assert get(url, "/api/queues/length").json() == {"active_queues": [{"name": "cpu", "messages": 3}]}
        page = get(url, "/broker")
        assert page.status_code == 200 and "<td>cpu</td>" in page.text
        assert own.redis_url not in page.text
    finally:
        if process is not None:
            stop(process)
        delete_prefix(redis_client, own.key_prefix)


@pytest.fixture
def up_with_flower(settings: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``movierec up --flower`` on an embedded Redis of its own."""
    port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(MOVIEREC_KEY_PREFIX=settings.key_prefix + "-upfl", MOVIEREC_DATA_ROOT=str(settings.data_root),
               FLOWER_BASIC_AUTH=":".join(LOGIN))  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port), "--cpu-workers", "1", "--flower",
         "--flower-port", str(flower_port), "--data-dir", str(tmp_path / "up"), "--log-dir", str(tmp_path / "logs")],
        env=env, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    flower_url = f"http://127.0.0.1:{flower_port}"
    died = lambda: exit_status(process)  # noqa: E731
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}", timeout_s=120, died=died)
            wait_answering(f"{flower_url}/healthcheck", timeout_s=START_TIMEOUT_S, died=died)
        except (RuntimeError, TimeoutError) as exc:
            tails = log_tails(tmp_path / "logs")
            raise AssertionError(f"movierec up --flower never became ready: {exc}\n{tails}") from None
        yield process, flower_url
    finally:
        if process.poll() is None:
            process.kill()  # its children die with it (PR_SET_PDEATHSIG)
        process.wait()


def cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # gone, or a zombie its supervisor has not reaped yet
        return []


def flower_child(up: subprocess.Popen[str]) -> psutil.Process | None:
    return next((p for p in psutil.Process(up.pid).children() if "flower" in cmdline(p)), None)


def test_up_supervises_a_flower_child(up_with_flower: tuple[subprocess.Popen[str], str]) -> None:
    process, url = up_with_flower
    host = socket.gethostname()
    children = psutil.Process(process.pid).children()
    worker_pids = {p.pid for p in children if "worker" in p.cmdline()}
    flower = flower_child(process)
    assert flower is not None and flower.cmdline()[-4:] == ["--address", "127.0.0.1", "--port", url.rsplit(":", 1)[-1]]
    assert not any("redis://" in part for part in flower.cmdline())  # the broker URL stays out of `ps`
    names = {f"{q}-{pid}@{host}" for q in ("cpu", "gpu") for pid in worker_pids}

    def sees_both() -> bool:
        r = get(url, "/api/workers", params={"refresh": 1})
        return r.status_code == 200 and len(names & set(r.json())) == 2

    wait_until(sees_both, timeout_s=30, every_s=1, failure="Flower never listed the stack's two workers")
    assert requests.get(f"{url}/api/workers", timeout=30).status_code == 401

    os.killpg(flower.pid, signal.SIGKILL)  # as a crash would: up starts it again
    wait_until(lambda: (flower_child(process) or flower).pid != flower.pid, timeout_s=10, failure="not restarted")
    wait_answering(f"{url}/healthcheck", timeout_s=START_TIMEOUT_S)

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert process.stdout is not None
    printed = process.stdout.read()
    assert f"Flower at {url} (FLOWER_BASIC_AUTH login)" in printed, printed
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthcheck", timeout=5)
