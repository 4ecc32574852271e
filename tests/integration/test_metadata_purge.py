"""Who was active on which day is forgotten, on a real Synapse (SQLite and PostgreSQL).

The attack: whoever seizes the server reads `user_daily_visits`, one row per member, device
and day of activity with the client's user agent, which Synapse writes every 5 minutes and
never deletes. The outcome it must get: only the days within `retention.daily_visits_max_age`
(3d) are left. Rows are written the way Synapse writes them (a day's start in ms, UTC); the
purge runs every second here instead of every hour. A bad value stops Synapse, naming the key.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PostgresCluster, SynapseServer, iter_log_lines, query_database

DAY_MS = 24 * 3600 * 1000
PURGE_S = 1
PURGED = "synapse_guard_metadata_purged_rows_total"
GUARD_LINE = re.compile(r" - synapse_guard(\.\w+)? - \d+ - ")  # the guard's loggers
RUN_LINE = re.compile(r"metadata purge: deleted (\d+) user_daily_visits row\(s\)")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, synapse_factory: SynapseFactory
) -> tuple[SynapseServer, PostgresCluster | None]:
    guard = {"retention": {"daily_visits_purge_interval": f"{PURGE_S}s"}}  # max age: 3d
    postgres: PostgresCluster | None = None
    database = None
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        database = postgres.create_database()
    return synapse_factory(guard=guard, database=database).start(), postgres


def execute(server: SynapseServer, postgres: PostgresCluster | None, sql: str) -> str:
    return query_database(server, postgres, sql)


def test_days_older_than_the_max_age_are_deleted_and_recent_days_kept(
    server: tuple[SynapseServer, PostgresCluster | None],
) -> None:
    synapse, postgres = server
    alice, _ = synapse.new_user("visitor")
    now = int(time.time() * 1000)
    today = now - now % DAY_MS
    days = {"a year ago": 365, "last week": 7, "four days ago": 4, "yesterday": 1, "today": 0}
    before = synapse.metric(PURGED, table="user_daily_visits")
    values = ", ".join(
        f"('{alice}', 'DEVICE{ago}', {today - ago * DAY_MS}, 'Element/1.11 ({name})')"
        for name, ago in days.items()
    )
    execute(
        synapse,
        postgres,
        f"INSERT INTO user_daily_visits (user_id, device_id, timestamp, user_agent) "
        f"VALUES {values}",
    )

    deadline = time.monotonic() + 10 * PURGE_S
    while synapse.metric(PURGED, table="user_daily_visits") < before + 3:
        assert time.monotonic() < deadline, synapse.tail()
        time.sleep(0.25)

    left = execute(
        synapse,
        postgres,
        f"SELECT device_id FROM user_daily_visits WHERE user_id = '{alice}' ORDER BY device_id",
    )
    assert left.split() == ["DEVICE0", "DEVICE1"]
    assert synapse.metric(PURGED, table="user_daily_visits") == before + 3
    guard_lines = [line for line in iter_log_lines(synapse) if GUARD_LINE.search(line)]
    counts = [int(m.group(1)) for line in guard_lines if (m := RUN_LINE.search(line))]
    assert 3 in counts, counts  # one run deleted them, and logged how many
    assert sum(counts) == 3, counts
    assert not [line for line in guard_lines if alice in line], "names nobody"
    assert not [line for line in guard_lines if "metadata purge cannot" in line]


def test_a_bad_max_age_stops_synapse_naming_the_key(synapse_factory: SynapseFactory) -> None:
    server = synapse_factory(guard={"retention": {"daily_visits_max_age": "3 days"}})
    code, output = server.run_to_exit()
    assert code != 0
    assert "retention.daily_visits_max_age" in output, output[-2000:]
    assert "is not a duration" in output, output[-2000:]
