"""The Celery factory: JSON only, routing by module, late acks, no ack emulation, no result backend."""

from __future__ import annotations

from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery


def test_configuration_follows_settings() -> None:
    settings = Settings(key_prefix="cfg", task_time_limit_s=100)
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
    assert route({}, "workers.interactive.recommend")["queue"].name == "interactive"
    assert {"workers.cpu.ingest_dataset", "workers.gpu.describe_device"} <= set(app.tasks)


def test_importing_the_gpu_tasks_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, workers.gpu, workers.cpu, api; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
