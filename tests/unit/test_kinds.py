"""The job-kind table against what the workers define and how the Celery app routes."""

from __future__ import annotations

from shared.infra.settings import Settings
from shared.jobs import kinds
from shared.jobs.celery_app import make_celery


def test_every_task_the_workers_define_is_in_the_table_and_routed_by_it() -> None:
    app = make_celery(Settings(key_prefix="kinds-test"))
    app.loader.import_default_modules()  # the task modules, as a worker imports them
    defined = {name for name in app.tasks if name.startswith("workers.")}
    assert defined == {task.name for task in kinds.TASKS}
    for task in kinds.TASKS:
        assert app.amqp.router.route({}, task.name) == {"queue": app.amqp.queues[task.queue], "priority": task.priority}


def test_queues_are_by_hardware_and_recommendations_go_first() -> None:
    assert {kind for kind, task in kinds.KINDS.items() if task.queue == kinds.GPU_QUEUE} == {
        "encode",
        "train",
        "device",
    }
    assert kinds.task_of("recommend").priority < kinds.task_of("triplets").priority
    assert all(task.priority in kinds.PRIORITY_STEPS for task in kinds.TASKS)
