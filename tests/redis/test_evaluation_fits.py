"""The lease on fitting a test scoring's stored baseline (``workers.evaluation._fitting``) on a real Redis: one
holder at a time, free again once it is done; a cell that finds it held defers (tests/redis/
test_evaluations_store.py follows such a cell through ``score_shard``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from shared.infra.process import clear_process_caches
from shared.infra.settings import Settings
from shared.jobs.celery_app import make_celery
from shared.logic.services import Services
from tests.conftest import delete_prefix
from workers.base import services
from workers.evaluation import _fitting


@pytest.fixture
def svc(settings: Settings, redis_client: redis.Redis) -> Iterator[Services]:
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-f{uuid.uuid4().hex[:6]}"})
    make_celery(own).set_current()
    clear_process_caches()  # the process's services are built once: build this test's
    yield services()
    clear_process_caches()
    delete_prefix(redis_client, own.key_prefix)


def test_one_holder_fits_a_baseline_and_the_lease_is_free_once_it_is_done(svc: Services) -> None:
    with _fitting("job-a", "iALS-0123") as mine:
        assert mine
        with _fitting("job-a", "iALS-0123") as other:  # held by a live process: this one waits
            assert not other
        with _fitting("job-a", "RP3beta-4567") as another_fit, _fitting("job-b", "iALS-0123") as another_job:
            assert another_fit and another_job  # a lease per fit and per job
    with _fitting("job-a", "iALS-0123") as again:
        assert again
    with pytest.raises(RuntimeError, match="boom"), _fitting("job-a", "iALS-0123"):
        raise RuntimeError("boom")
    with _fitting("job-a", "iALS-0123") as after_failure:  # a fit that raised frees its lease too
        assert after_failure
