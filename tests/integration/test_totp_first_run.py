"""Element's first run under `auth.totp: required`, on a real Synapse: cross-signing and backup.

Right after login, Element bootstraps cross-signing (`POST /keys/device_signing/upload`) and,
if the server asks for UIA, answers it with the password + code it has just logged in with.
The guard refuses that replay, so a first upload must need no UIA: Synapse's rule from 1.110.0
(MSC3967), which the guard turns on for older releases (`compat.first_cross_signing_without_uia`).
The keys are real ones, signed as a client signs them (signedjson, a Synapse dependency).
Then the thief's tries: the same code again, from this session or another, an old code, the
password alone, a bare token; every one leaves the member's keys as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import signedjson.key
import signedjson.sign

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, MatrixClient, SynapseServer
from tests.integration.test_totp import LOCALDB_OFF, auth_config, code, enroll, provision

UPLOAD = "/_matrix/client/v3/keys/device_signing/upload"


def cross_signing_keys(user_id: str) -> dict[str, Any]:
    """A master key and the self- and user-signing keys it signs, as Element uploads them."""
    master = _key()
    body: dict[str, Any] = {"master_key": _public(user_id, "master", master)}
    for usage in ("self_signing", "user_signing"):
        key = _public(user_id, usage, _key())
        body[f"{usage}_key"] = signedjson.sign.sign_json(key, user_id, master)
    return body


def _key() -> Any:
    key = signedjson.key.generate_signing_key("0")
    key.version = signedjson.key.encode_verify_key_base64(signedjson.key.get_verify_key(key))
    return key


def _public(user_id: str, usage: str, key: Any) -> dict[str, Any]:
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{key.version}": key.version}}


def password_auth(user_id: str, password: str, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    return auth if session is None else {**auth, "session": session}


def master_key(server: SynapseServer, client: MatrixClient, user_id: str) -> Any:
    status, body = client.request(
        "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}}
    )
    assert status == 200, body
    return body.get("master_keys", {}).get(user_id, {}).get("keys")


@pytest.fixture(scope="module")
def secrets_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("totp") / "totp.key"
    key.write_bytes(b"first-run-secrets-key-" * 2)
    return key


@pytest.fixture(scope="module")
def server(synapse_factory: SynapseFactory, secrets_key: Path) -> SynapseServer:
    return synapse_factory(extra=LOCALDB_OFF, guard=auth_config(secrets_key, "required")).start()


@pytest.fixture(scope="module")
def admin_token(server: SynapseServer) -> str:
    return provision(server, "admin", admin=True)[1]


@pytest.mark.parametrize("element", ["asks-first", "sends-cached-password"])
def test_a_new_member_sets_up_cross_signing_and_backup_on_first_run(
    server: SynapseServer, admin_token: str, element: str
) -> None:
    localpart, _ = provision(server, "newcomer")
    user_id = server.user_id(localpart)
    totp = enroll(server, admin_token, user_id)
    login_value = PASSWORD + code(totp)
    phone = MatrixClient(server.url)
    assert phone.login(localpart, login_value)[0] == 200
    keys = cross_signing_keys(user_id)
    if element == "asks-first":
        # The sdk's bootstrap: no auth, then UIA with the cached password if asked.
        status, body = phone.request("POST", UPLOAD, keys)
        if status == 401:
            auth = password_auth(user_id, login_value, body.get("session"))
            status, body = phone.request("POST", UPLOAD, {**keys, "auth": auth})
    else:
        # Element with the password still in memory sends it at once.
        status, body = phone.request(
            "POST", UPLOAD, {**keys, "auth": password_auth(user_id, login_value)}
        )
    assert status == 200, body
    assert master_key(server, phone, user_id) == keys["master_key"]["keys"]
    # Key backup, the first run's next step, asks for no UIA.
    backup = {
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
        "auth_data": {"public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo"},
    }
    status, body = phone.request("POST", "/_matrix/client/v3/room_keys/version", backup)
    assert status == 200, body


def test_after_the_first_run_every_code_is_still_used_once(
    server: SynapseServer, admin_token: str
) -> None:
    localpart, _ = provision(server, "owner")
    user_id = server.user_id(localpart)
    totp = enroll(server, admin_token, user_id)
    first_code, second_code = code(totp, -1), code(totp)
    phone = MatrixClient(server.url)
    assert phone.login(localpart, PASSWORD + first_code)[0] == 200
    keys = cross_signing_keys(user_id)
    assert phone.request("POST", UPLOAD, keys)[0] == 200  # the first run
    laptop = MatrixClient(server.url)
    assert laptop.login(localpart, PASSWORD + second_code)[0] == 200

    # A thief holding the phone's session replaces the keys (a "reset"): UIA, every time.
    status, body = phone.request("POST", UPLOAD, cross_signing_keys(user_id))
    assert status == 401, body
    session = body["session"]
    tries = [
        (phone, PASSWORD + first_code),  # the code this session logged in with
        (laptop, PASSWORD + first_code),  # from the other session
        (phone, PASSWORD),  # the password alone
        (phone, PASSWORD + code(totp, -4)),  # a code whose step is over
    ]
    for client, password in tries:
        auth = password_auth(user_id, password, session if client is phone else None)
        status, body = client.request("POST", UPLOAD, {**cross_signing_keys(user_id), "auth": auth})
        assert status == 401, (password, body)
    # The same code cannot open a third session either. (Four failed codes so far: one more
    # and the failure limit, 5, would refuse the owner too.)
    assert MatrixClient(server.url).login(localpart, PASSWORD + first_code)[0] == 403
    assert master_key(server, phone, user_id) == keys["master_key"]["keys"]  # untouched

    # The owner, with the next code, resets them.
    new_keys = cross_signing_keys(user_id)
    auth = password_auth(user_id, PASSWORD + code(totp, +1), session)
    status, body = phone.request("POST", UPLOAD, {**new_keys, "auth": auth})
    assert status == 200, body
    assert master_key(server, phone, user_id) == new_keys["master_key"]["keys"]
