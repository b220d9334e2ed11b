"""The Celery factory: JSON only, routing by module, late acks, no ack emulation, no result backend."""

from __future__ import annotations

from shared.infra.celery_app import BATCH_PRIORITY, SERVING_PRIORITY, make_celery
from shared.infra.settings import Settings


def test_configuration_follows_settings() -> None:
    settings = Settings(key_prefix="cfg", task_time_limit_s=100, visibility_timeout_s=500)
    app = make_celery(settings)
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit == 100 and conf.task_soft_time_limit < 100
    # Redelivery after a worker's death is the janitor's; results live in the job store.
    assert conf.broker_transport_options["ack_emulation"] is False
    assert conf.broker_transport == "shared.infra.broker:Transport"
    assert type(app.backend).__name__ == "DisabledBackend"
    assert conf.broker_transport_options["global_keyprefix"] == "cfg:celery:"
    assert app.settings is settings


def test_tasks_are_routed_by_module() -> None:
    app = make_celery(Settings())
    app.loader.import_default_modules()
    route = app.amqp.router.route
    assert route({}, "workers.cpu.ingest_dataset")["queue"].name == "cpu"
    assert route({}, "workers.gpu.describe_device")["queue"].name == "gpu"
    assert {"workers.cpu.ingest_dataset", "workers.gpu.describe_device"} <= set(app.tasks)


def test_a_recommendation_overtakes_batch_work_waiting_in_the_cpu_queue(settings: Settings, fresh_prefix: str) -> None:
    app = make_celery(settings.model_copy(update={"key_prefix": fresh_prefix}))
    assert app.amqp.router.route({}, "workers.cpu.recommend")["priority"] == SERVING_PRIORITY
    assert app.amqp.router.route({}, "workers.cpu.mine_shard")["priority"] == BATCH_PRIORITY
    for i in range(3):
        app.send_task("workers.cpu.mine_shard", args=[f"job-{i}", {}, 0, 1, 1])
    app.send_task("workers.cpu.recommend", args=["asker", {}])
    with app.connection_for_read() as conn:  # kombu's own consumer side, taking in the order a worker does
        queue = conn.SimpleQueue("cpu")
        taken = [queue.get(timeout=2) for _ in range(4)]
        for message in taken:
            message.ack()
        queue.close()
    assert [m.headers["task"] for m in taken] == ["workers.cpu.recommend"] + ["workers.cpu.mine_shard"] * 3


def test_importing_the_gpu_tasks_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, workers.gpu, workers.cpu, api; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
