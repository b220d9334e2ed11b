"""Per-process caches: filled lazily by the process that uses them, emptied in a forked child.

A worker's services, the models it serves, the encoders and incidence matrices it loaded, its torch device:
each is built once per process, on first use. A prefork child must not inherit its parent's (a Redis
connection shared across a fork is corrupted by the first process that uses it), so every cache declared
here is cleared in the child right after a fork, and ``clear_process_caches`` clears them all at once
(tests that build a process's services afresh call it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])

_clearers: list[Callable[[], None]] = []


def per_process(maxsize: int | None = None) -> Callable[[F], F]:
    """``functools.lru_cache(maxsize)``, emptied after a fork and by ``clear_process_caches``."""

    def decorate(fn: F) -> F:
        cached = functools.lru_cache(maxsize=maxsize)(fn)
        _clearers.append(cached.cache_clear)
        return cast(F, cached)

    return decorate


def clear_process_caches() -> None:
    """Forget everything every per-process cache holds."""
    for clear in _clearers:
        clear()


os.register_at_fork(after_in_child=clear_process_caches)
