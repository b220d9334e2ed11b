"""``movierec api``: gunicorn serving ``create_app()``, one app per gunicorn worker (built after the fork).

The workers are gevent's, with deadlines on slow clients (api/connections.py): a connection costs a greenlet,
and each worker process holds up to ``connections`` of them. ``movierec api`` applies gevent's monkey patches
before it imports this module: importing it imports the app, whose module-level state (``threading.local``,
locks) made before the patches would be shared by every greenlet of a worker (a message published by one
request could ride on another's pipeline; a lock held across a switch would stall the process).

The workers' request metrics are summed through prometheus_client's multiprocess directory, made here before
the fork (shared/infra/metrics.py).
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from shared.infra.metrics import ensure_multiprocess_dir, mark_process_dead
from shared.infra.settings import Settings

from .connections import gunicorn_options

DEFAULT_WORKERS = 2
DEFAULT_CONNECTIONS = 1000


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


def serve(settings: Settings, *, host: str, port: int, workers: int, connections: int) -> None:
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        raise RuntimeError("gevent's monkey patches must be applied before the app is imported (see api/server.py)")
    ensure_multiprocess_dir()  # before gunicorn forks and before any worker imports prometheus_client
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_connections": connections,
        **gunicorn_options(settings),
        "timeout": 60,
        "graceful_timeout": 10,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
        "child_exit": _child_exit,
    }
    _Gunicorn(settings, options).run()
