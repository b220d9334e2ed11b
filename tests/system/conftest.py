"""Fixtures of the system tests: those that break things get a stack of their own on a key prefix of their own;
every module leaves no feedback behind on the session stack."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cli.stack import Stack
from shared.infra.redisconn import connect
from shared.infra.settings import Settings
from tests.conftest import delete_prefix
from tests.helpers import FAST


@pytest.fixture(scope="module", autouse=True)
def no_feedback_left(settings: Settings) -> Iterator[None]:
    """Feedback a module posts to the session stack's datasets is deleted after it: the session stack's
    ml-latest-small is every module's, and a pipeline or evaluation over it would take another's feedback."""
    yield
    client = connect(settings.redis_url)
    keys = list(client.scan_iter(match=f"{settings.key_prefix}:feedback:*", count=1000))
    if keys:
        client.delete(*keys)


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
