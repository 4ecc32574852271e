"""The guard's own tables: each process creates those it uses before their first use, safely
when several processes (or several requests of one) do so at once.

`CREATE TABLE IF NOT EXISTS` is not safe under concurrency on PostgreSQL: two transactions
that both find no table both insert its row type into the catalog, and the later one fails
with UniqueViolation (seen on a fresh database: 5 of 50 concurrent first requests to one
process, and first requests to several workers). So the creation first takes a
transaction-scoped advisory lock: concurrent creators queue, and each later one finds the
table and does nothing. SQLite serialises writers itself. The creation runs in a transaction
of its own, before the first one that reads the table; one that fails (the database is down)
is retried at the next use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synapse.module_api import ModuleApi
from synapse.storage.engines import PostgresEngine

# Any fixed 64-bit key: the guard's DDL is the only user of this lock ("SGRDSCHM").
ADVISORY_LOCK_KEY = 0x5347_5244_5343_484D


def create_tables(txn: Any, statements: Sequence[str]) -> None:
    """A `run_db_interaction` body: run idempotent DDL, one creator at a time."""
    if isinstance(getattr(txn, "database_engine", None), PostgresEngine):
        txn.execute("SELECT pg_advisory_xact_lock(?)", (ADVISORY_LOCK_KEY,))
    for statement in statements:
        txn.execute(statement)


class Tables:
    """The tables a control needs, created at most once per process once it has succeeded."""

    def __init__(self, api: ModuleApi, name: str, statements: Sequence[str]) -> None:
        self._api = api
        self._desc = f"synapse_guard_{name}_create"
        self._statements = tuple(statements)
        self._ready = False

    async def ensure(self) -> None:
        if self._ready:
            return
        await self._api.run_db_interaction(self._desc, create_tables, self._statements)
        self._ready = True
