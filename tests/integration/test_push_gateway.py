"""A member registers a pusher at a URL of their choosing: only the operator's gateway is pushed to.

Two push gateways listen on 127.0.0.1 and record every request they get: the allowed one
(`push.allowed_gateways`) and the attacker's. Synapse's `ip_range_whitelist` lets it reach
loopback, as the deploy's proxy lets it reach the real gateway, so nothing but the guard stands
between a pusher and the attacker's gateway. `push:` has no jitter here: a pusher that existed
would be notified at once.

- A pusher at the allowed gateway is notified.
- A pusher anywhere else (another port, another name for the same host, userinfo, a path trick)
  gets 400 from POST /pushers/set, is not in GET /pushers, and a message sent right after it
  reaches the attacker's gateway never, while the allowed pusher's notification of that very
  message proves Synapse pushed it.
- A pusher stored while its gateway was allowed is never started after the operator removes
  that gateway and restarts, and the sweep deletes it within seconds (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import MatrixClient, PostgresCluster, SynapseServer

NOTIFY = "/_matrix/push/v1/notify"
SWEEP_S = 1
NOTIFIED_WITHIN_S = 30.0


class Gateway:
    """Answers every POST like a push gateway and keeps what it received."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    notification = json.loads(body).get("notification", {})
                except ValueError:
                    notification = {}
                with gateway._lock:
                    gateway.received.append((self.path, notification))
                reply = b'{"rejected": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{NOTIFY}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def pushkeys(self) -> set[str]:
        with self._lock:
            return {
                device["pushkey"]
                for _, notification in self.received
                for device in notification.get("devices", [])
            }

    def wait_for(self, event_id: str, pushkey: str, timeout: float = NOTIFIED_WITHIN_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(
                    n.get("event_id") == event_id
                    and any(d.get("pushkey") == pushkey for d in n.get("devices", []))
                    for _, n in self.received
                ):
                    return
            time.sleep(0.1)
        raise AssertionError(f"no notification of {event_id} to {pushkey}")


@pytest.fixture(scope="module")
def allowed() -> Iterator[Gateway]:
    gateway = Gateway()
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def attacker() -> Iterator[Gateway]:
    gateway = Gateway()
    yield gateway
    gateway.close()


def guarded_server(
    factory: SynapseFactory, gateways: list[str], database: dict[str, Any] | None = None
) -> SynapseServer:
    return factory(
        database=database,
        guard={"push": {"allowed_gateways": gateways, "sweep_interval": f"{SWEEP_S}s"}},
        extra={
            # Synapse refuses to push to private and loopback addresses; both gateways are on
            # 127.0.0.1. This replaces homeserver.d's `push:` whole: no jitter, no body.
            "ip_range_whitelist": ["127.0.0.1"],
            "push": {"include_content": False},
        },
    )


def pushers(client: MatrixClient) -> dict[str, str]:
    status, body = client.request("GET", "/_matrix/client/v3/pushers")
    assert status == 200, body
    return {p["pushkey"]: p["data"]["url"] for p in body["pushers"]}


def megolm() -> dict[str, str]:
    return {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEpAB" + uuid.uuid4().hex,
        "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ",
        "sender_key": "SGVsbG8gd29ybGQgY3VydmUyNTUxOSBrZXkgaGVyZQ",
        "device_id": "PUSHTESTER",
    }


class Members:
    """A recipient with a pusher at the allowed gateway, and a sender in a room with them."""

    def __init__(self, server: SynapseServer, allowed: Gateway) -> None:
        self.recipient_id, self.recipient = server.new_user("recipient")
        _, self.sender = server.new_user("sender")
        self.room = self.sender.room_id(name="Operation Kestrel", invite=[self.recipient_id])
        assert self.recipient.join(self.room)[0] == 200
        self.good_key = f"good-{uuid.uuid4().hex[:8]}"
        assert (
            self.recipient.set_pusher(allowed.url, self.good_key, format="event_id_only")[0] == 200
        )

    def send(self) -> str:
        # What an E2EE client sends (rooms.encryption: required refuses cleartext here).
        status, body = self.sender.send(self.room, megolm(), "m.room.encrypted")
        assert status == 200, body
        return str(body["event_id"])


@pytest.fixture(scope="module")
def server(synapse_factory: SynapseFactory, allowed: Gateway, attacker: Gateway) -> SynapseServer:
    return guarded_server(synapse_factory, [allowed.url]).start()


@pytest.fixture(scope="module")
def members(server: SynapseServer, allowed: Gateway) -> Members:
    return Members(server, allowed)


def test_a_pusher_at_the_allowed_gateway_is_notified(members: Members, allowed: Gateway) -> None:
    event_id = members.send()

    allowed.wait_for(event_id, members.good_key)
    assert pushers(members.recipient)[members.good_key] == allowed.url


def attack_urls(allowed: Gateway, attacker: Gateway) -> dict[str, str]:
    return {
        "another gateway": attacker.url,
        # The same server under another name: exact means exact.
        "another host name": f"http://localhost:{allowed.port}{NOTIFY}",
        # urllib and Twisted send this to the host after the '@': the attacker's.
        "userinfo": f"http://127.0.0.1:{allowed.port}@127.0.0.1:{attacker.port}{NOTIFY}",
        "another scheme": f"https://127.0.0.1:{allowed.port}{NOTIFY}",
        "a trailing slash": f"{allowed.url}/",
        "a query": f"{allowed.url}?to=127.0.0.1:{attacker.port}",
    }


@pytest.mark.parametrize(
    "attack",
    ["another gateway", "another host name", "userinfo", "another scheme", "a trailing slash",
     "a query"],
)  # fmt: skip
def test_a_pusher_anywhere_else_is_refused_and_never_notified(
    server: SynapseServer, members: Members, allowed: Gateway, attacker: Gateway, attack: str
) -> None:
    url = attack_urls(allowed, attacker)[attack]
    key = f"leak-{uuid.uuid4().hex[:8]}"
    refused = server.decisions("push", "deny", "push_gateway")

    status, body = members.recipient.set_pusher(url, key, format="event_id_only")
    event_id = members.send()  # right after the attempt

    assert status == 400, body
    assert body["errcode"] == "M_MISSING_PARAM"
    assert "allowed" in body["error"]
    assert url not in body["error"]  # the refusal names no rule and echoes nothing
    assert key not in pushers(members.recipient)
    # Synapse pushed this very message to the allowed pusher; the refused one got nothing.
    allowed.wait_for(event_id, members.good_key)
    assert key not in allowed.pushkeys() | attacker.pushkeys()
    assert server.decisions("push", "deny", "push_gateway") == refused + 1


def test_no_request_ever_reached_the_attackers_gateway(
    server: SynapseServer, members: Members, attacker: Gateway
) -> None:
    # Runs after the attacks above (same module): not one POST, badge-only updates included.
    assert attacker.received == []


def test_the_refusals_are_logged_without_url_or_user(
    server: SynapseServer, members: Members, allowed: Gateway, attacker: Gateway
) -> None:
    log = server.log_file.read_text()

    assert "refused: check=push reason=push_gateway" in log
    guard_lines = [line for line in log.splitlines() if " - synapse_guard - " in line]
    assert guard_lines
    for line in guard_lines:
        assert str(attacker.port) not in line
        assert members.recipient_id not in line


# -- a pusher stored before its gateway was removed from the allowlist ----------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def narrowed(
    request: pytest.FixtureRequest, synapse_factory: SynapseFactory, allowed: Gateway
) -> Iterator[tuple[SynapseServer, Members, Gateway, str]]:
    """A pusher at a gateway the operator allowed, then removed from the allowlist."""
    database = None
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        database = cluster.create_database()
    dropped = Gateway()
    server = guarded_server(synapse_factory, [allowed.url, dropped.url], database).start()
    members = Members(server, allowed)
    old_key = f"old-{uuid.uuid4().hex[:8]}"
    assert members.recipient.set_pusher(dropped.url, old_key, format="event_id_only")[0] == 200
    dropped.wait_for(members.send(), old_key)  # while allowed, it was pushed to

    server.stop()
    server.guard_config["push"]["allowed_gateways"] = [allowed.url]
    dropped.received.clear()
    server.start()
    yield server, members, dropped, old_key
    server.stop()
    dropped.close()


def test_a_pusher_whose_gateway_was_removed_is_never_started_and_is_deleted_within_seconds(
    narrowed: tuple[SynapseServer, Members, Gateway, str], allowed: Gateway
) -> None:
    server, members, dropped, old_key = narrowed
    started = time.monotonic()

    event_id = members.send()  # right after the restart, before any sweep
    while old_key in pushers(members.recipient) and time.monotonic() < started + 10:
        time.sleep(0.2)
    removed_after = time.monotonic() - started

    assert old_key not in pushers(members.recipient), "not removed within 10 s"
    assert removed_after < 2 * SWEEP_S + 3, removed_after
    allowed.wait_for(event_id, members.good_key)  # Synapse pushed the message...
    assert dropped.received == []  # ...and nothing to the dropped gateway
    assert server.decisions("push", "deny", "push_gateway") >= 1
