"""Breaking things on purpose: workers SIGKILLed mid-work, pool processes killed, a poison unit, a warm shutdown.

Each test runs its own processes (a ``Stack`` on a key prefix of its own, with short leases and a fast janitor)
so it can kill them without touching the session's stack. RELIABILITY.md has the figures of longer runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psutil
import requests

from cli.stack import Stack
from cli.synth import SynthSpec, write_synthetic
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery, queue_lengths
from shared.jobs.store import Job
from shared.jobs.submit import submit
from shared.logic.mining import TripletSpec, load_incidence
from shared.logic.services import Services
from shared.ml.mining import mine_range
from tests.helpers import wait_job, wait_jobs, wait_until
from workers.janitor import MAX_RESENDS


def submit_ingest(svc: Services, celery: Any, path: str, *, tags: int = 5) -> Job:
    params = {"path": path, "tags_per_movie": tags, "genres_fix_csv": None}
    return submit(celery, svc.jobs, kind="ingest", params=params)


def ingest(svc: Services, celery: Any, path: str) -> str:
    job = submit_ingest(svc, celery, path)
    done = wait_job(lambda: svc.jobs.get(job.id), timeout_s=120)
    assert done is not None and done.status == "succeeded", done
    return str(done.result["dataset"])


def ingest_catalogue(svc: Services, celery: Any, settings: Settings) -> str:
    """The chaos tests' generated catalogue (2,000 movies), written once under the data root and ingested."""
    root = settings.data_root / "chaos-catalogue"
    if not root.exists():
        write_synthetic(root, SynthSpec(movies=2_000, users=300, ratings=20_000, seed=3))
    return ingest(svc, celery, root.name)


def test_sharded_mining_survives_a_worker_sigkilled_every_few_seconds(
    chaos_stack: Stack, chaos_settings: Settings
) -> None:
    svc, celery = Services.from_settings(chaos_settings), make_celery(chaos_settings)
    dataset = ingest_catalogue(svc, celery, chaos_settings)
    seeds = range(1, 61)  # 60 jobs: about 40 s of work here, room for the kills below
    ids = []
    for seed in seeds:
        params = {"dataset": dataset, "shard_size": 250, "seed": seed, "negatives": "uniform-min"}
        ids.append(submit(celery, svc.jobs, kind="triplets", params=params).id)

    kills: list[int] = []
    last = [0.0]

    def kill_now_and_then(finished: int) -> None:
        # SIGKILL the whole CPU worker (its main process and pool) each time five more jobs have finished, at
        # least a second apart, so the kills land mid-run however fast this machine and its Redis are (jobs
        # finish in bursts: the janitor resends what a kill left undone a few seconds later).
        if len(kills) < 8 and finished >= 5 + 5 * len(kills) and time.monotonic() - last[0] > 1.0:
            chaos_stack.kill("cpu-worker", signal.SIGKILL)
            chaos_stack.respawn("cpu-worker")
            kills.append(finished)
            last[0] = time.monotonic()

    finals = wait_jobs(svc.jobs.get, ids, timeout_s=400, between=kill_now_and_then)
    print(f"chaos: {len(ids)} jobs, {len(kills)} worker SIGKILLs, after {kills} jobs had finished")
    assert len(kills) >= 5
    failed = [(j.id, j.error) for j in finals if j is not None and j.status != "succeeded"]
    assert not failed, failed
    # Every triplet array equals an undisturbed computation over the whole catalogue.
    incidence = load_incidence(svc.artifacts, dataset)
    movie_ids = svc.artifacts.get_array(f"dataset/{dataset}/movie_ids")
    for seed in seeds:
        spec = TripletSpec(dataset=dataset, seed=seed, strategy="uniform-min")
        stored = svc.artifacts.get_array(spec.name)
        reference = movie_ids[mine_range(incidence, 0, len(movie_ids), seed=seed, strategy="uniform-min").triplets]
        assert stored.tobytes() == reference.astype(np.int32).tobytes(), seed


def kill_holder_of(
    svc: Services, job_id: str, unit: str, *, times: int, stop: threading.Event, timeout_s: float = 120
) -> list[int]:
    """SIGKILL the process that holds the unit's lease, each time one does, ``times`` times."""
    killed: list[int] = []
    key = svc.units.lease_key(job_id, unit)
    deadline = time.monotonic() + timeout_s
    while len(killed) < times and not stop.is_set() and time.monotonic() < deadline:
        holder = svc.redis.get(key)
        if holder is not None:
            pid = int(holder.decode().split("|")[1])
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.005)
    return killed


def slow_ingest_path(settings: Settings) -> str:
    """A catalogue big enough that ingesting it takes a good part of a second."""
    root = settings.data_root / "chaos-slow"
    if not root.exists():
        write_synthetic(root, SynthSpec(movies=20_000, users=5_000, ratings=600_000, seed=5))
    return root.name


def test_a_pool_process_killed_mid_task_is_redone(chaos_stack: Stack, chaos_settings: Settings) -> None:
    svc, celery = Services.from_settings(chaos_settings), make_celery(chaos_settings)
    job = submit_ingest(svc, celery, slow_ingest_path(chaos_settings), tags=5)
    stop = threading.Event()
    killed = kill_holder_of(svc, job.id, "main", times=1, stop=stop)
    final = wait_job(lambda: svc.jobs.get(job.id), timeout_s=120)
    assert len(killed) == 1
    assert final is not None and final.status == "succeeded", final


def test_a_poison_unit_fails_its_job_after_three_deliveries(chaos_stack: Stack, chaos_settings: Settings) -> None:
    svc, celery = Services.from_settings(chaos_settings), make_celery(chaos_settings)
    job = submit_ingest(svc, celery, slow_ingest_path(chaos_settings), tags=4)
    stop = threading.Event()
    result: list[int] = []
    killer = threading.Thread(target=lambda: result.extend(kill_holder_of(svc, job.id, "main", times=10, stop=stop)))
    killer.start()
    try:
        final = wait_job(lambda: svc.jobs.get(job.id), timeout_s=120)
    finally:
        stop.set()
        killer.join()
    assert final is not None and final.status == "failed" and final.error is not None
    assert final.error["code"] == "worker_lost" and final.error["details"]["starts"] == 3, final.error
    assert "started 3 times" in final.error["message"]
    assert len(result) == 3  # never a fourth run: the job failed instead
    assert chaos_stack.dead_child() is None  # the worker itself lived on (only pool processes died)


def test_a_warm_shutdown_finishes_the_running_task(chaos_stack: Stack, chaos_settings: Settings) -> None:
    svc, celery = Services.from_settings(chaos_settings), make_celery(chaos_settings)
    job = submit_ingest(svc, celery, slow_ingest_path(chaos_settings), tags=3)
    key = svc.units.lease_key(job.id, "main")
    wait_until(lambda: svc.redis.exists(key), timeout_s=60, every_s=0.005, failure="the job never started")
    worker = chaos_stack.child("cpu-worker").process
    os.kill(worker.pid, signal.SIGTERM)  # Celery's warm shutdown: finish what runs, take nothing new
    assert worker.wait(timeout=60) == 0
    final = svc.jobs.get(job.id)
    assert final is not None and final.status == "succeeded", final


def test_redis_sigkilled_mid_burst_loses_no_accepted_job(
    chaos_settings: Settings, make_stack: Callable[..., Stack]
) -> None:
    # A Redis of this test's own (AOF, fsync on every write), killed with SIGKILL and started again on its
    # directory while clients keep submitting over HTTP.
    stack = make_stack(chaos_settings, embedded_redis=True)
    api = stack.api_url
    root = chaos_settings.data_root / "chaos-catalogue"
    if not root.exists():
        write_synthetic(root, SynthSpec(movies=2_000, users=300, ratings=20_000, seed=3))
    ingested = requests.post(f"{api}/v1/datasets", json={"path": root.name}, timeout=30).json()
    assert wait_job(api, ingested["id"])["status"] == "succeeded"
    dataset = requests.get(f"{api}/v1/jobs/{ingested['id']}/result", timeout=30).json()["dataset"]

    accepted: list[str] = []
    answers: list[int] = []
    stop = threading.Event()

    def burst(first_seed: int) -> None:
        seed = first_seed
        while not stop.is_set():
            seed += 1
            body = {"dataset": dataset, "seed": seed, "shard_size": 1000}
            try:
                r = requests.post(f"{api}/v1/jobs/triplets", json=body, timeout=30)
            except requests.RequestException:
                answers.append(-1)
                continue
            answers.append(r.status_code)
            if r.status_code == 202:
                accepted.append(r.json()["id"])
            else:
                assert r.json()["error"]["code"] == "unavailable", r.text
            time.sleep(0.1)  # a steady stream, not a backlog the workers need minutes to clear

    clients = [threading.Thread(target=burst, args=(n * 100_000,)) for n in range(2)]
    for c in clients:
        c.start()
    time.sleep(2.0)
    assert stack.redis is not None and stack.redis.process is not None
    stack.redis.process.kill()  # SIGKILL: no AOF rewrite, no goodbye
    stack.redis.process.wait()
    before = len(accepted)
    time.sleep(1.0)
    began = time.monotonic()
    during = requests.get(f"{api}/v1/jobs", timeout=30)
    assert during.status_code == 503 and during.json()["error"]["code"] == "unavailable"
    assert time.monotonic() - began < 10
    time.sleep(1.0)
    stack.redis.start()  # same directory, same port
    # What `movierec up` does while it runs: a child that exited is started again (Celery gives up for
    # good on a lost broker in some states: "Unrecoverable error" and exit).
    revived = []
    for _ in range(6):
        time.sleep(0.5)
        revived += stack.revive()
    stop.set()
    for c in clients:
        c.join()
    assert before > 0 and len(accepted) > before, (before, len(accepted))  # accepted before and after
    assert set(answers) <= {202, 503}, sorted(set(answers))
    for job_id in accepted:
        final = wait_job(api, job_id, timeout_s=180, between=lambda: revived.extend(stack.revive()))
        assert final["status"] == "succeeded", final
    print(f"chaos: Redis SIGKILLed and restarted; {len(accepted)} jobs answered 202 ({before} before the kill), "
          f"{answers.count(503)} answered 503, all {len(accepted)} succeeded; restarted: {revived}")  # fmt: skip


EPOCHS = 15
"""The killed training's epochs: it is killed once 3 are done, so most of them run after the restart."""


def test_training_survives_its_gpu_queue_worker_sigkilled_mid_epoch(
    chaos_stack: Stack, chaos_settings: Settings
) -> None:
    import torch
    from safetensors.numpy import load

    from shared.logic.versions import catalogue_rows
    from shared.ml.fitting import TrainConfig
    from shared.ml.training import train

    svc, celery = Services.from_settings(chaos_settings), make_celery(chaos_settings)
    dataset = ingest(svc, celery, "ml-latest-small")
    mined = submit(celery, svc.jobs, kind="triplets",
                   params={"dataset": dataset, "shard_size": 5000, "seed": 7, "negatives": "uniform-min"})  # fmt: skip
    done = wait_job(lambda: svc.jobs.get(mined.id), timeout_s=120)
    assert done is not None and done.status == "succeeded", done
    params = {"dataset": dataset, "triplets": done.result["triplets"], "epochs": EPOCHS, "seed": 11}
    job = submit(celery, svc.jobs, kind="train", params=params)

    def a_few_epochs_done() -> Job | None:
        state = svc.jobs.get(job.id)
        assert state is not None and not state.finished, state
        if state.stage == "training" and state.message and int(state.message.split("/")[0].split()[-1]) >= 3:
            return state
        return None

    state = wait_until(a_few_epochs_done, timeout_s=180, every_s=0.02, failure="training never got going")
    killed_at = state.message
    chaos_stack.kill("gpu-worker", signal.SIGKILL)
    chaos_stack.respawn("gpu-worker")
    final = wait_job(lambda: svc.jobs.get(job.id), timeout_s=300)
    print(f"chaos: GPU-queue worker SIGKILLed at {killed_at!r}; the job was sent again and finished")
    assert final is not None and final.status == "succeeded", final
    # The weights equal an undisturbed run of the same training on the same inputs.
    record = final.result
    stored = load(svc.artifacts.get_bytes(record["artifacts"]["weights"]))
    vectors = svc.artifacts.get_array(record["artifacts"]["input_embeddings"])
    rows = catalogue_rows(
        svc.artifacts.get_array(f"dataset/{dataset}/movie_ids"), svc.artifacts.get_array(params["triplets"])
    )
    reference = train(vectors, rows, TrainConfig(epochs=EPOCHS, seed=11), device=torch.device("cpu"))
    for name, tensor in reference.state.items():
        assert stored[name].tobytes() == tensor.numpy().tobytes(), name


def kill_until_redis_forgets(stack: Stack, name: str, svc: Services, settings: Settings) -> None:
    """SIGKILL a worker, then wait until Redis has let go of every connection its processes had.

    Redis (the embedded 6.2 among others) frees a client whose close it has read only at the end of its event
    loop's turn; a message pushed in that same turn goes to the dead worker's blocked BRPOP and is lost with it,
    until the janitor sends its job again. On a loaded machine, where Redis waits for a core while the worker
    dies and the test submits, one turn can hold both. A test that reads where each message waits submits after
    this.
    """
    port = urlsplit(settings.redis_url).port
    root = psutil.Process(stack.child(name).process.pid)
    ports: set[int] = set()
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            ports |= {c.laddr.port for c in process.net_connections("tcp") if c.raddr and c.raddr.port == port}
    assert ports, f"{name} holds no connection to Redis at port {port}"
    stack.kill(name, signal.SIGKILL)

    def forgotten() -> bool:
        return not ports & {int(c["addr"].rsplit(":", 1)[1]) for c in svc.redis.client_list()}

    wait_until(forgotten, timeout_s=30, every_s=0.01, failure=f"Redis still holds {name}'s connections")


def test_a_backlog_longer_than_any_resend_bound_waits_and_then_succeeds(
    chaos_stack: Stack, chaos_settings: Settings
) -> None:
    # No CPU worker for longer than the janitor needed, before, to give up on a job five times over: the jobs
    # wait in their queue, say where, are never resent (no duplicate message) and succeed once a worker comes.
    svc, celery = Services.from_settings(chaos_settings), make_celery(chaos_settings)
    dataset = ingest_catalogue(svc, celery, chaos_settings)
    kill_until_redis_forgets(chaos_stack, "cpu-worker", svc, chaos_settings)
    ids = [
        submit(celery, svc.jobs, kind="triplets", params={"dataset": dataset, "shard_size": 1000, "seed": seed}).id
        for seed in range(1, 6)
    ]
    sweeps = 2 * (MAX_RESENDS + 1) * 2  # twice the sweeps that failed a waiting job as lost before
    time.sleep(sweeps * chaos_settings.janitor_interval_s)
    jobs = [svc.jobs.get(i) for i in ids]
    assert all(j is not None and j.status == "queued" for j in jobs), jobs
    places = [j.message for j in jobs if j is not None]
    resends = [svc.redis.get(svc.keys.janitor_resends(i)) for i in ids]
    assert places == [f"waiting in the cpu queue: {ahead} messages ahead" for ahead in range(5)], (places, resends)
    assert queue_lengths(celery)["cpu"] == len(ids)  # nothing was sent twice
    chaos_stack.respawn("cpu-worker")
    finals = wait_jobs(svc.jobs.get, ids, timeout_s=300)
    assert [j.status for j in finals if j is not None] == ["succeeded"] * len(ids)
