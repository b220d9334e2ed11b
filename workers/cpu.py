"""Tasks of the ``cpu`` queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import shared_task

from shared.datasets import DatasetOptions, confine
from shared.errors import DataError

from .base import JobContext, Outcome, run_job


@shared_task(name="workers.cpu.ingest_dataset")
def ingest_dataset(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Ingest a MovieLens directory; idempotent, since a dataset is stored under its content hash."""

    def body(ctx: JobContext) -> Outcome:
        root = ctx.services.settings.data_root
        # Checked again here: the worker may see a different filesystem than the API did.
        directory = confine(params["path"], root=root)
        fix = params.get("genres_fix_csv")
        options = DatasetOptions(
            tags_per_movie=int(params["tags_per_movie"]),
            genres_fix_csv=confine(fix, root=root) if fix else None,
        )
        if not directory.is_dir():
            raise DataError(params["path"], "is not a directory")
        record, reused = ctx.services.datasets.ingest(
            Path(directory), options, source=params["path"], progress=ctx.progress
        )
        message = "dataset already ingested" if reused else f"ingested {record['counts']['movies']:,} movies"
        return Outcome({"dataset": record["id"], "reused": reused, **record}, message=message)

    return run_job(job_id, stage="ingest", body=body)
