"""Tasks of the ``cpu`` queue: each reads ids, calls one function in shared/, and answers a small summary."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

# pandas (the MovieLens reader) and scipy (mining) load here, in the prefork parent, so its children share
# them and a child's first ingest or shard does not pay for the import; the API imports neither.
import scipy.sparse  # noqa: F401
from celery import current_app, shared_task

import shared.ml.movielens  # noqa: F401
from shared.errors import DataError, NotFound
from shared.infra.keys import upload_artifact
from shared.jobs.sharded import ShardPlan, send_shards
from shared.jobs.store import Job
from shared.logic.feedback import feedback_version
from shared.logic.ingest import DatasetOptions, confine, ingest
from shared.logic.mining import TripletSpec, join, mine_shard_part, part_names, stored_count
from shared.logic.pipeline import advance
from shared.logic.services import Services
from shared.logic.uploads import UNZIPPED_PER_UPLOADED, drop_upload, unpack_upload
from shared.logic.versions import index_version
from shared.ml.index import IndexParams

from .base import Body, JobContext, Outcome, run_job, run_step
from .sharded import run_join, run_shard

log = logging.getLogger(__name__)


@shared_task(name="workers.cpu.ingest_dataset")
def ingest_dataset(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Ingest a MovieLens directory, or the files of an upload; idempotent, since a dataset is stored under its
    content hash."""

    def body(ctx: JobContext) -> Outcome:
        if params.get("upload"):
            return _ingest_upload(ctx, params)
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
        record, reused = ingest(
            ctx.services.datasets, Path(directory), options, source=params["path"], progress=ctx.progress, root=root
        )
        message = "dataset already ingested" if reused else f"ingested {record['counts']['movies']:,} movies"
        return Outcome({"dataset": record["id"], "reused": reused, **record}, message=message)

    return run_job(job_id, stage="ingest", body=_with_feedback(body, params))


def _with_feedback(body: Body, params: dict[str, Any]) -> Body:
    """The ingest stage of a pipeline or an evaluation (params ``"feedback": true``): the dataset it ingests, or
    the one it names (``"dataset"``), with the feedback posted to it so far: a feedback version when there is
    any (shared/store/feedback.py), so a model trained on it says which ratings it saw."""
    if not params.get("feedback"):
        return body

    def taken(ctx: JobContext) -> Outcome | None:
        drop: tuple[str, ...] = ()
        if params.get("dataset"):
            source = str(params["dataset"])
        else:
            ingested = body(ctx)
            if ingested is None:
                return None
            source, drop = str(ingested.result["dataset"]), ingested.drop
        ctx.progress(0.95, "feedback", "adding the feedback posted to the dataset")
        record, reused = feedback_version(ctx.services.datasets, ctx.services.feedback, source)
        added = (record.get("derived") or {}).get("feedback", {}).get("ratings", 0)
        message = f"dataset {record['id']}" + (f" with {added:,} feedback ratings" if added else "")
        return Outcome({"dataset": record["id"], "reused": reused, **record}, message=message, drop=drop)

    return taken


def _ingest_upload(ctx: JobContext, params: dict[str, Any]) -> Outcome:
    """The files the API streamed into Redis, written to a temporary directory and ingested as a path is. The
    upload is dropped once the job is marked succeeded, or here when it fails (for good: a worker that dies
    leaves it for the janitor's resend)."""
    svc, upload_id = ctx.services, str(params["upload"])
    files = [str(f) for f in params["files"]]
    try:
        with tempfile.TemporaryDirectory(prefix="movierec-upload-") as tmp:
            ctx.progress(0.0, "fetching", f"fetching {len(files)} uploaded file(s)")
            directory, fix = unpack_upload(
                svc.artifacts,
                upload_id,
                files,
                Path(tmp),
                max_unzipped_bytes=UNZIPPED_PER_UPLOADED * svc.settings.max_upload_bytes,
            )
            options = DatasetOptions(tags_per_movie=int(params["tags_per_movie"]), genres_fix_csv=fix)
            record, reused = ingest(
                svc.datasets, directory, options, source=str(params["source"]), progress=ctx.progress, root=Path(tmp)
            )
    except Exception:
        drop_upload(svc.artifacts, upload_id)
        raise
    message = "dataset already ingested" if reused else f"ingested {record['counts']['movies']:,} movies"
    drop = tuple(upload_artifact(upload_id, name) for name in files)
    return Outcome({"dataset": record["id"], "reused": reused, **record}, message=message, drop=drop)


def _spec(params: dict[str, Any]) -> TripletSpec:
    return TripletSpec.of(params)  # source, positives and liked_at too (absent: descriptors, 5, 4.0)


@shared_task(name="workers.cpu.mine_triplets")
def mine_triplets(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Plan the shards of a mining job and send them; the last shard to finish sends the join."""

    def body(ctx: JobContext) -> Outcome | None:
        spec = _spec(params)
        record = ctx.services.datasets.get(spec.dataset)
        if record is None:
            raise NotFound(f"dataset {spec.dataset!r} does not exist")
        if ctx.services.artifacts.exists(spec.name):
            n = stored_count(ctx.services.artifacts, spec.name)  # one per movie from descriptors, any from ratings
            summary = {"dataset": spec.dataset, "triplets": spec.name, "count": n, **spec.describe(), "reused": True}
            return Outcome(summary, artifact=spec.name, message="triplets already mined")
        plan = ShardPlan(items=int(record["counts"]["movies"]), size=int(params["shard_size"]), payload=params)
        if not plan.ranges:  # no shard would ever finish, so nothing would send the join: fail now, saying why
            raise DataError(f"dataset {spec.dataset}", "has no movies: there is nothing to mine triplets from")
        ctx.progress(0.0, "mining", f"0 of {len(plan.ranges)} shards done")
        send_shards(ctx.services.jobs, current_app, job_id, "triplets", plan)
        return None

    return run_job(job_id, stage="mining", body=body)


@shared_task(name="workers.cpu.mine_shard")
def mine_shard(job_id: str, params: dict[str, Any], lo: int, hi: int, total: int) -> None:
    """Mine anchors [lo, hi); idempotent: the part is written under a name fixed by the spec and lo."""
    spec = _spec(params)

    def work(svc: Services) -> dict[str, Any]:
        return mine_shard_part(svc.artifacts, spec, job_id, lo, hi, ttl_s=svc.settings.result_ttl_s)

    run_shard("triplets", job_id, params, (lo, hi, total), work)


@shared_task(name="workers.cpu.join_triplets")
def join_triplets(job_id: str, params: dict[str, Any]) -> None:
    """Assemble the parts into the (n, 3) triplet array and finish the job."""
    spec = _spec(params)

    def finish(svc: Services, job: Job, plan: ShardPlan, stats: list[dict[str, Any]]) -> Outcome:
        triplets = join(svc.artifacts, spec, job_id, plan.ranges)
        summary = {
            "dataset": spec.dataset,
            "triplets": spec.name,
            "count": len(triplets),
            **spec.describe(),
            "shard_size": plan.size,
            "reused": False,
            "shards": stats,
        }
        parts = part_names(spec, job_id, plan.ranges)
        return Outcome(summary, artifact=spec.name, message=f"{len(triplets):,} triplets", drop=parts)

    run_join(job_id, finish)


@shared_task(name="workers.cpu.build_index")
def build_index(job_id: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Build the hnswlib index of a model version's projected embeddings; one writer, written once."""

    def body(ctx: JobContext) -> Outcome:
        version, defaults = params["version"], IndexParams()
        index_params = IndexParams(
            m=int(params.get("m") or defaults.m),
            ef_construction=int(params.get("ef_construction") or defaults.ef_construction),
            ef=int(params.get("ef") or defaults.ef),
        )
        svc = ctx.services
        described, reused = index_version(svc.artifacts, svc.models, svc.datasets, version=version,
                                          params=index_params)  # fmt: skip
        message = "index already built" if reused else f"{described['n']:,} movies"
        return Outcome({"version": version, "index": described, "reused": reused}, message=message)

    return run_job(job_id, stage="indexing", body=body)


@shared_task(name="workers.cpu.pipeline_step")
def pipeline_step(pipeline_id: str, params: dict[str, Any] | None = None) -> None:
    """Move a pipeline on: start its next stage's job, or finish it (activating the model), or fail it."""
    run_step(pipeline_step, pipeline_id, what="pipeline", advance=advance)
