"""Request limits every route shares: JSON documents (body size, nesting depth, string length, object members,
number of values, finite numbers) and numbers given as form text.

One parser, :func:`loads_limited`, reads every JSON the API accepts: request bodies (through
:class:`JsonBodyLimits`, an ASGI middleware that refuses an oversize body while it streams in and hands the
parsed document to the route as ``request.state.json_body``), the JSON fields of multipart forms (job
``options``, ``finetune``..., model ``mean``/``std``/``input_size``) and pagination cursors. ``NaN``,
``Infinity`` and numbers that overflow to infinity are refused (Python's ``json`` accepts them), and so are
integers beyond 64 bits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import Problem, problem_response
from app.core.config import Settings

INT64_MAX = 2**63 - 1
JSON_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class JsonLimits:
    """Bounds on one JSON document."""

    max_bytes: int = 256 * 1024
    max_depth: int = 16
    max_string: int = 4096
    max_keys: int = 64
    max_items: int = 10_000

    @classmethod
    def from_settings(cls, s: Settings) -> JsonLimits:
        """The limits ``SIMPRUNE_MAX_JSON_*`` configure."""
        return cls(s.max_json_body_bytes, s.max_json_depth, s.max_json_string_chars, s.max_json_object_keys,
                   s.max_json_items)


class _NonFinite(ValueError):
    """A number JSON cannot carry faithfully (NaN, an infinity, an integer beyond 64 bits)."""


def _constant(name: str) -> Any:
    raise _NonFinite(f"'{name}' is not a finite number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(f"{text[:40]} is out of range for a finite number")
    return value


def _int(text: str) -> int:
    value = int(text)
    if abs(value) > INT64_MAX:
        raise _NonFinite(f"{text[:40]}... does not fit in 64 bits")
    return value


def limit_problem(where: str, msg: str, status: int = 422) -> Problem:
    """A problem naming the JSON location ``where`` that broke a limit."""
    return Problem(status, f"{where}: {msg}", "request-limit", "Request limit exceeded",
                   errors=[{"loc": where.split(".") if where else [], "msg": msg, "type": "request_limit"}])


def loads_limited(raw: bytes | str, limits: JsonLimits, where: str = "body") -> Any:
    """Parse ``raw`` as JSON within ``limits`` (``where`` names it in errors): 413 when too large, 400 when it
    is not JSON, 422 when it nests too deeply, has too long strings, too many members or values, or a number
    that is not finite."""
    if len(raw) > limits.max_bytes:
        raise Problem(413, f"{where}: {len(raw)} bytes exceed the limit of {limits.max_bytes} bytes",
                      "request-too-large", "Request too large", limit=limits.max_bytes)
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except _NonFinite as exc:
        raise limit_problem(where, f"numbers must be finite: {exc}") from None
    except RecursionError:
        raise limit_problem(where, f"nested more than {limits.max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError):
        if where == "body":
            raise Problem(400, "request body is not valid JSON", "bad-json") from None
        raise Problem(422, f"'{where}' must be JSON", "validation-error", "Invalid request") from None
    check_document(value, limits, where)
    return value


def check_document(value: Any, limits: JsonLimits, where: str = "body") -> None:
    """Walk ``value`` (iteratively: no recursion) and raise a 422 problem at the first limit it breaks."""
    stack: list[tuple[Any, int, str]] = [(value, 1, where)]
    items = 0
    while stack:
        node, depth, path = stack.pop()
        items += 1
        if items > limits.max_items:
            raise limit_problem(where, f"more than {limits.max_items} values")
        if isinstance(node, dict | list) and depth > limits.max_depth:
            raise limit_problem(path, f"nested more than {limits.max_depth} levels deep")
        if isinstance(node, dict):
            if len(node) > limits.max_keys:
                raise limit_problem(path, f"{len(node)} members; at most {limits.max_keys} are allowed")
            for key, child in node.items():
                if len(key) > limits.max_string:
                    raise limit_problem(path, f"a member name is longer than {limits.max_string} characters")
                stack.append((child, depth + 1, f"{path}.{key[:40]}"))
        elif isinstance(node, list):
            stack.extend((child, depth + 1, f"{path}.{i}") for i, child in enumerate(node))
        elif isinstance(node, str) and len(node) > limits.max_string:
            raise limit_problem(path, f"string of {len(node)} characters; the limit is {limits.max_string}")
        elif isinstance(node, float) and not math.isfinite(node):
            raise limit_problem(path, "numbers must be finite")


def finite_float(raw: str, name: str) -> float:
    """``raw`` (form text) as a finite float; 422 naming ``name`` otherwise (``nan``/``inf`` included)."""
    try:
        value = float(raw)
    except ValueError:
        raise Problem(422, f"'{name}' must be a number, got {raw[:40]!r}", "validation-error",
                      "Invalid request") from None
    if not math.isfinite(value):
        raise Problem(422, f"'{name}' must be a finite number, got {raw[:40]!r}", "validation-error",
                      "Invalid request")
    return value


def is_json(content_type: str) -> bool:
    """Whether a Content-Type header names JSON (``application/json``, ``application/*+json``)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


async def json_body(request: Request, limits: JsonLimits) -> Any:
    """The request's JSON document: parsed by :class:`JsonBodyLimits` already, else read and parsed here within
    ``limits`` (the body is read only up to the limit)."""
    if "json_body" in request.scope.get("state", {}):
        return request.scope["state"]["json_body"]
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_bytes:
            raise Problem(413, f"body exceeds the limit of {limits.max_bytes} bytes", "request-too-large",
                          "Request too large", limit=limits.max_bytes)
    return loads_limited(bytes(body), limits)


class JsonBodyLimits:
    """ASGI middleware: a JSON request body is read up to ``limits.max_bytes`` (413 as soon as it is exceeded,
    or at once when Content-Length announces more), parsed with :func:`loads_limited` and stored in
    ``scope["state"]["json_body"]``; the app then receives the same bytes as if read from the client."""

    def __init__(self, app: ASGIApp, limits: JsonLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in JSON_METHODS:
            return await self.app(scope, receive, send)
        headers = dict((k.lower(), v) for k, v in scope.get("headers", ()))
        if not is_json(headers.get(b"content-type", b"").decode("latin-1")):
            return await self.app(scope, receive, send)
        try:
            body = await self._read(headers, receive)
            parsed = loads_limited(body, self.limits) if body.strip() else None
        except Problem as exc:
            resp = problem_response(Request(scope), exc.status_code, exc.detail, exc.type_, exc.title,
                                    exc.headers, **exc.extra)
            return await resp(scope, receive, send)
        if parsed is not None:
            scope.setdefault("state", {})["json_body"] = parsed
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise Problem(413, f"request body of {int(declared)} bytes exceeds the limit of "
                               f"{self.limits.max_bytes} bytes", "request-too-large", "Request too large",
                          limit=self.limits.max_bytes)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            if len(body) > self.limits.max_bytes:
                raise Problem(413, f"request body exceeds the limit of {self.limits.max_bytes} bytes",
                              "request-too-large", "Request too large", limit=self.limits.max_bytes)
            if not message.get("more_body", False):
                break
        return bytes(body)


def _replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when the client goes away

    return replay
