"""``movierec api``: gunicorn serving ``create_app()``, one app per gunicorn worker (built after the fork)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

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


def serve(settings: Settings, *, host: str, port: int, workers: int, threads: int) -> None:
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 10,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
    }
    _Gunicorn(settings, options).run()
