"""Idle sessions: the pure decision, the query on SQLite, the sweep on a mocked ModuleApi, and
the config (`sessions.idle_timeout`)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any
from unittest.mock import Mock, patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard import compat, sessions, sweep
from synapse_guard.compat import ConfigError
from synapse_guard.config import GuardConfig, SessionsPolicy, parse_guard_config
from synapse_guard.record.reporting import Reporter
from synapse_guard.sessions import DeviceUse, decide_idle, select_idle
from synapse_guard.verdict import Check, Reason
from tests.unit.conftest import ALICE, BOB, create_module, decisions, make_api

DAY = 24 * 3600 * 1000
NOW = 1_800_000_000_000
TIMEOUT = 14 * DAY


def use(seen_days_ago: float | None, token_days_ago: float | None, device: str = "D") -> DeviceUse:
    def at(days: float | None) -> int | None:
        return None if days is None else int(NOW - days * DAY)

    return DeviceUse(ALICE, device, at(seen_days_ago), at(token_days_ago))


# -- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seen", "token", "idle"),
    [
        (15, 15, True),  # a phone in a drawer
        (13, 30, False),  # used two weeks ago less a day
        (30, 1, False),  # no request for a month, but logged in (or refreshed) yesterday
        (None, 15, True),  # never used after a login two weeks ago and more
        (None, 1, False),  # logged in yesterday, not used since
        (None, None, True),  # nothing says it was ever used
    ],
)
def test_a_session_is_idle_when_neither_a_request_nor_a_token_is_recent(
    seen: float | None, token: float | None, idle: bool
) -> None:
    verdict = decide_idle(use(seen, token), NOW, TIMEOUT)
    assert verdict.allowed is not idle
    if idle:
        assert verdict.reason is Reason.IDLE


def test_exactly_at_the_timeout_is_not_idle_yet() -> None:
    assert decide_idle(DeviceUse(ALICE, "D", NOW - TIMEOUT, None), NOW, TIMEOUT).allowed
    assert not decide_idle(DeviceUse(ALICE, "D", NOW - TIMEOUT - 1, None), NOW, TIMEOUT).allowed


@given(
    st.lists(
        st.tuples(
            st.sampled_from([ALICE, BOB]),
            st.text("ABCDEF", min_size=1, max_size=3),
            st.none() | st.integers(0, NOW),
            st.none() | st.integers(0, NOW),
        ),
        max_size=30,
    )
)
def test_the_selection_is_the_decision_applied_to_each_device(
    rows: list[tuple[str, str, int | None, int | None]],
) -> None:
    uses = [DeviceUse(*row) for row in rows]
    selected = select_idle(uses, NOW, TIMEOUT)
    expected = [(u.user_id, u.device_id) for u in uses if not decide_idle(u, NOW, TIMEOUT).allowed]
    pairs = [(user, device) for user, devices in selected.items() for device in devices]
    assert sorted(pairs) == sorted(expected)


# -- the query ---------------------------------------------------------------------------------


def synapse_tables() -> sqlite3.Cursor:
    """The columns of Synapse's tables the query reads, with their indexes."""
    cursor = sqlite3.connect(":memory:").cursor()
    cursor.execute(
        "CREATE TABLE devices (user_id TEXT NOT NULL, device_id TEXT NOT NULL, "
        "last_seen BIGINT, hidden BOOLEAN DEFAULT 0, UNIQUE (user_id, device_id))"
    )
    cursor.execute(
        "CREATE TABLE access_tokens (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, "
        "device_id TEXT, token TEXT NOT NULL UNIQUE, last_validated BIGINT)"
    )
    cursor.execute("CREATE INDEX access_tokens_device_id ON access_tokens (user_id, device_id)")
    return cursor


def add(
    cursor: sqlite3.Cursor,
    user: str,
    device: str,
    seen: int | None,
    tokens: list[int | None],
    hidden: bool = False,
) -> None:
    cursor.execute("INSERT INTO devices VALUES (?, ?, ?, ?)", (user, device, seen, hidden))
    for token in tokens:
        cursor.execute(
            "INSERT INTO access_tokens (user_id, device_id, token, last_validated) "
            "VALUES (?, ?, ?, ?)",
            (user, device, f"{user}{device}{token}{id(object())}", token),
        )


def test_the_query_returns_only_idle_sessions() -> None:
    cursor = synapse_tables()
    old, recent = NOW - 20 * DAY, NOW - DAY
    add(cursor, ALICE, "DRAWER", old, [old])
    add(cursor, ALICE, "POCKET", recent, [old])
    add(cursor, ALICE, "REFRESHED", old, [old, recent])  # /refresh minted a token yesterday
    add(cursor, ALICE, "NEVERUSED", None, [old])
    add(cursor, BOB, "KEYS", old, [old], hidden=True)  # cross-signing keys: not a session
    add(cursor, BOB, "DEHYDRATED", None, [])  # no token: authenticates nothing
    cutoff = sessions.idle_cutoff(NOW, TIMEOUT)
    found = sessions.select_idle_candidates(cursor, cutoff)
    assert sorted(u.device_id for u in found) == ["DRAWER", "NEVERUSED"]
    assert all(not decide_idle(u, NOW, TIMEOUT).allowed for u in found)
    assert len(sessions.select_idle_candidates(cursor, cutoff, limit=1)) == 1


# -- the sweep ---------------------------------------------------------------------------------


class Harness:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.api = make_api()
        self.cursor = cursor
        self.failing: set[str] = set()
        self.logged_out: list[tuple[str, str]] = []

        async def run_db_interaction(desc: str, func: Any, *args: Any) -> Any:
            return func(cursor, *args)

        self.api.run_db_interaction.side_effect = run_db_interaction
        config = GuardConfig(sessions=SessionsPolicy(idle_timeout_ms=TIMEOUT))
        self.sweeper = sweep.IdleSweeper(self.api, config, Reporter(True), now_ms=lambda: NOW)

    async def log_out(
        self, api: Any, user: str, device: str | None, token: str | None, seen: Any = ()
    ) -> None:
        if device in self.failing:
            raise RuntimeError("database fault")
        self.cursor.execute(
            "DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user, device)
        )
        self.cursor.execute(
            "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user, device)
        )
        assert device is not None
        self.logged_out.append((user, device))

    def run(self) -> int:
        with patch.object(compat, "log_out_session", self.log_out):
            return asyncio.run(self.sweeper.sweep())


def test_the_sweep_logs_idle_sessions_out_counted_once_each() -> None:
    cursor = synapse_tables()
    old = NOW - 20 * DAY
    add(cursor, ALICE, "DRAWER", old, [old])
    add(cursor, BOB, "DRAWER", old, [old])
    add(cursor, BOB, "POCKET", NOW, [old])
    harness = Harness(cursor)
    before = decisions(Check.SESSION, "deny", Reason.IDLE)
    assert harness.run() == 2
    assert sorted(harness.logged_out) == [(ALICE, "DRAWER"), (BOB, "DRAWER")]
    assert decisions(Check.SESSION, "deny", Reason.IDLE) == before + 2
    assert harness.run() == 0, "nothing left"


def test_a_failing_logout_is_counted_once_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    cursor = synapse_tables()
    old = NOW - 20 * DAY
    add(cursor, ALICE, "STUCK", old, [old])
    harness = Harness(cursor)
    harness.failing.add("STUCK")
    errors = decisions(Check.SESSION, "deny", Reason.INTERNAL_ERROR)
    assert harness.run() == 0
    assert harness.run() == 0
    assert decisions(Check.SESSION, "deny", Reason.INTERNAL_ERROR) == errors + 1
    harness.failing.clear()
    assert harness.run() == 1


def test_many_idle_sessions_are_logged_out_in_batches_within_one_sweep() -> None:
    cursor = synapse_tables()
    old = NOW - 20 * DAY
    for i in range(sessions.IDLE_BATCH + 7):
        add(cursor, f"@u{i}:test.local", "D", old, [old])
    harness = Harness(cursor)
    assert harness.run() == sessions.IDLE_BATCH + 7


def test_an_unreadable_database_is_reported_once_per_outage() -> None:
    harness = Harness(synapse_tables())
    harness.api.run_db_interaction.side_effect = ConnectionError("database down")
    errors = decisions(Check.SESSION, "deny", Reason.INTERNAL_ERROR)
    assert harness.run() == 0
    assert harness.run() == 0
    assert decisions(Check.SESSION, "deny", Reason.INTERNAL_ERROR) == errors + 1


# -- config and where it runs -------------------------------------------------------------------


def test_on_by_default_at_30_days_every_hour() -> None:
    policy = parse_guard_config({}).sessions
    assert policy == SessionsPolicy(idle_timeout_ms=30 * DAY, sweep_interval_ms=3600 * 1000)


@pytest.mark.parametrize("off", [None, False])
def test_null_or_false_keeps_idle_sessions(off: object) -> None:
    assert parse_guard_config({"sessions": {"idle_timeout": off}}).sessions.idle_timeout_ms is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10m", "must be at least 1h"),
        ("two weeks", "is not a duration"),
        (0, "longer than zero"),
        (True, "must be a duration"),
    ],
)
def test_a_bad_idle_timeout_names_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        create_module({"sessions": {"idle_timeout": value}})
    assert e.value.path == ["sessions.idle_timeout"]
    assert message in e.value.msg


def test_an_unknown_sessions_key_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        create_module({"sessions": {"idle": "14d"}})
    assert e.value.path == ["sessions.idle"]


def looping_descs(api: Mock) -> list[str]:
    return [call.kwargs.get("desc") for call in api.looping_background_call.call_args_list]


def test_the_idle_sweep_runs_only_where_background_tasks_run() -> None:
    assert "synapse_guard_idle_sweep" in looping_descs(create_module({}).api)
    client_worker = make_api()
    client_worker.should_run_background_tasks.return_value = False
    assert "synapse_guard_idle_sweep" not in looping_descs(create_module({}, client_worker).api)
    off = create_module({"sessions": {"idle_timeout": None}}).api
    assert "synapse_guard_idle_sweep" not in looping_descs(off)


def test_an_old_synapse_refuses_the_idle_sweep_on_a_background_worker() -> None:
    api = make_api()
    api.worker_app, api.worker_name = "synapse.app.generic_worker", "background1"
    with patch.object(compat.synapse, "__version__", "1.134.0"), pytest.raises(ConfigError) as e:
        create_module({}, api=api)
    assert "sessions.idle_timeout" in str(e.value)
    assert "run_background_tasks_on" in str(e.value)
