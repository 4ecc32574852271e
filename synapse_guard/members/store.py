"""The locked members in the database: one small table the guard owns.

    synapse_guard_member_locks (user_id TEXT PRIMARY KEY, locked_ts BIGINT NOT NULL)

A row means "locked": its logins and requests are refused on every process, across restarts,
until `member unlock` deletes it. Every function runs inside `ModuleApi.run_db_interaction`
(`func(txn, ...)`); `?` placeholders: Synapse rewrites them for PostgreSQL. Also the queries
that find what a lock logs out (Synapse's tables, read only; deleting goes through Synapse's
handlers).
"""

from __future__ import annotations

from typing import Any

CREATE = (
    "CREATE TABLE IF NOT EXISTS synapse_guard_member_locks "
    "(user_id TEXT PRIMARY KEY, locked_ts BIGINT NOT NULL)"
)

Txn = Any  # Synapse's LoggingTransaction (or a DB-API cursor in the unit tests)


def read_locked(txn: Txn) -> frozenset[str]:
    """Every locked member (a handful: the whole table is one small read)."""
    txn.execute("SELECT user_id FROM synapse_guard_member_locks")
    return frozenset(str(user_id) for (user_id,) in txn.fetchall())


def lock(txn: Txn, user_id: str, now_ms: int) -> bool:
    """Lock; True if the member was not locked yet."""
    txn.execute(
        "INSERT INTO synapse_guard_member_locks (user_id, locked_ts) VALUES (?, ?) "
        "ON CONFLICT (user_id) DO NOTHING",
        (user_id, now_ms),
    )
    return bool(txn.rowcount)


def unlock(txn: Txn, user_id: str) -> bool:
    """Unlock; True if the member was locked."""
    txn.execute("DELETE FROM synapse_guard_member_locks WHERE user_id = ?", (user_id,))
    return bool(txn.rowcount)


def select_devices(txn: Txn, user_id: str) -> list[str]:
    """The member's sessions: visible devices holding an access or a refresh token (not a
    dehydrated device, which holds keys for its owner and authenticates nothing)."""
    txn.execute(
        "SELECT d.device_id FROM devices AS d WHERE d.user_id = ? AND d.hidden = ? AND ("
        " EXISTS (SELECT 1 FROM access_tokens AS t"
        "  WHERE t.user_id = d.user_id AND t.device_id = d.device_id)"
        " OR EXISTS (SELECT 1 FROM refresh_tokens AS r"
        "  WHERE r.user_id = d.user_id AND r.device_id = d.device_id))",
        (user_id, False),
    )
    return [str(device_id) for (device_id,) in txn.fetchall()]


def select_tokens(txn: Txn, user_id: str) -> list[str]:
    """Access tokens still acting as the member: theirs, and "login as" tokens an admin
    minted for them (`puppets_user_id`). Read once the devices are gone."""
    txn.execute(
        "SELECT token FROM access_tokens WHERE user_id = ? OR puppets_user_id = ?",
        (user_id, user_id),
    )
    return [str(token) for (token,) in txn.fetchall()]


def select_seen_tokens(txn: Txn, user_id: str) -> list[str]:
    """Every token Synapse recorded for the member (indexed: user_ips by user): one rotated
    by `/refresh` is gone from `access_tokens` but may still be in Synapse's token cache."""
    txn.execute("SELECT DISTINCT access_token FROM user_ips WHERE user_id = ?", (user_id,))
    return [str(token) for (token,) in txn.fetchall()]


def select_pushers(txn: Txn, user_id: str) -> list[tuple[str, str]]:
    """(app_id, pushkey) of every pusher of the member."""
    txn.execute("SELECT app_id, pushkey FROM pushers WHERE user_name = ?", (user_id,))
    return [(str(app_id), str(pushkey)) for app_id, pushkey in txn.fetchall()]
