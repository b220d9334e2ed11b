"""The interactive pool: the answers a person waits for, on a queue and in processes of their own.

A worker started with ``--queues interactive`` (``movierec up`` starts one; compose's ``interactive-worker``)
answers recommendations for a user, for keywords, for examples and a movie's neighbours two ways, both with
``shared.logic.serving.answer_query`` and the model version the API pinned:

    fast lane   each pool process runs a ``Responder`` (shared/jobs/fastlane.py): a request over pub/sub,
                answered over pub/sub, nothing written (the API's first choice while it waits for an answer)
    durable     the ``recommend`` task, a job on the ``interactive`` queue (``?wait=0``, or when the fast lane
                had no answer in time): recorded, leased, looked after by the janitor like every job

Batch work (``cpu``) never runs here, so a batch of all users or an evaluation does not delay an answer, and a
storm of answers does not starve batch work.
"""

from __future__ import annotations

from typing import Any

from celery import current_app, shared_task

from shared.jobs.celery_app import settings_of
from shared.jobs.fastlane import Responder
from shared.logic.serving import answer_query

from .base import JobContext, Outcome, process_services, run_job

RECOMMENDATION_TTL_S = 3600
"""Answers are for the asker, now: kept an hour (or the result TTL, if shorter), not the week other results are,
so load never piles up."""


@shared_task(name="workers.interactive.recommend")
def recommend(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Answer a recommendation query with the model version the API pinned at submission."""

    def body(ctx: JobContext) -> Outcome:
        svc = ctx.services
        result = answer_query(svc, params)
        ttl_s = min(RECOMMENDATION_TTL_S, svc.settings.result_ttl_s)
        return Outcome(result, message=f"{len(result['items'])} items", ttl_s=ttl_s)

    # Quick and read-only: its body runs while its admission travels (workers/base.py).
    return run_job(job_id, stage="recommending", body=body, speculative=True)


def start_responder(**_: Any) -> None:
    """Answer the fast lane from this pool process (connected to ``worker_process_init`` by workers/main.py)."""
    settings = settings_of(current_app)
    svc = process_services()

    def answer(tenant: str, params: dict[str, Any]) -> dict[str, Any]:
        return answer_query(svc.for_tenant(tenant), params)

    Responder(svc.redis, prefix=settings.key_prefix, answer=answer).start()
