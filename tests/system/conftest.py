"""Fixtures of the tests that break things: a stack of their own on a key prefix of their own."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cli.stack import Stack
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
def chaos_stack(chaos_settings: Settings, make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(chaos_settings)
