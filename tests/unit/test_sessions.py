"""The session sweep: what it logs out, once, and what it must never log out.

The pure part (`SessionSweep`) with hand-made rows, its SQL on SQLite tables shaped like
Synapse's, and `Guard.sweep_sessions` on a mocked ModuleApi backed by that database, the
way an attacker's stolen token and a bad GeoIP update reach it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock, Mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from synapse_guard import compat
from synapse_guard.sessions import (
    OVERLAP_MS,
    SeenRow,
    Session,
    SessionSweep,
    select_seen_since,
)
from synapse_guard.verdict import ALLOW, Check, Reason, Verdict, deny
from tests.geoip_factory import replace_by_rename, write_corrupt, write_country_db

from .conftest import ALICE, BOB, create_module, decisions, make_api

REFUSED = deny(Reason.COUNTRY_NOT_ALLOWED)
OUTAGE = deny(Reason.GEOIP_UNAVAILABLE)
HOME, ABROAD, SOMEWHERE = "10.8.0.5", "192.0.2.1", "198.51.100.7"


def row(
    ip: str = ABROAD,
    last_seen: int = 100_000,
    *,
    user: str = ALICE,
    token: str = "syt_a",
    device: str | None = "DEV",
    device_exists: bool = True,
    token_exists: bool = True,
) -> SeenRow:
    return SeenRow(user, token, device, ip, last_seen, device_exists, token_exists)


def policy(verdicts: dict[str, Verdict]) -> Callable[[str], Verdict]:
    return lambda ip: verdicts.get(ip, ALLOW)


ABROAD_REFUSED = policy({ABROAD: REFUSED})


# -- what a session is ----------------------------------------------------------------------


def test_a_token_rotated_by_refresh_still_names_its_device() -> None:
    """Synapse deletes the access token a /refresh replaced; the device is the session."""
    plan = SessionSweep().judge([row(token_exists=False)], ABROAD_REFUSED)
    (refusal,) = plan.refusals
    assert refusal.session == Session(ALICE, "DEV", None)
    assert refusal.verdict == REFUSED
    assert not refusal.retry


def test_a_token_without_a_device_is_its_own_session() -> None:
    plan = SessionSweep().judge([row(device=None, token="syt_puppet")], ABROAD_REFUSED)
    assert [r.session for r in plan.refusals] == [Session(ALICE, None, "syt_puppet")]


@pytest.mark.parametrize("device", ["DEV", None])
def test_a_session_logged_out_already_is_skipped(device: str | None) -> None:
    gone = row(device=device, device_exists=False, token_exists=False)
    assert SessionSweep().judge([gone], ABROAD_REFUSED).refusals == ()


def test_a_device_seen_from_several_refused_places_and_tokens_is_revoked_once() -> None:
    rows = [
        row(ABROAD, 1_000, token="syt_1", token_exists=False),
        row("192.0.2.9", 2_000, token="syt_2", token_exists=False),
        row(ABROAD, 3_000, token="syt_3"),
        row(ABROAD, 3_000, user=BOB, token="syt_b"),
    ]
    plan = SessionSweep().judge(rows, policy({ABROAD: REFUSED, "192.0.2.9": REFUSED}))
    assert sorted(r.session.user_id for r in plan.refusals) == [ALICE, BOB]


def test_each_address_is_decided_once_per_sweep() -> None:
    asked: list[str] = []

    def decide(ip: str) -> Verdict:
        asked.append(ip)
        return ALLOW

    rows = [row(HOME, n, token=f"syt_{n}", device=f"D{n}") for n in range(50)]
    SessionSweep().judge(rows, decide)
    assert asked == [HOME]


# -- progress, and rows read again -----------------------------------------------------------


def test_the_marker_advances_with_a_margin_for_synapses_batch() -> None:
    sweep = SessionSweep()
    plan = sweep.judge([row(HOME, 100_000)], ABROAD_REFUSED)
    assert sweep.advance(plan, failed=[]) == 100_000 - OVERLAP_MS
    plan = sweep.judge([], ABROAD_REFUSED)
    assert sweep.advance(plan, failed=[]) == 100_000 - OVERLAP_MS  # never backwards


def test_a_revoked_session_re_read_in_the_overlap_is_not_revoked_again() -> None:
    """Its device may exist again: a client logging in again with the same device ID."""
    sweep = SessionSweep()
    plan = sweep.judge([row(last_seen=100_000)], ABROAD_REFUSED)
    (refusal,) = plan.refusals
    sweep.logged_out(refusal)
    sweep.advance(plan, failed=[])
    again = sweep.judge([row(last_seen=100_000), row(HOME, 101_000)], ABROAD_REFUSED)
    assert again.refusals == ()
    later = sweep.judge([row(last_seen=200_000)], ABROAD_REFUSED)  # a new use from abroad
    assert len(later.refusals) == 1


def test_a_failed_logout_is_retried_not_skipped_and_not_a_new_refusal() -> None:
    sweep = SessionSweep()
    plan = sweep.judge([row(last_seen=100_000), row(HOME, 900_000, device="D2")], ABROAD_REFUSED)
    (refusal,) = plan.refusals
    assert sweep.logout_failed(refusal) is True
    assert sweep.advance(plan, failed=[refusal]) == 100_000  # held at the failed row

    retry = sweep.judge([row(last_seen=100_000), row(HOME, 900_000, device="D2")], ABROAD_REFUSED)
    (again,) = retry.refusals
    assert again.retry
    assert sweep.logout_failed(again) is False  # its first failure was counted already
    sweep.advance(retry, failed=[again])

    done = sweep.judge([row(last_seen=100_000), row(HOME, 900_000, device="D2")], ABROAD_REFUSED)
    sweep.logged_out(done.refusals[0])
    assert sweep.advance(done, failed=[]) == 900_000 - OVERLAP_MS
    assert not sweep.failing


def test_a_failing_session_logged_out_by_someone_else_is_forgotten() -> None:
    sweep = SessionSweep()
    plan = sweep.judge([row()], ABROAD_REFUSED)
    sweep.logout_failed(plan.refusals[0])
    sweep.judge([row(device_exists=False, token_exists=False)], ABROAD_REFUSED)
    assert not sweep.failing


@pytest.mark.parametrize("reason", [Reason.GEOIP_UNAVAILABLE, Reason.INTERNAL_ERROR])
def test_a_session_that_cannot_be_judged_is_kept_and_judged_again(reason: Reason) -> None:
    sweep = SessionSweep()
    rows = [row(SOMEWHERE, 100_000), row(HOME, 500_000, device="D2")]
    plan = sweep.judge(rows, policy({SOMEWHERE: deny(reason)}))
    assert plan.refusals == ()
    assert plan.undecided == {reason}
    assert plan.undecided_sessions == 1
    assert sweep.advance(plan, failed=[]) == 100_000  # not past the row that waits

    back = sweep.judge(rows, policy({SOMEWHERE: REFUSED}))  # the database is back
    assert [r.session.device_id for r in back.refusals] == ["DEV"]


def test_a_decision_that_raises_cannot_decide() -> None:
    def broken(ip: str) -> Verdict:
        raise RuntimeError("boom")

    plan = SessionSweep().judge([row()], broken)
    assert (plan.refusals, plan.undecided) == ((), {Reason.INTERNAL_ERROR})


def test_a_refusal_wins_over_rows_that_cannot_be_judged() -> None:
    rows = [row(SOMEWHERE, 1_000), row(ABROAD, 2_000)]
    plan = SessionSweep().judge(rows, policy({SOMEWHERE: OUTAGE, ABROAD: REFUSED}))
    assert len(plan.refusals) == 1
    assert plan.undecided_sessions == 0


def test_an_outage_is_reported_when_it_starts_and_when_it_ends() -> None:
    sweep = SessionSweep()
    waiting = sweep.judge([row(SOMEWHERE)], policy({SOMEWHERE: OUTAGE}))
    assert sweep.outage(waiting) == ({Reason.GEOIP_UNAVAILABLE}, False)
    assert sweep.outage(waiting) == (frozenset(), False)  # the same outage, again
    assert sweep.outage(sweep.judge([], ABROAD_REFUSED)) == (frozenset(), True)


def test_a_new_geoip_database_makes_the_next_sweep_read_everything() -> None:
    sweep = SessionSweep()
    assert sweep.database_loaded(("GeoLite2-Country", 1)) is False  # the first read is whole
    sweep.since = 500_000
    assert sweep.database_loaded(("GeoLite2-Country", 1)) is False
    assert sweep.database_loaded(None) is False  # an outage: its rows are held anyway
    assert sweep.since == 500_000
    assert sweep.database_loaded(("GeoLite2-Country", 1)) is False  # the same one, back
    assert sweep.database_loaded(("GeoLite2-Country", 2)) is True
    assert sweep.since == 0


ROWS = st.lists(
    st.builds(
        row,
        ip=st.sampled_from([HOME, ABROAD, SOMEWHERE]),
        last_seen=st.integers(0, 10**6),
        device=st.sampled_from(["D1", "D2", "D3", None]),
        token=st.sampled_from(["t1", "t2", "t3"]),
        device_exists=st.booleans(),
        token_exists=st.booleans(),
    ),
    max_size=30,
)


@given(rows=ROWS, fails=st.sets(st.sampled_from(["D1", "D2", "D3", None])))
def test_the_marker_never_passes_a_row_that_must_be_read_again(
    rows: list[SeenRow], fails: set[str | None]
) -> None:
    sweep = SessionSweep()
    plan = sweep.judge(rows, policy({ABROAD: REFUSED, SOMEWHERE: OUTAGE}))
    failed = [r for r in plan.refusals if r.session.device_id in fails]
    since = sweep.advance(plan, failed)
    must_reread = [
        r.last_seen
        for r in rows
        if r.session is not None and any(f.session == r.session for f in failed) and r.ip == ABROAD
    ]
    refused_sessions = {f.session for f in plan.refusals}
    must_reread += [
        r.last_seen
        for r in rows
        if r.ip == SOMEWHERE and r.session is not None and r.session not in refused_sessions
    ]
    assert all(since <= seen for seen in must_reread)
    assert len({r.session for r in plan.refusals}) == len(plan.refusals)  # once per session


# -- the query, on tables shaped like Synapse's ----------------------------------------------


@pytest.fixture
def txn() -> sqlite3.Cursor:
    cursor = sqlite3.connect(":memory:").cursor()
    cursor.executescript(
        """
        CREATE TABLE user_ips (user_id TEXT, access_token TEXT, ip TEXT, user_agent TEXT,
                               device_id TEXT, last_seen BIGINT);
        CREATE TABLE devices (user_id TEXT, device_id TEXT, display_name TEXT,
                              hidden BOOLEAN DEFAULT 0, PRIMARY KEY (user_id, device_id));
        CREATE TABLE access_tokens (id BIGINT PRIMARY KEY, user_id TEXT, device_id TEXT,
                                    token TEXT UNIQUE);
        """
    )
    return cursor


def seen(txn: sqlite3.Cursor, user: str, token: str, device: str | None, ip: str, ts: int) -> None:
    txn.execute(
        "INSERT INTO user_ips VALUES (?, ?, ?, ?, ?, ?)", (user, token, ip, "UA", device, ts)
    )


def test_the_query_reads_user_and_device_from_user_ips(txn: sqlite3.Cursor) -> None:
    txn.execute("INSERT INTO devices VALUES (?, ?, ?, 0)", (ALICE, "DEV", "phone"))
    txn.execute("INSERT INTO devices VALUES (?, ?, ?, 1)", (BOB, "MASTERKEY", None))
    seen(txn, BOB, "syt_x", "MASTERKEY", ABROAD, 8_000)  # a hidden device is no session
    txn.execute("INSERT INTO access_tokens VALUES (1, ?, NULL, 'syt_puppet')", (BOB,))
    seen(txn, ALICE, "syt_rotated", "DEV", ABROAD, 5_000)  # token deleted by /refresh
    seen(txn, BOB, "syt_puppet", None, ABROAD, 6_000)
    seen(txn, ALICE, "syt_old", "GONE", ABROAD, 7_000)  # logged out
    seen(txn, ALICE, "syt_older", "DEV", HOME, 1_000)  # before the marker

    rows = select_seen_since(txn, 2_000)

    assert sorted(rows, key=lambda r: r.last_seen) == [
        SeenRow(ALICE, "syt_rotated", "DEV", ABROAD, 5_000, True, False),
        SeenRow(BOB, "syt_puppet", None, ABROAD, 6_000, False, True),
        SeenRow(ALICE, "syt_old", "GONE", ABROAD, 7_000, False, False),
        SeenRow(BOB, "syt_x", "MASTERKEY", ABROAD, 8_000, False, False),
    ]


# -- Guard.sweep_sessions on a mocked ModuleApi ----------------------------------------------


class Server:
    """A mocked ModuleApi over SQLite, whose device handler deletes devices for real."""

    def __init__(self, txn: sqlite3.Cursor, config: dict[str, Any]) -> None:
        self.txn = txn
        self.api = make_api()
        self.fail_devices: set[str] = set()

        async def run_db_interaction(desc: str, func: Any, *args: Any) -> Any:
            return func(txn, *args)

        async def delete_devices(user_id: str, device_ids: list[str]) -> None:
            if self.fail_devices & set(device_ids):
                raise AttributeError("'DeviceWorkerHandler' object has no attribute 'x'")
            for device in device_ids:
                txn.execute(
                    "DELETE FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device)
                )
                txn.execute("DELETE FROM access_tokens WHERE device_id = ?", (device,))

        self.api.run_db_interaction.side_effect = run_db_interaction
        self.api._device_handler = Mock(delete_devices=AsyncMock(side_effect=delete_devices))
        self.api._auth_handler = Mock(delete_access_token=AsyncMock())
        self.api._store = Mock(invalidate_cache_and_stream=AsyncMock())
        self.module = create_module(config, api=self.api)

    def device(self, user: str, device: str, token: str) -> None:
        self.txn.execute("INSERT INTO devices VALUES (?, ?, ?, 0)", (user, device, None))
        self.txn.execute(
            "INSERT INTO access_tokens (user_id, device_id, token) VALUES (?, ?, ?)",
            (user, device, token),
        )

    def devices(self) -> set[str]:
        return {d for (d,) in self.txn.execute("SELECT device_id FROM devices")}

    def sweep(self) -> None:
        asyncio.run(self.module.guard.sweep_sessions())


COUNTRIES = {"FR": ["198.51.100.0/24"], "US": ["192.0.2.0/24"]}
NETWORK = {"allow_cidrs": ["10.8.0.0/24"], "allow_countries": ["FR"]}


@pytest.fixture
def geoip(tmp_path: Path) -> Path:
    return write_country_db(tmp_path / "country.mmdb", COUNTRIES)


@pytest.fixture
def server(txn: sqlite3.Cursor, geoip: Path) -> Server:
    return Server(txn, {"network": {**NETWORK, "geoip_database": str(geoip)}})


def revoked_total() -> float:
    return REGISTRY.get_sample_value("synapse_guard_sessions_revoked_total") or 0.0


def test_a_stolen_token_used_abroad_logs_its_device_out_once(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.device(ALICE, "PHONE", "syt_new")  # /refresh replaced the token seen abroad
    server.device(ALICE, "LAPTOP", "syt_laptop")
    seen(server.txn, ALICE, "syt_rotated", "PHONE", ABROAD, 10_000)
    seen(server.txn, ALICE, "syt_new", "PHONE", ABROAD, 11_000)
    seen(server.txn, ALICE, "syt_laptop", "LAPTOP", SOMEWHERE, 12_000)
    revoked, refused = revoked_total(), decisions(Check.SESSION, "deny", Reason.COUNTRY_NOT_ALLOWED)

    server.sweep()
    server.sweep()  # the rows stay in user_ips: nothing is counted again

    assert server.devices() == {"LAPTOP"}
    # Synapse's token cache keeps a rotated token working: it is dropped from it too.
    forgotten = {c.args for c in server.api._store.invalidate_cache_and_stream.await_args_list}
    assert forgotten == {
        ("get_user_by_access_token", ("syt_rotated",)),
        ("get_user_by_access_token", ("syt_new",)),
    }
    assert revoked_total() == revoked + 1
    assert decisions(Check.SESSION, "deny", Reason.COUNTRY_NOT_ALLOWED) == refused + 1


def test_a_failing_logout_aborts_nothing_and_counts_once(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.device(ALICE, "BROKEN", "syt_a")
    server.device(BOB, "PHONE", "syt_b")
    seen(server.txn, ALICE, "syt_a", "BROKEN", ABROAD, 10_000)
    seen(server.txn, BOB, "syt_b", "PHONE", ABROAD, 10_500)
    server.fail_devices = {"BROKEN"}
    revoked, refused = revoked_total(), decisions(Check.SESSION, "deny", Reason.COUNTRY_NOT_ALLOWED)
    errors = decisions(Check.SESSION, "deny", Reason.INTERNAL_ERROR)

    with caplog.at_level(logging.INFO, logger="synapse_guard"):
        for _ in range(5):
            server.sweep()

    assert server.devices() == {"BROKEN"}  # Bob's session went despite Alice's failing
    assert revoked_total() == revoked + 1
    assert decisions(Check.SESSION, "deny", Reason.INTERNAL_ERROR) == errors + 1
    failures = [r for r in caplog.records if "logout(s) failed" in r.getMessage()]
    assert len(failures) == 1
    assert sum(r.exc_info is not None for r in caplog.records) == 1  # one traceback

    server.fail_devices = set()  # fixed: retried, counted as one refusal
    server.sweep()
    server.sweep()
    assert server.devices() == set()
    assert revoked_total() == revoked + 2
    assert decisions(Check.SESSION, "deny", Reason.COUNTRY_NOT_ALLOWED) == refused + 2


def test_a_revoked_session_is_audited_after_its_logout(txn: sqlite3.Cursor, tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    key.write_bytes(b"k" * 32)
    server = Server(
        txn,
        {
            "network": {"allow_cidrs": ["10.8.0.0/24"]},
            "audit": {"enabled": True, "pseudonym_key_path": str(key)},
        },
    )
    server.device(ALICE, "PHONE", "syt_a")
    seen(txn, ALICE, "syt_a", "PHONE", ABROAD, 10_000)
    server.fail_devices = {"PHONE"}
    audit = Mock()
    server.module.guard._report._audit = audit

    server.sweep()
    assert [c.kwargs.get("event") for c in audit.record.call_args_list] == [None]  # the error
    server.fail_devices = set()
    server.sweep()
    assert [c.kwargs.get("event") for c in audit.record.call_args_list] == [None, "session_revoked"]


def test_an_unreadable_geoip_database_logs_nobody_out(
    server: Server, geoip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad geoipupdate run: sessions from an allowed country live on, nothing is lost."""
    server.device(ALICE, "FROM-FR", "syt_fr")
    server.device(BOB, "FROM-US", "syt_us")
    seen(server.txn, ALICE, "syt_fr", "FROM-FR", SOMEWHERE, 10_000)
    seen(server.txn, BOB, "syt_us", "FROM-US", ABROAD, 10_000)
    outages = decisions(Check.SESSION, "deny", Reason.GEOIP_UNAVAILABLE)
    revoked = revoked_total()
    replace_by_rename(geoip, write_corrupt)

    with caplog.at_level(logging.INFO, logger="synapse_guard"):
        for _ in range(4):
            server.sweep()

    assert server.devices() == {"FROM-FR", "FROM-US"}
    assert revoked_total() == revoked
    assert decisions(Check.SESSION, "deny", Reason.GEOIP_UNAVAILABLE) == outages + 1
    assert len([r for r in caplog.records if "cannot be judged" in r.getMessage()]) == 1

    replace_by_rename(geoip, lambda tmp: write_country_db(tmp, COUNTRIES))
    with caplog.at_level(logging.INFO, logger="synapse_guard"):
        server.sweep()
    assert server.devices() == {"FROM-FR"}  # the refused country is logged out once back
    assert revoked_total() == revoked + 1
    assert "every session is judged again" in caplog.text


def test_a_puppet_token_is_deleted_by_itself(server: Server) -> None:
    server.txn.execute(
        "INSERT INTO access_tokens (user_id, device_id, token) VALUES (?, NULL, 'syt_p')", (BOB,)
    )
    seen(server.txn, BOB, "syt_p", None, ABROAD, 10_000)
    server.sweep()
    server.api._auth_handler.delete_access_token.assert_awaited_once_with("syt_p")


# -- where the looping calls run -------------------------------------------------------------


@pytest.mark.parametrize("runs_here", [True, False])
def test_looping_calls_are_registered_only_where_background_tasks_run(
    runs_here: bool, caplog: pytest.LogCaptureFixture
) -> None:
    api = make_api()
    api.should_run_background_tasks.return_value = runs_here
    config = {
        "network": {"allow_cidrs": ["10.8.0.0/24"]},
        "lockdown": {"deadman_interval": "1h", "exempt_users": [ALICE]},
    }
    with caplog.at_level(logging.INFO, logger="synapse_guard"):
        create_module(config, api=api)
    descs = {call.kwargs.get("desc") for call in api.looping_background_call.call_args_list}
    expected = {"synapse_guard_session_sweep", "synapse_guard_deadman"}
    assert descs & expected == (expected if runs_here else set())
    assert ("session sweep runs on this process" in caplog.text) is runs_here
    assert ("dead man's switch runs on this process" in caplog.text) is runs_here


def test_no_sweep_without_a_network_rule() -> None:
    api = make_api()
    create_module({}, api=api)
    descs = {call.kwargs.get("desc") for call in api.looping_background_call.call_args_list}
    assert "synapse_guard_session_sweep" not in descs


# -- logging a session out ---------------------------------------------------------------------


def test_a_worker_that_cannot_delete_devices_says_why() -> None:
    """Synapse < 1.135: a worker's DeviceWorkerHandler has no delete_devices."""
    api = make_api()
    api._device_handler = Mock(spec=[])
    with pytest.raises(RuntimeError, match="run_background_tasks_on"):
        asyncio.run(compat.log_out_session(api, ALICE, "DEV", None))


def test_a_token_gone_already_is_logged_out() -> None:
    api = make_api()
    api._auth_handler = Mock(
        delete_access_token=AsyncMock(side_effect=compat.SynapseError(401, "Unrecognised"))
    )
    asyncio.run(compat.log_out_session(api, ALICE, None, "syt_gone"))
    api._auth_handler.delete_access_token.side_effect = compat.SynapseError(500, "db")
    with pytest.raises(compat.SynapseError):
        asyncio.run(compat.log_out_session(api, ALICE, None, "syt_x"))


def test_a_database_outage_is_logged_once_not_per_sweep(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    errors = decisions(Check.SESSION, "deny", Reason.INTERNAL_ERROR)
    server.api.run_db_interaction.side_effect = ConnectionError("database unreachable")
    with caplog.at_level(logging.INFO, logger="synapse_guard"):
        for _ in range(3):
            server.sweep()
        assert decisions(Check.SESSION, "deny", Reason.INTERNAL_ERROR) == errors + 1
        assert sum(r.exc_info is not None for r in caplog.records) == 1

        async def run_db_interaction(desc: str, func: Any, *args: Any) -> Any:
            return func(server.txn, *args)

        server.api.run_db_interaction.side_effect = run_db_interaction
        server.sweep()
    assert "reads user_ips again" in caplog.text
