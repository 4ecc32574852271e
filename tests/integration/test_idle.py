"""Idle sessions close by themselves, on a real Synapse (SQLite and PostgreSQL).

A story: a phone sits in a drawer (or in someone else's) for longer than
`sessions.idle_timeout`. The sweep logs its session out, and its token stops working, while a
session used recently, or logged in (or refreshed) recently, stays. The drawer is played by
setting the device's `last_seen` and its token's `last_validated` back in the database, as
weeks without a request would have left them. A bad value stops Synapse at start-up, naming
the key.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from synapse_guard.record.audit import Pseudonymizer
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import (
    MatrixClient,
    PostgresCluster,
    SynapseServer,
    iter_log_lines,
    query_database,
)

WHOAMI = "/_matrix/client/v3/account/whoami"
DAY_MS = 24 * 3600 * 1000
SWEEP_S = 2
AUDIT_KEY = b"i" * 32
GUARD_LINE = re.compile(r" - synapse_guard(\.\w+)? - \d+ - ")  # the guard's loggers


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest,
    synapse_factory: SynapseFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SynapseServer, PostgresCluster | None]:
    key = tmp_path_factory.mktemp("audit") / "audit.key"
    key.write_bytes(AUDIT_KEY)
    guard = {
        "sessions": {"idle_timeout": "1d", "sweep_interval": f"{SWEEP_S}s"},
        "audit": {"enabled": True, "pseudonym_key_path": str(key)},
    }
    postgres: PostgresCluster | None = None
    database = None
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        database = postgres.create_database()
    return synapse_factory(guard=guard, database=database).start(), postgres


def execute(server: SynapseServer, postgres: PostgresCluster | None, sql: str) -> str:
    return query_database(server, postgres, sql)


def age(
    server: SynapseServer,
    postgres: PostgresCluster | None,
    client: MatrixClient,
    *,
    seen_days: int,
    token_days: int,
) -> None:
    now = int(time.time() * 1000)
    device = client.device_id
    execute(
        server,
        postgres,
        f"UPDATE devices SET last_seen = {now - seen_days * DAY_MS} WHERE device_id = '{device}'",
    )
    execute(
        server,
        postgres,
        f"UPDATE access_tokens SET last_validated = {now - token_days * DAY_MS} "
        f"WHERE device_id = '{device}'",
    )


def device_exists(server: SynapseServer, postgres: PostgresCluster | None, device: str) -> bool:
    return execute(server, postgres, f"SELECT 1 FROM devices WHERE device_id = '{device}'") != ""


def wait_for(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout:.0f}s")


def test_an_idle_session_is_logged_out_and_a_recent_one_stays(
    server: tuple[SynapseServer, PostgresCluster | None],
) -> None:
    synapse, postgres = server
    _, drawer = synapse.new_user("drawer")  # unused for two days
    _, pocket = synapse.new_user("pocket")  # used a minute ago
    _, fresh = synapse.new_user("fresh")  # last request long ago, but logged in (refreshed) now
    _, daily = synapse.new_user("daily")  # logged in long ago, used every day
    assert pocket.request("GET", WHOAMI)[0] == 200
    # Neither drawer nor fresh made a request since their login: no batch of Synapse's
    # (it writes last_seen every 5 seconds) is pending that would undo the ageing.
    idle_before = synapse.decisions("session", "deny", "idle")
    age(synapse, postgres, drawer, seen_days=2, token_days=2)
    age(synapse, postgres, fresh, seen_days=3, token_days=0)
    age(synapse, postgres, daily, seen_days=0, token_days=40)

    assert drawer.device_id is not None
    elapsed = wait_for(
        lambda: not device_exists(synapse, postgres, str(drawer.device_id)), timeout=5 * SWEEP_S
    )
    time.sleep(2 * SWEEP_S)  # later sweeps find nothing more to do

    status, body = drawer.request("GET", WHOAMI)
    assert (status, body.get("errcode")) == (401, "M_UNKNOWN_TOKEN")
    assert pocket.request("GET", WHOAMI)[0] == 200
    assert fresh.request("GET", WHOAMI)[0] == 200
    assert daily.request("GET", WHOAMI)[0] == 200
    assert synapse.decisions("session", "deny", "idle") == idle_before + 1
    pseudonym = Pseudonymizer(AUDIT_KEY).user(str(drawer.user_id))
    records = [
        line
        for line in iter_log_lines(synapse)
        if '"event": "session_revoked"' in line and pseudonym in line
    ]
    assert len(records) == 1, records
    assert '"reason": "idle"' in records[0]
    guard_lines = [line for line in iter_log_lines(synapse) if GUARD_LINE.search(line)]
    assert not [line for line in guard_lines if str(drawer.user_id) in line], "names nobody"
    print(f"idle session logged out {elapsed:.1f}s after it became idle")


@pytest.mark.parametrize(
    ("value", "message"),
    [("10m", "must be at least 1h"), ("soon", "is not a duration")],
)
def test_a_bad_idle_timeout_stops_synapse_naming_the_key(
    synapse_factory: SynapseFactory, value: object, message: str
) -> None:
    server = synapse_factory(guard={"sessions": {"idle_timeout": value}})
    code, output = server.run_to_exit()
    assert code != 0
    assert "sessions.idle_timeout" in output, output[-2000:]
    assert message in output, output[-2000:]
