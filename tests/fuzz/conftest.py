"""The fuzzed app: in process, API keys on, on the session's real Redis under a key prefix of its own.

No worker consumes that prefix, so nothing a fuzzer enqueues runs; every key under it is deleted after
the module. Some ids exist there (``Seeded``) so that cases reach past "not found": a dataset ingested
from the real ml-latest-small, jobs in each finished state and one queued (one a batch with rows), a model version.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from api import create_app
from api.auth import owner_id
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from shared.jobs.kinds import QUEUES
from shared.logic.batch import store_part
from shared.logic.ingest import DatasetOptions, ingest
from shared.ml.batch import ROW
from tests.conftest import delete_prefix

KEY = "fuzz-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass(frozen=True)
class Seeded:
    """Ids that exist in the fuzzed app's prefix, the jobs owned by ``KEY``."""

    dataset: str
    jobs: tuple[str, ...]
    model: str


@pytest.fixture(scope="module")
def fuzz_app(settings: Settings) -> Iterator[tuple[Any, Seeded]]:
    """Not TESTING: an exception is answered 500 as in production, which is what the fuzzers look for."""
    prefix = f"{settings.key_prefix}-fuzz-{uuid.uuid4().hex[:8]}"
    fuzz_settings = Settings(
        redis_url=settings.redis_url,
        key_prefix=prefix,
        data_root=settings.data_root,
        result_ttl_s=600,
        task_time_limit_s=300,
        api_keys=(KEY,),
    )
    app = create_app(settings=fuzz_settings)
    try:
        yield app, _seed(app, fuzz_settings.data_root)
    finally:
        delete_prefix(connect(settings.redis_url), prefix)


def _seed(app: Any, data_root: Path) -> Seeded:
    svc = app.extensions["movierec"]
    for queue in QUEUES:  # heartbeats, as live workers write them: /readyz answers 200, not 503
        svc.beat(f"fuzz-{queue}", [queue])
    record, _ = ingest(
        svc.datasets,
        data_root / "ml-latest-small",
        DatasetOptions(tags_per_movie=5),
        source="ml-latest-small",
        progress=lambda *_: None,
    )
    owner = owner_id(KEY)
    queued = svc.jobs.create("ingest", {"path": "ml-latest-small"}, owner=owner)
    succeeded = svc.jobs.create("ingest", {"path": "ml-latest-small"}, owner=owner)
    svc.jobs.succeed(succeeded.id, {"dataset": record["id"], "reused": True})
    with_array = svc.jobs.create("triplets", {"dataset": record["id"]}, owner=owner)
    svc.artifacts.put_array("fuzz/triplets", np.arange(12, dtype=np.int32).reshape(4, 3))
    svc.jobs.succeed(with_array.id, {"triplets": "fuzz/triplets"}, result_artifact="fuzz/triplets")
    batch_job = svc.jobs.create("recommend-batch", {"users": [1, 2], "k": 2}, owner=owner)
    rows = np.zeros(4, dtype=ROW)
    rows["user_id"], rows["rank"], rows["movie_id"], rows["score"] = [1, 1, 2, 2], [1, 2, 1, 2], 1, 0.5
    store_part(svc.artifacts, batch_job.id, 0, rows, ttl_s=600)
    svc.jobs.succeed(batch_job.id, {"users": 2, "rows": 4, "parts": [{"range": [0, 2], "rows": 4}]})
    failed = svc.jobs.create("ingest", {"path": "nowhere"}, owner=owner)
    svc.jobs.fail(failed.id, code="data_error", message="nowhere: is not a directory")
    version = "m-fuzz0000000000"
    svc.models.put({"version": version, "dataset": record["id"], "metrics": {}, "index": {"name": "fuzz"}})
    jobs = (queued.id, succeeded.id, with_array.id, batch_job.id, failed.id)
    return Seeded(dataset=record["id"], jobs=jobs, model=version)
