"""``movierec api``: gunicorn serving ``create_app()``, one app per gunicorn worker (built after the fork).

The workers' request metrics are summed through prometheus_client's multiprocess directory, made here before
the fork (shared/infra/metrics.py).
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from shared.infra.metrics import ensure_multiprocess_dir, mark_process_dead
from shared.infra.settings import Settings

DEFAULT_WORKERS = 2
DEFAULT_THREADS = 8


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from . import create_app

        return create_app(settings=self._settings)


def _child_exit(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)


def serve(settings: Settings, *, host: str, port: int, workers: int, threads: int) -> None:
    ensure_multiprocess_dir()  # before gunicorn forks and before any worker imports prometheus_client
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 10,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
        "child_exit": _child_exit,
    }
    _Gunicorn(settings, options).run()
