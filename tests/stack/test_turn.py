"""TURN on the live stack (profile `turn`): Synapse hands a logged-in member credentials through
nginx, with the deploy's turn_uris (`bin/init turn`); coturn, published on the namespace's
loopback, authenticates them and refuses to relay towards a denied peer; forged credentials
get no allocation at all. (A relay to an allowed peer is proven natively,
tests/deploy/test_coturn.py: no peer here is both allowed and reachable.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import time

import requests

from tests.stack.conftest import MATRIX, Session, Stack


def uclient(username: str, password: str, peer: str) -> str:
    """coturn's own client over TCP to the published port: one allocation, five messages."""
    done = subprocess.run(
        ["turnutils_uclient", "-t", "-c", "-n", "5", "-u", username, "-w", password,
         "-p", "3478", "-e", peer, "-r", "9", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.stdout + done.stderr


def test_a_member_gets_credentials_and_coturn_refuses_a_denied_peer(
    https: requests.Session, sessions: tuple[Session, Session]
) -> None:
    assert https.get(f"{MATRIX}/_matrix/client/v3/voip/turnServer", timeout=30).status_code == 401
    answer = https.get(
        f"{MATRIX}/_matrix/client/v3/voip/turnServer", headers=sessions[0].headers, timeout=30
    )
    assert answer.status_code == 200, answer.text
    creds = answer.json()
    assert creds["uris"], creds
    assert all(
        uri.startswith(("turn:matrix.stack.test", "turns:matrix.stack.test"))
        for uri in creds["uris"]
    )
    assert 0 < int(creds["username"].split(":")[0]) - time.time() <= 3600
    # Authenticated (the allocation gets as far as the peer check), then refused: loopback
    # and every private range are denied relay targets.
    output = uclient(creds["username"], creds["password"], "127.0.0.1")
    assert "403 (Forbidden IP)" in output, output[-2000:]


def test_forged_credentials_get_no_allocation(stack: Stack) -> None:
    username = f"{int(time.time()) + 600}:@mallory:stack.test"
    forged = base64.b64encode(
        hmac.new(b"not the secret", username.encode(), hashlib.sha1).digest()
    ).decode()
    output = uclient(username, forged, "127.0.0.1")
    assert "Cannot complete Allocation" in output, output[-2000:]
    assert "Forbidden IP" not in output
