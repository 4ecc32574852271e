"""The second factor's state in the database: one row per enrolled user, in a table we own.

Each function is a `run_db_interaction` body (`func(txn, *args)`). `?` placeholders work on
SQLite and PostgreSQL (Synapse converts them). State lives here, not in memory, so replay
protection and the failure limit hold across workers and restarts; the updates that decide
(a code's acceptance, a failure) are single conditional statements, atomic on both engines.
"""

from __future__ import annotations

from typing import Any

import attrs

from synapse_guard import schema
from synapse_guard.totp.core import Failures

TABLE = "synapse_guard_totp"

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    user_id TEXT NOT NULL PRIMARY KEY,
    secret TEXT NOT NULL,
    last_step BIGINT,
    failures INTEGER NOT NULL DEFAULT 0,
    failure_window_start BIGINT,
    created_ts BIGINT NOT NULL
)
"""


@attrs.frozen(slots=True)
class Enrolment:
    user_id: str
    secret: str  # encrypted (see SecretCipher)
    last_step: int | None
    failures: Failures


def create_table(txn: Any) -> None:
    """Idempotent and safe when several processes run it at once (synapse_guard/schema.py)."""
    schema.create_tables(txn, (CREATE_TABLE,))


def get_enrolment(txn: Any, user_id: str) -> Enrolment | None:
    txn.execute(
        f"SELECT user_id, secret, last_step, failures, failure_window_start FROM {TABLE} "  # noqa: S608
        "WHERE user_id = ?",
        (user_id,),
    )
    row = txn.fetchone()
    if row is None:
        return None
    return Enrolment(
        user_id=row[0],
        secret=row[1],
        last_step=None if row[2] is None else int(row[2]),
        failures=Failures(int(row[3]), None if row[4] is None else int(row[4])),
    )


def enrol(txn: Any, user_id: str, secret: str, now_ms: int) -> None:
    """Store a new secret, replacing any previous one (and its replay and failure state)."""
    txn.execute(f"DELETE FROM {TABLE} WHERE user_id = ?", (user_id,))  # noqa: S608
    txn.execute(
        f"INSERT INTO {TABLE} (user_id, secret, last_step, failures, failure_window_start, "  # noqa: S608
        "created_ts) VALUES (?, ?, NULL, 0, NULL, ?)",
        (user_id, secret, now_ms),
    )


def enrol_if_new(txn: Any, user_id: str, secret: str, now_ms: int) -> bool:
    """Store a secret unless the user has one; False if they had. One statement: of two
    admins (or two workers) enrolling the same user at once, exactly one wins, and the other
    is told, instead of one failing on the primary key or both getting a secret."""
    txn.execute(
        f"INSERT INTO {TABLE} (user_id, secret, last_step, failures, failure_window_start, "  # noqa: S608
        "created_ts) VALUES (?, ?, NULL, 0, NULL, ?) ON CONFLICT (user_id) DO NOTHING",
        (user_id, secret, now_ms),
    )
    return bool(txn.rowcount == 1)


def remove(txn: Any, user_id: str) -> bool:
    txn.execute(f"DELETE FROM {TABLE} WHERE user_id = ?", (user_id,))  # noqa: S608
    return bool(txn.rowcount)


def accept_step(txn: Any, user_id: str, step: int) -> bool:
    """Record `step` as used; False if it (or a later one) already was: a replay.

    One conditional UPDATE: two workers racing with the same code cannot both win.
    """
    txn.execute(
        f"UPDATE {TABLE} SET last_step = ? WHERE user_id = ? "  # noqa: S608
        "AND (last_step IS NULL OR last_step < ?)",
        (step, user_id, step),
    )
    return bool(txn.rowcount == 1)


def record_failure(txn: Any, user_id: str, now_ms: int, window_ms: int) -> None:
    """Count a failed code (same rule as `totp_core.after_failure`, in one statement)."""
    txn.execute(
        f"UPDATE {TABLE} SET "  # noqa: S608
        "failures = CASE WHEN failure_window_start IS NULL OR ? - failure_window_start >= ? "
        "THEN 1 ELSE failures + 1 END, "
        "failure_window_start = CASE WHEN failure_window_start IS NULL "
        "OR ? - failure_window_start >= ? THEN ? ELSE failure_window_start END "
        "WHERE user_id = ?",
        (now_ms, window_ms, now_ms, window_ms, now_ms, user_id),
    )


def get_password_hash(txn: Any, user_id: str) -> tuple[str, str | None] | None:
    """(canonical user ID, password hash) as Synapse finds it, or None.

    Case-insensitive, like Synapse's own check: a single match (even inexact) or, among
    several, the exact one; several inexact matches are no match.
    """
    txn.execute("SELECT name, password_hash FROM users WHERE lower(name) = lower(?)", (user_id,))
    rows = {str(name): password_hash for name, password_hash in txn.fetchall()}
    if len(rows) == 1:
        ((name, password_hash),) = rows.items()
        return name, password_hash
    if user_id in rows:
        return user_id, rows[user_id]
    return None


def set_password_hash(txn: Any, user_id: str, password_hash: str) -> bool:
    txn.execute("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, user_id))
    return bool(txn.rowcount == 1)
