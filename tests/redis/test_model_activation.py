"""Activation and deletion of one model version racing in a real Redis: never both, the pointer never names a
deleted version."""

from __future__ import annotations

import threading

import pytest

from shared.errors import Conflict, NotFound
from shared.infra.settings import Settings
from shared.logic.services import Services


@pytest.fixture
def svc(settings: Settings, fresh_prefix: str) -> Services:
    return Services.from_settings(settings.model_copy(update={"key_prefix": fresh_prefix}))


def record(version: str, *, index: bool = True) -> dict[str, object]:
    return {"version": version, "dataset": "ds-x", "index": {"artifact": "a"} if index else None}


def test_activation_needs_a_stored_indexed_version(svc: Services) -> None:
    with pytest.raises(NotFound):
        svc.models.activate("m-none")
    svc.models.put(record("m-raw", index=False))
    with pytest.raises(Conflict, match="no index"):
        svc.models.activate("m-raw")
    svc.models.put(record("m-a"))
    assert svc.models.activate("m-a") is None and svc.models.activate("m-a") == "m-a"


def test_a_deleted_version_is_never_left_active(svc: Services) -> None:
    svc.models.put(record("m-keep"))
    svc.models.activate("m-keep")
    for round_ in range(30):
        version = f"m-race-{round_}"
        svc.models.put(record(version))
        outcomes: dict[str, str] = {}

        def activate(v: str = version, outcomes: dict[str, str] = outcomes) -> None:
            try:
                svc.models.activate(v)
                outcomes["activate"] = "ok"
            except NotFound:
                outcomes["activate"] = "gone"

        def delete(v: str = version, outcomes: dict[str, str] = outcomes) -> None:
            try:
                svc.models.delete(v, svc.artifacts)
                outcomes["delete"] = "ok"
            except Conflict:
                outcomes["delete"] = "active"

        threads = [threading.Thread(target=activate), threading.Thread(target=delete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        active = svc.models.active()
        assert active is not None and svc.models.get(active) is not None, (round_, outcomes)
        # one of the two won: activated (the delete refused), or deleted (the activation found nothing)
        assert outcomes in ({"activate": "ok", "delete": "active"}, {"activate": "gone", "delete": "ok"}), outcomes
        svc.models.activate("m-keep")
