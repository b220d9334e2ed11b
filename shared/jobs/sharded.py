"""One frame for every sharded job (mining, batch recommendations, an evaluation's scoring).

    main task (or a step) plans ──> ShardPlan {items, size, payload}, stored on the job record (``PLAN_FIELD``)
        ──> one message per shard not done yet: the kind's shard task, args [job, payload, lo, hi, total]
    shard task ──> unit ``shard-<lo>`` (its lease) ──> the kind's work: its part stored, fenced by that lease
        ──> ``JobStore.shard_done`` (the shard's stats, only while the job runs) ──> progress with an ETA
        └─ the shard that completes the set sends the kind's join task, args [job, payload]
    join task ──> unit ``join`` ──> the guard: the job still runs and every planned shard is done
        ──> the kind's finish: the job's result ──> succeed ──> the parts dropped, the parent told

Which tasks a kind's shards and join run on is declared once, beside the kind table (shared/jobs/kinds.py
``SHARDED``). The plan is the one the shards, the join and the janitor all work from: a redelivered or resent
shard finds the same ranges, and ``pending`` (what the janitor sends again for a job that lost its work) is the
shards not done, or the join once all are. The worker side of the frame is workers/sharded.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery

from shared.infra.keys import shard_id
from shared.jobs.kinds import EVALUATE_SPLIT, KINDS, SHARDED, STEPPED, Task
from shared.jobs.store import JobStore

PLAN_FIELD = "shards"
"""The job record's field holding its ``ShardPlan`` (JSON), written once the job is planned."""


def shard_unit(lo: int) -> str:
    """The unit of the shard that starts at ``lo``: the lease its task takes, the unit the janitor sends again,
    and the fence ``workers.sharded`` publishes the shard's output under."""
    return f"shard-{shard_id(lo)}"


def message_unit(task: str, args: list[Any]) -> str | None:
    """The unit a message of ``task`` with ``args`` runs under (its lease: shared/jobs/leases.py), None for a
    task that takes none (a pipeline's or an evaluation's step, which holds the job's lock instead)."""
    for sharded in SHARDED.values():
        if task == sharded.shard.name:
            return shard_unit(int(args[2]))
        if task == sharded.join.name:
            return "join"
    if task == EVALUATE_SPLIT.name:
        return "split"
    stepped = {t.name for t in STEPPED.values()}
    return "main" if task in {t.name for t in KINDS.values()} - stepped else None


def ranges(items: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of ``items``, ``size`` each (the last one shorter); none for no items."""
    return [(lo, min(lo + size, items)) for lo in range(0, items, size)]


@dataclass(frozen=True)
class ShardPlan:
    """``items`` cut into shards of ``size``, and the JSON every shard and the join of the job receive."""

    items: int
    size: int
    payload: dict[str, Any]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return ranges(self.items, self.size)

    def to_json(self) -> str:
        return json.dumps({"items": self.items, "size": self.size, "payload": self.payload})

    @classmethod
    def from_json(cls, raw: str) -> ShardPlan:
        fields = json.loads(raw)
        return cls(items=int(fields["items"]), size=int(fields["size"]), payload=fields["payload"])


def stored_plan(jobs: JobStore, job_id: str) -> ShardPlan | None:
    """The plan on the job's record; None before the job is planned."""
    raw = jobs.field(job_id, PLAN_FIELD)
    return ShardPlan.from_json(raw) if raw is not None else None


def send_shards(
    jobs: JobStore,
    celery: Celery,
    job_id: str,
    kind: str,
    plan: ShardPlan,
    *,
    only: Callable[[int], bool] | None = None,
) -> None:
    """Store ``plan`` on the job (running) and send a message for each of its shards not done yet (of those
    starting at an item ``only`` accepts, when given: an evaluation sends its cells in two waves): a replanning
    (the janitor resending a lost planning task) sends only what is missing."""
    jobs.annotate(job_id, **{PLAN_FIELD: plan.to_json()})
    done, shards, task = jobs.shards_done(job_id), plan.ranges, SHARDED[kind].shard
    for lo, hi in shards:
        if shard_id(lo) not in done and (only is None or only(lo)):
            celery.send_task(task.name, args=[job_id, plan.payload, lo, hi, len(shards)])


class Deferred(Exception):
    """A shard that cannot run yet (an evaluation's recipe cell before its model is trained): it publishes
    nothing and is not counted done; whoever raises it sees that it is sent again."""


def pending(jobs: JobStore, job_id: str, kind: str, plan: ShardPlan) -> list[tuple[str, Task, list[Any]]]:
    """What a planned job still needs run, each as (unit, task, args): its shards not done, or its join once
    every shard is."""
    tasks, done, shards = SHARDED[kind], jobs.shards_done(job_id), plan.ranges
    todo = [(lo, hi) for lo, hi in shards if shard_id(lo) not in done]
    if not todo:
        return [("join", tasks.join, [job_id, plan.payload])]
    return [(shard_unit(lo), tasks.shard, [job_id, plan.payload, lo, hi, len(shards)]) for lo, hi in todo]
