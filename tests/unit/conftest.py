"""Pure unit tests: no Redis, no processes to start. They run with no Redis anywhere
(``REDIS_URL=redis://127.0.0.1:1/0 pytest tests/unit`` passes).

A test here that asks for ``redis_url``, directly or through another fixture (``settings``, ``redis_client``,
``fresh_prefix``, ``stack``, ...), fails before any fixture runs, with a message saying where it belongs.
"""

from __future__ import annotations

import pytest

MISPLACED = "{test} needs Redis (it asks for redis_url {via}): move it to tests/redis"


def redis_paths(item: pytest.Item) -> list[str]:
    """The fixtures ``item`` asks for that lead to ``redis_url`` (``redis_url`` itself when asked directly)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return ["redis_url"]

    def leads(name: str, seen: set[str]) -> bool:
        if name == "redis_url":
            return True
        defs = info.name2fixturedefs.get(name)
        if not defs or name in seen:
            return False
        seen.add(name)
        return any(leads(arg, seen) for arg in defs[-1].argnames)

    return [name for name in info.initialnames if leads(name, set())] or ["redis_url"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if "redis_url" in getattr(item, "fixturenames", ()):
        paths = redis_paths(item)
        via = "directly" if paths == ["redis_url"] else "through " + ", ".join(paths)
        pytest.fail(MISPLACED.format(test=item.nodeid, via=via), pytrace=False)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Refuses a Redis to a test that reaches for it at run time (``request.getfixturevalue``)."""
    pytest.fail(MISPLACED.format(test="a test in tests/unit", via="at run time"), pytrace=False)
