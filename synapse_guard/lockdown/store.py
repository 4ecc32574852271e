"""The lockdown's state in the database: one small table the guard owns.

    synapse_guard_state (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ts BIGINT NOT NULL)

Rows: `lockdown` (JSON: locked, cause, since) and `deadman_checkin` (the last check-in, ms).
Every function here runs inside `ModuleApi.run_db_interaction` (`func(txn, ...)`), on the main
database, from any process. Times come from the database's clock, in milliseconds, so that
every worker (and the dead man's switch on the background-tasks process) compares the same
clock. `?` placeholders: Synapse rewrites them for PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs
from synapse.storage.engines import PostgresEngine

from synapse_guard import schema
from synapse_guard.lockdown.state import LockdownState, deadman_due, decode_state, encode_state

TABLE = "synapse_guard_state"
LOCKDOWN_ROW = "lockdown"
CHECKIN_ROW = "deadman_checkin"

CREATE = (
    "CREATE TABLE IF NOT EXISTS synapse_guard_state "
    "(name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ts BIGINT NOT NULL)"
)
_NOW_SQLITE = "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
_NOW_POSTGRES = "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"

Txn = Any  # Synapse's LoggingTransaction (or a DB-API cursor in the unit tests)


@attrs.frozen(slots=True)
class Snapshot:
    """What the database holds, read in one transaction."""

    state: LockdownState
    last_checkin_ms: int | None
    now_ms: int


@attrs.frozen(slots=True)
class Switched:
    """The outcome of a switch: the state now, and whether this call changed it."""

    state: LockdownState
    changed: bool


def ensure_table(txn: Txn) -> None:
    """Idempotent and safe when several processes run it at once (synapse_guard/schema.py);
    every process runs it once, in a transaction of its own, before its first read."""
    schema.create_tables(txn, (CREATE,))


def now_ms(txn: Txn) -> int:
    postgres = isinstance(getattr(txn, "database_engine", None), PostgresEngine)
    txn.execute(_NOW_POSTGRES if postgres else _NOW_SQLITE)
    row = txn.fetchone()
    return int(row[0])


def _read(txn: Txn, name: str) -> str | None:
    txn.execute("SELECT value FROM synapse_guard_state WHERE name = ?", (name,))
    row = txn.fetchone()
    return None if row is None else str(row[0])


def _write(txn: Txn, name: str, value: str, now: int) -> None:
    txn.execute(
        "INSERT INTO synapse_guard_state (name, value, updated_ts) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_ts = excluded.updated_ts",
        (name, value, now),
    )


def _checkin(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None  # unreadable: treated as "no check-in yet" (the switch re-arms from now)


def read_state(txn: Txn) -> LockdownState:
    """The lockdown state only: what `is_user_expired` needs, one indexed read."""
    return decode_state(_read(txn, LOCKDOWN_ROW))


def read_snapshot(txn: Txn) -> Snapshot:
    return Snapshot(
        state=decode_state(_read(txn, LOCKDOWN_ROW)),
        last_checkin_ms=_checkin(_read(txn, CHECKIN_ROW)),
        now_ms=now_ms(txn),
    )


def switch(txn: Txn, locked: bool, cause: str) -> Switched:
    """Lock (with `cause`) or unlock. Unlocking also counts as a check-in, so the dead man's
    switch does not fire again at once. Switching to the current state changes nothing."""
    current = decode_state(_read(txn, LOCKDOWN_ROW))
    if current.locked == locked:
        return Switched(current, changed=False)
    now = now_ms(txn)
    state = LockdownState(locked=True, cause=cause, since_ms=now) if locked else LockdownState()
    _write(txn, LOCKDOWN_ROW, encode_state(state), now)
    if not locked:
        _write(txn, CHECKIN_ROW, str(now), now)
    return Switched(state, changed=True)


def record_checkin(txn: Txn) -> int:
    now = now_ms(txn)
    _write(txn, CHECKIN_ROW, str(now), now)
    return now


def arm_deadman(txn: Txn) -> Snapshot:
    """The dead man's switch reads its inputs; with no check-in yet it counts from now."""
    snapshot = read_snapshot(txn)
    if snapshot.last_checkin_ms is None:
        _write(txn, CHECKIN_ROW, str(snapshot.now_ms), snapshot.now_ms)
        snapshot = attrs.evolve(snapshot, last_checkin_ms=snapshot.now_ms)
    return snapshot


def deadman_lock(txn: Txn, interval_ms: int) -> tuple[Snapshot, bool]:
    """One tick of the dead man's switch, in one transaction: lock if the interval passed
    since the last check-in. Returns what it read and whether it locked."""
    snapshot = arm_deadman(txn)
    if snapshot.state.locked or not deadman_due(
        snapshot.now_ms, snapshot.last_checkin_ms, interval_ms
    ):
        return snapshot, False
    switched = switch(txn, True, "deadman")
    return attrs.evolve(snapshot, state=switched.state), switched.changed


def select_sessions(txn: Txn, exempt: Collection[str]) -> list[tuple[str, str | None, str]]:
    """Every access token (user, device, token) of a user who is not exempt."""
    txn.execute("SELECT user_id, device_id, token FROM access_tokens")
    return [
        (str(user_id), None if device_id is None else str(device_id), str(token))
        for user_id, device_id, token in txn.fetchall()
        if user_id not in exempt
    ]


def select_foreign_puppet_tokens(txn: Txn, user_id: str, exempt: Collection[str]) -> list[str]:
    """Tokens acting as `user_id` that someone not exempt minted ("login as user": the row's
    `user_id` is the admin who minted it, `puppets_user_id` the user it acts as)."""
    txn.execute("SELECT user_id, token FROM access_tokens WHERE puppets_user_id = ?", (user_id,))
    return [str(token) for minted_by, token in txn.fetchall() if minted_by not in exempt]


def select_seen_tokens(txn: Txn, user_id: str, device_id: str | None) -> list[str]:
    """Every token Synapse recorded for a session: one rotated by `/refresh` is gone from
    `access_tokens` but may still authenticate from Synapse's token cache."""
    if device_id is None:
        return []
    txn.execute(
        "SELECT DISTINCT access_token FROM user_ips WHERE user_id = ? AND device_id = ?",
        (user_id, device_id),
    )
    return [str(token) for (token,) in txn.fetchall()]
