"""A secured deployment: Redis with a password (from REDIS_URL), API keys, and no secret in any log."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from cli.client import Client
from shared.infra.settings import Settings
from tests.helpers import new_stack


def test_password_protected_redis_and_api_keys_work_end_to_end(settings: Settings, tmp_path: Path) -> None:
    password, key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    own = settings.model_copy(update={"key_prefix": f"sec-{uuid.uuid4().hex[:8]}", "api_keys": (key,)})
    with new_stack(own, tmp_path, cpu_workers=1, embedded_redis=True, redis_password=password) as stack:
        # `with` waited for /readyz, which itself needs the key (the stack sends it)
        assert password in stack.settings.redis_url
        assert requests.get(f"{stack.api_url}/readyz", timeout=10).status_code == 401
        ready = requests.get(f"{stack.api_url}/readyz", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert ready.json()["durability"] == "fsync-always"
        job = Client(stack.api_url, api_key=key).submit_dataset("ml-latest-small")
        final = Client(stack.api_url, api_key=key).wait(job["id"], progress=False)
        assert final["status"] == "succeeded", final
        # The CLI reads its key from MOVIEREC_API_KEY.
        cli = [sys.executable, "-m", "cli.main", "status", job["id"], "--api", stack.api_url]
        env = {**own.child_env(), "MOVIEREC_API_KEY": key}
        shown = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode == 0 and "succeeded" in shown.stdout, shown.stderr
        env.pop("MOVIEREC_API_KEY")
        refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode != 0 and "401" in refused.stderr
    time.sleep(0.2)
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log")}
    assert logs
    for name, text in logs.items():
        assert password not in text, f"the Redis password is in {name}"
        assert key not in text, f"an API key is in {name}"


@pytest.mark.parametrize("url", ["redis://:wrong@127.0.0.1:{port}/0", "redis://nobody:x@127.0.0.1:{port}/0"])
def test_a_wrong_redis_password_is_a_503_not_a_500(settings: Settings, tmp_path: Path, url: str) -> None:
    from api import create_app
    from cli.stack import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "redis", password=secrets.token_urlsafe(16)) as server:
        wrong = settings.model_copy(update={"redis_url": url.format(port=server.port)})
        answer = create_app(settings=wrong).test_client().get("/v1/jobs")
        assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "unavailable"
        assert "wrong" not in answer.get_data(as_text=True)
