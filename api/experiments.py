"""``/v1/experiments``: A/B tests and interleavings of model versions, and their online metrics (issue #27).

POST /v1/experiments ──> the variants' models checked servable ──> ExperimentStore.create: running
POST /v1/recommendations (a user's) ──> its variant's model (api/recommendations.py, shared/logic/online.py)
POST /v1/experiments/<name>/pause | resume | end ──> its state; a paused or ended one chooses no model
POST /v1/experiments/<name>/promote ──> its winner's model activated (the one named, or the always-valid
    winner), and the experiment ended
GET /v1/experiments[/<name>] ──> each one's record and report (shared/logic/online.py ``report``)
"""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from shared.errors import Conflict, NotFound
from shared.logic.online import STATE_MOVES, iso, new_record, report, winner
from shared.store.experiments import ENDED, RUNNING

from .context import services
from .schemas import ExperimentIn, ExperimentListOut, ExperimentOut, PromoteQuery

bp = APIBlueprint("experiments", __name__, url_prefix="/v1/experiments", tag="experiments")


@bp.post("")
@bp.input(ExperimentIn, arg_name="body", example={"name": "new-model", "variants": [
    {"model": "v-old", "share": 0.5}, {"model": "v-new", "share": 0.5}]})  # fmt: skip
@bp.output(ExperimentOut, status_code=201)
@bp.doc(responses={400: "an interleaving of other than two variants, or variants of one name",
                   404: "a variant's model does not exist",
                   409: "a variant's model has no index, or the models are of different datasets; another "
                        "experiment runs; the name is taken"})  # fmt: skip
def create_experiment(body: dict[str, Any]) -> dict[str, Any]:
    """Start an experiment: from now on each user's recommendations come from their variant's model (``ab``: a
    keyed hash of the user id picks it, the same in every API process and after restarts), or from both models
    interleaved (``interleave``: exactly two variants). One experiment runs at a time."""
    svc = services()
    datasets = set()
    for variant in body["variants"]:
        if svc.models.get(variant["model"]) is None:
            raise NotFound(f"model {variant['model']!r} does not exist")
        dataset = svc.models.servable_dataset(variant["model"])
        if dataset is None:
            raise Conflict(f"model {variant['model']!r} has no index: index it first (POST /v1/jobs/index)")
        datasets.add(dataset)
    if len(datasets) > 1:  # a user's ratings, and the movies events name, are of one dataset
        raise Conflict(f"the variants' models are of {len(datasets)} datasets ({', '.join(sorted(datasets))}): an "
                       "experiment compares models of one", details={"datasets": sorted(datasets)})  # fmt: skip
    record = new_record(body["name"], body["kind"], body["variants"], dataset=datasets.pop(), k=body["k"],
                        bucket_s=body["bucket_s"], seed=body.get("seed"))  # fmt: skip
    made = svc.experiments.create({**record, "started": record["created"]})
    return report(svc, made)


@bp.get("")
@bp.output(ExperimentListOut)
def list_experiments() -> dict[str, Any]:
    """Every experiment, newest first, each with its metrics."""
    svc = services()
    return {"experiments": [report(svc, record) for record in svc.experiments.all()]}


@bp.get("/<name>")
@bp.output(ExperimentOut)
@bp.doc(responses={404: "unknown experiment"})
def get_experiment(name: str) -> dict[str, Any]:
    """An experiment and its online metrics: per variant, impressions, clicks, plays and ratings; CTR@k, plays and
    liked (ratings of 4 or more) per impression, with 95% intervals clustered by user, and each variant against
    the first; an interleaving's preference with its sign test; cumulative counts over time."""
    svc = services()
    return report(svc, svc.experiments.get(name))


_MOVE_RESPONSES = {404: "unknown experiment", 409: "the experiment is not in a state this moves from"}


@bp.post("/<name>/pause")
@bp.output(ExperimentOut)
@bp.doc(responses=_MOVE_RESPONSES)
def pause_experiment(name: str) -> dict[str, Any]:
    """Pause a running experiment: its users get the active model again; its counts are kept."""
    return _move(name, "pause")


@bp.post("/<name>/resume")
@bp.output(ExperimentOut)
@bp.doc(responses={**_MOVE_RESPONSES, 409: "the experiment is not paused, or another one runs"})
def resume_experiment(name: str) -> dict[str, Any]:
    """Run a paused experiment again: each user back in the variant they were in."""
    return _move(name, "resume")


@bp.post("/<name>/end")
@bp.output(ExperimentOut)
@bp.doc(responses={**_MOVE_RESPONSES, 409: "the experiment has ended already"})
def end_experiment(name: str) -> dict[str, Any]:
    """End an experiment for good (its report stays until it is deleted; its winner may still be promoted)."""
    return _move(name, "end")


def _move(name: str, action: str) -> dict[str, Any]:
    svc = services()
    needed, state, when = STATE_MOVES[action]
    record = svc.experiments.get(name)
    if needed is not None and record["state"] != needed:
        raise Conflict(f"experiment {name!r} is {record['state']}, not {needed}: it cannot {action}")
    moved = svc.experiments.set_state(name, state, **{when: iso()})
    return report(svc, moved)


@bp.post("/<name>/promote")
@bp.input(PromoteQuery, location="query", arg_name="query", unknown=None)
@bp.output(ExperimentOut)
@bp.doc(responses={404: "unknown experiment or variant", 409: "no variant named, and none won by the always-valid "
                        "test (yet): name one to promote it anyway; or its model can no longer serve"})  # fmt: skip
def promote_experiment(name: str, query: dict[str, Any]) -> dict[str, Any]:
    """Activate a variant's model (the one named, else the winner by the always-valid test, which holds however
    often the report was read) and end the experiment."""
    svc = services()
    record = svc.experiments.get(name)
    found = report(svc, record)
    if "variant" in query:
        chosen = next((v for v in record["variants"] if v["name"] == query["variant"]), None)
        if chosen is None:
            raise NotFound(f"experiment {name!r} has no variant {query['variant']!r}")
    else:
        chosen = winner(found)
        if chosen is None:
            raise Conflict(f"no variant of {name!r} has won yet by the always-valid test (significant however often "
                           "the report was read): name the one to promote (?variant=B) to activate it anyway, or "
                           "wait for more users")  # fmt: skip
    svc.models.activate(chosen["model"])
    promoted = {"variant": chosen.get("name", chosen.get("variant")), "model": chosen["model"], "at": iso()}
    fields = {"promoted": promoted, **({} if record["state"] == ENDED else {"ended": iso()})}
    if record["state"] == ENDED:
        moved = svc.experiments.mark(name, **fields)
    else:
        moved = svc.experiments.set_state(name, ENDED, **fields)
    return report(svc, moved)


@bp.delete("/<name>")
@bp.output(ExperimentOut)
@bp.doc(responses={404: "unknown experiment", 409: "the experiment runs: pause or end it first"})
def delete_experiment(name: str) -> dict[str, Any]:
    """Delete an experiment that does not run, and its counts (the event log keeps the events)."""
    svc = services()
    if svc.experiments.get(name)["state"] == RUNNING:
        raise Conflict(f"experiment {name!r} is running: pause or end it first (POST /v1/experiments/{name}/end)")
    return svc.experiments.delete(name)
