"""Lockdown and the dead man's switch on a real Synapse.

A story: an admin locks the server; members are shut out of every request and of login, the
break-glass admin keeps working and unlocks; the lock survives a restart; bad requests change
nothing; and a dead man's switch that nobody checks in to locks the server by itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from synapse_guard.cli import main as cli
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, MatrixClient, PostgresCluster, SynapseServer

LOCKDOWN = "/_synapse/client/synapse_guard/lockdown"
CHECKIN = "/_synapse/client/synapse_guard/checkin"
SYNC = "/_matrix/client/v3/sync?timeout=0"
BREAKGLASS = "breakglass"
KEEPER = "keeper"
# A lockdown refusal reads as a refusal, not as "account expired" (which some clients take
# for the end of the session).
FORBIDDEN = "M_FORBIDDEN"


def exempt_config(server_name: str = "guard.test", **extra: Any) -> dict[str, Any]:
    return {
        "lockdown": {
            "exempt_users": [f"@{BREAKGLASS}:{server_name}"],
            "checkin_users": [f"@{KEEPER}:{server_name}"],
            **extra,
        }
    }


@pytest.fixture(scope="module")
def server(synapse_factory: SynapseFactory) -> SynapseServer:
    server = synapse_factory(guard=exempt_config()).start()
    server.register_user(BREAKGLASS, admin=True)
    return server


@pytest.fixture
def breakglass(server: SynapseServer) -> Iterator[MatrixClient]:
    client = server.login(BREAKGLASS)
    yield client
    # Every test leaves the server open for the next one.
    status, body = client.request("POST", LOCKDOWN, {"locked": False})
    assert status == 200, body


def status_of(client: MatrixClient) -> dict[str, Any]:
    status, body = client.request("GET", LOCKDOWN)
    assert status == 200, body
    return dict(body)


def post_raw(client: MatrixClient, path: str, data: bytes) -> tuple[int, Any]:
    response = requests.post(
        client.base_url + path,
        data=data,
        headers={"Authorization": f"Bearer {client.token}", "Content-Type": "application/json"},
        timeout=30,
    )
    return response.status_code, response.json()


def test_a_lockdown_shuts_members_out_and_the_breakglass_admin_unlocks(
    server: SynapseServer, breakglass: MatrixClient
) -> None:
    member_id, member = server.new_user("member")
    _admin_id, admin = server.new_user("admin", admin=True)
    member_localpart = member_id[1:].split(":")[0]
    assert member.request("GET", SYNC)[0] == 200

    # Any server admin may lock (a panic button).
    status, body = admin.request("POST", LOCKDOWN, {"locked": True})
    assert status == 200, body
    assert body["locked"] is True
    assert body["cause"] == "manual"
    assert body["changed"] is True
    assert isinstance(body["since"], int)

    status, body = member.request("GET", SYNC)
    assert (status, body["errcode"]) == (403, FORBIDDEN)
    # A token minted now is as useless (the login refusal itself: the next test).
    fresh = server.client()
    if fresh.login(member_localpart, PASSWORD)[0] == 200:
        assert fresh.request("GET", SYNC)[0] == 403
    assert server.decisions("request", "deny", "lockdown") >= 1
    assert server.metric("synapse_guard_lockdown_active") == 1
    assert server.metric("synapse_guard_lockdowns_total", cause="manual") >= 1

    # The admin who locked is not exempt: shut out like everyone, the endpoint included.
    assert admin.request("GET", SYNC)[0] == 403
    status, body = admin.request("POST", LOCKDOWN, {"locked": False})
    assert status == 403, body

    # The break-glass admin works normally, and can log in again.
    assert breakglass.request("GET", SYNC)[0] == 200
    assert server.login(BREAKGLASS).request("GET", SYNC)[0] == 200
    assert status_of(breakglass)["locked"] is True

    status, body = breakglass.request("POST", LOCKDOWN, {"locked": False})
    assert status == 200, body
    assert body["locked"] is False
    assert body["changed"] is True
    assert member.request("GET", SYNC)[0] == 200
    assert admin.request("GET", SYNC)[0] == 200


def test_logins_are_refused_during_a_lockdown(
    server: SynapseServer, breakglass: MatrixClient
) -> None:
    member_id, _member = server.new_user("member")
    member_localpart = member_id[1:].split(":")[0]
    assert breakglass.request("POST", LOCKDOWN, {"locked": True})[0] == 200
    try:
        status, body = server.client().login(member_localpart, PASSWORD)
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN")
        assert server.decisions("login", "deny", "lockdown") >= 1
        assert server.login(BREAKGLASS).request("GET", SYNC)[0] == 200
    finally:
        assert breakglass.request("POST", LOCKDOWN, {"locked": False})[0] == 200
    assert server.client().login(member_localpart, PASSWORD)[0] == 200


def test_the_lockdown_survives_a_restart(server: SynapseServer, breakglass: MatrixClient) -> None:
    _member_id, member = server.new_user("member")
    assert breakglass.request("POST", LOCKDOWN, {"locked": True})[0] == 200
    server.restart()
    status, body = member.request("GET", SYNC)
    assert (status, body.get("errcode")) == (403, FORBIDDEN)
    assert status_of(breakglass)["locked"] is True
    assert breakglass.request("POST", LOCKDOWN, {"locked": False})[0] == 200
    assert member.request("GET", SYNC)[0] == 200


def test_members_may_not_switch_and_bad_requests_change_nothing(
    server: SynapseServer, breakglass: MatrixClient
) -> None:
    _member_id, member = server.new_user("member")
    status, body = member.request("POST", LOCKDOWN, {"locked": True})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert member.request("GET", LOCKDOWN)[0] == 403
    assert server.client().request("GET", LOCKDOWN, auth=False)[0] == 401
    assert status_of(breakglass)["locked"] is False

    for bad in (b"{not json", b"", b"[true]", b'{"locked": "yes"}', b'{"locked": true, "x": 1}',
                b'{"locked": true, "revoke_sessions": 1}', b'{"locked": false, '
                b'"revoke_sessions": true}'):  # fmt: skip
        status, body = post_raw(breakglass, LOCKDOWN, bad)
        assert status == 400, (bad, body)
        # M_NOT_JSON when it does not parse (as Synapse answers), M_BAD_JSON for the rest.
        assert body["errcode"] == ("M_NOT_JSON" if bad in (b"{not json", b"") else "M_BAD_JSON")
        assert status_of(breakglass)["locked"] is False, bad
    assert member.request("GET", SYNC)[0] == 200

    # A member is no check-in user either.
    assert member.request("POST", CHECKIN, {})[0] == 403


def test_locking_with_revoke_sessions_logs_members_out(
    server: SynapseServer, breakglass: MatrixClient
) -> None:
    _member_id, member = server.new_user("member")
    before = server.metric("synapse_guard_lockdown_sessions_revoked_total")
    status, body = breakglass.request("POST", LOCKDOWN, {"locked": True, "revoke_sessions": True})
    assert status == 200, body
    assert body["revoked_sessions"] >= 1
    assert server.metric("synapse_guard_lockdown_sessions_revoked_total") > before
    assert breakglass.request("GET", SYNC)[0] == 200
    assert breakglass.request("POST", LOCKDOWN, {"locked": False})[0] == 200
    status, body = member.request("GET", SYNC)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


# -- the dead man's switch --------------------------------------------------------------------

INTERVAL_S = 3


@pytest.fixture(scope="module")
def deadman(synapse_factory: SynapseFactory) -> SynapseServer:
    server = synapse_factory(guard=exempt_config(deadman_interval=f"{INTERVAL_S}s")).start()
    server.register_user(BREAKGLASS, admin=True)
    server.register_user(KEEPER)
    return server


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_check_ins_keep_the_server_open_and_silence_locks_it(
    deadman: SynapseServer, tmp_path: Path
) -> None:
    breakglass = deadman.login(BREAKGLASS)
    keeper = deadman.login(KEEPER)
    _member_id, member = deadman.new_user("member")

    token_file = tmp_path / "keeper-token"
    token_file.write_text(str(keeper.token))
    checkin = ["checkin", "--url", deadman.url, "--token-file", str(token_file)]

    # Checking in every second (API and CLI), for twice the interval: the server stays open.
    for second in range(2 * INTERVAL_S):
        if second % 2:
            assert cli.main(checkin) == 0
        else:
            status, body = keeper.request("POST", CHECKIN)
            assert status == 200, body
            assert body["locked"] is False
        assert member.request("GET", SYNC)[0] == 200
        time.sleep(1)
    status = status_of(breakglass)
    assert status["deadman"]["enabled"] is True
    assert status["deadman"]["interval_ms"] == INTERVAL_S * 1000
    assert status["deadman"]["deadline"] > status["now"]
    assert deadman.metric("synapse_guard_deadman_last_checkin_timestamp_seconds") > 0

    # Nobody checks in: within the interval plus a poll, the switch locks the server.
    assert wait_for(lambda: status_of(breakglass)["locked"], 3 * INTERVAL_S)
    status = status_of(breakglass)
    assert status["cause"] == "deadman"
    assert wait_for(lambda: member.request("GET", SYNC)[0] == 403, 5)
    assert deadman.metric("synapse_guard_lockdowns_total", cause="deadman") == 1
    assert "dead man's switch: no check-in" in deadman.log_file.read_text()

    # A check-in does not unlock; the break-glass admin does, and the clock restarts.
    assert keeper.request("POST", CHECKIN)[1]["locked"] is True
    assert breakglass.request("POST", LOCKDOWN, {"locked": False})[0] == 200
    assert member.request("GET", SYNC)[0] == 200
    assert status_of(breakglass)["locked"] is False


def test_the_cli_locks_unlocks_and_reports(
    server: SynapseServer, breakglass: MatrixClient, tmp_path: Path, capsys: Any
) -> None:
    _member_id, member = server.new_user("member")
    token_file = tmp_path / "token"
    token_file.write_text(f"{breakglass.token}\n")
    common = ["--url", server.url, "--token-file", str(token_file)]

    assert cli.main(["lockdown", "on", *common]) == 0
    assert "locked down (cause: manual" in capsys.readouterr().out
    assert member.request("GET", SYNC)[0] == 403
    assert cli.main(["lockdown", "status", *common]) == 0
    assert "locked down" in capsys.readouterr().out
    assert cli.main(["lockdown", "off", *common]) == 0
    assert capsys.readouterr().out.startswith("open")
    assert member.request("GET", SYNC)[0] == 200

    # A member's token: refused by the server (1). No token file, bad arguments: usage (2).
    member_file = tmp_path / "member-token"
    member_file.write_text(str(member.token))
    assert cli.main(["lockdown", "on", "--url", server.url, "--token-file", str(member_file)]) == 1
    assert "HTTP 403: M_FORBIDDEN" in capsys.readouterr().err
    assert cli.main(["checkin", "--url", server.url, "--token-file", str(member_file)]) == 1
    assert cli.main(["lockdown", "on", "--url", server.url, "--token-file", "/nonexistent"]) == 2
    assert cli.main(["lockdown", "off", "--revoke-sessions", *common]) == 2
    assert status_of(breakglass)["locked"] is False


def test_lockdown_and_the_switch_on_postgres(
    synapse_factory: SynapseFactory, postgres: PostgresCluster
) -> None:
    database = postgres.create_database()
    server = synapse_factory(
        database=database, guard=exempt_config(deadman_interval=f"{INTERVAL_S}s")
    ).start()
    server.register_user(KEEPER)
    assert server.login(KEEPER).request("POST", CHECKIN)[0] == 200
    server.register_user(BREAKGLASS, admin=True)
    breakglass = server.login(BREAKGLASS)
    _member_id, member = server.new_user("member")

    status = status_of(breakglass)
    assert status["locked"] is False
    assert abs(status["now"] - time.time() * 1000) < 60_000  # the database's clock, in ms
    assert breakglass.request("POST", LOCKDOWN, {"locked": True})[0] == 200
    assert member.request("GET", SYNC)[0] == 403
    server.restart()
    assert member.request("GET", SYNC)[0] == 403
    rows = postgres.psql(database["args"]["database"], "SELECT name FROM synapse_guard_state")
    assert sorted(rows.split()) == ["deadman_checkin", "lockdown"]
    assert breakglass.request("POST", LOCKDOWN, {"locked": False})[0] == 200
    assert member.request("GET", SYNC)[0] == 200
    # Silence: the switch locks by itself.
    assert wait_for(lambda: status_of(breakglass)["cause"] == "deadman", 3 * INTERVAL_S)
