"""The metadata purge: who was active on which day is forgotten after `daily_visits_max_age`.

The attack: a seized database's `user_daily_visits` names every member, device and client
for every day of activity since the server started. The purge's outcome: only the last few
days are left, and a purge that cannot run says so once, never crashing Synapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from typing import Any
from unittest.mock import AsyncMock, Mock

import pytest
from prometheus_client import REGISTRY

from synapse_guard.compat import ConfigError
from synapse_guard.config import GuardConfigError, RetentionPolicy, parse_guard_config
from synapse_guard.metadata_purge import MetadataPurge, cutoff_ms, delete_older_than
from tests.unit.conftest import ALICE, BOB, create_module, make_api

HOUR = 3600 * 1000
DAY = 24 * HOUR
NOW = 1_800_000_000_000
TODAY = NOW - NOW % DAY  # Synapse stamps each row with the start of its day (UTC)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"table": "user_daily_visits"}) or 0.0


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(":memory:")) as connection:
        connection.execute(
            "CREATE TABLE user_daily_visits (user_id TEXT NOT NULL, device_id TEXT, "
            "timestamp BIGINT NOT NULL, user_agent TEXT)"
        )
        rows = [
            (ALICE, "PHONE", TODAY - 30 * DAY, "Element/1.0 (iPhone)"),
            (ALICE, "PHONE", TODAY - 3 * DAY - DAY, "Element/1.0 (iPhone)"),
            (BOB, "LAPTOP", TODAY - 3 * DAY, "Mozilla/5.0"),  # began 3 days and some ago
            (BOB, "LAPTOP", TODAY - 2 * DAY, "Mozilla/5.0"),
            (ALICE, "PHONE", TODAY, "Element/1.0 (iPhone)"),
        ]
        connection.executemany("INSERT INTO user_daily_visits VALUES (?, ?, ?, ?)", rows)
        yield connection


def days_left(db: sqlite3.Connection) -> list[int]:
    rows = db.execute("SELECT timestamp FROM user_daily_visits ORDER BY timestamp").fetchall()
    return [(TODAY - ts) // DAY for (ts,) in rows]


def purge_on(db: sqlite3.Connection, max_age_ms: int = 3 * DAY) -> tuple[MetadataPurge, Mock]:
    async def interaction(desc: str, func: Any, *args: Any) -> Any:
        cursor = db.cursor()
        try:
            return func(cursor, *args)
        finally:
            cursor.close()

    api = make_api()
    api.run_db_interaction = AsyncMock(side_effect=interaction)
    return MetadataPurge(api, max_age_ms, metrics_enabled=True, now_ms=lambda: NOW), api


def test_the_cutoff_is_max_age_before_now() -> None:
    assert cutoff_ms(NOW, 3 * DAY) == NOW - 3 * DAY


def test_days_that_began_more_than_max_age_ago_are_deleted_and_recent_ones_kept(
    db: sqlite3.Connection,
) -> None:
    deleted = delete_older_than(db.cursor(), cutoff_ms(NOW, 3 * DAY))

    # NOW is some hours into today: the day that began 3 days before today is older than 3d.
    assert deleted == 3
    assert days_left(db) == [2, 0]


def test_a_run_deletes_counts_and_logs_only_the_row_count(
    db: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    purge, _ = purge_on(db)
    before = sample("synapse_guard_metadata_purged_rows_total")
    caplog.set_level(logging.INFO, logger="synapse_guard")

    assert asyncio.run(purge.run()) == 3
    assert asyncio.run(purge.run()) == 0  # nothing more to do

    assert sample("synapse_guard_metadata_purged_rows_total") == before + 3
    lines = [r.getMessage() for r in caplog.records if r.name == "synapse_guard"]
    assert lines == [
        "metadata purge: deleted 3 user_daily_visits row(s)",
        "metadata purge: deleted 0 user_daily_visits row(s)",
    ]
    assert not [line for line in caplog.text.splitlines() if ALICE in line or BOB in line]


def test_a_failing_purge_is_logged_once_per_outage_retried_and_never_raises(
    db: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    purge, api = purge_on(db)
    working = api.run_db_interaction.side_effect
    api.run_db_interaction.side_effect = sqlite3.OperationalError("database is locked")
    failures = sample("synapse_guard_metadata_purge_failures_total")
    caplog.set_level(logging.INFO, logger="synapse_guard")

    assert asyncio.run(purge.run()) is None
    assert asyncio.run(purge.run()) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "database is locked" in warnings[0].getMessage()
    assert sample("synapse_guard_metadata_purge_failures_total") == failures + 2
    assert len(days_left(db)) == 5  # nothing deleted, nothing lost: retried next time

    api.run_db_interaction.side_effect = working
    assert asyncio.run(purge.run()) == 3
    assert "metadata purge deletes user_daily_visits rows again" in caplog.text


def looping_descs(api: Mock) -> list[str]:
    return [call.kwargs.get("desc") for call in api.looping_background_call.call_args_list]


def test_the_purge_runs_hourly_only_where_background_tasks_run() -> None:
    api = create_module({}).api
    (call,) = [
        c
        for c in api.looping_background_call.call_args_list
        if c.kwargs.get("desc") == "synapse_guard_metadata_purge"
    ]
    assert call.args[1] == HOUR
    client_worker = make_api()
    client_worker.should_run_background_tasks.return_value = False
    assert "synapse_guard_metadata_purge" not in looping_descs(create_module({}, client_worker).api)


def test_null_keeps_synapse_behaviour_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    api = create_module({"retention": {"daily_visits_max_age": None}}).api

    assert "synapse_guard_metadata_purge" not in looping_descs(api)
    assert "user_daily_visits (who was active on which day" in caplog.text


def test_the_defaults_match_user_ips_max_age_and_purge_hourly() -> None:
    policy = parse_guard_config({}).retention

    assert (policy.daily_visits_max_age_ms, policy.daily_visits_purge_interval_ms) == (
        3 * DAY,
        HOUR,
    )


def test_both_keys_are_read() -> None:
    raw = {"retention": {"daily_visits_max_age": "12h", "daily_visits_purge_interval": "10m"}}

    assert parse_guard_config(raw).retention == RetentionPolicy(
        daily_visits_max_age_ms=12 * HOUR, daily_visits_purge_interval_ms=10 * 60 * 1000
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("daily_visits_max_age", "forever", "is not a duration"),
        ("daily_visits_max_age", False, "must be a duration"),
        ("daily_visits_max_age", 0, "must be longer than zero"),
        ("daily_visits_purge_interval", None, "is not a duration"),
        ("daily_visits_purge_interval", "-1h", "is not a duration"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(GuardConfigError) as caught:
        parse_guard_config({"retention": {key: value}})
    assert caught.value.path == f"retention.{key}"
    assert message in caught.value.message


def test_a_bad_value_stops_the_module_naming_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        create_module({"retention": {"daily_visits_max_age": "3 days"}})
    assert caught.value.path == ["retention.daily_visits_max_age"]
