"""The one table from a job kind to the task that runs it, its queue and its priority.

Submission (shared/jobs/submit.py) looks a kind up here; the Celery app routes every task by this table
(shared/jobs/celery_app.py); the janitor sends a lost job's units again by it (workers/janitor.py); the
pipeline names its stages' kinds (shared/logic/pipeline.py). Beside it: which kinds are sharded and the tasks
of their shards and join (``SHARDED``, the frame is shared/jobs/sharded.py), and which move in steps
(``STEPPED``). A task's name is where workers/ defines it.

Queues are by latency class, then hardware: ``interactive`` (the answers a person waits for: recommendations
for a user, keywords, examples, similar movies; a pool of its own, which also answers them over the fast lane,
shared/jobs/fastlane.py; and the pipelines' and evaluations' steps, milliseconds of bookkeeping each, behind
the answers), ``cpu`` (batch work: ingest, mining shards and joins, indexes, evaluations, batch
recommendations) and ``gpu`` (encoding and training, one solo process per device). So a storm of
recommendations never starves a pipeline, a batch of all users never delays an answer, and a pipeline moves
to its next stage when the last one ends, not when a CPU process finishes the long cell it holds (at 27M
ratings an evaluation's pipelines waited 3 minutes for their steps behind its baselines' first cells). kombu's Redis
transport keeps a list per priority step (0, 3, 6, 9) for each queue, and a worker takes from the lowest step
first: recommendations are sent at 0, an evaluation's scoring cells at 9 (``IDLE_PRIORITY``: they fill the
CPU workers while the pipelines the same evaluation started train on the gpu queue, and those pipelines' own CPU
work goes first) and everything else at 6.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERACTIVE_QUEUE = "interactive"
CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
QUEUES = (INTERACTIVE_QUEUE, CPU_QUEUE, GPU_QUEUE)

SERVING_PRIORITY = 0
BATCH_PRIORITY = 6
IDLE_PRIORITY = 9
PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class Task:
    """A Celery task: its registered name, the queue it is routed to, its priority there."""

    name: str
    queue: str = CPU_QUEUE
    priority: int = BATCH_PRIORITY


INGEST = Task("workers.cpu.ingest_dataset")
MINE = Task("workers.cpu.mine_triplets")
MINE_SHARD = Task("workers.cpu.mine_shard")
JOIN_TRIPLETS = Task("workers.cpu.join_triplets")
INDEX = Task("workers.cpu.build_index")
RECOMMEND = Task("workers.interactive.recommend", INTERACTIVE_QUEUE, SERVING_PRIORITY)
PIPELINE_STEP = Task("workers.cpu.pipeline_step", INTERACTIVE_QUEUE)
ENCODE = Task("workers.gpu.encode", GPU_QUEUE)
TRAIN = Task("workers.gpu.train", GPU_QUEUE)
DESCRIBE_DEVICE = Task("workers.gpu.describe_device", GPU_QUEUE)
EVALUATE_STEP = Task("workers.evaluation.evaluation_step", INTERACTIVE_QUEUE)
EVALUATE_SPLIT = Task("workers.evaluation.evaluation_split")
EVALUATE_SHARD = Task("workers.evaluation.evaluation_shard", priority=IDLE_PRIORITY)
EVALUATE_JOIN = Task("workers.evaluation.evaluation_join")
BATCH = Task("workers.batch.recommend_batch")
BATCH_SHARD = Task("workers.batch.batch_shard")
BATCH_JOIN = Task("workers.batch.batch_join")

KINDS: dict[str, Task] = {
    "ingest": INGEST,
    "triplets": MINE,
    "encode": ENCODE,
    "train": TRAIN,
    "index": INDEX,
    "recommend": RECOMMEND,
    "pipeline": PIPELINE_STEP,
    "device": DESCRIBE_DEVICE,
    "evaluate": EVALUATE_STEP,
    "recommend-batch": BATCH,
}
"""The task a job of each kind is submitted to, with ``args=[job id, params]``."""


@dataclass(frozen=True)
class Sharded:
    """The tasks that run a sharded kind's shards (``[job, payload, lo, hi, total]``) and its join
    (``[job, payload]``), and the stage its shards' progress names (shared/jobs/sharded.py)."""

    shard: Task
    join: Task
    stage: str


SHARDED: dict[str, Sharded] = {
    "triplets": Sharded(MINE_SHARD, JOIN_TRIPLETS, "mining"),
    "recommend-batch": Sharded(BATCH_SHARD, BATCH_JOIN, "recommending"),
    "evaluate": Sharded(EVALUATE_SHARD, EVALUATE_JOIN, "score"),
}
"""The kinds whose work is cut into shards, each once planned (an evaluation: in its scoring stage)."""

STEPPED: dict[str, Task] = {"pipeline": PIPELINE_STEP, "evaluate": EVALUATE_STEP}
"""The kinds that move through stages in short steps (``args=[job id]``), each looking at the job and moving on."""

TASKS = (*KINDS.values(), *(t for s in SHARDED.values() for t in (s.shard, s.join)), EVALUATE_SPLIT)
"""Every task, the parts of a job (shards, joins, an evaluation's split) included."""

TASK_MODULES = ("workers.interactive", "workers.cpu", "workers.gpu", "workers.evaluation", "workers.batch")
"""Where the tasks are defined: a worker imports these."""


def task_of(kind: str) -> Task:
    """The task that runs jobs of ``kind``; KeyError for a kind no one runs."""
    return KINDS[kind]


def routes() -> dict[str, dict[str, str | int]]:
    """Celery's ``task_routes``: each task to its queue and priority."""
    return {task.name: {"queue": task.queue, "priority": task.priority} for task in TASKS}
