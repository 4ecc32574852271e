"""Lockdown decisions as plain values: no Synapse, no Twisted, no database.

The state, how it is stored as text, who is locked out, when the dead man's switch fires, the
short in-memory cache of the database value, and what the admin endpoints accept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

from synapse_guard.request_body import RequestError as RequestError  # re-exported: one error type
from synapse_guard.request_body import parse_object

CAUSES = ("manual", "deadman")
CACHE_TTL_S = 2.0  # how stale a process's view of the lockdown may be
_MIN_POLL_MS = 500
_MAX_POLL_MS = 60_000


@attrs.frozen(slots=True)
class LockdownState:
    locked: bool = False
    cause: str | None = None  # manual | deadman | unreadable, while locked
    since_ms: int | None = None  # database clock, while locked


UNREADABLE = LockdownState(locked=True, cause="unreadable", since_ms=None)


def encode_state(state: LockdownState) -> str:
    return json.dumps(
        {"locked": state.locked, "cause": state.cause, "since": state.since_ms}, sort_keys=True
    )


def decode_state(text: str | None) -> LockdownState:
    """No row: open. A row that cannot be read: locked (a damaged switch fails closed)."""
    if text is None:
        return LockdownState()
    try:
        raw = parse_object(text.encode("utf-8", "surrogatepass"))
    except RequestError:
        return UNREADABLE
    if not isinstance(raw.get("locked"), bool):
        return UNREADABLE
    if not raw["locked"]:
        return LockdownState()
    cause, since = raw.get("cause"), raw.get("since")
    return LockdownState(
        locked=True,
        cause=cause if cause in CAUSES else "unreadable",
        since_ms=since if isinstance(since, int) and not isinstance(since, bool) else None,
    )


def user_expired(state: LockdownState, user_id: str, exempt: Collection[str]) -> bool | None:
    """`is_user_expired`'s answer: True locks the user out; None lets Synapse's own account
    validity (or nothing) decide. Never False, which would override another module."""
    if state.locked and user_id not in exempt:
        return True
    return None


def login_refused(state: LockdownState, user_id: str, exempt: Collection[str]) -> bool:
    return state.locked and user_id not in exempt


def deadman_due(now_ms: int, last_checkin_ms: int | None, interval_ms: int) -> bool:
    return last_checkin_ms is not None and now_ms - last_checkin_ms >= interval_ms


def deadman_poll_ms(interval_ms: int) -> int:
    """How often the switch looks: a third of the interval, between 0.5 s and 1 minute."""
    return max(_MIN_POLL_MS, min(interval_ms // 3, _MAX_POLL_MS))


class StateCache:
    """The last value read from the database, trusted for `ttl` seconds (monotonic clock)."""

    def __init__(self, ttl: float = CACHE_TTL_S, clock: Callable[[], float] = time.monotonic):
        self._ttl = ttl
        self._clock = clock
        self._value: LockdownState | None = None
        self._read_at = 0.0

    def get(self) -> LockdownState | None:
        if self._value is None or self._clock() - self._read_at >= self._ttl:
            return None
        return self._value

    def put(self, value: LockdownState) -> None:
        self._value = value
        self._read_at = self._clock()


# Admin endpoints ----------------------------------------------------------------------------


@attrs.frozen(slots=True)
class SwitchRequest:
    locked: bool
    revoke_sessions: bool = False


def _unknown(value: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - set(known))
    if unknown:
        accepted = ", ".join(known) if known else "none"
        raise RequestError(f"unknown field(s): {', '.join(unknown)}; accepted: {accepted}")


def parse_switch(body: bytes) -> SwitchRequest:
    """POST /lockdown: {"locked": bool, "revoke_sessions": bool (only when locking)}."""
    value = parse_object(body)
    _unknown(value, ("locked", "revoke_sessions"))
    locked = value.get("locked")
    if not isinstance(locked, bool):
        raise RequestError("'locked' is required and must be true or false")
    revoke = value.get("revoke_sessions", False)
    if not isinstance(revoke, bool):
        raise RequestError("'revoke_sessions' must be true or false")
    if revoke and not locked:
        raise RequestError("'revoke_sessions' applies only when locking")
    return SwitchRequest(locked=locked, revoke_sessions=revoke)


def parse_checkin(body: bytes) -> None:
    """POST /checkin: an empty body or an empty JSON object."""
    _unknown(parse_object(body, allow_empty=True), ())


def status_json(
    state: LockdownState, interval_ms: int | None, last_checkin_ms: int | None, now_ms: int
) -> dict[str, Any]:
    """What GET /lockdown answers (times in ms of the database clock)."""
    deadline = (
        last_checkin_ms + interval_ms
        if interval_ms is not None and last_checkin_ms is not None
        else None
    )
    return {
        "locked": state.locked,
        "since": state.since_ms,
        "cause": state.cause,
        "now": now_ms,
        "deadman": {
            "enabled": interval_ms is not None,
            "interval_ms": interval_ms,
            "last_checkin": last_checkin_ms,
            "deadline": deadline,
        },
    }
