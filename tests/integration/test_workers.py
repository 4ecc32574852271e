"""The guard under Synapse workers: PostgreSQL, redis, the main process, two generic workers
taking client traffic and a worker running background tasks (workers.py).

What a client can send to any process must be judged the same on every one: registration,
logins by address, rooms and their state, the per-request gate, the lockdown (state in the
database, read at most every 2 s by each process: `lockdown.state.CACHE_TTL_S`), TOTP codes
(used steps and failures in the database). Background tasks (the session sweep) run on the
background worker; each process exposes its own metrics.

Addresses reach Synapse in X-Forwarded-For (`x_forwarded: true`), as behind nginx.
"""

from __future__ import annotations

import copy
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pyotp
import pytest
from synapse.storage.engines import PostgresEngine

from synapse_guard import compat, schema
from synapse_guard.lockdown import store as lockdown_store
from synapse_guard.lockdown.control import GAUGE_REFRESH_MS
from synapse_guard.lockdown.state import CACHE_TTL_S
from synapse_guard.totp import store as totp_store
from tests.integration.conftest import require
from tests.integration.harness import (
    PASSWORD,
    MatrixClient,
    PostgresCluster,
    SynapseServer,
    tracebacks,
)
from tests.integration.test_rooms import assert_compliant
from tests.integration.test_totp import provision
from tests.integration.workers import WorkerDeployment, WorkerProcess

HOME = "10.8.0.5"  # allowed by CIDR
ABROAD = "192.0.2.1"  # refused
LOCKDOWN = "/_synapse/client/synapse_guard/lockdown"
ENROLL = "/_synapse/client/synapse_guard/totp/enroll"
WHOAMI = "/_matrix/client/v3/account/whoami"
MEMBER_LOCK = "/_synapse/client/synapse_guard/member/lock"
MEMBER_UNLOCK = "/_synapse/client/synapse_guard/member/unlock"
BREAKGLASS = "breakglass"
SWEEP_S = 2
MAX_FAILURES = 3
# Lockdown seen by every process within the state cache's lifetime (plus request latency).
LOCKDOWN_BOUND_S = CACHE_TTL_S + 1.5
# Every process's gauge follows within one refresh and one cache lifetime (plus a scrape).
GAUGE_BOUND_S = GAUGE_REFRESH_MS / 1000 + CACHE_TTL_S + 1.0
# A use reaches user_ips within Synapse's 5 s batch (sent from the worker to the main
# process, which writes it); the next sweep on the background worker then sees it.
SWEEP_BOUND_S = 5 + 2 * SWEEP_S + 3
LOGOUT_ON_WORKERS = compat.synapse_version() >= compat.LOGOUT_ON_WORKERS_SINCE
GUARD_WARNING = re.compile(r" - synapse_guard[.\w]* - \d+ - (WARNING|ERROR|CRITICAL) - ")
# What the tests cause on purpose (the operator is told of every switch and mass logout), and
# the start-up notices of versions that lack a callback or hook, which have nothing to do
# with workers.
EXPECTED_WARNINGS = (
    "lockdown switched on",
    "lockdown switched off",
    "lockdown: logged out",
    "member locked:",
    "member unlocked",
    "cannot refuse a pusher before Synapse stores it",
    "that layer of the guard is inactive on this version",
)


def from_(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def guard_config(key: Path, revoke_sessions: bool = LOGOUT_ON_WORKERS) -> dict[str, Any]:
    return {
        "network": {
            "allow_cidrs": ["10.8.0.0/24"],
            "revoke_sessions": revoke_sessions,
            "sweep_interval": f"{SWEEP_S}s",
        },
        "auth": {"totp": "optional", "secrets_key_path": str(key), "max_failures": MAX_FAILURES},
        "lockdown": {"exempt_users": [f"@{BREAKGLASS}:guard.test"]},
        # Before 1.135 a background worker cannot log idle sessions out either.
        "sessions": {"idle_timeout": "30d" if revoke_sessions else None, "sweep_interval": "2s"},
    }


LOCALDB_OFF = {"password_config": {"enabled": True, "localdb_enabled": False}}


@pytest.fixture(scope="module")
def secrets_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("totp") / "totp.key"
    key.write_bytes(uuid.uuid4().bytes * 2)
    key.chmod(0o644)  # read by Synapse, which may run as another user than the test
    return key


def deployment_or_skip(
    base_config: Path, postgres: PostgresCluster, guard: dict[str, Any]
) -> WorkerDeployment:
    try:
        import txredisapi  # noqa: F401 (what Synapse's redis replication needs)
    except ImportError:
        require("Synapse's redis extra is not installed (matrix-synapse[redis])")
    try:
        return WorkerDeployment(
            base_config, postgres.create_database(), guard=guard, extra=LOCALDB_OFF
        )
    except Exception as e:  # ServerMissing: redis-server is not installed
        require(str(e))
        raise


@pytest.fixture(scope="module")
def deployment(
    base_config: Path, postgres: PostgresCluster, secrets_key: Path
) -> Iterator[WorkerDeployment]:
    workers = deployment_or_skip(base_config, postgres, guard_config(secrets_key))
    try:
        workers.start()
        print(f"\nworker deployment (main, 2 client workers, background) up in "
              f"{workers.started_in_s:.1f}s")  # fmt: skip
        yield workers
    finally:
        workers.stop()
        workers.cleanup()


@pytest.fixture(scope="module")
def breakglass(deployment: WorkerDeployment) -> str:
    """The exempt admin's token (shared-secret registration: no login needed)."""
    _localpart, token = provision_named(deployment.main, BREAKGLASS, admin=True)
    return token


def provision_named(server: SynapseServer, localpart: str, admin: bool) -> tuple[str, str]:
    server.register_user(localpart, admin=admin)
    client = server.client()
    status, body = client.login(localpart, PASSWORD, headers=from_(HOME))
    assert status == 200, body
    return localpart, str(body["access_token"])


def member(server: SynapseServer, prefix: str = "member") -> tuple[str, MatrixClient]:
    """A new account (provisioned on the main process), logged in from HOME on `server`."""
    localpart = (server.main if isinstance(server, WorkerProcess) else server).new_account(prefix)
    client = server.client()
    client.default_headers = from_(HOME)
    status, body = client.login(localpart, PASSWORD)
    assert status == 200, body
    return localpart, client


def on(server: SynapseServer, token: str, address: str = HOME) -> MatrixClient:
    client = MatrixClient(server.url, token)
    client.default_headers = from_(address)
    return client


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.1) -> float:
    """Seconds until `condition` held; fails after `timeout`."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            pytest.fail(f"not within {timeout:.1f}s")
        time.sleep(step)
    return time.monotonic() - began


# -- the guard's tables on a fresh database -------------------------------------------------


class PostgresTxn:
    """What the guard's DDL needs of Synapse's LoggingTransaction: `?` placeholders and the
    engine."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.database_engine = Mock(spec=PostgresEngine)

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        self.cursor.execute(sql.replace("?", "%s"), args)


def test_thirty_creators_at_once_on_postgresql_all_succeed(postgres: PostgresCluster) -> None:
    """The race itself, without Synapse: thirty transactions creating the guard's tables at
    the same instant. Plain `CREATE TABLE IF NOT EXISTS` fails in 29 of them with
    UniqueViolation (measured here); behind the advisory lock, none does."""
    psycopg2 = pytest.importorskip("psycopg2")
    args = postgres.create_database()["args"]
    start = threading.Barrier(30)
    errors: list[str] = []

    def create() -> None:
        connection = psycopg2.connect(
            host="127.0.0.1", port=args["port"], user="postgres", dbname=args["database"]
        )
        try:
            txn = PostgresTxn(connection.cursor())
            start.wait()
            schema.create_tables(txn, (lockdown_store.CREATE, totp_store.CREATE_TABLE))
            connection.commit()
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            connection.close()

    threads = [threading.Thread(target=create) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_concurrent_first_use_of_every_guard_table_on_a_fresh_database(
    base_config: Path, postgres: PostgresCluster, secrets_key: Path
) -> None:
    """50 first requests at once to the main process and a worker of a fresh database, the
    first uses of the lockdown and TOTP tables in each process: none fails (before, some
    failed with UniqueViolation on CREATE TABLE). Metrics off, so that no gauge refresh uses
    the lockdown table first."""
    guard = {**guard_config(secrets_key, revoke_sessions=False), "metrics": {"enabled": False}}
    fresh = deployment_or_skip(base_config, postgres, guard)
    fresh.main.background = None  # background tasks on the main process
    worker = fresh.clients[0]
    try:
        fresh.redis.start()
        fresh.main.start()
        worker.start()
        # Shared-secret registration (on the main process) uses none of the guard's tables.
        _, admin_token = provision(fresh.main, "admin", admin=True)
        user = fresh.main.new_account("first")
        enrolled = fresh.main.user_id(fresh.main.new_account("enrolled"))
        processes = (fresh.main, worker)

        def first_use(i: int) -> tuple[int, Any]:
            server = processes[i % 2]
            if i % 5 == 0:  # a password login: the TOTP table, then the lockdown's
                return server.client().login(user, PASSWORD, headers=from_(HOME))
            client = on(server, admin_token)
            if i % 5 < 3:  # the lockdown's state
                return client.request("GET", LOCKDOWN)
            return client.request("POST", ENROLL, {"user_id": enrolled})

        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(first_use, range(50)))
        statuses = [status for status, _ in answers]
        errors = {
            name: [line for line in text.splitlines() if " - ERROR - " in line or "Error" in line]
            for name, text in fresh.logs().items()
        }
        # Every enrolment but the first finds the user enrolled: 409, an answer, not a failure.
        failed = [answer for answer in answers if answer[0] not in (200, 409)]
        assert failed == [], (failed, errors)
        assert statuses.count(200) >= 31, statuses
        for name, text in fresh.logs().items():
            assert "UniqueViolation" not in text, name
            assert tracebacks(text) == [], (name, errors[name])
    finally:
        fresh.stop()
        fresh.cleanup()


# -- the deployment ------------------------------------------------------------------------


def test_every_process_runs_the_guard_and_exposes_its_metrics(
    deployment: WorkerDeployment,
) -> None:
    ports = {server.metrics_port for server in deployment.processes}
    assert len(ports) == len(deployment.processes)  # each its own metrics listener
    for server in deployment.processes:
        assert server.metric("synapse_guard_info") == 1, server.workdir.name


def test_registration_is_refused_by_every_process(deployment: WorkerDeployment) -> None:
    for server in deployment.processes:
        status, body = server.client().request(
            "POST",
            "/_matrix/client/v3/register",
            {"username": f"eve{uuid.uuid4().hex[:6]}", "password": PASSWORD},
            headers=from_(HOME),
            auth=False,
        )
        assert status == 403, (server.workdir.name, status, body)


def test_logins_are_judged_by_address_on_every_client_worker(
    deployment: WorkerDeployment,
) -> None:
    localpart = deployment.main.new_account("roamer")
    for server in [deployment.main, *deployment.clients]:
        client = server.client()
        assert client.login(localpart, PASSWORD, headers=from_(ABROAD))[0] == 403
        assert client.login(localpart, PASSWORD, headers=from_(HOME))[0] == 200


def test_a_room_made_on_one_worker_is_compliant_on_another_and_stays_so(
    deployment: WorkerDeployment,
) -> None:
    client1, client2 = deployment.clients
    _, friend = member(client1, "owner")
    room_id = friend.room_id(preset="public_chat", visibility="public")
    elsewhere = on(client2, str(friend.token))
    assert_compliant(elsewhere, room_id)
    for event_type, content in (
        ("m.room.join_rules", {"join_rule": "public"}),
        ("m.room.history_visibility", {"history_visibility": "world_readable"}),
        ("m.room.retention", {"max_lifetime": 365 * 86_400_000}),
    ):
        assert elsewhere.put_state(room_id, event_type, content)[0] == 403, event_type
    assert_compliant(on(deployment.main, str(friend.token)), room_id)


def test_the_gate_refuses_a_stolen_token_on_every_process(deployment: WorkerDeployment) -> None:
    _, owner = member(deployment.clients[0], "owner")
    token = str(owner.token)
    for server in deployment.processes:
        assert on(server, token, ABROAD).request("GET", WHOAMI)[0] == 403, server.workdir.name
        assert on(server, token, HOME).request("GET", WHOAMI)[0] == 200, server.workdir.name


def refused_everywhere(deployment: WorkerDeployment, token: str, refused: bool) -> bool:
    answers = {on(s, token).request("GET", WHOAMI)[0] for s in deployment.processes}
    return answers == ({403} if refused else {200})


def gauges(deployment: WorkerDeployment) -> set[float]:
    return {s.metric("synapse_guard_lockdown_active") for s in deployment.processes}


def test_lockdown_on_and_off_is_seen_by_every_process_within_the_bound(
    deployment: WorkerDeployment, breakglass: str
) -> None:
    _, bystander = member(deployment.clients[1], "bystander")
    token = str(bystander.token)
    admin1, admin2 = (on(server, breakglass) for server in deployment.clients)
    assert refused_everywhere(deployment, token, refused=False)
    try:
        assert admin1.request("POST", LOCKDOWN, {"locked": True})[0] == 200
        locked_in = wait_for(lambda: refused_everywhere(deployment, token, True), LOCKDOWN_BOUND_S)
        gauge_in = wait_for(lambda: gauges(deployment) == {1.0}, GAUGE_BOUND_S, step=0.5)
    finally:
        assert admin2.request("POST", LOCKDOWN, {"locked": False})[0] == 200
    unlocked_in = wait_for(lambda: refused_everywhere(deployment, token, False), LOCKDOWN_BOUND_S)
    # The background worker serves no request: its gauge clears by its own refresh.
    cleared_in = wait_for(lambda: gauges(deployment) == {0.0}, GAUGE_BOUND_S, step=0.5)
    print(f"\nlockdown on every process in {locked_in:.1f}s (gauges {gauge_in:.1f}s), "
          f"off in {unlocked_in:.1f}s (gauges {cleared_in:.1f}s)")  # fmt: skip


def test_revoke_sessions_on_a_worker(deployment: WorkerDeployment, breakglass: str) -> None:
    """From 1.135 a worker logs sessions out; before, it refuses before switching anything."""
    _, victim = member(deployment.clients[0], "victim")
    admin = on(deployment.clients[1], breakglass)
    status, body = admin.request("POST", LOCKDOWN, {"locked": True, "revoke_sessions": True})
    try:
        if LOGOUT_ON_WORKERS:
            assert status == 200, body
            assert body["locked"] is True
            assert body["revoked_sessions"] >= 1
            assert "revoke_failed" not in body
        else:
            assert status == 400, body
            assert "main process" in body["error"]
            assert admin.request("GET", LOCKDOWN)[1]["locked"] is False
    finally:
        assert admin.request("POST", LOCKDOWN, {"locked": False})[0] == 200
    expected = 401 if LOGOUT_ON_WORKERS else 200
    wait_for(lambda: victim.request("GET", WHOAMI)[0] == expected, LOCKDOWN_BOUND_S)


def test_a_member_lock_holds_on_every_process(
    deployment: WorkerDeployment, breakglass: str
) -> None:
    """`member lock` sent to a worker (from 1.135; the main process before) logs the member
    out and refuses their login on every process within the cache's bound; unlocked, they
    log in anywhere again. Before 1.135 a worker answers 400 before locking anything."""
    localpart, phone = member(deployment.clients[0], "lost-phone")
    user_id = deployment.main.user_id(localpart)
    if not LOGOUT_ON_WORKERS:
        worker_admin = on(deployment.clients[1], breakglass)
        status, body = worker_admin.request("POST", MEMBER_LOCK, {"user_id": user_id})
        assert status == 400, body
        assert "main process" in body["error"]
    admin = on(deployment.clients[1] if LOGOUT_ON_WORKERS else deployment.main, breakglass)
    status, body = admin.request("POST", MEMBER_LOCK, {"user_id": user_id})
    assert status == 200, body
    assert body["revoked_sessions"] >= 1
    try:
        assert phone.request("GET", WHOAMI)[0] in (401, 403)

        def refused_everywhere() -> bool:
            return all(
                server.client().login(localpart, PASSWORD, headers=from_(HOME))[0] == 403
                for server in (deployment.main, *deployment.clients)
            )

        wait_for(refused_everywhere, LOCKDOWN_BOUND_S, step=0.5)
    finally:
        status, body = admin.request("POST", MEMBER_UNLOCK, {"user_id": user_id})
        assert status == 200, body
    wait_for(
        lambda: (
            deployment.clients[0].client().login(localpart, PASSWORD, headers=from_(HOME))[0] == 200
        ),
        LOCKDOWN_BOUND_S,
        step=0.5,
    )


@pytest.mark.skipif(not LOGOUT_ON_WORKERS, reason="before 1.135 only the main process can")
def test_the_idle_sweep_on_the_background_worker_logs_out_an_idle_session(
    deployment: WorkerDeployment, postgres: PostgresCluster
) -> None:
    """A session unused for 40 days (its device's last use set back in the database) is
    logged out by the background worker's idle sweep; its token stops working everywhere."""
    _, drawer = member(deployment.clients[0], "drawer")
    assert deployment.main.database is not None
    database = deployment.main.database["args"]["database"]
    long_ago = int(time.time() * 1000) - 40 * 24 * 3600 * 1000
    device = f"'{drawer.device_id}'"
    postgres.psql(database, f"UPDATE devices SET last_seen = {long_ago} WHERE device_id = {device}")
    postgres.psql(
        database, f"UPDATE access_tokens SET last_validated = {long_ago} WHERE device_id = {device}"
    )
    # Watched in the database: a request would record a new use.
    wait_for(
        lambda: postgres.psql(database, f"SELECT 1 FROM devices WHERE device_id = {device}") == "",
        4 * SWEEP_S + 2,
        step=0.5,
    )
    for server in (deployment.main, *deployment.clients):
        assert on(server, str(drawer.token)).request("GET", WHOAMI)[0] == 401


@pytest.mark.skipif(
    not LOGOUT_ON_WORKERS or compat.synapse_version() < (1, 111, 0),
    reason="needs a worker that can log out (1.135) and /versions recording tokens (1.111)",
)
def test_the_sweep_on_the_background_worker_logs_out_a_session_seen_from_abroad(
    deployment: WorkerDeployment,
) -> None:
    _, client = member(deployment.clients[0], "swept")
    token = str(client.token)
    status, _ = MatrixClient(deployment.clients[1].url).request(
        "GET",
        "/_matrix/client/versions",
        headers={**from_(ABROAD), "Authorization": f"Bearer {token}"},
        auth=False,
    )
    assert status == 200  # not judged by the gate, but recorded in user_ips
    before = deployment.background.metric("synapse_guard_sessions_revoked_total")
    elapsed = wait_for(lambda: client.request("GET", WHOAMI)[0] == 401, SWEEP_BOUND_S, step=0.5)
    assert deployment.background.metric("synapse_guard_sessions_revoked_total") == before + 1
    print(f"\nsweep on {deployment.background.name}: logged out in {elapsed:.1f}s "
          f"(bound {SWEEP_BOUND_S}s)")  # fmt: skip


def code_at(totp: pyotp.TOTP, offset_steps: int = 0) -> str:
    return totp.at(time.time() + offset_steps * 30)


def enrolled_user(deployment: WorkerDeployment, breakglass: str) -> tuple[str, pyotp.TOTP]:
    localpart = deployment.main.new_account("totp")
    admin = on(deployment.clients[0], breakglass)
    status, body = admin.request("POST", ENROLL, {"user_id": deployment.main.user_id(localpart)})
    assert status == 200, body
    return localpart, pyotp.parse_uri(body["otpauth_uri"])  # type: ignore[return-value]


def test_one_code_sent_to_two_workers_at_once_logs_in_once(
    deployment: WorkerDeployment, breakglass: str
) -> None:
    localpart, totp = enrolled_user(deployment, breakglass)
    password = PASSWORD + code_at(totp)

    def attempt(server: WorkerProcess) -> int:
        return server.client().login(localpart, password, headers=from_(HOME))[0]

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(attempt, deployment.clients))
    assert statuses == [200, 403]
    # And the same code later, on either worker or the main process: a replay.
    for server in [deployment.main, *deployment.clients]:
        assert server.client().login(localpart, password, headers=from_(HOME))[0] == 403


def test_failed_codes_count_across_workers(deployment: WorkerDeployment, breakglass: str) -> None:
    localpart, totp = enrolled_user(deployment, breakglass)
    wrong = f"{(int(code_at(totp)) + 1) % 1_000_000:06d}"
    for i in range(MAX_FAILURES):
        server = deployment.clients[i % 2]
        assert server.client().login(localpart, PASSWORD + wrong, headers=from_(HOME))[0] == 403
    right = deployment.main.client().login(localpart, PASSWORD + code_at(totp), headers=from_(HOME))
    assert right[0] == 403, "the failure limit holds across processes"


@pytest.mark.skipif(LOGOUT_ON_WORKERS, reason="Synapse >= 1.135 logs sessions out on workers")
def test_an_old_synapse_refuses_to_run_the_sweep_on_a_worker(
    deployment: WorkerDeployment, tmp_path: Path
) -> None:
    """Before 1.135 a worker cannot log sessions out: a background worker with the sweep on
    refuses to start, naming the setting to change (its worker file overrides the shared
    `run_background_tasks_on` and `modules`)."""
    guard = copy.deepcopy(deployment.main.guard_config)
    guard["network"]["revoke_sessions"] = True
    worker = WorkerProcess(
        tmp_path,
        deployment.main,
        "background2",
        extra={
            "run_background_tasks_on": "background2",
            "modules": [{"module": "synapse_guard.Guard", "config": guard}],
        },
    )
    code, output = worker.run_to_exit()
    output += worker.log_file.read_text() if worker.log_file.exists() else ""
    assert code != 0
    assert "run_background_tasks_on" in output, output[-3000:]
    assert "1.135.0" in output


def test_no_guard_warning_or_traceback_in_any_log(deployment: WorkerDeployment) -> None:
    for name, text in deployment.logs().items():
        assert tracebacks(text) == [], name
        assert "Not running looping call" not in text, name
        warnings = [
            line
            for line in text.splitlines()
            if GUARD_WARNING.search(line) and not any(w in line for w in EXPECTED_WARNINGS)
        ]
        assert warnings == [], (name, warnings)
