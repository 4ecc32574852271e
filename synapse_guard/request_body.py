"""The request bodies of the guard's own endpoints: one strict parser for a JSON object.

Pure (no Synapse, no Twisted): bytes in, a dict or a `RequestError` out, never anything else,
whatever a hostile client sends. Refused, with the errcode Synapse gives its own endpoints:

- more than `max_bytes`: 413 `M_TOO_LARGE` (read no further than that);
- not UTF-8, not JSON, `NaN`/`Infinity` or a number too large to be finite, a string holding a
  lone surrogate (`"\\ud800"`, which no database or encoder accepts): 400 `M_NOT_JSON`;
- nesting deeper than `max_depth`, measured by a linear scan before the decoder runs (Python's
  decoder recurses, and a deeply nested body raised RecursionError: a 500 and a traceback);
- the same key twice in an object (two readers could disagree on its value), or anything but
  an object at the top: 400 `M_BAD_JSON`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Protocol

NOT_JSON = "M_NOT_JSON"
BAD_JSON = "M_BAD_JSON"
TOO_LARGE = "M_TOO_LARGE"

MAX_BYTES = 64 * 1024  # the guard's bodies are a few hundred bytes at most
MAX_DEPTH = 8  # they are flat objects

_STRUCTURE = re.compile(r'[\[\]{}"\\]')
_SURROGATE = re.compile("[\ud800-\udfff]")


class RequestError(Exception):
    """A request body an endpoint refuses: the message names the problem."""

    def __init__(self, message: str, errcode: str = BAD_JSON, status: int = 400) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.status = status


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def read_limited(content: Readable | None, max_bytes: int = MAX_BYTES) -> bytes:
    """At most `max_bytes + 1` bytes of a request's content: enough to tell it is too large."""
    data = content.read(max_bytes + 1) if content is not None else b""
    return data if isinstance(data, bytes) else b""


def nesting_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest (0 for a scalar).

    A scan for brackets outside strings, without recursion: exact for valid JSON, and for any
    other text at least as deep as what the decoder reads before it gives up.
    """
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the position of the character a backslash escapes
    for match in _STRUCTURE.finditer(text):
        position, char = match.start(), match.group()
        if in_string:
            if position == escaped_at:
                continue
            if char == "\\":
                escaped_at = position + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


class _DuplicateKeyError(Exception):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _DuplicateKeyError
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("a number too large to be finite")
    return number


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)


def _has_lone_surrogate(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def parse_object(
    body: bytes,
    *,
    allow_empty: bool = False,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """The JSON object in `body`; RequestError (with status and errcode) for anything else.

    `allow_empty`: an empty (or blank) body is the empty object.
    """
    if len(body) > max_bytes:
        raise RequestError(f"the body is larger than {max_bytes} bytes", TOO_LARGE, 413)
    if allow_empty and not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("the body is not valid JSON (not UTF-8)", NOT_JSON) from None
    if nesting_depth(text) > max_depth:
        raise RequestError(f"the body nests deeper than {max_depth} levels")
    try:
        value = _DECODER.decode(text)
    except _DuplicateKeyError:
        raise RequestError("the body names a field twice") from None
    except ValueError:
        raise RequestError("the body is not valid JSON", NOT_JSON) from None
    if _has_lone_surrogate(value):
        raise RequestError("the body is not valid JSON (a lone surrogate)", NOT_JSON)
    if not isinstance(value, dict):
        raise RequestError("the body must be a JSON object")
    return value
