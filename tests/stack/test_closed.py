"""What must stay closed is closed on the live stack, seen from a member's network position
(the published HTTPS port; the client's address is not in MATRIX_ADMIN_CIDR)."""

from __future__ import annotations

import json

import pytest
import requests

from tests.stack.conftest import ELEMENT, MATRIX, Session, Stack

SPOOFED = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"}


@pytest.mark.parametrize("kind", ["user", "guest"])
def test_registration_is_refused(https: requests.Session, kind: str) -> None:
    response = https.post(
        f"{MATRIX}/_matrix/client/v3/register?kind={kind}",
        json={
            "username": f"intruder{kind}",
            "password": "Intruder-Passw0rd!",
            "auth": {"type": "m.login.dummy"},
        },
        timeout=30,
    )
    assert response.status_code == 403, response.text
    assert "access_token" not in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/federation/v1/version",
        "/_matrix/federation/v1/query/profile?user_id=@alice:stack.test",
        "/_matrix/key/v2/server",
        "/_matrix/key/v2/query/stack.test",
        "/.well-known/matrix/server",
        "/_synapse/metrics",
        "/health",
    ],
)
def test_federation_keys_metrics_are_not_served(https: requests.Session, path: str) -> None:
    response = https.get(f"{MATRIX}{path}", timeout=30)
    assert response.status_code == 404, response.text


@pytest.mark.parametrize("headers", [{}, SPOOFED], ids=["plain", "spoofed-forwarded-for"])
def test_admin_api_is_refused_from_a_member_address(
    https: requests.Session, sessions: tuple[Session, Session], headers: dict[str, str]
) -> None:
    for path in ("/_synapse/admin/v1/server_version", "/_synapse/admin/v2/users"):
        response = https.get(
            f"{MATRIX}{path}", headers={**sessions[0].headers, **headers}, timeout=30
        )
        assert response.status_code == 403, (path, response.text)


def test_a_spoofed_forwarded_for_is_not_the_address_synapse_records(
    stack: Stack, https: requests.Session, sessions: tuple[Session, Session], admin_token: str
) -> None:
    """Synapse believes X-Forwarded-For; nginx must overwrite it with the real peer."""
    alice = sessions[0]
    spoofed = {"X-Forwarded-For": "198.51.100.77", "X-Real-IP": "198.51.100.77"}
    response = https.get(
        f"{MATRIX}/_matrix/client/v3/account/whoami",
        headers={**alice.headers, **spoofed},
        timeout=30,
    )
    assert response.status_code == 200
    # The operator's view: the admin API from inside the synapse container (loopback).
    token = admin_token
    # Synapse batches client IPs to the database every few seconds: wait for the row.
    ips: set[str] = set()
    for _ in range(30):
        done = stack.exec(
            "synapse",
            "curl",
            "-fsS",
            "-H",
            f"Authorization: Bearer {token}",
            f"http://127.0.0.1:8008/_synapse/admin/v1/whois/{alice.member.user_id}",
        )
        assert done.returncode == 0, done.stderr
        devices = json.loads(done.stdout)["devices"]
        ips = {c["ip"] for d in devices.values() for s in d["sessions"] for c in s["connections"]}
        if ips:
            break
        import time

        time.sleep(1)
    assert ips, "Synapse recorded no connection for alice"
    assert "198.51.100.77" not in ips
    assert "127.0.0.1" not in ips


def test_a_request_for_another_host_name_gets_nothing(https: requests.Session) -> None:
    response = https.get(
        f"{MATRIX}/_matrix/client/versions", headers={"Host": "other.example"}, timeout=30
    )
    assert response.status_code == 421


def test_element_serves_the_project_config(https: requests.Session) -> None:
    response = https.get(f"{ELEMENT}/config.json", timeout=30)
    assert response.status_code == 200
    config = response.json()
    assert config["default_server_config"]["m.homeserver"]["base_url"] == MATRIX
    assert config["default_server_config"]["m.homeserver"]["server_name"] == "stack.test"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert https.post(f"{ELEMENT}/config.json", timeout=30).status_code == 403
