"""docker-compose.yml is a valid Compose file whose services run real ``movierec`` commands.

No Docker engine runs here, so the file is checked the way ``docker compose config`` would: variables
interpolated as Compose does (``${VAR?err}`` refuses an unset secret), then parsed and validated by the
compose-spec library (a full Compose-spec model), then each service's command parsed by our own CLI (every
service on our image; Redis and Prometheus run their own).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from cli.main import build_parser
from tests.helpers import REPO

SECRETS = {"REDIS_PASSWORD": "s3cret", "FLOWER_BASIC_AUTH": "ops:fl0wer", "MOVIEREC_API_KEYS": "k3y-one,k3y-two"}
OURS = ("api", "interactive-worker", "cpu-worker", "gpu-worker", "flower")
"""The services that run a ``movierec`` command on our image."""

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ${V}, ${V:-default}, ${V-default}, ${V?error}, ${V:?error}, $$."""

    def one(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        name, op, arg = m[1], m[2], m[3]
        value = env.get(name)
        empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("?") and empty:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and empty:
            return arg
        return value or ""

    return _VAR.sub(one, text)


@pytest.fixture(scope="module")
def text() -> str:
    return (REPO / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def compose(text: str) -> dict[str, Any]:
    rendered = interpolate(text, SECRETS)
    PyCompose.from_yaml(rendered).validate()
    parsed: dict[str, Any] = yaml.safe_load(rendered)
    return parsed


def test_the_validator_rejects_what_compose_rejects() -> None:
    with pytest.raises(ValueError, match="bogus_key"):
        PyCompose.from_yaml("services:\n  a:\n    image: x\n    bogus_key: 1\n")


def test_secrets_have_no_default(text: str) -> None:
    with pytest.raises(MissingVariable, match="REDIS_PASSWORD: Variable not set"):
        interpolate(text, {})
    with pytest.raises(MissingVariable, match="FLOWER_BASIC_AUTH: Variable not set"):
        interpolate(text, {"REDIS_PASSWORD": "s3cret", "MOVIEREC_API_KEYS": "k"})  # Flower never without a login
    with pytest.raises(MissingVariable, match="MOVIEREC_API_KEYS: Variable not set"):
        interpolate(text, {"REDIS_PASSWORD": "s3cret", "FLOWER_BASIC_AUTH": "ops:fl0wer"})  # the API never open


def test_the_published_api_requires_keys_and_its_healthcheck_needs_none(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["environment"]["MOVIEREC_API_KEYS"] == "k3y-one,k3y-two"
    args = build_parser().parse_args(api["command"][1:])
    assert args.host == "0.0.0.0" and not args.insecure  # `movierec api` would refuse it without the keys
    assert "/healthz" in " ".join(api["healthcheck"]["test"])  # the one route open without a key
    for name in ("interactive-worker", "cpu-worker", "gpu-worker", "flower"):  # the keys are the API's alone
        assert "MOVIEREC_API_KEYS" not in compose["services"][name]["environment"]


def test_services_healthchecks_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ours = {"api", "interactive-worker", "cpu-worker", "gpu-worker", "flower"}
    assert set(services) == {"redis", "proxy", "prometheus", *ours}
    assert "ports" not in services["redis"]  # Redis stays inside the compose network
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    for name in ("redis", "api", "proxy"):
        assert services[name]["healthcheck"]["test"]
    for name in OURS:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["REDIS_URL"] == "redis://:s3cret@redis:6379/0"
    assert "container_name" not in services["cpu-worker"] and "ports" not in services["cpu-worker"]  # scalable
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_the_api_is_published_only_through_nginx(compose: dict[str, Any]) -> None:
    """Slow clients meet nginx's timeouts first (deploy/nginx.conf); the API's own port stays in the network."""
    api, proxy = compose["services"]["api"], compose["services"]["proxy"]
    assert "ports" not in api and api["expose"] == ["8000"]
    assert proxy["image"].startswith("nginx:") and proxy["ports"] == ["8000:8080"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    assert "server api:8000;" in conf and "listen 8080;" in conf
    for directive in ("client_header_timeout", "client_body_timeout", "send_timeout", "proxy_request_buffering on"):
        assert directive in conf


def test_flower_runs_our_app_behind_a_login(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["image"] == compose["services"]["api"]["image"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "ops:fl0wer"
    assert flower["ports"] == ["5555:5555"]
    args = build_parser().parse_args(flower["command"][1:])
    assert (args.command, args.address, args.port) == ("flower", "0.0.0.0", 5555)
    assert not any("redis://" in part for part in flower["command"])  # the password stays out of `ps`


def test_prometheus_is_optional_and_reads_the_repos_config(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus") and prometheus["profiles"] == ["monitoring"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert prometheus["ports"] == ["9090:9090"]


def test_every_service_on_our_image_is_checked(compose: dict[str, Any]) -> None:
    ours = {name for name, svc in compose["services"].items() if svc.get("image", "").startswith("movierec")}
    assert ours == set(OURS)


@pytest.mark.parametrize("service", OURS)
def test_every_command_is_a_real_movierec_command(compose: dict[str, Any], service: str) -> None:
    command = compose["services"][service]["command"]
    assert command[0] == "movierec"
    args = build_parser().parse_args(command[1:])
    assert args.command in {"api", "worker", "flower"}
    assert (REPO / "Dockerfile").is_file()
