"""The key schema: the layout ``shared/infra/keys.py`` documents, no module building a key by hand, and no
Redis in shared/ml (the stores in shared/store/ are what read and write keys)."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.infra import keys as keys_module
from shared.infra.keys import (
    DATASET_ARRAYS,
    Keys,
    dataset_artifact,
    dataset_owned_artifacts,
    embeddings_artifact,
    encode_input_artifact,
    encoded_artifact,
    evaluation_part,
    evaluation_split_artifact,
    meta_of,
    model_artifact,
    model_artifacts,
    tenant_prefix,
    triplets_artifact,
    triplets_part,
)
from shared.logic.mining import TripletSpec

REPO = Path(__file__).resolve().parents[2]
K = Keys("mr")


# -- the layout -------------------------------------------------------------------------------------------
def test_job_keys() -> None:
    assert K.job("j1") == "mr:job:j1"
    assert K.job_finished("j1") == "mr:job:j1:finished"
    assert K.job_shards("j1") == "mr:job:j1:shards"
    assert (K.jobs, K.jobs_active, K.jobs_expiry) == ("mr:jobs", "mr:jobs:active", "mr:jobs:expiry")
    assert K.lock("pipeline:p1") == "mr:lock:pipeline:p1"


def test_unit_worker_and_janitor_keys() -> None:
    assert K.unit_lease("j1", "shard-000002000") == "mr:unit:j1:shard-000002000:lease"
    assert K.unit_starts("j1", "main") == "mr:unit:j1:main:starts"
    assert K.worker("cpu@host") == "mr:worker:cpu@host"
    assert K.workers_pattern == "mr:worker:*"
    assert K.janitor_lock == "mr:janitor:lock"
    assert K.janitor_idle("j1") == "mr:janitor:idle:j1"
    assert K.janitor_queued("j1") == "mr:janitor:queued:j1"
    assert K.janitor_resends("j1") == "mr:janitor:resends:j1"


def test_store_keys() -> None:
    assert (K.dataset("ds-1"), K.datasets) == ("mr:dataset:ds-1", "mr:datasets")
    assert (K.model("m-1"), K.models, K.active_model) == ("mr:model:m-1", "mr:models", "mr:active_model")
    manifest = K.artifact("dataset/ds-1/movie_ids")
    assert manifest == "mr:art:dataset/ds-1/movie_ids"
    assert Keys.artifact_chunk(manifest, 3) == "mr:art:dataset/ds-1/movie_ids:3"
    tmp = Keys.artifact_tmp(manifest, "w1")
    assert (tmp, Keys.artifact_chunk(tmp, 0)) == ("mr:art:dataset/ds-1/movie_ids:tmp:w1", f"{tmp}:0")
    identity = "a" * 64
    assert K.vector(identity, "mean", "d1") == f"mr:vec:{'a' * 32}:mean:d1"  # the identity cut to 32 characters
    assert K.celery_prefix == "mr:celery:"
    assert K.everything == "mr:*"


def _members() -> Iterator[tuple[str, str]]:
    """(name, the key it builds) for every key of ``Keys``, called with placeholder arguments."""
    for name, member in vars(Keys).items():
        if name.startswith("_") or name == "prefix":
            continue
        if isinstance(member, property):
            yield name, member.fget(K)  # type: ignore[misc]
        elif isinstance(member, staticmethod):
            continue  # derived from another key (chunks, a write in progress)
        elif callable(member):
            params = list(inspect.signature(member).parameters)[1:]
            key = member(K, *(["x"] * len(params)))
            if isinstance(key, str):  # not a group of the keys above (janitor_marks)
                yield name, key


def test_every_key_carries_the_prefix_and_is_documented() -> None:
    table = keys_module.__doc__ or ""
    members = dict(_members())
    assert len(members) >= 20
    for name, key in members.items():
        assert key.startswith("mr:"), name
        kind = key.removeprefix("mr:").split(":", 1)[0]  # job, jobs, lock, unit, worker, janitor, ...
        if kind != "*":
            assert f"<prefix>:{kind}" in table or f":{kind}" in table, f"Keys.{name} is missing from the table"


def test_a_tenant_is_a_keyspace_no_key_of_another_can_fall_in() -> None:
    assert tenant_prefix("mr", "default") == "mr"  # a store from before tenants opens as the default tenant
    assert tenant_prefix("mr", "acme") == "mr:tenant:acme"
    for bad in ("", "Acme", "a:b", "a*", "-a", "a" * 33):
        with pytest.raises(ValueError, match="not a tenant's name"):
            tenant_prefix("mr", bad)
    kinds = {key.removeprefix("mr:").split(":", 1)[0] for _, key in _members()}
    assert "tenant" not in kinds  # so <prefix>:tenant:... is never a key of the default tenant
    acme = Keys(tenant_prefix("mr", "acme"))
    assert acme.dataset("ds-1") == "mr:tenant:acme:dataset:ds-1" and not acme.dataset("x").startswith(K.dataset(""))


def test_every_key_is_distinct() -> None:
    built = [key for _, key in _members()]
    assert len(built) == len(set(built))


def test_artifact_names() -> None:
    assert [dataset_artifact("ds-1", part) for part in ("movie_ids", "ratings_value")] == [
        "dataset/ds-1/movie_ids",
        "dataset/ds-1/ratings_value",
    ]
    assert len(DATASET_ARRAYS) == 20
    with pytest.raises(ValueError, match="no artifact"):
        dataset_artifact("ds-1", "../movie_ids")
    assert triplets_artifact("ds-1", "uniform-min", 42) == "triplets/ds-1/uniform-min-42"
    assert triplets_part("triplets/ds-1/uniform-min-42", "j1", 2000) == "triplets/ds-1/uniform-min-42/part/j1/000002000"
    assert embeddings_artifact("ds-1", "b" * 64, "cls") == f"embeddings/ds-1/{'b' * 16}-cls"
    assert meta_of("embeddings/ds-1/x-cls") == "embeddings/ds-1/x-cls/meta"
    assert [model_artifact("m-1", p) for p in ("weights", "embeddings", "index", "index/group")] == [
        "models/m-1/weights",
        "models/m-1/embeddings",
        "models/m-1/index",
        "models/m-1/index/group",
    ]
    with pytest.raises(ValueError, match="no artifact"):
        model_artifact("m-1", "secrets")
    assert encoded_artifact("j1") == "encoded/j1"
    assert encode_input_artifact("r1") == "encode-input/r1"


def test_artifacts_under_a_name_prefix() -> None:
    """The SCAN pattern deletion uses: glob characters of a name match only themselves."""
    assert K.artifacts_under("models/m-1/") == "mr:art:models/m-1/*"
    assert K.artifacts_under("models/m-[1]?*/") == "mr:art:models/m-\\[1\\]\\?\\*/*"
    owned = ("dataset/ds-1/", "triplets/ds-1/", "embeddings/ds-1/", "evaluations/ds-1/")
    assert dataset_owned_artifacts("ds-1") == owned
    assert model_artifacts("m-1") == "models/m-1/"


def test_evaluation_artifact_names() -> None:
    assert evaluation_split_artifact("ds-1", 4.0, "relevant_movie") == "evaluations/ds-1/test-r4.0/relevant_movie"
    assert evaluation_split_artifact("ds-1", 3.5, "summary") == "evaluations/ds-1/test-r3.5/summary"
    with pytest.raises(ValueError, match="no artifact"):
        evaluation_split_artifact("ds-1", 4.0, "../ratings")
    assert evaluation_part("j1", 200) == "evaluations/part/j1/000000200"


def test_triplet_spec_names_through_the_schema() -> None:
    spec = TripletSpec(dataset="ds-1", seed=7, strategy="uniform-min")
    assert spec.name == triplets_artifact("ds-1", "uniform-min", 7) == "triplets/ds-1/uniform-min-7"
    assert spec.part("j1", 10) == triplets_part(spec.name, "j1", 10) == "triplets/ds-1/uniform-min-7/part/j1/000000010"


# -- no key built by hand ---------------------------------------------------------------------------------
SCANNED = ("api", "workers", "shared", "cli", "bench")
SCHEMA = REPO / "shared" / "infra" / "keys.py"
KEY_FRAGMENTS = (
    ":job:",
    ":jobs",
    ":art:",
    ":lock:",
    ":unit:",
    ":worker:",
    ":janitor:",
    ":dataset:",
    ":datasets",
    ":model:",
    ":models",
    ":active_model",
    ":vec:",
    ":celery:",
)
ARTIFACT_HEADS = ("dataset/", "triplets/", "embeddings/", "models/", "encoded/", "encode-input/", "evaluations/")
ARTIFACT_TAILS = ("/meta", "/part/")
"""What is appended to a formatted artifact name to name the one beside it (``meta_of``, ``triplets_part``)."""


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _names_a_prefix(node: ast.AST) -> bool:
    return "prefix" in ast.unparse(node).lower()


def _in_literal(text: str) -> str | None:
    """Why a literal piece of a built string names a key, or None."""
    fragment = next((f for f in KEY_FRAGMENTS if f in text), None)
    return f"key fragment {fragment!r}" if fragment else None


def _head(text: str | None) -> str | None:
    head = next((h for h in ARTIFACT_HEADS if text is not None and text.startswith(h)), None)
    return f"artifact name {head!r}" if head else None


def _tail(text: str | None) -> str | None:
    tail = next((t for t in ARTIFACT_TAILS if text is not None and text.startswith(t)), None)
    return f"artifact suffix {tail!r}" if tail else None


def _joined(node: ast.JoinedStr) -> str | None:
    values = node.values
    for i, value in enumerate(values):
        text = _literal(value)
        after_value = i > 0 and isinstance(values[i - 1], ast.FormattedValue)
        if text is None:
            continue
        if reason := _in_literal(text) or (_head(text) if i == 0 else None) or (_tail(text) if after_value else None):
            return reason
        if after_value and text.startswith(":") and _names_a_prefix(values[i - 1]):
            return "a prefix formatted into a key"
    return None


def _concatenated(node: ast.BinOp) -> str | None:
    left, right = _literal(node.left), _literal(node.right)
    if isinstance(node.op, ast.Add):
        for text in (left, right):
            if text is not None and (reason := _in_literal(text)):
                return reason
        if reason := _head(left) or _tail(right):
            return reason
        if right is not None and right.startswith(":") and _names_a_prefix(node.left):
            return "a prefix concatenated into a key"
    if isinstance(node.op, ast.Mod) and left is not None:
        return _in_literal(left) or _head(left)
    return None


def _formatted(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        template = _literal(node.func.value)
        if template is not None:
            return _in_literal(template) or _head(template)
    return None


def hand_built_keys(source: str) -> list[tuple[int, str]]:
    """(line, why) for each string expression in ``source`` that builds a Redis key or an artifact name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.expr):
            continue
        reason = None
        if isinstance(node, ast.JoinedStr):
            reason = _joined(node)
        elif isinstance(node, ast.BinOp):
            reason = _concatenated(node)
        elif isinstance(node, ast.Call):
            reason = _formatted(node)
        if reason:
            found.append((node.lineno, reason))
    return sorted(found)


def test_the_check_finds_keys_and_spares_messages() -> None:
    built = """
a = f"{self._prefix}:job:{job_id}"
b = f"{settings.key_prefix}:celery:"
c = f"{prefix}:*"
d = f"dataset/{ds}/movie_ids"
e = f"{name}/meta"
f = f"{spec.name}/part/{job}/{lo:09d}"
g = prefix + ":jobs"
h = "encoded/%s" % job_id
i = "{}:vec:{}".format(p, d)
j = f"encode-input/{uuid.uuid4()}"
"""
    assert [line for line, _ in hand_built_keys(built)] == list(range(2, 12))
    spared = """
a = f"job {job_id!r} failed: {message}"
b = f"dataset {dataset!r} does not exist"
c = f"/v1/jobs/{job_id}"
d = f"redis://{auth}127.0.0.1:{port}/0"
e = f"{n:,} of {total:,} shards done"
f = f"models: {count}"
g = "moved %s jobs" % n
h = f"shard-{lo:09d}"
i = tempfile.mkdtemp(prefix=f"bench-{n}-")
j = f"{prefix}-owner"
"""
    assert hand_built_keys(spared) == []


def _scanned() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if path != SCHEMA:
                yield path


def test_no_module_builds_a_key_or_an_artifact_name_by_hand() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {why}"
        for path in _scanned()
        for line, why in hand_built_keys(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "build these through shared/infra/keys.py:\n" + "\n".join(offenders)


def test_the_ml_code_never_imports_redis() -> None:
    imports = []
    for path in sorted((REPO / "shared" / "ml").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imports += [(path.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imports.append((path.name, node.module))
    assert [(name, module) for name, module in imports if module.split(".")[0] == "redis"] == []


def test_a_jobs_janitor_marks_are_its_idle_queued_and_resends_keys() -> None:
    assert K.janitor_marks("j1") == (K.janitor_idle("j1"), K.janitor_queued("j1"), K.janitor_resends("j1"))
