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
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Response, current_app, request
from flask.json.provider import DefaultJSONProvider

from .errors import error_response

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
    # code point left in the surrogate block is a lone half.
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _escaped(text: str) -> str:
    """The string as JSON would spell it in ASCII, so a message can show a lone surrogate."""
    return json.dumps(text)[1:-1]


def dotted(path: list[str | int]) -> str:
    """``json.texts.3``: a field as a validation error's message names it (see ``api.errors``)."""
    return ".".join(["json", *(str(p) for p in path)])


def _too_deep() -> JSONRejected:
    return JSONRejected(f"the body nests deeper than {MAX_JSON_DEPTH} levels", details={"max_depth": MAX_JSON_DEPTH})


def _check_tree(value: Any) -> None:
    """Depth and Unicode of every string, key and value; iterative, so no input can exhaust the stack."""
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


def strict_loads(data: str | bytes | bytearray) -> Any:
    """Parse one JSON document the RFC 8259 way, or raise ``JSONRejected``."""
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
    _check_tree(value)
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


def check_body() -> Response | None:
    """Before-request hook: refuse a JSON body the views must never see (see the module docstring)."""
    if request.method not in _BODY_METHODS or not request.is_json:
        return None
    data = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413, through the error handler
    if not data:
        return None
    try:
        current_app.json.loads(data)
    except JSONRejected as exc:
        details = _nested(exc.field, exc.reason) if exc.field is not None else exc.details
        return error_response(400, exc.code, exc.message, details)
    return None
