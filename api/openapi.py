"""The apispec machinery behind /openapi.json: rules across fields, stated once and both enforced and documented.

Marshmallow raises on unknown fields, so an unexpected field is a 400 like any other invalid input, and apispec
writes each schema's ``unknown`` into /openapi.json as ``additionalProperties: false``: every object is closed.
A rule across fields ("exactly one of path, dataset") is declared once, in a ``BodySchema``'s ``rules``: its
validator enforces them, and ``RequestBodies`` (an apispec plugin) writes them into the spec, as ``oneOf``
alternatives (each a closed object with its required fields) or a ``not``; it also marks a body required
wherever the schema refuses an empty object. ``merge_duplicate_schemas`` leaves one component per schema.
The schemas themselves are api/schemas.py's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

from apiflask import Schema
from apiflask.fields import Boolean, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range
from apispec import APISpec, BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_instance
from marshmallow import RAISE, ValidationError, missing, pre_load, validates_schema
from marshmallow.fields import Field


def _given(data: Mapping[str, Any], fields: Mapping[str, Field[Any]], name: str) -> bool:
    """The body gives ``name``: carries it, and a list not empty."""
    return name in data and not (isinstance(fields[name], List) and not data[name])


class ExactlyOne:
    """Exactly one group of fields: a body chooses a group by carrying any of its fields and may choose one only;
    it gives the group by at least one of its fields (``_given``). In /openapi.json: a ``oneOf`` with a branch
    per group, each the closed object of the other fields and the group's, requiring what giving it takes."""

    def __init__(self, *groups: str | tuple[str, ...]) -> None:
        self.groups = tuple((g,) if isinstance(g, str) else g for g in groups)

    def problem(self, data: Mapping[str, Any], fields: Mapping[str, Field[Any]]) -> str | None:
        chosen = [g for g in self.groups if any(name in data for name in g)]
        if len(chosen) == 1 and any(_given(data, fields, name) for name in chosen[0]):
            return None
        return "give exactly one of " + ", ".join("/".join(g) for g in self.groups)

    def document(self, name: str, definition: dict[str, Any], fields: Mapping[str, Field[Any]]) -> None:
        properties: dict[str, Any] = definition.pop("properties", {})
        required: list[str] = definition.pop("required", [])
        for key in ("type", "additionalProperties"):
            definition.pop(key, None)
        grouped = {name for group in self.groups for name in group}
        definition["oneOf"] = []
        for group in self.groups:
            names = [n for n in properties if n not in grouped or n in group]
            branch: dict[str, Any] = {
                # A generated client names each alternative by its title: PipelineInPath, RecommendInUserId, ...
                "title": name + "".join(part.title() for part in group[0].split("_")),
                "type": "object",
                "properties": {n: copy.deepcopy(properties[n]) for n in names},
                "additionalProperties": False,
            }
            givens = [_given_schema(name, fields) for name in group]
            if len(givens) == 1:
                branch["required"] = [n for n in required if n in names] + givens[0]["required"]
                branch["properties"][group[0]].update(givens[0].get("properties", {}).get(group[0], {}))
            else:
                branch["anyOf"] = givens
                if any(n in required for n in names):
                    branch["required"] = [n for n in required if n in names]
            definition["oneOf"].append(branch)
        definition["description"] = self.problem({}, fields)


def _given_schema(name: str, fields: Mapping[str, Field[Any]]) -> dict[str, Any]:
    """``_given`` as JSON Schema."""
    if isinstance(fields[name], List):
        return {"required": [name], "properties": {name: {"minItems": 1}}}
    return {"required": [name]}


class NotAllEmpty:
    """Not every one of these lists empty: a body may empty some (an absent one keeps its default), not all."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def problem(self, data: Mapping[str, Any], fields: Mapping[str, Field[Any]]) -> str | None:
        if all(name in data and not data[name] for name in self.names):
            return f"give at least one of {', '.join(self.names)} (not all empty)"
        return None

    def document(self, name: str, definition: dict[str, Any], fields: Mapping[str, Field[Any]]) -> None:
        definition["not"] = {"required": list(self.names), "properties": {n: {"maxItems": 0} for n in self.names}}


def _json_type_problem(field: Field[Any], value: Any) -> Any:
    """What is wrong with a JSON value for ``field`` (marshmallow's message; for a list, by index), else None."""
    if value is None:
        return None  # the field's allow_none decides
    if isinstance(field, Boolean) and not isinstance(value, bool):
        return ["Not a valid boolean."]
    if isinstance(field, Integer) and (
        isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer()
    ):
        return ["Not a valid integer."]
    if isinstance(field, Float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        return ["Not a valid number."]
    if isinstance(field, List) and isinstance(value, list):
        inner = {i: p for i, v in enumerate(value) if (p := _json_type_problem(field.inner, v)) is not None}
        return inner or None
    return None


class BodySchema(Schema):
    """A JSON request body. Its numbers and booleans must be JSON's own, as /openapi.json types them: marshmallow
    alone would take "3" or true for an integer and cut 2.5 to 2 (3.0 is an integer, as JSON Schema counts it).
    Its ``rules`` across fields are enforced here and stated in /openapi.json (``RequestBodies``)."""

    rules: ClassVar[tuple[ExactlyOne | NotAllEmpty, ...]] = ()

    @pre_load
    def _json_types(self, data: Any, **_: object) -> Any:
        if isinstance(data, dict):
            problems = {
                name: problem
                for name, field in self.fields.items()
                if name in data and (problem := _json_type_problem(field, data[name])) is not None
            }
            if problems:
                raise ValidationError(problems)
        return data

    @validates_schema
    def _follow_rules(self, data: dict[str, Any], **_: object) -> None:
        for rule in self.rules:
            problem = rule.problem(data, self.fields)
            if problem:
                raise ValidationError(problem, field_name="_schema")


class PlainList(List[Any]):
    """A list of flat objects (a ``BodySchema`` of strings, integers and floats with their validators), documented
    as ``List(Nested(schema))`` and loaded as one, but without marshmallow's machinery where every item is plainly
    valid: JSON's own type, a known field, each validator passed. Marshmallow takes ~60 us an item for such an
    object, the check here ~3; POST /v1/events takes thousands a second on two cores. Any item the plain check
    does not pass goes, with the whole list, through marshmallow, so what is refused and how is marshmallow's
    (tests/unit/test_plain_list.py holds the two to the same answers)."""

    def __init__(
        self, schema: type[Schema], *, pause: Callable[[], None] = lambda: None, pause_every: int = 100, **kwargs: Any
    ) -> None:  # fmt: skip
        super().__init__(Nested(schema), **kwargs)
        self._fields = _plain_fields(schema())
        self._pause, self._pause_every = pause, pause_every

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        """Each item checked plainly, ``pause`` called every ``pause_every`` items (the API's gevent worker serves
        its other requests there); the whole list through marshmallow when one item is not plainly valid."""
        if self._fields is not None and isinstance(value, list):
            loaded = []
            for lo in range(0, len(value), self._pause_every):
                if lo:
                    self._pause()
                loaded += [_plainly(self._fields, item) for item in value[lo : lo + self._pause_every]]
            if all(item is not None for item in loaded):
                return cast("list[Any]", loaded)
        return cast("list[Any]", super()._deserialize(value, attr, data, **kwargs))


_PlainField = tuple[type, bool, tuple[Callable[[Any], Any], ...]]
"""A field's JSON type (str, int or float), whether it is required, and its validators."""


def _plain_fields(schema: Schema) -> dict[str, _PlainField] | None:
    """The plain checks of a schema's fields; None when the schema or a field does more than they cover (the list
    is then always loaded by marshmallow): a field of another kind or with another validator, a key or attribute
    of its own, null or NaN allowed, a default, rules across fields, or a hook of the schema's own."""
    if type(schema).opts.unknown != RAISE or getattr(schema, "rules", ()):
        return None
    if any(hasattr(member, "__marshmallow_hook__") for member in vars(type(schema)).values()):
        return None
    out: dict[str, _PlainField] = {}
    for name, field in schema.fields.items():
        kind = {String: str, Integer: int, Float: float}.get(type(field))  # exactly these: a subclass may do more
        if kind is None or not all(isinstance(v, OneOf | Range | Length) for v in field.validators):
            return None
        if field.data_key or field.attribute or field.allow_none or field.load_default is not missing:
            return None
        if isinstance(field, Float) and field.allow_nan is not False:
            return None
        out[name] = (kind, field.required, tuple(field.validators))
    return out


def _plainly(fields: dict[str, _PlainField], item: Any) -> dict[str, Any] | None:
    """``item`` loaded, when it is plainly valid; else None."""
    if type(item) is not dict or not item.keys() <= fields.keys():
        return None
    out = {}
    for name, (kind, required, validators) in fields.items():
        if name not in item:
            if required:
                return None
            continue
        value = item[name]
        if kind is float:
            if type(value) not in (int, float) or not math.isfinite(value):
                return None
            value = float(value)
        elif type(value) is not kind:
            return None
        try:
            for validate in validators:
                validate(value)
        except ValidationError:
            return None
        out[name] = value
    return out


def _open_bounds(converter: Any, field: Field[Any], **_: Any) -> dict[str, Any]:
    """A ``Range``'s open ends as ``exclusiveMinimum`` / ``exclusiveMaximum``: apispec writes each end as a closed
    ``minimum`` / ``maximum``, which would offer ``train_fraction: 1.0`` to a client the server refuses."""
    bounds: dict[str, Any] = {}
    for validator in field.validators:
        if isinstance(validator, Range):
            if validator.min is not None and not validator.min_inclusive:
                bounds["exclusiveMinimum"] = validator.min
            if validator.max is not None and not validator.max_inclusive:
                bounds["exclusiveMaximum"] = validator.max
    return bounds


class RequestBodies(BasePlugin):
    """The apispec plugin that writes each ``BodySchema``'s rules into its component in /openapi.json, a range's
    open ends (``_open_bounds``), and ``requestBody.required`` into each operation whose JSON body refuses ``{}``.
    APIFlask runs it after its own marshmallow plugin (``app.spec_plugins``), so each component it sees already has
    its properties."""

    def __init__(self) -> None:
        self._refuses_empty: dict[str, bool] = {}

    def init_spec(self, spec: APISpec) -> None:
        super().init_spec(spec)
        for plugin in spec.plugins:
            if isinstance(plugin, MarshmallowPlugin) and plugin.converter is not None:
                plugin.converter.add_attribute_function(_open_bounds)  # type: ignore[no-untyped-call]  # apispec

    def schema_helper(self, name: str, definition: dict[str, Any], **kwargs: Any) -> None:
        if kwargs.get("schema") is None:
            return
        schema = resolve_schema_instance(kwargs["schema"])
        for rule in getattr(schema, "rules", ()):
            rule.document(name, definition, schema.fields)
        self._refuses_empty[name] = bool(schema.validate({}))

    def operation_helper(self, path: str | None = None, operations: dict[str, Any] | None = None, **_: Any) -> None:
        for operation in (operations or {}).values():
            body = operation.get("requestBody") if isinstance(operation, dict) else None
            schema = (body or {}).get("content", {}).get("application/json", {}).get("schema")
            ref = schema.get("$ref", "") if isinstance(schema, dict) else str(schema or "")
            if body is not None and self._refuses_empty.get(ref.rsplit("/", 1)[-1]):
                body["required"] = True


_COMPONENT = "#/components/schemas/"


def merge_duplicate_schemas(spec: dict[str, Any]) -> dict[str, Any]:
    """One component per schema in /openapi.json: apispec registers a schema both nested (``List(Nested(JobOut))``)
    and as a view's output twice, naming the second ``JobOut1``. A numbered copy identical to its original is
    dropped and every reference to it pointed at the original, so a generated client has one ``JobOut`` type."""
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    renamed = {}
    for name in list(schemas):
        base = name.rstrip("0123456789")
        if base != name and base in schemas and schemas[base] == schemas[name]:
            renamed[_COMPONENT + name] = _COMPONENT + base
            del schemas[name]

    def repoint(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("$ref") in renamed:
                node["$ref"] = renamed[node["$ref"]]
            for value in node.values():
                repoint(value)
        elif isinstance(node, list):
            for value in node:
                repoint(value)

    if renamed:
        repoint(spec)
    return spec
