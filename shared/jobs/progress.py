"""A job's progress bar when a job is a stage of another, or its work is split: one fraction, one ETA.

A *position* says where a part of the work sits in a job's bar: ``{"id", "stage", "index", "stages"}``, the
job that shows it, the stage named while it runs, and how many stage-widths come before it and fit in the
whole bar. A pipeline's stage jobs carry theirs as ``params["parent"]`` (index = the stage's number, stages =
5); an evaluation weighs its stages (``shared/logic/evaluation.py parent``); a sharded job's shards fill the
whole bar of their own job (``whole``). ``report`` turns a fraction of a position into the job's overall
fraction, with an ETA once a twentieth of the work is done.
"""

from __future__ import annotations

from typing import Any

from shared.infra.clock import parse_iso
from shared.jobs.store import Job, JobStore

Position = dict[str, Any]
"""{"id": job, "stage": name, "index": stage-widths before it, "stages": stage-widths in all}, JSON."""


def whole(job_id: str, stage: str) -> Position:
    """The position of work that fills a job's whole bar (a sharded job's shards)."""
    return {"id": job_id, "stage": stage, "index": 0, "stages": 1}


def overall(where: Position, fraction: float) -> float:
    """The job's fraction when ``fraction`` of the work at ``where`` is done."""
    return float((where["index"] + min(max(fraction, 0.0), 1.0)) / where["stages"])


def eta(jobs: JobStore, job: Job | None, done: float) -> str:
    """ "; ETA <s> s" from the job's start and the fraction ``done`` of it, once measurable; else "". Both ends
    are by the store's clock (Redis TIME), whichever host reports."""
    if job is None or not job.started_at or done <= 0.05:
        return ""
    elapsed = jobs.clock.now() - parse_iso(job.started_at)
    return f"; ETA {elapsed * (1 - done) / done:.0f} s"


def report(jobs: JobStore, job: Job | None, where: Position, fraction: float, message: str) -> float:
    """Write ``fraction`` of ``where`` as the progress of the job ``where`` names (``job``, its record, gives the
    ETA); answers the job's overall fraction."""
    done = overall(where, fraction)
    jobs.progress(where["id"], done, stage=where["stage"], message=f"{message}{eta(jobs, job, done)}")
    return done
