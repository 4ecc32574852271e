"""The session sweep: log out sessions used from an address the network policy refuses.

A login check cannot see where an access token is used afterwards. Synapse records, per
access token, each address it is used from (`user_ips`, written in batches every 5 seconds,
one row per token and address, refreshed at most every 2 minutes). The sweep reads only the
rows seen since the previous sweep (indexed on `last_seen`), for tokens that still exist, and
logs out every session seen from a refused address.

Cost: one indexed range query per sweep returning the sessions active since the last one,
and one decision (about 2 microseconds) per row. With 10,000 users each active on two devices
within a sweep interval, that is about 20,000 rows: tens of milliseconds of database time and
about 40 ms of CPU every `sweep_interval`, on the background-tasks process only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from synapse_guard.verdict import Verdict

# Rows reach the table up to 5 s after the request (Synapse's batch), so each sweep re-reads
# a margin before the newest row it has already seen.
OVERLAP_MS = 15_000


@attrs.frozen(slots=True)
class SeenSession:
    access_token: str = attrs.field(repr=False)
    ip: str = attrs.field(repr=False)
    last_seen: int
    user_id: str = attrs.field(repr=False)
    device_id: str | None


@attrs.frozen(slots=True)
class SweepResult:
    refused: tuple[tuple[SeenSession, Verdict], ...]
    allowed: int
    next_since: int


def judge_sessions(
    rows: Iterable[SeenSession], since: int, decide: Callable[[str], Verdict]
) -> SweepResult:
    """Which sessions to log out, and where the next sweep starts reading."""
    refused: dict[str, tuple[SeenSession, Verdict]] = {}
    allowed = 0
    newest = since
    for row in rows:
        newest = max(newest, row.last_seen)
        if row.access_token in refused:
            continue
        verdict = decide(row.ip)
        if verdict.allowed:
            allowed += 1
        else:
            refused[row.access_token] = (row, verdict)
    return SweepResult(tuple(refused.values()), allowed, max(since, newest - OVERLAP_MS))


SEEN_SINCE_SQL = """
    SELECT u.access_token, u.ip, u.last_seen, t.user_id, t.device_id
    FROM user_ips AS u
    INNER JOIN access_tokens AS t ON t.token = u.access_token
    WHERE u.last_seen >= ?
"""


def select_seen_since(txn: Any, since: int) -> Sequence[SeenSession]:
    """Runs inside `ModuleApi.run_db_interaction` (SQLite and PostgreSQL alike)."""
    txn.execute(SEEN_SINCE_SQL, (since,))
    return [
        SeenSession(str(token), str(ip), int(seen), str(user_id), device_id)
        for token, ip, seen, user_id, device_id in txn.fetchall()
    ]
