"""What a worker deployment needs of the guard, without a worker: its tables created safely by
many at once, no session revocation where Synapse cannot do it, and every process's gauge
following the lockdown table. The real thing: tests/integration/test_workers.py."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any
from unittest.mock import Mock, patch

import pytest
from prometheus_client import REGISTRY
from synapse.storage.engines import PostgresEngine

from synapse_guard import compat, schema
from synapse_guard.compat import ConfigError, SynapseError
from synapse_guard.lockdown import store as lockdown_store
from synapse_guard.lockdown.control import GAUGE_REFRESH_MS, LOCKDOWN_PATH
from synapse_guard.lockdown.state import StateCache
from synapse_guard.totp import store as totp_store
from synapse_guard.verdict import Check, Reason
from tests.unit.conftest import ALICE, create_module, decisions, make_api
from tests.unit.lockdown.test_lockdown import (
    BREAKGLASS,
    call_resource,
    guard_with_lockdown,
    lockdown_of,
)

GUARD_TABLES = (lockdown_store.CREATE, totp_store.CREATE_TABLE)

# -- the guard's tables ----------------------------------------------------------------------


def test_many_first_uses_at_once_all_succeed_on_sqlite(tmp_path: Path) -> None:
    """Twenty connections (as twenty requests would) create and use the tables at once."""
    database = tmp_path / "guard.db"
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def first_use() -> None:
        connection = sqlite3.connect(database, timeout=30)
        try:
            start.wait()
            cursor = connection.cursor()
            schema.create_tables(cursor, GUARD_TABLES)
            connection.commit()
            assert not lockdown_store.read_state(cursor).locked
            assert totp_store.get_enrolment(cursor, ALICE) is None
        except BaseException as e:
            errors.append(e)
        finally:
            connection.close()

    threads = [threading.Thread(target=first_use) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_on_postgresql_the_ddl_waits_for_the_advisory_lock_first() -> None:
    txn = Mock()
    txn.database_engine = Mock(spec=PostgresEngine)
    schema.create_tables(txn, GUARD_TABLES)
    statements = [call.args[0] for call in txn.execute.call_args_list]
    assert statements[0] == "SELECT pg_advisory_xact_lock(?)"
    assert txn.execute.call_args_list[0].args[1] == (schema.ADVISORY_LOCK_KEY,)
    assert statements[1:] == list(GUARD_TABLES)
    assert schema.ADVISORY_LOCK_KEY < 2**63  # a PostgreSQL bigint


def test_tables_are_created_once_per_process_and_retried_after_a_failure() -> None:
    api = make_api()
    outcomes: list[Exception | None] = [ConnectionError("database down"), None]

    async def run_db_interaction(desc: str, func: Any, *args: Any) -> None:
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure

    api.run_db_interaction.side_effect = run_db_interaction
    tables = schema.Tables(api, "lockdown", (lockdown_store.CREATE,))
    with pytest.raises(ConnectionError):
        asyncio.run(tables.ensure())
    asyncio.run(tables.ensure())
    asyncio.run(tables.ensure())
    assert api.run_db_interaction.call_count == 2
    assert api.run_db_interaction.call_args.args[0] == "synapse_guard_lockdown_create"


# -- logging sessions out on a worker --------------------------------------------------------


def worker_api(version: str, name: str | None = "background1") -> Mock:
    api = make_api()
    api.worker_app = "synapse.app.generic_worker" if name else None
    api.worker_name = name
    return api


@pytest.mark.parametrize(
    ("version", "worker", "refused"),
    [
        ("1.100.0", "background1", True),
        ("1.134.0", "background1", True),
        ("1.135.0", "background1", False),
        ("1.163.2", "background1", False),
        ("1.100.0", None, False),  # the main process
    ],
)
def test_only_synapse_1_135_logs_sessions_out_on_a_worker(
    version: str, worker: str | None, refused: bool
) -> None:
    api = worker_api(version, worker)
    with patch.object(compat.synapse, "__version__", version):
        reason = compat.cannot_log_out_here(api)
    assert (reason is not None) is refused
    if refused:
        assert reason is not None
        assert "1.135.0" in reason
        assert "'background1'" in reason


SWEEPING = {"network": {"allow_cidrs": ["10.8.0.0/24"], "revoke_sessions": True}}


def test_an_old_synapse_refuses_to_start_with_the_sweep_on_a_background_worker() -> None:
    api = worker_api("1.134.0")
    with patch.object(compat.synapse, "__version__", "1.134.0"), pytest.raises(ConfigError) as e:
        create_module(SWEEPING, api=api)
    assert "run_background_tasks_on" in str(e.value)
    assert "1.135.0" in str(e.value)


def test_an_old_synapse_starts_where_the_sweep_does_not_run_or_can_log_out() -> None:
    with patch.object(compat.synapse, "__version__", "1.134.0"):
        idle = worker_api("1.134.0")
        idle.should_run_background_tasks.return_value = False
        create_module(SWEEPING, api=idle)  # a client worker: no sweep here
        create_module(SWEEPING, api=worker_api("1.134.0", None))  # the main process
        create_module(
            {
                "network": {**SWEEPING["network"], "revoke_sessions": False},
                "sessions": {"idle_timeout": None},  # the idle sweep logs out too
            },
            api=worker_api("1.134.0"),
        )


def test_revoke_sessions_on_an_old_worker_is_refused_before_anything_is_switched() -> None:
    _module, api, cursor = guard_with_lockdown()
    api.worker_app, api.worker_name = "synapse.app.generic_worker", "client1"
    body = json.dumps({"locked": True, "revoke_sessions": True}).encode()
    with patch.object(compat.synapse, "__version__", "1.100.0"), pytest.raises(SynapseError) as e:
        call_resource(api, LOCKDOWN_PATH, "POST", BREAKGLASS, body)
    assert e.value.code == 400
    assert "main process" in e.value.msg
    lockdown_store.ensure_table(cursor)
    assert not lockdown_store.read_state(cursor).locked


def test_a_failing_logout_does_not_turn_the_switch_into_a_500(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _module, api, cursor = guard_with_lockdown()
    cursor.executemany(
        "INSERT INTO access_tokens (user_id, device_id, token) VALUES (?, ?, ?)",
        [(ALICE, "D1", "t1"), ("@carol:test.local", "D2", "t2")],
    )

    async def log_out(api: Any, user: str, device: str | None, token: str, seen: Any = ()) -> None:
        if user == ALICE:
            raise AttributeError("'DeviceWorkerHandler' object has no attribute 'delete_devices'")

    monkeypatch.setattr("synapse_guard.compat.log_out_session", log_out)
    before = decisions(Check.REQUEST, "deny", Reason.INTERNAL_ERROR)
    body = json.dumps({"locked": True, "revoke_sessions": True}).encode()
    code, status = call_resource(api, LOCKDOWN_PATH, "POST", BREAKGLASS, body)
    assert (code, status["locked"], status["revoked_sessions"]) == (200, True, 1)
    assert status["revoke_failed"] == 1
    assert decisions(Check.REQUEST, "deny", Reason.INTERNAL_ERROR) == before + 1
    assert lockdown_store.read_state(cursor).locked


# -- the lockdown gauge on every process -----------------------------------------------------


def gauge() -> float | None:
    return REGISTRY.get_sample_value("synapse_guard_lockdown_active")


def test_every_process_refreshes_its_lockdown_gauge() -> None:
    """An idle worker, serving no request, still sees the unlock and clears its gauge."""
    _module, api, cursor = guard_with_lockdown()
    (call,) = [
        c
        for c in api.looping_background_call.call_args_list
        if c.kwargs.get("desc") == "synapse_guard_lockdown_gauge"
    ]
    assert call.kwargs["run_on_all_instances"] is True
    assert call.args[1] == GAUGE_REFRESH_MS
    control = lockdown_of(api)
    clock = [1000.0]
    control._cache = StateCache(clock=lambda: clock[0])
    lockdown_store.ensure_table(cursor)
    lockdown_store.switch(cursor, True, "manual")
    asyncio.run(control.refresh_gauge())
    assert gauge() == 1
    lockdown_store.switch(cursor, False, "manual")  # another process unlocks
    clock[0] += GAUGE_REFRESH_MS / 1000
    asyncio.run(control.refresh_gauge())
    assert gauge() == 0


def test_the_gauge_refresh_is_registered_on_idle_workers_too() -> None:
    api = make_api()
    api.should_run_background_tasks.return_value = False
    create_module({"lockdown": {"exempt_users": [BREAKGLASS]}}, api=api)
    descs = {c.kwargs.get("desc") for c in api.looping_background_call.call_args_list}
    assert descs == {"synapse_guard_lockdown_gauge"}


def test_an_unreadable_state_is_logged_once_and_keeps_the_gauge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _module, api, _cursor = guard_with_lockdown()
    control = lockdown_of(api)
    api.run_db_interaction.side_effect = ConnectionError("database down")
    for _ in range(3):
        asyncio.run(control.refresh_gauge())
    assert caplog.text.count("cannot read the state for its gauge") == 1
