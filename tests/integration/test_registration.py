"""Registration lockdown on a real Synapse: only admin provisioning creates accounts.

Two layers, each proven on its own:
- homeserver.d (Synapse's own settings) refuses client registration on the hardened server;
- the guard refuses it alone on a server whose own registration settings are wide open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import SynapseFactory
from tests.integration.fake_idp import FakeCas
from tests.integration.harness import PASSWORD, SHARED_SECRET, MatrixClient, SynapseServer

JWT_SECRET = "jwt-test-secret"

# Synapse's own registration layer opened as far as it goes.
OPEN_REGISTRATION = {
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "registration_requires_token": True,
    "allow_guest_access": True,
    "enable_3pid_changes": True,
    "email": {
        # Never contacted: the guard refuses before any mail would be sent.
        "smtp_host": "127.0.0.1",
        "smtp_port": 9,
        "notif_from": "Guard test <noreply@guard.test>",
        "enable_notifs": False,
    },
    "jwt_config": {"enabled": True, "secret": JWT_SECRET, "algorithm": "HS256"},
}
PROVISIONER = {"module": "guard_test_provisioner.Provisioner", "config": {}}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def user_exists(server: SynapseServer, admin: MatrixClient, localpart: str) -> bool:
    status, _ = admin.request("GET", f"/_synapse/admin/v2/users/{server.user_id(localpart)}")
    assert status in (200, 404)
    return status == 200


def register_with_uia(
    client: MatrixClient, username: str, stages: list[dict[str, Any]]
) -> tuple[int, Any]:
    """Walk /register's user-interactive auth through the given stages, as a client does."""
    body: dict[str, Any] = {"username": username, "password": PASSWORD}
    status, reply = client.request("POST", "/_matrix/client/v3/register", body, auth=False)
    for stage in stages:
        if status != 401:
            break
        body["auth"] = {**stage, "session": reply["session"]}
        status, reply = client.request("POST", "/_matrix/client/v3/register", body, auth=False)
    return status, reply


def jwt_token(subject: str) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": subject, "exp": int(time.time()) + 300}).encode())
    signature = hmac.new(JWT_SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64(signature.digest())}"


@pytest.fixture(scope="module")
def cas() -> Iterator[FakeCas]:
    with FakeCas(user=unique("sso")) as idp:
        yield idp


@pytest.fixture(scope="module")
def open_synapse(synapse_factory: SynapseFactory, cas: FakeCas) -> SynapseServer:
    """Synapse's registration wide open; the guard (registration.mode: closed) alone refuses."""
    extra = {**OPEN_REGISTRATION, "cas_config": {"enabled": True, "server_url": cas.url}}
    return synapse_factory(extra=extra, extra_modules=[PROVISIONER]).start()


@pytest.fixture(scope="module")
def admin(open_synapse: SynapseServer) -> MatrixClient:
    return open_synapse.new_user("admin", admin=True)[1]


# --- Synapse's own layer (homeserver.d) ----------------------------------------------------


def test_hardened_server_refuses_client_registration(synapse: SynapseServer) -> None:
    client = synapse.client()
    status, reply = register_with_uia(client, unique("eve"), [{"type": "m.login.dummy"}])
    assert status == 403, reply
    status, reply = client.request(
        "POST", "/_matrix/client/v3/register", {}, params={"kind": "guest"}, auth=False
    )
    assert status == 403, reply


def test_hardened_server_refuses_3pid_request_tokens(synapse: SynapseServer) -> None:
    status, reply = synapse.client().request(
        "POST",
        "/_matrix/client/v3/register/email/requestToken",
        {"client_secret": "s3cr3t", "email": "eve@example.org", "send_attempt": 1},
        auth=False,
    )
    assert status in (400, 403), reply


# --- The guard's layer alone ---------------------------------------------------------------


def test_password_registration_with_a_valid_token_is_refused(
    open_synapse: SynapseServer, admin: MatrixClient
) -> None:
    status, reply = admin.request(
        "POST", "/_synapse/admin/v1/registration_tokens/new", {"uses_allowed": 5}
    )
    assert status == 200, reply
    token = reply["token"]
    before = open_synapse.decisions("registration", "deny", "registration_closed")
    localpart = unique("eve")

    status, reply = register_with_uia(
        open_synapse.client(),
        localpart,
        [{"type": "m.login.registration_token", "token": token}, {"type": "m.login.dummy"}],
    )

    assert status == 429, reply  # Synapse disguises a module's refusal as rate limiting
    assert not user_exists(open_synapse, admin, localpart)
    assert open_synapse.decisions("registration", "deny", "registration_closed") == before + 1


def test_guest_registration_is_refused(open_synapse: SynapseServer) -> None:
    before = open_synapse.decisions("registration", "deny", "registration_closed")
    status, reply = open_synapse.client().request(
        "POST", "/_matrix/client/v3/register", {}, params={"kind": "guest"}, auth=False
    )
    assert status == 429, reply
    assert open_synapse.decisions("registration", "deny", "registration_closed") == before + 1


def test_3pid_request_tokens_are_refused(open_synapse: SynapseServer) -> None:
    before = open_synapse.decisions("threepid", "deny", "threepid")
    status, reply = open_synapse.client().request(
        "POST",
        "/_matrix/client/v3/register/email/requestToken",
        {"client_secret": "s3cr3t", "email": "eve@example.org", "send_attempt": 1},
        auth=False,
    )
    assert status == 403, reply
    assert reply["errcode"] == "M_THREEPID_DENIED"

    _, member = open_synapse.new_user("member")
    status, reply = member.request(
        "POST",
        "/_matrix/client/v3/account/3pid/email/requestToken",
        {"client_secret": "s3cr3t", "email": "member@example.org", "send_attempt": 1},
    )
    assert status == 403, reply
    assert open_synapse.decisions("threepid", "deny", "threepid") >= before + 2


def test_sso_auto_provisioning_is_refused(
    open_synapse: SynapseServer, admin: MatrixClient, cas: FakeCas
) -> None:
    before = open_synapse.decisions("registration", "deny", "registration_closed")
    response = requests.get(
        f"{open_synapse.url}/_matrix/client/v3/login/cas/ticket",
        params={"redirectUrl": "http://client.invalid/", "ticket": "ST-1"},
        allow_redirects=False,
        timeout=30,
    )
    assert cas.validations >= 1, "Synapse never asked the IdP: the test proves nothing"
    assert response.status_code != 302 or "loginToken" not in response.headers.get("Location", "")
    assert not user_exists(open_synapse, admin, cas.user)
    assert open_synapse.decisions("registration", "deny", "registration_closed") == before + 1


def test_jwt_auto_provisioning_is_refused(open_synapse: SynapseServer, admin: MatrixClient) -> None:
    localpart = unique("jwt")
    before = open_synapse.decisions("registration", "deny", "registration_closed")
    status, reply = open_synapse.client().request(
        "POST",
        "/_matrix/client/v3/login",
        {"type": "org.matrix.login.jwt", "token": jwt_token(localpart)},
        auth=False,
    )
    assert status == 429, reply
    assert not user_exists(open_synapse, admin, localpart)
    assert open_synapse.decisions("registration", "deny", "registration_closed") == before + 1


# --- Admin provisioning keeps working -------------------------------------------------------


def test_admin_api_creates_accounts(open_synapse: SynapseServer, admin: MatrixClient) -> None:
    localpart = unique("carol")
    before = open_synapse.decisions("registration", "allow", "admin_provisioning")
    status, reply = admin.request(
        "PUT", f"/_synapse/admin/v2/users/{open_synapse.user_id(localpart)}", {"password": PASSWORD}
    )
    assert status == 201, reply
    assert open_synapse.login(localpart).user_id == open_synapse.user_id(localpart)
    assert open_synapse.decisions("registration", "allow", "admin_provisioning") == before + 1


def test_module_api_creates_accounts(open_synapse: SynapseServer, admin: MatrixClient) -> None:
    localpart = unique("bot")
    status, reply = open_synapse.client().request(
        "POST",
        "/_synapse/client/test_provisioner",
        {},
        params={"localpart": localpart},
        auth=False,
    )
    assert status == 200, reply
    assert user_exists(open_synapse, admin, localpart)


def test_register_new_matrix_user_creates_accounts(synapse: SynapseServer) -> None:
    localpart = unique("dave")
    script = Path(sys.executable).with_name("register_new_matrix_user")
    result = subprocess.run(
        [
            str(script),
            "-k",
            SHARED_SECRET,
            "-u",
            localpart,
            "-p",
            PASSWORD,
            "--no-admin",
            synapse.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert synapse.login(localpart).user_id == synapse.user_id(localpart)


# --- Control: the same open server with the guard's registration open -----------------------


def test_control_open_mode_lets_clients_register(synapse_factory: SynapseFactory) -> None:
    """Proves the refusals above come from the guard: with mode open they succeed."""
    extra = {
        key: value
        for key, value in OPEN_REGISTRATION.items()
        if key != "registration_requires_token"
    }
    server = synapse_factory(extra=extra, guard={"registration": {"mode": "open"}}).start()
    try:
        status, reply = register_with_uia(
            server.client(), unique("eve"), [{"type": "m.login.dummy"}]
        )
        assert status == 200, reply
    finally:
        server.stop()
