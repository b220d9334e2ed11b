"""Plain functions the tests share (fixtures live in the conftest modules).

- ``wait_until``: poll a condition until it holds; the one polling loop of the tests.
- ``wait_job``: poll one job until it has finished, through a callable or over HTTP, and answer its record.
- ``wait_jobs``: the same for many jobs at once, with a hook that sees how many have finished.
- ``running``: a process of the test's own (``movierec api``, nginx, a worker), ready when a check says so, and
  stopped, its whole process group, at the end of the block.
- ``new_stack``: a ``cli.stack.Stack`` set up for a test (a free port, logs beside its data), to use as
  ``with new_stack(...) as stack:`` or through the ``make_stack`` fixture.
- ``write_sample``: a sample of ml-latest-small (``SAMPLE``) under a data root, for the ``sample`` fixture.
- ``cli``, ``embedded_env``, ``exit_status``: the ``movierec`` command run as a user runs it, on an embedded
  Redis of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import requests

from cli.stack import Stack, free_port
from shared.infra.settings import Settings
from shared.jobs.store import Job

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
"""The real MovieLens sample beside the checkout (not committed)."""

FINISHED = ("succeeded", "failed", "cancelled")
"""A job in one of these states never changes again."""

T = TypeVar("T")
Record = TypeVar("Record", bound="Mapping[str, Any] | Job")


def wait_until(
    condition: Callable[[], T],
    *,
    timeout_s: float,
    every_s: float = 0.1,
    between: Callable[[], object] | None = None,
    failure: str | Callable[[], object] = "the condition never held",
) -> T:
    """Call ``condition`` every ``every_s`` until it answers something true, and answer that.

    ``between`` is called after each false answer. When ``timeout_s`` has passed, raises AssertionError with
    ``failure`` (a text, or a callable answering one at that moment).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout_s:.0f} s: {failure() if callable(failure) else failure}")
        if between is not None:
            between()
        time.sleep(every_s)


def status_of(record: Mapping[str, Any] | Job) -> str:
    return str(record["status"]) if isinstance(record, Mapping) else record.status


def http_job(api_url: str, job_id: str) -> Callable[[], dict[str, Any] | None]:
    """``GET {api_url}/v1/jobs/{job_id}`` as a fetch for ``wait_job``: a 5xx answer (say, a 503 while Redis is
    away) says nothing about the job yet (None); any other answer but 200 fails at once."""

    def fetch() -> dict[str, Any] | None:
        r = requests.get(f"{api_url}/v1/jobs/{job_id}", timeout=30)
        if r.status_code >= 500:
            return None
        assert r.status_code == 200, f"GET /v1/jobs/{job_id}: {r.status_code} {r.text}"
        return dict(r.json())

    return fetch


@overload
def wait_job(
    source: str,
    job_id: str,
    *,
    timeout_s: float = ...,
    every_s: float = ...,
    between: Callable[[], object] | None = ...,
) -> dict[str, Any]: ...


@overload
def wait_job(
    source: Callable[[], Record | None],
    job_id: None = None,
    *,
    timeout_s: float = ...,
    every_s: float = ...,
    between: Callable[[], object] | None = ...,
) -> Record: ...


def wait_job(
    source: str | Callable[[], Any],
    job_id: str | None = None,
    *,
    timeout_s: float = 120.0,
    every_s: float = 0.1,
    between: Callable[[], object] | None = None,
) -> Any:
    """Poll a job until it has finished (succeeded, failed or cancelled) and answer its final record.

    ``source`` is either a callable answering the record (a dict as ``GET /v1/jobs/<id>`` shows it, or the job
    store's ``Job``; None while there is none), or an API's base URL with ``job_id`` (see ``http_job``).
    ``between`` is called after each look that found the job unfinished. Raises AssertionError after
    ``timeout_s``, with the last record seen.
    """
    if isinstance(source, str):
        assert job_id is not None, "wait_job(api_url, job_id)"
        fetch: Callable[[], Any] = http_job(source, job_id)
    else:
        fetch = source
    last: list[Any] = [None]

    def finished() -> Any:
        last[0] = fetch()
        return last[0] if last[0] is not None and status_of(last[0]) in FINISHED else None

    return wait_until(
        finished,
        timeout_s=timeout_s,
        every_s=every_s,
        between=between,
        failure=lambda: f"job {job_id or ''} unfinished: {last[0]}",
    )


def run_job(api_url: str, path: str, body: dict[str, Any], *, timeout_s: float = 300) -> dict[str, Any]:
    """POST a job, wait for it to succeed (asserted) and answer its result."""
    r = requests.post(f"{api_url}{path}", json=body, timeout=30)
    assert r.status_code == 202, r.text
    job = wait_job(api_url, r.json()["id"], timeout_s=timeout_s)
    assert job["status"] == "succeeded", job
    return dict(requests.get(f"{api_url}{job['result_url']}", timeout=30).json())


def two_versions(api_url: str) -> list[str]:
    """Two trained, indexed versions of ml-latest-small (seeds 1 and 2, one epoch each), the first one active:
    what the tests of activation, rollback and experiments compare."""
    dataset = run_job(api_url, "/v1/datasets", {"path": "ml-latest-small"})["dataset"]
    run_job(api_url, "/v1/jobs/triplets", {"dataset": dataset})
    made = []
    for seed in (1, 2):
        version = run_job(api_url, "/v1/jobs/train", {"dataset": dataset, "epochs": 1, "seed": seed})["version"]
        run_job(api_url, "/v1/jobs/index", {"version": version})
        made.append(version)
    r = requests.post(f"{api_url}/v1/models/{made[0]}/activate", timeout=10)
    assert r.status_code == 200 and r.json()["active"] == made[0], r.text
    return made


def wait_jobs(
    fetch: Callable[[str], Record | None],
    ids: Sequence[str],
    *,
    timeout_s: float = 120.0,
    every_s: float = 0.2,
    between: Callable[[int], object] | None = None,
) -> list[Record]:
    """Poll every job of ``ids`` (``fetch(id)``, e.g. ``svc.jobs.get``) until all have finished; answer their
    final records in the order of ``ids``. ``between`` is called with the number finished so far after each look
    that found some unfinished."""
    last: list[Record | None] = []

    def unfinished() -> list[tuple[str, str | None]]:
        return [(i, None if r is None else status_of(r)) for i, r in zip(ids, last, strict=True)
                if r is None or status_of(r) not in FINISHED]  # fmt: skip

    def all_finished() -> list[Record] | None:
        last[:] = [fetch(i) for i in ids]
        return None if unfinished() else [r for r in last if r is not None]

    def report() -> None:
        if between is not None:
            between(len(ids) - len(unfinished()))

    return wait_until(
        all_finished,
        timeout_s=timeout_s,
        every_s=every_s,
        between=report,
        failure=lambda: f"{len(unfinished())} of {len(ids)} jobs unfinished: {unfinished()[:5]}",
    )


def new_stack(
    settings: Settings,
    where: Path,
    *,
    cpu_workers: int = 2,
    embedded_redis: bool = False,
    redis_password: str | None = None,
    ready_timeout_s: float = 120.0,
) -> Stack:
    """A stack for a test, not started: data in ``where``, logs in ``where/logs``, API on a free port.

    ``with new_stack(...) as stack:`` starts it and waits until it is ready (stopping it and printing its logs'
    tails if it is not), and stops it at the end of the block.
    """
    return Stack(
        settings,
        data_dir=where,
        cpu_workers=cpu_workers,
        embedded_redis=embedded_redis,
        log_dir=where / "logs",
        redis_password=redis_password,
        ready_timeout_s=ready_timeout_s,
    )


@contextlib.contextmanager
def running(
    command: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready: Callable[[], bool] | None = None,
    timeout_s: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` in a session of its own, its output to ``log``; wait until ``ready()`` (failing with the
    log's tail if the process exits first or the wait times out); at the end, SIGTERM its process group, then
    SIGKILL after 20 s."""
    with log.open("wb") as out:
        process = subprocess.Popen(list(command), env=None if env is None else dict(env), cwd=cwd,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip

    def started() -> bool:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        return ready is None or ready()

    try:
        wait_until(started, timeout_s=timeout_s, every_s=0.2, failure=lambda: log.read_text(errors="replace")[-3000:])
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def readme_matrix() -> dict[tuple[str, str], str]:
    """README.md's roles table: {(METHOD, /path as the spec writes it): least role} (tests/api/test_roles.py,
    tests/system/test_tenants.py)."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| route | least role |") :].split("\n\n", 1)[0]
    out: dict[tuple[str, str], str] = {}
    for line in table.splitlines()[2:]:
        routes, role = (cell.strip() for cell in line.strip("|").split("|"))
        for method, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) ([^`]+)`", routes):
            out[(method, path)] = role
    return out


@contextlib.contextmanager
def keyed_api(settings: Settings, entries: Sequence[str], log_dir: Path) -> Iterator[str]:
    """A real ``movierec api`` (one gunicorn worker) on ``settings``' Redis and prefix, so the session stack's
    workers serve it, with ``entries`` as MOVIEREC_API_KEYS: its base URL while it runs."""
    own = settings.model_copy(update={"api_keys": tuple(entries)})
    port = free_port()
    command = [sys.executable, "-m", "cli.main", "api", "--port", str(port), "--workers", "1"]
    ready = answers(f"http://127.0.0.1:{port}/healthz")
    with running(command, log_dir / "api.log", env=own.child_env(), ready=ready):
        yield f"http://127.0.0.1:{port}"


def answers(url: str) -> Callable[[], bool]:
    """A ``ready`` check for ``running``: ``url`` answers 200."""

    def check() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    return check


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


FAST: dict[str, Any] = {
    "lease_ttl_s": 2,
    "janitor_interval_s": 1.0,
    "task_time_limit_s": 20,
}
"""Settings short enough for a test to see lost work found and resent within seconds (a lease of 2 s, a janitor
sweep every second), not the half minute and more of the defaults."""


@dataclass(frozen=True)
class Sample:
    """A sample of ml-latest-small: its first ``users`` users (by id), their ratings of the movies at least
    ``min_raters`` of them rated, and those movies' rows of movies.csv and tags.csv."""

    name: str
    users: int
    min_raters: int


SAMPLE = Sample("ml-sample", users=80, min_raters=2)
"""12,704 ratings of 3,639 movies by ml-latest-small's first 80 users; 11,043 of 1,978 movies once those rated by
one of them alone are left out. Fitting a baseline (EASE's two dense m x m matrices above all), encoding the
descriptors, mining and training all scale with the movies: the evaluation tests took 157 s of CPU on the 3,639
and 125 s on the 1,978 (session 24), and their assertions hold on either."""


def write_sample(data_root: Path, sample: Sample) -> str:
    """``sample`` written under ``data_root`` from ml-latest-small beside the checkout (once: a second call finds
    it); answers its directory's name, the path a job asks for."""
    import pandas as pd

    out = data_root / sample.name
    if (out / "ratings.csv").exists():
        return sample.name
    ratings = pd.read_csv(SMALL / "ratings.csv")
    ratings = ratings[ratings.userId <= sample.users]
    raters = ratings.movieId.value_counts()
    ratings = ratings[ratings.movieId.isin(raters.index[raters >= sample.min_raters])]
    out.mkdir(parents=True, exist_ok=True)
    for name in ("movies.csv", "tags.csv"):
        frame = pd.read_csv(SMALL / name)
        frame[frame.movieId.isin(set(ratings.movieId))].to_csv(out / name, index=False)
    ratings.to_csv(out / "ratings.csv", index=False)  # last: a directory with ratings.csv is whole
    return sample.name


def embedded_env(settings: Settings, root: Path, *, fast: bool = False) -> dict[str, str]:
    """The environment of a ``movierec`` command on an embedded Redis of its own (``REDIS_URL`` unset), under a
    prefix of its own, data in ``root``; ``fast``: with ``FAST``'s lease and janitor."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(MOVIEREC_KEY_PREFIX=settings.key_prefix + "-up", MOVIEREC_DATA_ROOT=str(root))
    if fast:
        env.update({f"MOVIEREC_{name.upper()}": str(value) for name, value in FAST.items()})
    return env


def exit_status(process: subprocess.Popen[str]) -> str | None:
    return None if process.poll() is None else f"movierec up exited with status {process.returncode}"
