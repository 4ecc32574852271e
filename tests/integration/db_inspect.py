"""Read a running Synapse's database directly, on SQLite and on PostgreSQL.

The retention tests must see what is really stored, not what Synapse chooses to show, so they
ask the database itself: a few precise queries, and a scan of every table for given strings
(message text, event IDs, media IDs) to find anything that still holds them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from tests.integration.harness import PostgresCluster, SynapseServer


class Inspector(Protocol):
    backend: str

    def rows(self, sql: str, *args: str) -> list[tuple[str, ...]]:
        """Every row of a query, each value as text ('' for NULL)."""

    def tables(self) -> list[str]:
        """Every table of the database, including SQLite's full-text index tables."""

    def tables_containing(self, needles: Iterable[str]) -> dict[str, set[str]]:
        """For every table holding one of the needles anywhere in a row: which needles."""

    def on_disk(self, needles: Iterable[str]) -> set[str]:
        """The needles found in the bytes of the database's files (free pages included)."""

    def rewrite(self) -> None:
        """What an operator runs to rewrite the files without dead rows (Synapse stopped)."""


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


class SqliteInspector:
    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        # Read-only, next to the running server (WAL mode: readers see committed data).
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)

    def rows(self, sql: str, *args: str) -> list[tuple[str, ...]]:
        conn = self._connect()
        try:
            return [tuple(_text(v) for v in row) for row in conn.execute(sql, args)]
        finally:
            conn.close()

    def tables(self) -> list[str]:
        return [
            name
            for (name,) in self.rows(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
            if not name.startswith("sqlite_")
        ]

    def tables_containing(self, needles: Iterable[str]) -> dict[str, set[str]]:
        wanted = set(needles)
        found: dict[str, set[str]] = {}
        conn = self._connect()
        try:
            for table in self.tables():
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    text = "\x00".join(_text(v) for v in row)
                    hits = {n for n in wanted if n in text}
                    if hits:
                        found.setdefault(table, set()).update(hits)
        finally:
            conn.close()
        return found

    def on_disk(self, needles: Iterable[str]) -> set[str]:
        data = b"".join(
            p.read_bytes()
            for p in (self.path, Path(f"{self.path}-wal"))
            if p.exists()  # the -wal file comes and goes with checkpoints
        )
        return {n for n in needles if n.encode() in data}

    def rewrite(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresInspector:
    backend = "postgres"

    def __init__(self, cluster: PostgresCluster, database: str) -> None:
        self.cluster = cluster
        self.database = database

    def execute(self, sql: str) -> str:
        return self.cluster.psql(self.database, sql)

    def rows(self, sql: str, *args: str) -> list[tuple[str, ...]]:
        # psql has no bind parameters: `?` placeholders become quoted literals.
        parts = sql.split("?")
        assert len(parts) == len(args) + 1, sql
        query = parts[0] + "".join(
            _literal(a) + rest for a, rest in zip(args, parts[1:], strict=True)
        )
        return self._json_rows(query)

    def _json_rows(self, query: str) -> list[tuple[str, ...]]:
        # One JSON document per row: values keep their order, whatever they contain.
        out = self.cluster.psql(self.database, f"SELECT row_to_json(q) FROM ({query}) AS q")
        return [
            tuple(_text(v) for _, v in json.loads(line, object_pairs_hook=list))
            for line in out.splitlines()
            if line
        ]

    def tables(self) -> list[str]:
        return [
            name
            for (name,) in self.rows(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
        ]

    def tables_containing(self, needles: Iterable[str]) -> dict[str, set[str]]:
        wanted = sorted(set(needles))
        if not wanted:
            return {}
        values = ", ".join(f"({_literal(n)})" for n in wanted)
        # One query over every table: a row's text form (`t::text`) holds every column,
        # tsvector lexemes included.
        query = f"WITH v(n) AS (VALUES {values}) " + " UNION ALL ".join(
            f'(SELECT {_literal(table)} AS tbl, v.n FROM public."{table}" AS t '
            "JOIN v ON strpos(t::text, v.n) > 0 GROUP BY v.n)"
            for table in self.tables()
        )
        found: dict[str, set[str]] = {}
        for table, needle in self._json_rows(query):
            found.setdefault(table, set()).add(needle)
        return found

    def data_directory(self) -> Path:
        (oid,) = self.rows("SELECT oid FROM pg_database WHERE datname = ?", self.database)[0]
        return self.cluster.data / "base" / oid

    def on_disk(self, needles: Iterable[str]) -> set[str]:
        """The needles in this database's table and index files (not the WAL), after a
        checkpoint has written every dirty page out."""
        self.execute("CHECKPOINT")
        wanted = {n: n.encode() for n in needles}
        found: set[str] = set()
        for path in self.data_directory().iterdir():
            if not path.is_file():
                continue
            data = path.read_bytes()
            found.update(n for n, b in wanted.items() if b in data)
        return found

    def rewrite(self) -> None:
        self.execute("VACUUM FULL")

    def wal_contains(self, needles: Iterable[str]) -> set[str]:
        """The needles in the cluster's write-ahead log (pg_wal)."""
        self.execute("CHECKPOINT")
        found: set[str] = set()
        wanted = {n: n.encode() for n in needles}
        for path in (self.cluster.data / "pg_wal").iterdir():
            if path.is_file():
                data = path.read_bytes()
                found.update(n for n, b in wanted.items() if b in data)
        return found


def inspector_for(server: SynapseServer, cluster: PostgresCluster | None) -> Inspector:
    if server.database is None:
        return SqliteInspector(server.workdir / "homeserver.db")
    assert cluster is not None
    return PostgresInspector(cluster, str(server.database["args"]["database"]))
