"""The second factor on a real Synapse: password followed by a 6-digit code, from a stock client.

The server runs with `password_config.localdb_enabled: false` (Synapse no longer checks
passwords itself) and `auth.totp: required` or `optional`. Codes are computed with pyotp from
the otpauth:// URI the admin endpoint returns, as an authenticator app would.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import time
import uuid
from pathlib import Path
from typing import Any

import pyotp
import pytest
import requests

from synapse_guard.cli import main as cli
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import (
    PASSWORD,
    SHARED_SECRET,
    MatrixClient,
    PostgresCluster,
    SynapseServer,
)
from tests.integration.test_registration import JWT_SECRET, jwt_token

LOCALDB_OFF = {"password_config": {"enabled": True, "localdb_enabled": False}}
MAX_FAILURES = 5
ENROLL = "/_synapse/client/synapse_guard/totp/enroll"
RESET = "/_synapse/client/synapse_guard/totp/reset"
SET_PASSWORD = "/_synapse/client/synapse_guard/totp/password"


def auth_config(key: Path, mode: str) -> dict[str, Any]:
    return {
        "auth": {
            "totp": mode,
            "secrets_key_path": str(key),
            "max_failures": MAX_FAILURES,
            "failure_window": "15m",
            "issuer": "Guard Test",
        }
    }


def provision(server: SynapseServer, prefix: str, admin: bool = False) -> tuple[str, str]:
    """Shared-secret registration, which also returns a token: how the first admin gets one
    on a server where nobody can log in without an enrolled second factor."""
    localpart = f"{prefix}-{uuid.uuid4().hex[:8]}"
    endpoint = f"{server.url}/_synapse/admin/v1/register"
    nonce = requests.get(endpoint, timeout=10).json()["nonce"]
    fields = (nonce, localpart, PASSWORD, "admin" if admin else "notadmin")
    mac = hmac.new(SHARED_SECRET.encode(), b"\x00".join(f.encode() for f in fields), hashlib.sha1)
    reply = requests.post(
        endpoint,
        json={
            "nonce": nonce,
            "username": localpart,
            "password": PASSWORD,
            "admin": admin,
            "mac": mac.hexdigest(),
        },
        timeout=30,
    )
    assert reply.ok, reply.text
    return localpart, str(reply.json()["access_token"])


def enroll(server: SynapseServer, admin_token: str, user_id: str) -> pyotp.TOTP:
    status, body = server.client(admin_token).request("POST", ENROLL, {"user_id": user_id})
    assert status == 200, body
    uri = body["otpauth_uri"]
    assert uri.startswith("otpauth://totp/")
    assert "issuer=Guard%20Test" in uri
    return pyotp.parse_uri(uri)  # type: ignore[return-value]


def code(totp: pyotp.TOTP, steps: int = 0) -> str:
    return totp.at(time.time() + steps * 30)


def login(server: SynapseServer, localpart: str, password: str) -> int:
    status, _ = server.client().login(localpart, password)
    return status


@pytest.fixture(scope="module")
def secrets_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("totp") / "totp.key"
    key.write_bytes(uuid.uuid4().bytes * 2)
    return key


@pytest.fixture(scope="module")
def server(synapse_factory: SynapseFactory, secrets_key: Path) -> SynapseServer:
    return synapse_factory(extra=LOCALDB_OFF, guard=auth_config(secrets_key, "required")).start()


@pytest.fixture(scope="module")
def admin_token(server: SynapseServer) -> str:
    return provision(server, "admin", admin=True)[1]


def test_an_enrolled_user_logs_in_only_with_password_and_a_fresh_code(
    server: SynapseServer, admin_token: str
) -> None:
    alice, _ = provision(server, "alice")
    totp = enroll(server, admin_token, server.user_id(alice))

    first = code(totp)
    assert login(server, alice, PASSWORD + first) == 200
    assert login(server, alice, PASSWORD + first) == 403  # the same code again
    assert server.decisions("login", "deny", "totp_replayed") >= 1
    assert login(server, alice, PASSWORD) == 403  # password alone
    wrong = f"{(int(first) + 1) % 1_000_000:06d}"
    assert login(server, alice, PASSWORD + wrong) == 403
    assert login(server, alice, PASSWORD + code(totp, -2)) == 403  # a minute old: expired
    assert server.decisions("login", "deny", "totp_invalid") >= 2

    following = code(totp, +1)  # the next step's code (clock skew is accepted)
    assert login(server, alice, "Wrong-Password-1" + following) == 403
    assert server.decisions("login", "deny", "password_invalid") >= 1
    # The refused attempt did not use the code up.
    assert login(server, alice, PASSWORD + following) == 200


def test_a_user_not_enrolled_cannot_log_in_when_the_code_is_required(
    server: SynapseServer,
) -> None:
    bob, _ = provision(server, "bob")
    assert login(server, bob, PASSWORD) == 403
    assert login(server, bob, PASSWORD + "123456") == 403
    assert server.decisions("login", "deny", "totp_not_enrolled") >= 1


def test_only_a_server_admin_may_enroll(server: SynapseServer, admin_token: str) -> None:
    carol, carol_token = provision(server, "carol")
    status, body = server.client(carol_token).request(
        "POST", ENROLL, {"user_id": server.user_id(carol)}
    )
    assert status == 403, body
    for path in (RESET, SET_PASSWORD):
        status, _ = server.client(carol_token).request(
            "POST", path, {"user_id": server.user_id(carol), "password": "x"}
        )
        assert status == 403
    status, _ = server.client().request("POST", ENROLL, {"user_id": server.user_id(carol)})
    assert status == 401  # no token at all
    # Carol is still not enrolled: the admin can enrol her now.
    enroll(server, admin_token, server.user_id(carol))


def test_malformed_requests_are_refused_and_change_nothing(
    server: SynapseServer, admin_token: str
) -> None:
    dave, _ = provision(server, "dave")
    user_id = server.user_id(dave)
    headers = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
    for payload in (b'{"user_id": ', b"[1, 2]", b'{"user_id": 42}', b'{"user": "x"}'):
        reply = requests.post(server.url + ENROLL, data=payload, headers=headers, timeout=30)
        assert reply.status_code == 400, (payload, reply.text)
    status, _ = server.client(admin_token).request(
        "POST", ENROLL, {"user_id": "@nobody-here:guard.test"}
    )
    assert status == 404
    # Dave was never enrolled by any of them: a first enrolment succeeds, a second is refused.
    enroll(server, admin_token, user_id)
    status, _ = server.client(admin_token).request("POST", ENROLL, {"user_id": user_id})
    assert status == 409


def test_failed_codes_are_rate_limited(server: SynapseServer, admin_token: str) -> None:
    erin, _ = provision(server, "erin")
    totp = enroll(server, admin_token, server.user_id(erin))
    before = server.decisions("login", "deny", "totp_rate_limited")
    good = code(totp)
    wrong = f"{(int(good) + 500_000) % 1_000_000:06d}"
    for _ in range(MAX_FAILURES):
        assert login(server, erin, PASSWORD + wrong) == 403
    assert login(server, erin, PASSWORD + good) == 403  # right code, but too many failures
    assert server.decisions("login", "deny", "totp_rate_limited") == before + 1


def test_reset_then_a_new_enrolment_replaces_the_secret(
    server: SynapseServer, admin_token: str
) -> None:
    frank, _ = provision(server, "frank")
    user_id = server.user_id(frank)
    old = enroll(server, admin_token, user_id)
    status, body = server.client(admin_token).request("POST", RESET, {"user_id": user_id})
    assert status == 200
    assert body["removed"] is True
    assert login(server, frank, PASSWORD + code(old)) == 403  # reset: not enrolled any more
    new = enroll(server, admin_token, user_id)
    assert new.secret != old.secret
    assert login(server, frank, PASSWORD + code(new)) == 200


def test_the_admin_sets_a_password_through_the_guard_or_synapse(
    server: SynapseServer, admin_token: str
) -> None:
    grace, _ = provision(server, "grace")
    user_id = server.user_id(grace)
    totp = enroll(server, admin_token, user_id)
    # The guard's endpoint...
    status, body = server.client(admin_token).request(
        "POST", SET_PASSWORD, {"user_id": user_id, "password": "New-Password-42x"}
    )
    assert status == 200, body
    assert login(server, grace, PASSWORD + code(totp)) == 403
    assert login(server, grace, "New-Password-42x" + code(totp, +1)) == 200
    # ...or Synapse's admin API, which the guard lets through under auth.totp (members change
    # their own: tests/integration/test_totp_password_change.py).
    status, _ = server.client(admin_token).request(
        "PUT", f"/_synapse/admin/v2/users/{user_id}", {"password": "Admin-Password-43x"}
    )
    assert status == 200
    assert login(server, grace, "New-Password-42x" + code(totp, +1)) == 403
    assert login(server, grace, "Admin-Password-43x") == 403  # still needs its code


def test_enrolments_survive_a_restart(server: SynapseServer, admin_token: str) -> None:
    henry, _ = provision(server, "henry")
    totp = enroll(server, admin_token, server.user_id(henry))
    server.restart()
    assert login(server, henry, PASSWORD) == 403
    assert login(server, henry, PASSWORD + code(totp)) == 200
    status, _ = server.client(admin_token).request(
        "POST", ENROLL, {"user_id": server.user_id(henry)}
    )
    assert status == 409  # still enrolled


def test_optional_asks_a_code_only_of_enrolled_users(
    synapse_factory: SynapseFactory, secrets_key: Path
) -> None:
    server = synapse_factory(extra=LOCALDB_OFF, guard=auth_config(secrets_key, "optional")).start()
    admin, admin_token = provision(server, "admin", admin=True)
    assert login(server, admin, PASSWORD) == 200  # not enrolled: password only
    assert login(server, admin, "Wrong-Password-1") == 403
    ivy, _ = provision(server, "ivy")
    totp = enroll(server, admin_token, server.user_id(ivy))
    assert login(server, ivy, PASSWORD) == 403
    assert login(server, ivy, PASSWORD + code(totp)) == 200
    server.stop()


def test_synapse_refuses_to_start_when_it_would_accept_the_password_alone(
    synapse_factory: SynapseFactory, secrets_key: Path
) -> None:
    exit_code, output = synapse_factory(guard=auth_config(secrets_key, "required")).run_to_exit()
    assert exit_code != 0
    assert "localdb_enabled: false" in output


def test_synapse_refuses_to_start_with_a_short_secrets_key(
    synapse_factory: SynapseFactory, tmp_path: Path
) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    exit_code, output = synapse_factory(
        extra=LOCALDB_OFF, guard=auth_config(short, "required")
    ).run_to_exit()
    assert exit_code != 0
    assert "auth.secrets_key_path" in output
    assert "at least 32" in output


def test_uia_password_steps_need_the_code_too(server: SynapseServer, admin_token: str) -> None:
    jane, _ = provision(server, "jane")
    user_id = server.user_id(jane)
    totp = enroll(server, admin_token, user_id)
    client = MatrixClient(server.url)
    status, _ = client.login(jane, PASSWORD + code(totp))
    assert status == 200
    path = f"/_matrix/client/v3/devices/{client.device_id}"
    status, body = client.request("DELETE", path, {})
    assert status == 401
    session = body["session"]
    identifier = {"type": "m.id.user", "user": user_id}
    auth = {"type": "m.login.password", "identifier": identifier, "session": session}
    status, _ = client.request("DELETE", path, {"auth": {**auth, "password": PASSWORD}})
    assert status == 401  # password alone
    status, body = client.request(
        "DELETE", path, {"auth": {**auth, "password": PASSWORD + code(totp, +1)}}
    )
    assert status == 200, body


def test_the_cli_enrolls_resets_and_sets_passwords(
    server: SynapseServer,
    admin_token: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kate, _ = provision(server, "kate")
    user_id = server.user_id(kate)
    token_file = tmp_path / "admin.token"
    token_file.write_text(admin_token + "\n")
    common = ["--url", server.url, "--token-file", str(token_file), "--user", user_id]

    assert cli.main(["totp", "enroll", *common]) == 0
    out = capsys.readouterr().out
    (uri,) = [line for line in out.splitlines() if line.startswith("otpauth://")]
    assert admin_token not in out
    totp = pyotp.parse_uri(uri)
    assert login(server, kate, PASSWORD + code(totp)) == 200

    assert cli.main(["totp", "enroll", *common]) == 1  # already enrolled: refused, said why
    assert "409" in capsys.readouterr().err

    monkeypatch.setattr("sys.stdin", io.StringIO("Other-Password-77\n"))
    assert cli.main(["totp", "set-password", *common]) == 0
    assert login(server, kate, "Other-Password-77" + code(totp, +1)) == 200

    assert cli.main(["totp", "reset", *common]) == 0
    assert "removed" in capsys.readouterr().out
    assert login(server, kate, "Other-Password-77") == 403  # required, and no longer enrolled


def test_accounts_the_admin_api_creates_with_a_password_can_enrol(
    server: SynapseServer, admin_token: str
) -> None:
    user_id = server.user_id(f"liam-{uuid.uuid4().hex[:8]}")
    status, body = server.client(admin_token).request(
        "PUT", f"/_synapse/admin/v2/users/{user_id}", {"password": "Liam-Password-123"}
    )
    assert status == 201, body  # creation still stores the hash with localdb_enabled: false
    totp = enroll(server, admin_token, user_id)
    assert login(server, user_id, "Liam-Password-123" + code(totp)) == 200
    # A password login is still advertised: stock clients keep showing their password form.
    status, flows = server.client().request("GET", "/_matrix/client/v3/login", auth=False)
    assert {"type": "m.login.password"} in flows["flows"]


def test_logins_that_carry_no_code_are_refused(
    synapse_factory: SynapseFactory, secrets_key: Path
) -> None:
    """With auth.totp: required, a login the guard did not check with a code (here a valid
    JWT; SSO token logins and appservices alike) is refused by check_login_for_spam."""
    auth = auth_config(secrets_key, "required")
    server = synapse_factory(
        extra={
            **LOCALDB_OFF,
            "jwt_config": {"enabled": True, "secret": JWT_SECRET, "algorithm": "HS256"},
        },
        guard=auth,
    ).start()
    _, admin_token = provision(server, "admin", admin=True)
    mia, _ = provision(server, "mia")
    totp = enroll(server, admin_token, server.user_id(mia))
    assert login(server, mia, PASSWORD + code(totp)) == 200  # checked by the guard: allowed
    before = server.decisions("login", "deny", "totp_required")
    status, body = server.client().request(
        "POST",
        "/_matrix/client/v3/login",
        {"type": "org.matrix.login.jwt", "token": jwt_token(mia)},
        auth=False,
    )
    assert status == 403, body  # a valid JWT, but no code
    assert body["error"] == "Invalid username or password"  # as a wrong password reads
    assert server.decisions("login", "deny", "totp_required") == before + 1
    server.stop()


@pytest.mark.postgres
def test_the_second_factor_on_postgres(
    synapse_factory: SynapseFactory, secrets_key: Path, postgres: PostgresCluster
) -> None:
    database = postgres.create_database()
    server = synapse_factory(
        database=database, extra=LOCALDB_OFF, guard=auth_config(secrets_key, "required")
    ).start()
    _, admin_token = provision(server, "admin", admin=True)
    nina, _ = provision(server, "nina")
    user_id = server.user_id(nina)
    totp = enroll(server, admin_token, user_id)
    first = code(totp)
    assert login(server, nina, PASSWORD + first) == 200
    assert login(server, nina, PASSWORD + first) == 403  # replayed
    # The secret is stored sealed, never in clear.
    stored = postgres.psql(
        database["args"]["database"],
        f"SELECT secret FROM synapse_guard_totp WHERE user_id = '{user_id}'",
    ).strip()
    assert stored.startswith("v1:")
    assert totp.secret not in stored
    wrong = f"{(int(first) + 1) % 1_000_000:06d}"
    for _ in range(MAX_FAILURES - 1):  # the replay above was the first failure
        assert login(server, nina, PASSWORD + wrong) == 403
    assert login(server, nina, PASSWORD + code(totp, +1)) == 403  # rate limited
    assert server.decisions("login", "deny", "totp_rate_limited") == 1
    server.stop()
