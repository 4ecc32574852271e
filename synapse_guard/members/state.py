"""Pure parts of the member actions: what a request asks, and who is locked (cached).

No Synapse, no Twisted: bytes and values in, values or a `RequestError` out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from synapse_guard.request_body import RequestError, parse_object

# A user ID the database can store: "@", a localpart, ":", a server name; printable, no NUL
# (PostgreSQL refuses it in text), at most 255 characters as the spec says.
_USER_ID = re.compile(r"@[^:\x00-\x20\x7f]+:[^\x00-\x20\x7f]+")
USER_ID_MAX = 255
INVALID_PARAM = "M_INVALID_PARAM"

CACHE_TTL_S = 2.0  # every process re-reads the locked members at most this often


def parse_member_request(body: bytes) -> str:
    """`{"user_id": "@alice:example.org"}` and nothing else: the user ID."""
    value = parse_object(body)
    unknown = sorted(set(value) - {"user_id"})
    if unknown:
        raise RequestError(f"unknown keys: {', '.join(unknown)}; known: user_id")
    user_id = value.get("user_id")
    if (
        not isinstance(user_id, str)
        or len(user_id) > USER_ID_MAX
        or not _USER_ID.fullmatch(user_id)
    ):
        raise RequestError("user_id: a full user ID is required", INVALID_PARAM)
    return user_id


class LockedCache:
    """The set of locked members, trusted for `CACHE_TTL_S` (a lock reaches every worker
    within that; the process that locks knows at once)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._locked: frozenset[str] | None = None
        self._read_at = 0.0

    def get(self) -> frozenset[str] | None:
        if self._locked is None or self._clock() - self._read_at >= CACHE_TTL_S:
            return None
        return self._locked

    def put(self, locked: frozenset[str]) -> frozenset[str]:
        self._locked, self._read_at = locked, self._clock()
        return locked

    def forget(self) -> None:
        self._locked = None
