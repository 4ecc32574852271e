"""Lockdown: the pure decisions, the table on a real SQLite database, and the callbacks."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock, patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard import compat
from synapse_guard.cli import main as cli
from synapse_guard.cli.lockdown import TokenFileError, describe, read_token
from synapse_guard.compat import SynapseError
from synapse_guard.lockdown import store as lockdown_store
from synapse_guard.lockdown.control import CHECKIN_PATH, LOCKDOWN_PATH, Lockdown
from synapse_guard.lockdown.state import (
    UNREADABLE,
    LockdownState,
    RequestError,
    StateCache,
    SwitchRequest,
    deadman_due,
    deadman_poll_ms,
    decode_state,
    encode_state,
    login_refused,
    parse_checkin,
    parse_switch,
    status_json,
    user_expired,
)
from synapse_guard.verdict import Check, Reason
from tests.unit.conftest import ALICE, BOB, create_module, decisions, make_api

BREAKGLASS = "@root:test.local"
LOCKED = LockdownState(locked=True, cause="manual", since_ms=1_000)

# -- the state and its text form --------------------------------------------------------------


@pytest.mark.parametrize(
    "state", [LockdownState(), LOCKED, LockdownState(locked=True, cause="deadman", since_ms=5)]
)
def test_a_state_survives_its_text_form(state: LockdownState) -> None:
    assert decode_state(encode_state(state)) == state


def test_no_row_is_open_and_a_damaged_row_is_locked() -> None:
    assert decode_state(None) == LockdownState()
    for damaged in ("", "{", "[]", '{"locked": "no"}', '{"cause": "manual"}', "null"):
        assert decode_state(damaged) == UNREADABLE, damaged
    assert decode_state('{"locked": true, "cause": "cosmic ray", "since": "x"}') == (
        LockdownState(locked=True, cause="unreadable", since_ms=None)
    )


@given(st.text())
def test_any_stored_text_decodes_to_some_state(text: str) -> None:
    state = decode_state(text)
    assert state.locked or state == LockdownState()


def test_only_non_exempt_users_are_expired_while_locked() -> None:
    exempt = {BREAKGLASS}
    assert user_expired(LOCKED, ALICE, exempt) is True
    assert user_expired(LOCKED, BREAKGLASS, exempt) is None
    # Open: None (never False), so Synapse's own account validity still decides.
    assert user_expired(LockdownState(), ALICE, exempt) is None
    assert login_refused(LOCKED, ALICE, exempt)
    assert not login_refused(LOCKED, BREAKGLASS, exempt)
    assert not login_refused(LockdownState(), ALICE, exempt)


def test_the_dead_mans_switch_fires_once_the_interval_has_passed() -> None:
    assert not deadman_due(now_ms=10_999, last_checkin_ms=8_000, interval_ms=3_000)
    assert deadman_due(now_ms=11_000, last_checkin_ms=8_000, interval_ms=3_000)
    assert not deadman_due(now_ms=10**12, last_checkin_ms=None, interval_ms=3_000)


@given(st.integers(min_value=1, max_value=10**12))
def test_the_switch_looks_at_least_three_times_per_interval_within_bounds(interval: int) -> None:
    poll = deadman_poll_ms(interval)
    assert 500 <= poll <= 60_000
    assert poll <= interval // 3 or poll == 500


def test_the_cache_trusts_a_value_for_its_ttl_only() -> None:
    now = [100.0]
    cache = StateCache(ttl=2.0, clock=lambda: now[0])
    assert cache.get() is None
    cache.put(LOCKED)
    now[0] = 101.9
    assert cache.get() == LOCKED
    now[0] = 102.0
    assert cache.get() is None


# -- request bodies ---------------------------------------------------------------------------


def test_switch_requests_accepted() -> None:
    assert parse_switch(b'{"locked": true}') == SwitchRequest(True, False)
    assert parse_switch(b'{"locked": true, "revoke_sessions": true}') == SwitchRequest(True, True)
    assert parse_switch(b'{"locked": false, "revoke_sessions": false}') == SwitchRequest(False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"[true]", "must be a JSON object"),
        (b"{}", "'locked' is required"),
        (b'{"locked": 1}', "'locked' is required and must be true or false"),
        (b'{"locked": "true"}', "must be true or false"),
        (b'{"locked": true, "revoke_sessions": "yes"}', "'revoke_sessions' must be"),
        (b'{"locked": false, "revoke_sessions": true}', "applies only when locking"),
        (b'{"locked": true, "lock": true}', "unknown field(s): lock; accepted: locked"),
    ],
)
def test_switch_requests_refused(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_switch(body)


def test_a_checkin_takes_no_fields() -> None:
    parse_checkin(b"")
    parse_checkin(b"{}")
    with pytest.raises(RequestError, match="unknown field"):
        parse_checkin(b'{"alive": true}')
    with pytest.raises(RequestError, match="JSON object"):
        parse_checkin(b"1")


def test_the_status_names_the_deadline() -> None:
    status = status_json(LOCKED, 3_000, 7_000, 9_000)
    assert status == {
        "locked": True,
        "since": 1_000,
        "cause": "manual",
        "now": 9_000,
        "deadman": {
            "enabled": True,
            "interval_ms": 3_000,
            "last_checkin": 7_000,
            "deadline": 10_000,
        },
    }
    assert status_json(LockdownState(), None, None, 1)["deadman"]["deadline"] is None
    assert describe(status) == (
        "locked down (cause: manual, since 1970-01-01 00:00:01 UTC); dead man's switch: "
        "interval 3 s, last check-in 1970-01-01 00:00:07 UTC, deadline 1970-01-01 00:00:10 UTC"
    )
    assert describe(status_json(LockdownState(), None, None, 1)) == "open"


# -- the table, on SQLite ---------------------------------------------------------------------


@pytest.fixture
def txn() -> Iterator[sqlite3.Cursor]:
    db = sqlite3.connect(":memory:")
    cursor = db.cursor()
    lockdown_store.ensure_table(cursor)
    lockdown_store.ensure_table(cursor)  # idempotent
    cursor.execute(
        "CREATE TABLE access_tokens "
        "(user_id TEXT, device_id TEXT, token TEXT, puppets_user_id TEXT)"
    )
    yield cursor
    db.close()


def test_locking_and_unlocking_in_the_table(txn: sqlite3.Cursor) -> None:
    assert lockdown_store.read_state(txn) == LockdownState()
    switched = lockdown_store.switch(txn, True, "manual")
    assert switched.changed
    assert switched.state.locked
    assert switched.state.cause == "manual"
    assert abs(switched.state.since_ms - lockdown_store.now_ms(txn)) < 60_000  # type: ignore[operator]
    assert lockdown_store.read_state(txn) == switched.state
    again = lockdown_store.switch(txn, True, "deadman")
    assert not again.changed
    assert again.state == switched.state  # the first cause stays
    opened = lockdown_store.switch(txn, False, "manual")
    assert opened.changed
    assert lockdown_store.read_state(txn) == LockdownState()
    # Unlocking counts as a check-in, so the switch does not fire again at once.
    assert lockdown_store.read_snapshot(txn).last_checkin_ms is not None


def test_the_dead_mans_switch_in_the_table(txn: sqlite3.Cursor) -> None:
    snapshot, locked = lockdown_store.deadman_lock(txn, 3_600_000)
    assert not locked  # armed: the first look counts from now
    assert snapshot.last_checkin_ms == snapshot.now_ms
    txn.execute("UPDATE synapse_guard_state SET value = ? WHERE name = ?", ("5", "deadman_checkin"))
    snapshot, locked = lockdown_store.deadman_lock(txn, 3_600_000)
    assert locked
    assert snapshot.state.cause == "deadman"
    assert lockdown_store.deadman_lock(txn, 3_600_000)[1] is False  # already locked
    lockdown_store.switch(txn, False, "manual")
    assert lockdown_store.deadman_lock(txn, 3_600_000)[1] is False


def test_a_checkin_moves_the_deadline(txn: sqlite3.Cursor) -> None:
    txn.execute(
        "INSERT INTO synapse_guard_state VALUES (?, ?, ?)", ("deadman_checkin", "garbage", 0)
    )
    assert lockdown_store.read_snapshot(txn).last_checkin_ms is None
    when = lockdown_store.record_checkin(txn)
    assert lockdown_store.read_snapshot(txn).last_checkin_ms == when


def test_sessions_to_revoke_leave_exempt_users_alone(txn: sqlite3.Cursor) -> None:
    txn.executemany(
        "INSERT INTO access_tokens (user_id, device_id, token) VALUES (?, ?, ?)",
        [(ALICE, "D1", "t1"), (BREAKGLASS, "D2", "t2"), (BOB, None, "t3")],
    )
    assert sorted(lockdown_store.select_sessions(txn, {BREAKGLASS})) == [
        (ALICE, "D1", "t1"),
        (BOB, None, "t3"),
    ]


# -- the callbacks, on a mocked ModuleApi backed by SQLite ------------------------------------


def sqlite_api(**config: Any) -> tuple[Mock, sqlite3.Cursor]:
    api = make_api()
    cursor = sqlite3.connect(":memory:").cursor()
    cursor.execute("CREATE TABLE user_ips (user_id TEXT, device_id TEXT, access_token TEXT)")
    cursor.execute(
        "CREATE TABLE access_tokens "
        "(user_id TEXT, device_id TEXT, token TEXT, puppets_user_id TEXT)"
    )

    async def run_db_interaction(desc: str, func: Any, *args: Any) -> Any:
        return func(cursor, *args)

    api.run_db_interaction.side_effect = run_db_interaction

    async def is_user_admin(user: str) -> bool:
        return user in (BREAKGLASS, BOB)

    api.is_user_admin.side_effect = is_user_admin
    return api, cursor


def guard_with_lockdown(**lockdown: Any) -> tuple[Any, Mock, sqlite3.Cursor]:
    api, cursor = sqlite_api()
    module = create_module({"lockdown": {"exempt_users": [BREAKGLASS], **lockdown}}, api=api)
    return module, api, cursor


def test_install_registers_the_callback_the_resources_and_the_switch() -> None:
    module, api, _ = guard_with_lockdown(deadman_interval="3s")
    assert "is_user_expired" in module.callbacks
    paths = [call.args[0] for call in api.register_web_resource.call_args_list]
    assert {LOCKDOWN_PATH, CHECKIN_PATH} <= set(paths)  # beside the member endpoints
    descs = [call.kwargs.get("desc") for call in api.looping_background_call.call_args_list]
    assert "synapse_guard_deadman" in descs


def test_no_switch_without_an_interval_and_a_warning_without_exempt_users(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, _ = sqlite_api()
    create_module({}, api=api)
    descs = [call.kwargs.get("desc") for call in api.looping_background_call.call_args_list]
    assert "synapse_guard_deadman" not in descs
    assert "lockdown.exempt_users is empty" in caplog.text


def lockdown_of(api: Mock) -> Lockdown:
    (call,) = [c for c in api.register_web_resource.call_args_list if c.args[0] == LOCKDOWN_PATH]
    return call.args[1]._control  # type: ignore[no-any-return]


def test_is_user_expired_follows_the_table() -> None:
    module, api, cursor = guard_with_lockdown()
    expired = module.callbacks["is_user_expired"]
    assert asyncio.run(expired(ALICE)) is None
    lockdown_store.switch(cursor, True, "manual")
    control = lockdown_of(api)
    control._cache = StateCache(ttl=0)  # read through, as after the 2 s TTL
    before = decisions(Check.REQUEST, "deny", Reason.LOCKDOWN)
    assert asyncio.run(expired(ALICE)) is True
    assert decisions(Check.REQUEST, "deny", Reason.LOCKDOWN) == before + 1
    assert asyncio.run(expired(BREAKGLASS)) is None
    assert asyncio.run(control.refuse_login(ALICE)) is True
    assert asyncio.run(control.refuse_login(BREAKGLASS)) is False


def test_a_broken_database_stops_notifications_to_everyone() -> None:
    # Outside a request (the pusher pool asking), a state that cannot be read means "expired":
    # no notification rather than one to a locked-down user. Exempt users too: whether their
    # token is a "login as" one cannot be told without the database (tests/unit/test_gate.py
    # has the request path, which answers 503).
    module, api, _ = guard_with_lockdown()
    api.run_db_interaction.side_effect = RuntimeError("database gone")
    expired = module.callbacks["is_user_expired"]
    assert asyncio.run(expired(ALICE)) is True
    assert asyncio.run(expired(BREAKGLASS)) is True


def test_the_state_is_read_at_most_once_per_ttl() -> None:
    module, api, _ = guard_with_lockdown()
    expired = module.callbacks["is_user_expired"]
    for _ in range(20):
        asyncio.run(expired(ALICE))
    descs = [call.args[0] for call in api.run_db_interaction.call_args_list]
    descs = [desc for desc in descs if "lockdown" in desc]  # the member locks: their own cache
    assert descs == ["synapse_guard_lockdown_create", "synapse_guard_lockdown_read"]


def test_a_deadman_tick_locks_and_counts() -> None:
    _module, api, cursor = guard_with_lockdown(deadman_interval="3s")
    control = lockdown_of(api)
    asyncio.run(control.deadman_tick())
    assert not lockdown_store.read_state(cursor).locked
    cursor.execute("UPDATE synapse_guard_state SET value = '1' WHERE name = 'deadman_checkin'")
    asyncio.run(control.deadman_tick())
    assert lockdown_store.read_state(cursor).cause == "deadman"
    assert asyncio.run(control.refuse_login(ALICE)) is True  # its own cache is up to date


class FakeRequest:
    def __init__(self, body: bytes = b"") -> None:
        self.content = Mock()
        self.content.read.return_value = body


def requester(user: str) -> Mock:
    found = Mock()
    found.user.to_string.return_value = user
    found.authenticated_entity = user  # the user's own token, not a "login as" one
    return found


def call_resource(api: Mock, path: str, method: str, user: str, body: bytes = b"") -> Any:
    (call,) = [c for c in api.register_web_resource.call_args_list if c.args[0] == path]

    async def get_user_by_req(request: Any, allow_expired: bool = False) -> Mock:
        assert allow_expired, "the guard's endpoints must not be shut by its own lockdown"
        return requester(user)

    api.get_user_by_req.side_effect = get_user_by_req
    handler = getattr(call.args[1], f"_async_render_{method}")
    served = compat.RequestFacts(address="127.0.0.1", path=path, query="")
    with patch.object(compat, "current_request", return_value=served):
        return asyncio.run(handler(FakeRequest(body)))


def test_the_lockdown_endpoint() -> None:
    _module, api, cursor = guard_with_lockdown()
    code, status = call_resource(api, LOCKDOWN_PATH, "GET", BOB)
    assert (code, status["locked"]) == (200, False)
    with pytest.raises(SynapseError) as refused:
        call_resource(api, LOCKDOWN_PATH, "POST", ALICE, b'{"locked": true}')
    assert refused.value.code == 403
    with pytest.raises(SynapseError) as bad:
        call_resource(api, LOCKDOWN_PATH, "POST", BOB, b'{"locked": "yes"}')
    assert bad.value.code == 400
    assert not lockdown_store.read_state(cursor).locked

    code, status = call_resource(api, LOCKDOWN_PATH, "POST", BOB, b'{"locked": true}')
    assert (code, status["locked"], status["changed"]) == (200, True, True)
    # BOB is an admin but not exempt: locked out of the endpoint too.
    with pytest.raises(SynapseError) as locked_out:
        call_resource(api, LOCKDOWN_PATH, "POST", BOB, b'{"locked": false}')
    assert locked_out.value.code == 403
    code, status = call_resource(api, LOCKDOWN_PATH, "POST", BREAKGLASS, b'{"locked": false}')
    assert (code, status["locked"]) == (200, False)


def test_locking_with_revoke_sessions_logs_out_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    _module, api, cursor = guard_with_lockdown()
    cursor.executemany(
        "INSERT INTO access_tokens (user_id, device_id, token) VALUES (?, ?, ?)",
        [(ALICE, "D1", "t1"), (BREAKGLASS, "D", "t")],
    )
    logged_out: list[tuple[str, str | None]] = []

    async def log_out(api: Any, user: str, device: str | None, token: str, seen: Any = ()) -> None:
        logged_out.append((user, device))

    monkeypatch.setattr("synapse_guard.compat.log_out_session", log_out)
    body = json.dumps({"locked": True, "revoke_sessions": True}).encode()
    _code, status = call_resource(api, LOCKDOWN_PATH, "POST", BREAKGLASS, body)
    assert status["revoked_sessions"] == 1
    assert logged_out == [(ALICE, "D1")]


def test_the_checkin_endpoint() -> None:
    _module, api, cursor = guard_with_lockdown(checkin_users=[ALICE], deadman_interval="1h")
    code, status = call_resource(api, CHECKIN_PATH, "POST", ALICE)
    assert code == 200
    assert status["deadman"]["last_checkin"] == lockdown_store.read_snapshot(cursor).last_checkin_ms
    for user in (BOB, BREAKGLASS):  # admins, but not named in checkin_users
        with pytest.raises(SynapseError) as refused:
            call_resource(api, CHECKIN_PATH, "POST", user)
        assert refused.value.code == 403
    with pytest.raises(SynapseError) as bad:
        call_resource(api, CHECKIN_PATH, "POST", ALICE, b'{"x": 1}')
    assert bad.value.code == 400


def test_without_checkin_users_admins_check_in() -> None:
    _module, api, _ = guard_with_lockdown()
    assert call_resource(api, CHECKIN_PATH, "POST", BOB)[0] == 200
    with pytest.raises(SynapseError):
        call_resource(api, CHECKIN_PATH, "POST", ALICE)


# -- the command line -------------------------------------------------------------------------


def test_the_token_file_must_hold_one_token(tmp_path: Any) -> None:
    path = tmp_path / "token"
    path.write_text("syt_abc\n")
    assert read_token(str(path)) == "syt_abc"
    for bad in ("", "two tokens"):
        path.write_text(bad)
        with pytest.raises(TokenFileError):
            read_token(str(path))
    with pytest.raises(TokenFileError, match="cannot read"):
        read_token(str(tmp_path / "missing"))


def test_cli_usage_errors_exit_2(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("syt_abc")
    url = ["--url", "http://127.0.0.1:9"]
    assert cli.main(["lockdown", "maybe", *url, "--token-file", str(token)]) == 2
    assert cli.main(["lockdown", "on", *url]) == 2
    assert (
        cli.main(["lockdown", "status", "--revoke-sessions", *url, "--token-file", str(token)]) == 2
    )
    assert cli.main(["checkin", *url, "--token-file", str(tmp_path / "none")]) == 2
    assert "--token-file: cannot read" in capsys.readouterr().err


def test_cli_unreachable_server_exits_1(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("syt_secret_token")
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    assert cli.main(["checkin", "--url", "http://127.0.0.1:9", "--token-file", str(token)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err
    assert "syt_secret_token" not in err
