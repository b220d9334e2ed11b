"""Fixtures of the tests that break things: a stack of their own on a key prefix of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cli.stack import Stack, free_port
from shared.infra.settings import Settings
from tests.conftest import delete_prefix

FAST = {"lease_ttl_s": 2, "janitor_interval_s": 1.0, "task_time_limit_s": 20, "visibility_timeout_s": 30}
"""Short enough for a test to see lost work found and resent within seconds."""


@pytest.fixture
def chaos_overrides() -> dict[str, Any]:
    """Settings a test module changes besides FAST (override this fixture in the module)."""
    return {}


@pytest.fixture
def chaos_settings(
    settings: Settings, redis_client: redis.Redis, chaos_overrides: dict[str, Any]
) -> Iterator[Settings]:
    prefix = f"{settings.key_prefix}-c{uuid.uuid4().hex[:6]}"
    own = settings.model_copy(update={"key_prefix": prefix, **FAST, **chaos_overrides})
    yield own
    delete_prefix(redis_client, own.key_prefix)


@pytest.fixture
def chaos_stack(chaos_settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(chaos_settings, data_dir=tmp_path, port=free_port(), cpu_workers=2, embedded_redis=False,
                  log_dir=tmp_path / "logs")  # fmt: skip
    stack.start()
    try:
        stack.wait_ready(timeout_s=120)
        yield stack
    finally:
        stack.stop()
