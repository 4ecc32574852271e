"""Member lock, unlock and removal: request bodies, the cache, the table, and the control on a
mocked ModuleApi backed by SQLite (tests/integration/test_members.py has the real server)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any
from unittest.mock import Mock, patch

import pytest

from synapse_guard import compat
from synapse_guard.compat import SynapseError
from synapse_guard.members import store as member_store
from synapse_guard.members.control import RESOURCE_PREFIX
from synapse_guard.members.state import CACHE_TTL_S, LockedCache, parse_member_request
from synapse_guard.request_body import RequestError
from synapse_guard.verdict import Check, Reason
from tests.unit.conftest import ALICE, BOB, create_module, decisions, make_api
from tests.unit.lockdown.test_lockdown import FakeRequest, requester

ADMIN = "@admin:test.local"
LOCK, UNLOCK, REMOVE = (f"{RESOURCE_PREFIX}/{a}" for a in ("lock", "unlock", "remove"))

# -- pure parts --------------------------------------------------------------------------------


def test_a_request_names_one_full_user_id_and_nothing_else() -> None:
    assert parse_member_request(b'{"user_id": "@alice:test.local"}') == ALICE
    for bad in (
        b'{"user_id": "alice"}',
        b'{"user_id": "@alice"}',
        b'{"user_id": 7}',
        b"{}",
        b'{"user_id": "@alice:test.local", "erase": false}',
        b'{"user_id": "@a\\u0000b:test.local"}',
        b"[]",
        b"not json",
    ):
        with pytest.raises(RequestError):
            parse_member_request(bad)


def test_the_cache_is_trusted_for_its_ttl_only() -> None:
    now = [100.0]
    cache = LockedCache(clock=lambda: now[0])
    assert cache.get() is None
    cache.put(frozenset({ALICE}))
    now[0] += CACHE_TTL_S - 0.1
    assert cache.get() == frozenset({ALICE})
    now[0] += 0.2
    assert cache.get() is None
    cache.put(frozenset())
    cache.forget()
    assert cache.get() is None


# -- the table and the queries ----------------------------------------------------------------


def synapse_tables() -> sqlite3.Cursor:
    cursor = sqlite3.connect(":memory:").cursor()
    cursor.execute(
        "CREATE TABLE devices (user_id TEXT, device_id TEXT, last_seen BIGINT, hidden BOOLEAN)"
    )
    cursor.execute(
        "CREATE TABLE access_tokens (user_id TEXT, device_id TEXT, token TEXT, "
        "puppets_user_id TEXT, last_validated BIGINT)"
    )
    cursor.execute("CREATE TABLE refresh_tokens (user_id TEXT, device_id TEXT, token TEXT)")
    cursor.execute("CREATE TABLE user_ips (user_id TEXT, device_id TEXT, access_token TEXT)")
    cursor.execute("CREATE TABLE pushers (user_name TEXT, app_id TEXT, pushkey TEXT)")
    cursor.execute(member_store.CREATE)
    return cursor


def test_locks_are_idempotent_and_listed() -> None:
    txn = synapse_tables()
    assert member_store.lock(txn, ALICE, 1) is True
    assert member_store.lock(txn, ALICE, 2) is False
    assert member_store.read_locked(txn) == frozenset({ALICE})
    assert member_store.unlock(txn, ALICE) is True
    assert member_store.unlock(txn, ALICE) is False
    assert member_store.read_locked(txn) == frozenset()


def test_what_a_lock_logs_out() -> None:
    txn = synapse_tables()
    txn.executemany(
        "INSERT INTO devices VALUES (?, ?, NULL, ?)",
        [(ALICE, "PHONE", False), (ALICE, "LAPTOP", False), (ALICE, "KEYS", True),
         (ALICE, "DEHYDRATED", False), (ALICE, "REFRESHONLY", False), (BOB, "PHONE", False)],
    )  # fmt: skip
    txn.executemany(
        "INSERT INTO access_tokens VALUES (?, ?, ?, ?, 0)",
        [(ALICE, "PHONE", "t1", None), (ALICE, "LAPTOP", "t2", None), (ALICE, "KEYS", "t3", None),
         (ADMIN, None, "puppet", ALICE), (BOB, "PHONE", "t4", None)],
    )  # fmt: skip
    txn.execute("INSERT INTO refresh_tokens VALUES (?, 'REFRESHONLY', 'r1')", (ALICE,))
    txn.execute("INSERT INTO user_ips VALUES (?, 'PHONE', 'rotated')", (ALICE,))
    txn.execute("INSERT INTO pushers VALUES (?, 'app', 'key')", (ALICE,))
    assert sorted(member_store.select_devices(txn, ALICE)) == ["LAPTOP", "PHONE", "REFRESHONLY"]
    assert sorted(member_store.select_tokens(txn, ALICE)) == ["puppet", "t1", "t2", "t3"]
    assert member_store.select_seen_tokens(txn, ALICE) == ["rotated"]
    assert member_store.select_pushers(txn, ALICE) == [("app", "key")]
    assert member_store.select_pushers(txn, BOB) == []


# -- the control -------------------------------------------------------------------------------


def guard() -> tuple[Any, Mock, sqlite3.Cursor]:
    api = make_api()
    cursor = synapse_tables()

    async def run_db_interaction(desc: str, func: Any, *args: Any) -> Any:
        return func(cursor, *args)

    async def is_user_admin(user: str) -> bool:
        return user == ADMIN

    async def check_user_exists(user: str) -> str | None:
        return user if user in (ALICE, BOB, ADMIN) else None

    api.run_db_interaction.side_effect = run_db_interaction
    api.is_user_admin.side_effect = is_user_admin
    api.check_user_exists.side_effect = check_user_exists
    api.is_mine.side_effect = lambda user: user.endswith(":test.local")
    return create_module({}, api=api), api, cursor


def post(api: Mock, path: str, caller: Any, body: bytes) -> Any:
    (call,) = [c for c in api.register_web_resource.call_args_list if c.args[0] == path]

    async def get_user_by_req(request: Any, allow_expired: bool = False) -> Mock:
        assert allow_expired, "an exempt admin must be able to act during a lockdown"
        return caller

    api.get_user_by_req.side_effect = get_user_by_req
    served = compat.RequestFacts(address="127.0.0.1", path=path, query="")
    with patch.object(compat, "current_request", return_value=served):
        return asyncio.run(call.args[1]._async_render_POST(FakeRequest(body)))


def test_a_lock_logs_out_refuses_logins_and_requests_until_unlocked() -> None:
    module, api, cursor = guard()
    cursor.execute("INSERT INTO devices VALUES (?, 'PHONE', NULL, 0)", (ALICE,))
    cursor.execute("INSERT INTO access_tokens VALUES (?, 'PHONE', 't1', NULL, 0)", (ALICE,))
    cursor.execute("INSERT INTO pushers VALUES (?, 'app', 'key')", (ALICE,))
    logged_out: list[tuple[str, str | None, str | None]] = []

    async def log_out(api: Any, user: str, device: str | None, token: str | None, seen: Any = ()):
        logged_out.append((user, device, token))
        cursor.execute(
            "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", (user, device)
        )

    removed: list[tuple[str, str, str]] = []

    async def remove_pusher(api: Any, app_id: str, pushkey: str, user: str) -> None:
        removed.append((app_id, pushkey, user))

    body = b'{"user_id": "@alice:test.local"}'
    with (
        patch.object(compat, "log_out_session", log_out),
        patch.object(compat, "remove_pusher", remove_pusher),
    ):
        status, answer = post(api, LOCK, requester(ADMIN), body)
    assert status == 200
    assert answer == {"user_id": ALICE, "locked": True, "changed": True, "revoked_sessions": 1,
                      "removed_pushers": 1}  # fmt: skip
    assert logged_out == [(ALICE, "PHONE", None)]
    assert removed == [("app", "key", ALICE)]

    refused = decisions(Check.LOGIN, "deny", Reason.MEMBER_LOCKED)
    check_login = module.callbacks["check_login_for_spam"]
    served = compat.RequestFacts(address="127.0.0.1", path="/sync", query="")
    with patch.object(compat, "count_failed_login", Mock(side_effect=_async_none)):
        assert asyncio.run(check_login(ALICE, None, None, [(None, "127.0.0.1")])) == (
            compat.login_refusal()
        )
        assert asyncio.run(check_login(BOB, None, None, [(None, "127.0.0.1")])) is compat.NOT_SPAM
    assert decisions(Check.LOGIN, "deny", Reason.MEMBER_LOCKED) == refused + 1
    expired = module.callbacks["is_user_expired"]
    with patch.object(compat, "current_request", return_value=served):
        with pytest.raises(SynapseError) as e:
            asyncio.run(expired(ALICE))
        assert e.value.code == 403
        assert asyncio.run(expired(BOB)) is None
    assert asyncio.run(expired(ALICE)) is True, "outside a request: no notification"

    assert post(api, UNLOCK, requester(ADMIN), body) == (
        200, {"user_id": ALICE, "locked": False, "changed": True}
    )  # fmt: skip
    with patch.object(compat, "current_request", return_value=served):
        assert asyncio.run(expired(ALICE)) is None


async def _async_none(*args: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("caller", "body", "status"),
    [
        (requester(BOB), b'{"user_id": "@alice:test.local"}', 403),  # not an admin
        (requester(ADMIN), b'{"user_id": "@admin:test.local"}', 400),  # themselves
        (requester(ADMIN), b'{"user_id": "@nobody:test.local"}', 404),
        (requester(ADMIN), b'{"user_id": "@alice:elsewhere.example"}', 400),
        (requester(ADMIN), b'{"user": "@alice:test.local"}', 400),
    ],
)
def test_refused_callers_and_bodies_change_nothing(caller: Any, body: bytes, status: int) -> None:
    _module, api, cursor = guard()
    with pytest.raises(SynapseError) as e:
        post(api, LOCK, caller, body)
    assert e.value.code == status
    assert member_store.read_locked(cursor) == frozenset()


def test_a_login_as_token_cannot_lock() -> None:
    _module, api, cursor = guard()
    puppet = requester(ADMIN)
    puppet.authenticated_entity = "@other-admin:test.local"  # minted by another admin
    with pytest.raises(SynapseError) as e:
        post(api, LOCK, puppet, b'{"user_id": "@alice:test.local"}')
    assert e.value.code == 403
    assert member_store.read_locked(cursor) == frozenset()


def test_an_old_worker_refuses_before_locking() -> None:
    _module, api, cursor = guard()
    api.worker_app, api.worker_name = "synapse.app.generic_worker", "client1"
    with patch.object(compat.synapse, "__version__", "1.100.0"), pytest.raises(SynapseError) as e:
        post(api, LOCK, requester(ADMIN), b'{"user_id": "@alice:test.local"}')
    assert e.value.code == 400
    assert "main process" in e.value.msg
    assert member_store.read_locked(cursor) == frozenset()


def test_remove_locks_then_deactivates_with_erasure() -> None:
    _module, api, cursor = guard()
    calls: list[str] = []

    async def deactivate(api: Any, user: str, requester: Any) -> None:
        assert user in member_store.read_locked(cursor), "locked before deactivation"
        calls.append(user)

    with patch.object(compat, "deactivate_account", deactivate):
        status, answer = post(api, REMOVE, requester(ADMIN), b'{"user_id": "@alice:test.local"}')
    assert status == 200
    assert answer["deactivated"] is True
    assert calls == [ALICE]
