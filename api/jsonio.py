"""Strict JSON at the edge: what a request body may contain before any schema looks at it.

Python's ``json`` accepts more than RFC 8259 does, and some of what it accepts breaks things later:

    NaN, Infinity, -Infinity    not JSON; a float field would see them as numbers
    1e999                       valid JSON that Python reads as inf
    "\\ud800" (a lone surrogate) valid JSON, but no UTF-8 encodes it: Redis, the filesystem and Celery's
                                messages would raise on it long after the request was answered 202
    [[[[...]]]] deep nesting    RecursionError inside the parser (a 500), or a deep walk afterwards
    a 5,000-digit integer       ValueError from int() (Python's 4,300-digit limit), not a decode error
    UTF-16 / UTF-32 bodies      ``json.loads(bytes)`` guesses the encoding; JSON on the wire is UTF-8

``StrictJSONProvider`` (the app's ``app.json``) refuses all of these with ``JSONRejected``, so
``request.get_json()`` is strict too. ``check_body`` runs before every view that reads a body (webargs
parses it again with the standard library, which is why the check cannot live only in the provider) and
turns a refusal into a 400 that says what and where: ``malformed_json`` for what is not JSON,
``validation_error`` naming the field for a string that is not valid Unicode.

Lengths before items. A refused body must cost little, or a few clients sending them stall every connection of
the process (one gevent hub runs them all): ``{"liked": [1] * 200000}`` (600 KB) cost 1.8 s of CPU, spent in
walking its 200,000 items three times (here, in the schema's type check, in marshmallow's per-item
validation) before its length was looked at. So, once parsed (C code), the body is held against the view's
schema by ``shape_problem``: a list past its ``Length``, an object with a field its schema does not have, is
refused there, having looked at the lengths and keys only; nothing walks the items of a list too long to
accept. Before even the parse, which alone costs ~20 ms for 600 KB, a body with more values than any valid
body of its schema holds (``max_values``: its list lengths and fields multiplied out; commas counted outside
strings, in C) is refused: that costs a count, and a regex when the first count is not enough. Then the tree
is walked (``_check_tree``), once, without building a path per node: the path of a
problem is found again when there is one.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

from flask import Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from marshmallow import RAISE, Schema, ValidationError
from marshmallow.fields import Boolean, Field, List, Nested, Number, String
from marshmallow.validate import Length

from .errors import error_response
from .openapi import PlainList

MAX_JSON_DEPTH = 32
"""Arrays and objects nested deeper than this are refused (our deepest input, encode's items, is 2)."""

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class JSONRejected(ValueError):
    """The body is not acceptable JSON: ``reason``, at ``field`` (a path) when one string is the culprit."""

    def __init__(
        self,
        reason: str,
        *,
        code: str = "malformed_json",
        field: list[str | int] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.reason = reason
        self.code = code
        self.field = field
        self.details = details or {}
        self.message = f"{dotted(field)}: {reason}" if field is not None else reason
        super().__init__(self.message)


def _refuse_constant(name: str) -> Any:
    raise JSONRejected(f"{name} is not valid JSON; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRejected(f"the number {text[:40]} is out of range for a double")
    return value


def _has_surrogate(text: str) -> bool:
    # A well-formed pair ("\ud83d\ude00") was already joined into one code point by the parser, so any
    # code point left in the surrogate block is a lone half, which UTF-8 cannot encode.
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")
"""Where a lone surrogate can come from: UTF-8 decoding refuses encoded ones, so only a ``\\udXXX`` escape."""


def _escaped(text: str) -> str:
    """The string as JSON would spell it in ASCII, so a message can show a lone surrogate."""
    return json.dumps(text)[1:-1]


def dotted(path: list[str | int]) -> str:
    """``json.texts.3``: a field as a validation error's message names it (see ``api.errors``)."""
    return ".".join(["json", *(str(p) for p in path)])


def _too_deep() -> JSONRejected:
    return JSONRejected(f"the body nests deeper than {MAX_JSON_DEPTH} levels", details={"max_depth": MAX_JSON_DEPTH})


_CONTAINERS = (dict, list)


def _check_tree(value: Any, *, strings: bool = True) -> None:
    """Depth, and with ``strings`` the Unicode of every string, key and value; iterative, so no input can exhaust
    the stack. One pass with no path kept; a problem found is located by ``_locate``."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            _locate(value)
        if isinstance(node, dict):
            for key, item in node.items():
                if strings and _has_surrogate(key):
                    _locate(value)
                if isinstance(item, _CONTAINERS) or (strings and isinstance(item, str)):
                    stack.append((item, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node if isinstance(item, _CONTAINERS) or
                         (strings and isinstance(item, str)))  # fmt: skip
        elif strings and isinstance(node, str) and _has_surrogate(node):
            _locate(value)


def _locate(value: Any) -> None:
    """Raise the ``JSONRejected`` of the first problem in ``value``, naming its path (the slow walk)."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(node, str):
            if _has_surrogate(node):
                raise JSONRejected(
                    f"the string {_escaped(node[:60])} holds a lone UTF-16 surrogate, which is not a Unicode "
                    "character; send UTF-8 text",
                    code="validation_error",
                    field=path,
                )
        elif isinstance(node, dict):
            for key, item in node.items():
                if _has_surrogate(key):
                    raise JSONRejected(
                        "this field name holds a lone UTF-16 surrogate",
                        code="validation_error",
                        field=[*path, _escaped(key)],
                    )
                stack.append((item, [*path, key]))
        elif isinstance(node, list):
            stack.extend((item, [*path, i]) for i, item in enumerate(node))


def shape_problem(value: Any, schema: Schema) -> JSONRejected | None:
    """What makes ``value`` too big for ``schema``, found without walking any list it refuses: a list past its
    ``Length`` (marshmallow's own message), an object with a field its schema does not have (when the schema
    raises on unknown fields). None when the lengths and keys fit; the schema still validates everything."""
    stack: list[tuple[Any, Schema | Field[Any], list[str | int]]] = [(value, schema, [])]
    while stack:
        node, spec, path = stack.pop()
        if isinstance(spec, Schema):
            if isinstance(node, dict):
                unknown = _unknown_field(node, spec)
                if unknown is not None:
                    return JSONRejected("Unknown field.", code="validation_error", field=[*path, unknown])
                # Only what may hold a list or an object is walked: the loop has nothing to say of a scalar.
                stack.extend((node[name], field, [*path, name]) for name, field in _containers(spec) if name in node)
        elif isinstance(spec, Nested):
            nested = spec.schema
            if spec.many:
                if isinstance(node, list):
                    stack.extend((item, nested, [*path, i]) for i, item in enumerate(node))
            else:
                stack.append((node, nested, path))
        elif isinstance(spec, List) and isinstance(node, list):
            problem = _length_problem(node, spec)
            if problem is not None:
                return JSONRejected(problem, code="validation_error", field=path)
            # A PlainList's items are flat objects it checks itself, unknown keys included, on its way to marshmallow
            if isinstance(spec.inner, List | Nested) and not isinstance(spec, PlainList):
                stack.extend((item, spec.inner, [*path, i]) for i, item in enumerate(node))
    return None


def _length_problem(node: list[Any], field: List[Any]) -> str | None:
    """Marshmallow's message for a list whose length its ``Length`` validators refuse (they look at len() only)."""
    for validator in field.validators:
        if isinstance(validator, Length):
            try:
                validator(node)
            except ValidationError as exc:
                return str(exc.messages[0])
    return None


_MAX_VALUES: dict[int, int | None] = {}
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
"""A backslash and the byte it escapes: once these are gone, every quote left opens or closes a string (a
fixed-width pattern, so linear whatever the body)."""


def max_values(spec: Schema | Field[Any]) -> int | None:
    """How many JSON values (keys counted) a valid body of ``spec`` holds at most; None when unbounded (a list
    with no ``Length`` maximum, a free-form field)."""
    if isinstance(spec, Schema):
        total = 0
        for field in spec.fields.values():
            inner = max_values(field)
            if inner is None:
                return None
            total += 1 + inner
        return total
    if isinstance(spec, Nested):
        inner = max_values(spec.schema)
        return None if inner is None or spec.many else inner
    if isinstance(spec, List):
        most = min((v.max for v in spec.validators if isinstance(v, Length) and v.max is not None), default=None)
        inner = max_values(spec.inner)
        return None if most is None or inner is None else 1 + most * inner
    return 1 if isinstance(spec, String | Number | Boolean) else None  # Raw, Dict, ...: anything


def _too_many_values(data: bytes, schema: Schema) -> JSONRejected | None:
    """Refuse, unparsed, a body with more commas outside its strings than ``max_values`` of its schema allows."""
    key = id(schema)
    if key not in _MAX_VALUES:
        _MAX_VALUES[key] = max_values(schema)
    bound = _MAX_VALUES[key]
    commas = data.count(b",")
    if bound is None or commas <= bound:
        return None
    plain = _ESCAPE.sub(b"", data) if b"\\" in data else data
    pieces = plain.split(b'"')
    if len(pieces) % 2 == 0:  # an odd number of quotes: not JSON, which the parse says better
        return None
    total = commas if plain is data else plain.count(b",")
    if total - b"".join(pieces[1::2]).count(b",") <= bound:  # the commas inside strings do not count
        return None
    return JSONRejected(f"the body holds more than {bound} values, more than any valid body of this request: "
                        "a list past its length, or fields it does not take", code="validation_error",
                        details={"json": [f"more than {bound} values"], "max_values": bound})  # fmt: skip


_NAMED: dict[int, dict[str, Field[Any]]] = {}
_WALKED: dict[int, list[tuple[str, Field[Any]]]] = {}


def _named(schema: Schema) -> dict[str, Field[Any]]:
    """A schema's fields by the name a body gives them (once per schema: a body of a thousand objects asks a
    thousand times)."""
    found = _NAMED.get(id(schema))
    if found is None:
        found = _NAMED[id(schema)] = {field.data_key or name: field for name, field in schema.fields.items()}
    return found


def _containers(schema: Schema) -> list[tuple[str, Field[Any]]]:
    """A schema's fields (by body name) that may hold a list or an object: those ``shape_problem`` walks into."""
    found = _WALKED.get(id(schema))
    if found is None:
        kinds = (List, Nested)
        found = _WALKED[id(schema)] = [(n, f) for n, f in _named(schema).items() if isinstance(f, kinds)]
    return found


def _unknown_field(node: dict[str, Any], schema: Schema) -> str | None:
    """A key of ``node`` that ``schema`` refuses as unknown, looked for only when there are more keys than fields
    (then one is unknown: found among the first fields + 1 keys, whatever the object's size)."""
    names = _named(schema)
    if schema.unknown != RAISE or len(node) <= len(names):
        return None
    return next(k for k in itertools.islice(node, len(names) + 1) if k not in names)


def strict_loads(data: str | bytes | bytearray, *, schema: Schema | None = None) -> Any:
    """Parse one JSON document the RFC 8259 way, or raise ``JSONRejected``; with ``schema``, refuse a body whose
    lengths or keys do not fit it (``shape_problem``) before looking at its items."""
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONRejected(f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JSONRejected:
        raise
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as exc:
        raise JSONRejected(f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:  # int() refusing a number of more than 4,300 digits
        raise JSONRejected(f"the body is not acceptable JSON: {str(exc).split(';')[0]}") from None
    if schema is not None:
        problem = shape_problem(value, schema)
        if problem is not None:
            raise problem
    _check_tree(value, strings=_SURROGATE_ESCAPE.search(data) is not None)
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """``app.json``: strict parsing (above); answers are written as Flask writes them."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return strict_loads(s)


def _nested(path: list[str | int], message: str) -> dict[str, Any]:
    """``{"json": {"texts": {"3": [message]}}}``: the shape marshmallow gives its field errors."""
    inner: Any = [message]
    for part in reversed(path):
        inner = {str(part): inner}
    return {"json": inner}


def _body_schema() -> Schema | None:
    """The JSON body schema of the view this request goes to (APIFlask's ``@bp.input`` notes it), if any."""
    view = current_app.view_functions.get(request.endpoint or "")
    schema = getattr(view, "_spec", {}).get("body")
    return schema if isinstance(schema, Schema) else None


def check_body() -> Response | None:
    """Before-request hook: refuse a JSON body the views must never see (see the module docstring)."""
    if request.method not in _BODY_METHODS or not request.is_json:
        return None
    data = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413, through the error handler
    if not data:
        return None
    schema = _body_schema()
    try:
        crowded = _too_many_values(data, schema) if schema is not None else None
        if crowded is not None:
            raise crowded
        strict_loads(data, schema=schema)
    except JSONRejected as exc:
        details = _nested(exc.field, exc.reason) if exc.field is not None else exc.details
        return error_response(400, exc.code, exc.message, details)
    return None
