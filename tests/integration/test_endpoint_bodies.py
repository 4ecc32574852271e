"""The guard's own endpoints under hostile bodies, on a real Synapse (SQLite and PostgreSQL).

An admin's token (stolen, or a careless script) posts what breaks parsers to the lockdown,
check-in and TOTP admin endpoints: JSON nested deeper than Python's decoder recurses (it
raised RecursionError: a 500 and a traceback per request), megabytes, NaN, duplicate keys,
lone surrogates, NUL in a user ID (PostgreSQL refuses it in text: a 500 too). Each gets a 4xx
with an errcode, nothing changes, and the server log holds no traceback.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, PostgresCluster, SynapseServer, tracebacks
from tests.integration.test_totp import LOCALDB_OFF, auth_config, enroll, provision

LOCKDOWN = "/_synapse/client/synapse_guard/lockdown"
CHECKIN = "/_synapse/client/synapse_guard/checkin"
TOTP = "/_synapse/client/synapse_guard/totp"
ENDPOINTS = [LOCKDOWN, CHECKIN, f"{TOTP}/enroll", f"{TOTP}/reset", f"{TOTP}/password"]

# What every endpoint must refuse, whatever its fields: (body, status, errcode).
HOSTILE: dict[str, tuple[bytes, int, str]] = {
    "deep arrays": (b"[" * 30_000 + b"]" * 30_000, 400, "M_BAD_JSON"),
    "deep objects": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400, "M_BAD_JSON"),
    "deep, never closed": (b'{"user_id": ' + b"[" * 60_000, 400, "M_BAD_JSON"),
    "two megabytes": (b'{"user_id": "' + b"x" * 2_000_000 + b'"}', 413, "M_TOO_LARGE"),
    "an array": (b"[true]", 400, "M_BAD_JSON"),
    "a string": (b'"@admin:guard.test"', 400, "M_BAD_JSON"),
    "null": (b"null", 400, "M_BAD_JSON"),
    "not UTF-8": (b'{"user_id": "@\xff\xfe:guard.test"}', 400, "M_NOT_JSON"),
    "NaN": (b'{"locked": NaN, "user_id": NaN}', 400, "M_NOT_JSON"),
    "Infinity": (b'{"locked": -Infinity}', 400, "M_NOT_JSON"),
    "too large a number": (b'{"locked": 1e999}', 400, "M_NOT_JSON"),
    "a key twice": (b'{"locked": false, "locked": true}', 400, "M_BAD_JSON"),
    "a lone surrogate": (b'{"user_id": "@\\ud800:guard.test"}', 400, "M_NOT_JSON"),
    "not JSON": (b'{"locked": tru', 400, "M_NOT_JSON"),
}
# What each endpoint's own fields refuse: wrong types, a user ID no database should see.
WRONG_FIELDS: dict[str, list[tuple[bytes, str]]] = {
    LOCKDOWN: [(b'{"locked": "yes"}', "M_BAD_JSON"), (b'{"locked": [true]}', "M_BAD_JSON")],
    CHECKIN: [(b'{"alive": true}', "M_BAD_JSON"), (b"[]", "M_BAD_JSON")],
    **{
        f"{TOTP}/{action}": [
            (b'{"user_id": 42}', "M_INVALID_PARAM"),
            (b'{"user_id": {"@a:guard.test": 1}}', "M_INVALID_PARAM"),
            (b'{"user_id": "@a\\u0000b:guard.test"}', "M_INVALID_PARAM"),
            (b'{"user_id": "@' + b"a" * 300 + b':guard.test"}', "M_INVALID_PARAM"),
        ]
        for action in ("enroll", "reset", "password")
    },
}


@pytest.fixture(scope="module")
def secrets_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("bodies") / "totp.key"
    key.write_bytes(uuid.uuid4().bytes * 2)
    return key


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def guarded(
    request: pytest.FixtureRequest, synapse_factory: SynapseFactory, secrets_key: Path
) -> tuple[SynapseServer, str]:
    """A guarded Synapse with the TOTP endpoints on; returns it and an admin's token."""
    database = None
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        database = cluster.create_database()
    server = synapse_factory(
        database=database, guard=auth_config(secrets_key, "optional"), extra=LOCALDB_OFF
    ).start()
    return server, provision(server, "admin", admin=True)[1]


def post(server: SynapseServer, token: str, path: str, body: bytes) -> tuple[int, Any]:
    response = requests.post(
        server.url + path,
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=60,
    )
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def log_size(server: SynapseServer) -> int:
    return server.log_file.stat().st_size if server.log_file.exists() else 0


def new_log(server: SynapseServer, since: int) -> str:
    with server.log_file.open("rb") as log:
        log.seek(since)
        return log.read().decode("utf-8", "replace")


def test_hostile_bodies_get_a_4xx_with_an_errcode_and_change_nothing(
    guarded: tuple[SynapseServer, str],
) -> None:
    server, token = guarded
    member, _ = provision(server, "member")
    member_id = server.user_id(member)
    since = log_size(server)

    for path in ENDPOINTS:
        cases = [(what, *case) for what, case in HOSTILE.items()]
        cases += [
            (body.decode(errors="replace")[:40], body, 400, code)
            for body, code in WRONG_FIELDS[path]
        ]
        if path.startswith(TOTP):
            # A well-formed body whose second "user_id" names a real user: refused as a whole.
            twice = f'{{"user_id": "@nobody:guard.test", "user_id": "{member_id}"}}'.encode()
            cases.append(("the user named twice", twice, 400, "M_BAD_JSON"))
        for what, body, status, errcode in cases:
            got, reply = post(server, token, path, body)
            assert (got, reply.get("errcode") if isinstance(reply, dict) else reply) == (
                status,
                errcode,
            ), (path, what)

    log = new_log(server, since)
    assert tracebacks(log) == []
    assert "RecursionError" not in log
    # Nothing changed: not locked, no check-in recorded, the member can still be enrolled.
    status, body = server.client(token).request("GET", LOCKDOWN)
    assert status == 200, body
    assert body["locked"] is False
    assert body["deadman"]["last_checkin"] is None
    enroll(server, token, member_id)


def test_a_wrongly_typed_password_is_refused_and_the_old_one_still_works(
    guarded: tuple[SynapseServer, str],
) -> None:
    server, token = guarded
    member, _ = provision(server, "member")
    member_id = server.user_id(member)
    for password in (b"5", b"null", b'["New-Password-1"]', b'""', b'"\\ud800x"'):
        body = b'{"user_id": "' + member_id.encode() + b'", "password": ' + password + b"}"
        status, reply = post(server, token, f"{TOTP}/password", body)
        assert status == 400, (password, reply)
        assert reply["errcode"] in ("M_INVALID_PARAM", "M_NOT_JSON"), (password, reply)
    # Not enrolled (optional): the original password still logs in.
    assert server.client().login(member, PASSWORD)[0] == 200
