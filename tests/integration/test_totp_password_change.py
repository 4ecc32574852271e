"""A member changes their own password from Element under auth.totp, on a real Synapse.

The current credential is the same as at login: password + a fresh 6-digit code, in the UIA
`m.login.password` step of `POST /account/password`. The new password meets homeserver.d's
`password_config.policy`, and every other session is logged out. A thief with the password
alone, or with a code already used, changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import HOMESERVER_D, PASSWORD, MatrixClient, SynapseServer
from tests.integration.test_totp import auth_config, code, enroll, provision

CHANGE = "/_matrix/client/v3/account/password"
WHOAMI = "/_matrix/client/v3/account/whoami"
NEW_PASSWORD = "Autre-Cheval-7-Batterie"


def accounts_with_localdb_off() -> dict[str, Any]:
    """homeserver.d's password_config (its policy) with Synapse's own check off, as auth.totp
    needs: the test override replaces the whole top-level key, so it repeats the policy."""
    accounts = yaml.safe_load((HOMESERVER_D / "20-accounts.yaml").read_text())
    return {"password_config": {**accounts["password_config"], "localdb_enabled": False}}


@pytest.fixture(scope="module")
def secrets_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("totp") / "totp.key"
    key.write_bytes(b"k" * 16 + b"password-change-" * 2)
    return key


@pytest.fixture(scope="module")
def server(synapse_factory: SynapseFactory, secrets_key: Path) -> SynapseServer:
    return synapse_factory(
        extra=accounts_with_localdb_off(), guard=auth_config(secrets_key, "required")
    ).start()


@pytest.fixture(scope="module")
def admin_token(server: SynapseServer) -> str:
    return provision(server, "admin", admin=True)[1]


def member(server: SynapseServer, admin_token: str, prefix: str) -> tuple[str, Any, str]:
    """(localpart, TOTP, token of another session): the token shared-secret registration
    returned is a device of its own, the member's "other phone"."""
    localpart, other_token = provision(server, prefix)
    return localpart, enroll(server, admin_token, server.user_id(localpart)), other_token


def password_auth(user_id: str, password: str, session: str | None = None) -> dict[str, Any]:
    """Element's UIA password step (ChangePassword / InteractiveAuth)."""
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    if session is not None:
        auth["session"] = session
    return auth


def test_capabilities_let_members_change_their_password(
    server: SynapseServer, admin_token: str
) -> None:
    localpart, totp, _ = member(server, admin_token, "cap")
    client = MatrixClient(server.url)
    assert client.login(localpart, PASSWORD + code(totp))[0] == 200
    status, body = client.request("GET", "/_matrix/client/v3/capabilities")
    assert status == 200, body
    assert body["capabilities"]["m.change_password"]["enabled"] is True


def test_a_member_changes_it_with_password_and_code_and_other_sessions_end(
    server: SynapseServer, admin_token: str
) -> None:
    localpart, totp, other_token = member(server, admin_token, "alice")
    user_id = server.user_id(localpart)
    phone = MatrixClient(server.url)
    assert phone.login(localpart, PASSWORD + code(totp, -1))[0] == 200
    # Asking the client to keep the other sessions does not: a change ends them all.
    change = {"new_password": NEW_PASSWORD, "logout_devices": False}
    status, body = phone.request("POST", CHANGE, change)
    assert status == 401, body  # UIA first, offering the password step
    assert {"stages": ["m.login.password"]} in body["flows"]
    auth = password_auth(user_id, PASSWORD + code(totp), body["session"])
    status, body = phone.request("POST", CHANGE, {**change, "auth": auth})
    assert status == 200, body

    assert phone.request("GET", WHOAMI)[0] == 200  # this session stays
    status, body = server.client(other_token).request("GET", WHOAMI)
    assert status == 401  # the other one is gone
    assert body["errcode"] == "M_UNKNOWN_TOKEN"
    # The old password with a valid, unused code: refused; the new one with that code: in.
    assert MatrixClient(server.url).login(localpart, PASSWORD + code(totp, +1))[0] == 403
    assert MatrixClient(server.url).login(localpart, NEW_PASSWORD + code(totp, +1))[0] == 200
    assert MatrixClient(server.url).login(localpart, NEW_PASSWORD)[0] == 403  # code still needed


def test_the_password_alone_or_a_used_code_changes_nothing(
    server: SynapseServer, admin_token: str
) -> None:
    localpart, totp, other_token = member(server, admin_token, "bob")
    user_id = server.user_id(localpart)
    login_value = PASSWORD + code(totp)
    thief = MatrixClient(server.url)
    assert thief.login(localpart, login_value)[0] == 200
    change = {"new_password": "Stolen-Password-2026x"}
    for password in (PASSWORD, login_value, PASSWORD + "000000"):
        status, body = thief.request(
            "POST", CHANGE, {**change, "auth": password_auth(user_id, password)}
        )
        assert status == 401, (password, body)
        assert body.get("errcode") == "M_FORBIDDEN"
    # Nothing changed: the member's other session still works, the old password still logs in.
    assert server.client(other_token).request("GET", WHOAMI)[0] == 200
    assert MatrixClient(server.url).login(localpart, PASSWORD + code(totp, +1))[0] == 200


@pytest.mark.parametrize(
    ("weak", "errcode"),
    [
        ("Short-1a", "M_PASSWORD_TOO_SHORT"),
        ("no-digits-Here-at-all", "M_PASSWORD_NO_DIGIT"),
        ("all-lowercase-42-here", "M_PASSWORD_NO_UPPERCASE"),
    ],
)
def test_a_new_password_below_the_policy_is_refused(
    server: SynapseServer, admin_token: str, weak: str, errcode: str
) -> None:
    localpart, totp, other_token = member(server, admin_token, "carol")
    user_id = server.user_id(localpart)
    phone = MatrixClient(server.url)
    assert phone.login(localpart, PASSWORD + code(totp, -1))[0] == 200
    auth = password_auth(user_id, PASSWORD + code(totp))
    status, body = phone.request("POST", CHANGE, {"new_password": weak, "auth": auth})
    assert status == 400, body
    assert body["errcode"] == errcode
    assert server.client(other_token).request("GET", WHOAMI)[0] == 200  # nothing logged out
