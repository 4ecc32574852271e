"""The parser of the guard's own request bodies: whatever a client sends, a dict or a 4xx.

What a hostile client sends: random bytes, JSON nested deeper than Python's decoder can
recurse, huge bodies, NaN, duplicate keys, lone surrogates. Each gets a RequestError with
the status and errcode the endpoint answers; nothing else ever escapes (a 500).
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard.request_body import (
    BAD_JSON,
    MAX_BYTES,
    MAX_DEPTH,
    NOT_JSON,
    TOO_LARGE,
    RequestError,
    nesting_depth,
    parse_object,
    read_limited,
)

# JSON values without floats that do not survive a round trip (NaN, infinities).
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
)
unicode_text = st.text(st.characters(exclude_categories=("Cs",)))  # no lone surrogate
json_values = st.recursive(
    scalars | unicode_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(unicode_text, children, max_size=4)
    ),
    max_leaves=20,
)
# Text a fuzzer builds from what JSON is made of: deep brackets, escapes, quotes, constants.
json_like = st.text(alphabet='[]{}",:\\ 0123456789.eE+-truefalsnNaIiy\x00\ud800', max_size=400)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def refused(body: bytes, **options: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_object(body, **options)
    return caught.value


# -- never anything but a dict or a RequestError -------------------------------------------


def outcome(body: bytes) -> dict[str, Any] | RequestError:
    try:
        return parse_object(body)
    except RequestError as e:
        return e


def answer(result: dict[str, Any] | RequestError) -> tuple[int, str]:
    return (200, "") if isinstance(result, dict) else (result.status, result.errcode)


@given(st.binary(max_size=600))
def test_any_bytes_give_an_object_or_a_request_error(body: bytes) -> None:
    assert answer(outcome(body)) in {(200, ""), (400, NOT_JSON), (400, BAD_JSON)}


@given(json_like)
def test_any_json_like_text_gives_an_object_or_a_request_error(text: str) -> None:
    body = text.encode("utf-8", "surrogatepass")
    assert answer(outcome(body)) in {(200, ""), (400, NOT_JSON), (400, BAD_JSON)}


@given(st.dictionaries(unicode_text, json_values))
def test_an_object_within_the_limits_reads_back_as_sent(value: dict[str, Any]) -> None:
    body = json.dumps(value).encode()
    if depth(value) <= MAX_DEPTH and len(body) <= MAX_BYTES:
        assert parse_object(body) == value
    else:
        refused(body)


@given(unicode_text, st.characters(categories=("Cs",)), unicode_text, st.booleans())
def test_a_lone_surrogate_anywhere_is_not_json(
    before: str, surrogate: str, after: str, in_key: bool
) -> None:
    # Valid JSON (an escape such as "\\ud800"), but no UTF-8 encoder or database takes it.
    text = before + surrogate + after
    body = json.dumps({text: 1} if in_key else {"a": [{"b": text}]}).encode()
    assert answer(outcome(body)) == (400, NOT_JSON)


@given(json_values)
def test_the_depth_scan_is_exact_for_json(value: Any) -> None:
    assert nesting_depth(json.dumps(value)) == depth(value)
    assert nesting_depth(json.dumps(value, ensure_ascii=False)) == depth(value)


@given(st.text(alphabet='[]{}"\\x', max_size=60))
def test_brackets_inside_strings_do_not_count(inner: str) -> None:
    # Whatever a string holds (escaped quotes and backslashes included), it adds no depth.
    assert nesting_depth(json.dumps({"key": inner})) == 1


# -- each refusal, with its errcode -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # what raised RecursionError (a 500) before
        b"[" * 30_000 + b"]" * 30_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"locked": true, "x": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}",
    ],
    ids=["unclosed", "arrays", "objects", "one-too-deep"],
)
def test_deep_nesting_is_refused_before_decoding(body: bytes) -> None:
    error = refused(body, max_bytes=len(body))
    assert (error.status, error.errcode) == (400, BAD_JSON)
    assert "deeper" in str(error)


def test_the_deepest_allowed_nesting_is_read() -> None:
    inner = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert parse_object(f'{{"a": {inner}}}'.encode()) == {"a": json.loads(inner)}


def test_a_body_over_the_size_limit_is_too_large() -> None:
    body = b'{"locked": true, "pad": "' + b"x" * MAX_BYTES + b'"}'
    error = refused(body)
    assert (error.status, error.errcode) == (413, TOO_LARGE)


def test_only_the_limit_and_one_byte_are_read() -> None:
    content = io.BytesIO(b"x" * (10 * MAX_BYTES))
    assert len(read_limited(content)) == MAX_BYTES + 1
    assert read_limited(None) == b""


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b'{"a": 1} {"b": 2}',
        b"\xff\xfe{}",
        b'{"a": "\xc3"}',  # truncated UTF-8
        b'\xef\xbb\xbf{"a": 1}',  # a byte-order mark
        b'{"locked": NaN}',
        b'{"locked": Infinity}',
        b'{"locked": -Infinity}',
        b'{"x": 1e999}',  # a number too large to be finite
        b'{"x": ' + b"9" * 5000 + b"}",  # more digits than Python turns into an int
        b'{"user_id": "\\ud800"}',  # a lone surrogate
        b'{"\\udfff": 1}',
        b'{"a": "tab\tinside"}',  # a raw control character in a string
    ],
)
def test_what_is_not_json_is_not_json(body: bytes) -> None:
    error = refused(body)
    assert (error.status, error.errcode) == (400, NOT_JSON)


@pytest.mark.parametrize(
    "body",
    [b"[]", b"[true]", b"1", b'"text"', b"null", b"true", b' [{"locked": true}] '],
)
def test_anything_but_an_object_is_bad_json(body: bytes) -> None:
    error = refused(body)
    assert (error.status, error.errcode) == (400, BAD_JSON)
    assert "JSON object" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        b'{"locked": true, "locked": false}',
        b'{"a": {"b": 1, "b": 1}}',
        b'{"a": [{"c": 1, "c": 2}]}',
    ],
)
def test_a_key_given_twice_is_refused(body: bytes) -> None:
    # Two readers of the same body (a proxy, a log, the guard) must not see different values.
    error = refused(body)
    assert (error.status, error.errcode) == (400, BAD_JSON)
    assert "twice" in str(error)


def test_an_empty_body_is_an_empty_object_where_allowed() -> None:
    assert parse_object(b"", allow_empty=True) == {}
    assert parse_object(b" \n", allow_empty=True) == {}
    assert parse_object(b"{}", allow_empty=True) == {}
    assert refused(b"").errcode == NOT_JSON


def test_unicode_and_escapes_are_read() -> None:
    body = json.dumps({"user_id": "@zoë:example.org", "p": 'a"b\\c\u2028', "😀": 1}).encode()
    assert parse_object(body) == {"user_id": "@zoë:example.org", "p": 'a"b\\c\u2028', "😀": 1}
    assert parse_object(b'{"a": "\\ud83d\\ude00"}') == {"a": "😀"}  # a valid surrogate pair
