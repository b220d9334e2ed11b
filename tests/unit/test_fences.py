"""Libraries' private parts are reached only from the one module fenced for each (STYLE.md, guideline 16).

shared/infra/broker.py overrides kombu's Redis channel (and its Sentinel channel's pool);
shared/infra/redisconn.py drives redis-py's pipeline below its public API and its TLS connection's socket set-up;
api/connections.py subclasses gunicorn's gevent worker. Each library is pinned to the minor series those modules
were written against, and a test breaks on the upgrade that breaks them: on a real Redis (tests/redis/test_broker.py,
test_run_job.py, tests/system/test_tls.py, test_sentinel.py), on a real server (tests/system/test_slow_clients.py),
and here, the signatures of the gunicorn methods overridden.
"""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("api", "workers", "shared", "cli", "bench")

KOMBU_PRIVATE = {"_create_client", "_put", "_q_for_pri", "_get_message_priority", "_expires", "sep", "_connparams",
                 "_sentinel_managed_pool", "_sentinel_manager", "_async_sentinel_manager"}  # fmt: skip
REDIS_INTERNALS = {"command_stack", "parse_response", "raise_first_error", "send_packed_command", "pack_commands",
                   "_connect", "_wrap_socket_with_ssl"}  # fmt: skip
GUNICORN_INTERNALS = {"handle_request", "force_close"}
FENCES = {
    "kombu": REPO / "shared/infra/broker.py",
    "redis": REPO / "shared/infra/redisconn.py",
    "gunicorn": REPO / "api/connections.py",
}


def _sources() -> list[Path]:
    return [p for folder in PRODUCT for p in sorted((REPO / folder).rglob("*.py"))]


def _attributes(path: Path) -> set[str]:
    return {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}


def _imports_kombu(path: Path) -> bool:
    return bool(re.search(r"^\s*(from|import) kombu\b", path.read_text(), flags=re.M))


def test_kombu_private_names_only_in_the_broker_module() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(_attributes(p) & KOMBU_PRIVATE)
        for p in _sources()
        if p != FENCES["kombu"] and _imports_kombu(p) and _attributes(p) & KOMBU_PRIVATE
    }
    assert offenders == {}


def test_redis_py_internals_only_in_the_connection_module() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(_attributes(p) & REDIS_INTERNALS)
        for p in _sources()
        if p != FENCES["redis"] and _attributes(p) & REDIS_INTERNALS
    }
    assert offenders == {}


def test_gunicorn_workers_only_in_the_connections_module() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(_attributes(p) & GUNICORN_INTERNALS)
        for p in _sources()
        if p != FENCES["gunicorn"]
        and (
            _attributes(p) & GUNICORN_INTERNALS
            or re.search(r"^\s*(from|import) gunicorn\.workers", p.read_text(), re.M)
        )
    }
    assert offenders == {}


def test_the_gunicorn_methods_overridden_keep_their_shape() -> None:
    """api/connections.py overrides these and calls them with these arguments: an upgrade that changes them
    fails here before it fails a slow client."""
    from gunicorn.http.message import Message
    from gunicorn.workers.ggevent import GeventWorker

    def parameters(function: object) -> list[str]:
        return list(inspect.signature(function).parameters)

    assert parameters(GeventWorker.handle) == ["self", "listener", "client", "addr"]
    assert parameters(GeventWorker.handle_request) == ["self", "listener_name", "req", "sock", "addr"]
    assert parameters(Message.force_close) == ["self"] and "must_close" in inspect.getsource(Message.should_close)


def test_the_fenced_modules_still_use_what_they_fence() -> None:
    # If a fence stops reaching the library's insides, its pin and this test should go too.
    assert _attributes(FENCES["kombu"]) & KOMBU_PRIVATE
    assert _attributes(FENCES["redis"]) & REDIS_INTERNALS
    assert _attributes(FENCES["gunicorn"]) & GUNICORN_INTERNALS


def test_every_fenced_library_is_pinned_to_a_minor_series() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for library in FENCES:
        spec = next(d for d in dependencies if re.match(rf"{library}\b(?!\[)", d))
        match = re.fullmatch(rf"{library}>=(\d+)\.(\d+),<(\d+)\.(\d+)", spec)
        assert match, f"{library} must be pinned to one minor series, got {spec!r}"
        major, minor, up_major, up_minor = map(int, match.groups())
        assert (up_major, up_minor) == (major, minor + 1), spec
