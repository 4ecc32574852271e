"""Hostile bodies sent to the lockdown and check-in endpoints: a 4xx with an errcode, no change.

The endpoints' own rules (fields, types) are in test_lockdown.py; here, what a client sends to
break the parser: what raised RecursionError (a 500) before, huge bodies, NaN, duplicate keys.
"""

from __future__ import annotations

import pytest

from synapse_guard.compat import SynapseError
from synapse_guard.lockdown import store as lockdown_store
from synapse_guard.lockdown.control import CHECKIN_PATH, LOCKDOWN_PATH
from synapse_guard.lockdown.state import (
    UNREADABLE,
    LockdownState,
    RequestError,
    decode_state,
    parse_checkin,
    parse_switch,
)
from synapse_guard.request_body import MAX_BYTES
from tests.unit.lockdown.test_lockdown import BREAKGLASS, call_resource, guard_with_lockdown

HOSTILE = [
    (b"[" * 100_000, 413, "M_TOO_LARGE"),
    (b"[" * 30_000 + b"]" * 30_000, 400, "M_BAD_JSON"),
    (b'{"locked": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400, "M_BAD_JSON"),
    (b'{"locked": true, "pad": "' + b"x" * MAX_BYTES + b'"}', 413, "M_TOO_LARGE"),
    (b'{"locked": NaN}', 400, "M_NOT_JSON"),
    (b'{"locked": Infinity}', 400, "M_NOT_JSON"),
    (b'{"locked": true, "locked": false}', 400, "M_BAD_JSON"),
    (b'{"locked": "\\ud800"}', 400, "M_NOT_JSON"),
    (b'{"locked": true}\xff', 400, "M_NOT_JSON"),
    (b"[true]", 400, "M_BAD_JSON"),
    (b"{not json", 400, "M_NOT_JSON"),
]
IDS = [
    "unclosed",
    "deep",
    "deep-value",
    "huge",
    "nan",
    "infinity",
    "duplicate",
    "surrogate",
    "not-utf8",
    "array",
    "syntax",
]


@pytest.mark.parametrize(("body", "status", "errcode"), HOSTILE, ids=IDS)
def test_the_parsers_refuse_with_the_status_and_errcode(
    body: bytes, status: int, errcode: str
) -> None:
    for parse in (parse_switch, parse_checkin):
        with pytest.raises(RequestError) as caught:
            parse(body)
        assert (caught.value.status, caught.value.errcode) == (status, errcode)


@pytest.mark.parametrize(("body", "status", "errcode"), HOSTILE, ids=IDS)
def test_the_endpoints_answer_them_and_change_nothing(
    body: bytes, status: int, errcode: str
) -> None:
    _module, api, cursor = guard_with_lockdown()
    for path in (LOCKDOWN_PATH, CHECKIN_PATH):
        with pytest.raises(SynapseError) as caught:
            call_resource(api, path, "POST", BREAKGLASS, body)
        assert (caught.value.code, caught.value.errcode) == (status, errcode), path
    lockdown_store.ensure_table(cursor)  # no body was read far enough to touch it
    assert not lockdown_store.read_state(cursor).locked
    assert lockdown_store.read_snapshot(cursor).last_checkin_ms is None


def test_a_stored_state_nested_too_deeply_is_locked() -> None:
    # A damaged row fails closed; it never raises (is_user_expired runs on every request).
    assert decode_state("[" * 100_000) == UNREADABLE
    assert decode_state('{"locked": false, "x": ' + "[" * 5000 + "]" * 5000 + "}") == UNREADABLE
    assert decode_state('{"locked": false}') == LockdownState()
