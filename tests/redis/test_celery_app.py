"""The Celery factory on a real Redis: priorities as kombu's consumer side takes messages."""

from __future__ import annotations

from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery, queue_lengths
from shared.jobs.kinds import BATCH_PRIORITY, SERVING_PRIORITY


def test_recommendations_have_a_queue_of_their_own_and_overtake_batch_work(
    settings: Settings, fresh_prefix: str
) -> None:
    app = make_celery(settings.model_copy(update={"key_prefix": fresh_prefix}))
    route = app.amqp.router.route({}, "workers.interactive.recommend")
    assert (route["queue"].name, route["priority"]) == ("interactive", SERVING_PRIORITY)
    assert app.amqp.router.route({}, "workers.cpu.mine_shard")["priority"] == BATCH_PRIORITY
    for i in range(3):
        app.send_task("workers.cpu.mine_shard", args=[f"job-{i}", {}, 0, 1, 1])
    app.send_task("workers.cpu.build_index", args=["j", {}], priority=SERVING_PRIORITY)
    with app.connection_for_read() as conn:  # kombu's own consumer side, taking in the order a worker does
        queue = conn.SimpleQueue("cpu")
        taken = [queue.get(timeout=2) for _ in range(4)]
        for message in taken:
            message.ack()
        queue.close()
    assert [m.headers["task"] for m in taken] == ["workers.cpu.build_index"] + ["workers.cpu.mine_shard"] * 3
    assert app.amqp.router.route({}, "workers.cpu.pipeline_step")["queue"].name == "interactive"  # steps: never behind


def test_queue_lengths_count_every_priority_step(settings: Settings, fresh_prefix: str) -> None:
    app = make_celery(settings.model_copy(update={"key_prefix": fresh_prefix}))
    assert queue_lengths(app) == {"interactive": 0, "cpu": 0, "gpu": 0}
    for i in range(3):
        app.send_task("workers.cpu.mine_shard", args=[f"job-{i}", {}, 0, 1, 1])
    app.send_task("workers.interactive.recommend", args=["asker", {}])
    app.send_task("workers.gpu.encode", args=["encoder", {}])
    assert queue_lengths(app) == {"interactive": 1, "cpu": 3, "gpu": 1}
