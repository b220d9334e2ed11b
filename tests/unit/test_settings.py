from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.infra.settings import DEFAULT_KEY_PREFIX, DEFAULT_RESULT_TTL_S, Settings


def test_environment_is_read_with_prefix_and_redis_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6390/3")
    monkeypatch.setenv("MOVIEREC_KEY_PREFIX", "prod")
    monkeypatch.setenv("MOVIEREC_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("MOVIEREC_RESULT_TTL_S", "60")
    s = Settings()
    assert (s.redis_url, s.key_prefix, s.data_root, s.result_ttl_s) == ("redis://example:6390/3", "prod", tmp_path, 60)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("REDIS_URL", "MOVIEREC_KEY_PREFIX", "MOVIEREC_RESULT_TTL_S", "MOVIEREC_DATA_ROOT"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.key_prefix == DEFAULT_KEY_PREFIX
    assert s.result_ttl_s == DEFAULT_RESULT_TTL_S == 7 * 24 * 3600
    assert s.data_root == Path.cwd()
    assert s.soft_time_limit_s < s.task_time_limit_s


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.key_prefix = "other"


def test_key_prefix_is_restricted() -> None:
    with pytest.raises(ValidationError):
        Settings(key_prefix="has space")


def test_child_env_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings(redis_url="redis://h:1/2", key_prefix="x", data_root=tmp_path, result_ttl_s=5)
    for k, v in s.child_env().items():
        monkeypatch.setenv(k, v)
    assert Settings() == s
