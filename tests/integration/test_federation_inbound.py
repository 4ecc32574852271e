"""Federation denial on a real Synapse, inbound side (outbound: test_federation.py).

A fake remote homeserver on 127.0.0.1 (fake_remote.py) signs its requests and events as a real
one would. Synapse's own layer is opened to that one loopback peer (whitelist, federation
listener, loopback-only IP blocklist), so only the guard stands between it and the local users.
A control server with `federation.enabled: true` accepts the same traffic: the tests can fail.

Where the refusal is counted depends on Synapse: since 1.130 `should_drop_federated_event` sees an
inbound invite first (check="event"); before, `user_may_invite` is asked with the remote inviter
(check="invite"). `federated_user_may_invite` (1.134) comes after the drop, so it is reached
only when federation is enabled.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import synapse

from tests.integration.fake_remote import FakeRemote, everything_but_loopback, running_remote
from tests.integration.harness import SERVER_NAME, MatrixClient, SynapseServer, free_port

ROOM_VERSION = "10"


class FederatingSynapse(SynapseServer):
    """The harness's Synapse plus a plain-HTTP federation listener on another loopback port."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.federation_port = free_port()
        self.federation_url = f"http://127.0.0.1:{self.federation_port}"

    def _override(self) -> dict[str, Any]:
        override = super()._override()
        override["listeners"] = [
            *override["listeners"],
            {
                "port": self.federation_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["federation"], "compress": False}],
            },
        ]
        return override


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRemote]:
    yield from running_remote(tmp_path_factory.mktemp("remote"))


def federating_synapse(
    tmp_path_factory: pytest.TempPathFactory,
    base_config: Path,
    remote: FakeRemote,
    guard: dict[str, Any] | None = None,
) -> Iterator[FederatingSynapse]:
    server = FederatingSynapse(
        tmp_path_factory.mktemp("synapse"),
        base_config,
        guard=guard,
        extra={
            # Synapse's own layer lets exactly this loopback peer through: only the guard refuses.
            "federation_domain_whitelist": [remote.server_name],
            "federation_verify_certificates": False,
            "trusted_key_servers": [],
            # Outbound requests (key fetches) may reach 127.0.0.0/8 and nothing else.
            "ip_range_blacklist": everything_but_loopback(),
        },
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def closed(
    tmp_path_factory: pytest.TempPathFactory, base_config: Path, remote: FakeRemote
) -> Iterator[FederatingSynapse]:
    """The guard as homeserver.d configures it: federation disabled."""
    yield from federating_synapse(tmp_path_factory, base_config, remote)


@pytest.fixture(scope="module")
def control(
    tmp_path_factory: pytest.TempPathFactory, base_config: Path, remote: FakeRemote
) -> Iterator[FederatingSynapse]:
    """The same server with the guard's federation gate open."""
    yield from federating_synapse(
        tmp_path_factory, base_config, remote, guard={"federation": {"enabled": True}}
    )


def pending_invites(client: MatrixClient) -> dict[str, Any]:
    status, body = client.request("GET", "/_matrix/client/v3/sync", params={"timeout": "0"})
    assert status == 200, body
    return dict(body.get("rooms", {}).get("invite", {}))


def invite_from_remote(
    server: FederatingSynapse, remote: FakeRemote
) -> tuple[int, Any, str, MatrixClient]:
    """Mallory, on the remote server, invites a fresh local user to a room of hers."""
    invitee, client = server.new_user("invitee")
    event_id, pdu = remote.invite_event(ROOM_VERSION, remote.user("mallory"), invitee)
    status, reply = remote.send_invite(
        server.federation_url, SERVER_NAME, ROOM_VERSION, event_id, pdu
    )
    return status, reply, pdu["room_id"], client


# What mallory's E2EE client would send: the guard refuses cleartext in encrypted rooms.
MEGOLM = {
    "algorithm": "m.megolm.v1.aes-sha2",
    "ciphertext": "AwgAEnBmcm9tIG91dHNpZGU",
    "session_id": "c2Vzc2lvbg",
    "sender_key": "a2V5",
    "device_id": "MALLORYDEV",
}
CLEARTEXT = {"msgtype": "m.text", "body": "hello from outside"}


def remote_message(
    server: FederatingSynapse,
    remote: FakeRemote,
    event_type: str = "m.room.encrypted",
    content: dict[str, Any] = MEGOLM,
) -> tuple[str, dict[str, Any], MatrixClient, str]:
    """A message from mallory into a local room (its version pinned, so the PDU format is known)."""
    _, member = server.new_user("member")
    room_id = member.room_id(room_version=ROOM_VERSION)
    create_id = member.state(room_id)[("m.room.create", "")]["event_id"]
    latest_id = member.messages(room_id)[0]["event_id"]
    event_id, pdu = remote.event(
        ROOM_VERSION,
        room_id=room_id,
        sender=remote.user("mallory"),
        event_type=event_type,
        content=content,
        prev_events=[latest_id],
        auth_events=[create_id],
        depth=100,
    )
    return event_id, pdu, member, room_id


# -- federation disabled: refused and counted ------------------------------------------------


def test_an_invite_from_a_remote_server_is_refused(
    closed: FederatingSynapse, remote: FakeRemote
) -> None:
    invites_before = closed.decisions("invite", "deny", "federation")
    events_before = closed.decisions("event", "deny", "federation")

    status, reply, room_id, invitee = invite_from_remote(closed, remote)

    assert status == 403, reply
    counted = {
        "invite": closed.decisions("invite", "deny", "federation") - invites_before,
        "event": closed.decisions("event", "deny", "federation") - events_before,
    }
    # Since 1.130 (element-hq/synapse#18330) Synapse asks should_drop_federated_event before
    # any invite callback; the guard counts the refusal as an invite on every version.
    assert counted == {"invite": 1, "event": 0}, f"Synapse {synapse.__version__}"
    assert room_id not in pending_invites(invitee)
    # The request really was authenticated: Synapse fetched the remote's signing key.
    assert ("GET", "/_matrix/key/v2/server") in remote.seen


def test_an_event_from_a_remote_server_is_dropped(
    closed: FederatingSynapse, remote: FakeRemote
) -> None:
    event_id, pdu, member, room_id = remote_message(closed, remote)
    before = closed.decisions("event", "deny", "federation")

    status, reply = remote.send_transaction(closed.federation_url, SERVER_NAME, [pdu])

    assert status == 200, reply  # a transaction is acknowledged; the PDU inside is dropped
    assert event_id in reply["pdus"], reply
    assert closed.decisions("event", "deny", "federation") == before + 1
    assert event_id not in {e["event_id"] for e in member.messages(room_id)}


def test_the_closed_server_sent_nothing_out(closed: FederatingSynapse) -> None:
    """Key fetches aside (needed to authenticate the peer), no transaction left the server."""
    assert closed.metric("synapse_federation_client_sent_transactions_total") == 0


# -- control: the same traffic, federation enabled in the guard --------------------------------


def test_control_an_invite_is_accepted_when_federation_is_enabled(
    control: FederatingSynapse, remote: FakeRemote
) -> None:
    denied_before = control.decisions("invite", "deny", "federation") + control.decisions(
        "event", "deny", "federation"
    )

    status, reply, room_id, invitee = invite_from_remote(control, remote)

    assert status == 200, reply
    assert reply["event"]["signatures"].get(SERVER_NAME), "Synapse counter-signs an accepted invite"
    assert room_id in pending_invites(invitee)
    denied_after = control.decisions("invite", "deny", "federation") + control.decisions(
        "event", "deny", "federation"
    )
    assert denied_after == denied_before


def test_control_an_event_is_not_dropped_when_federation_is_enabled(
    control: FederatingSynapse, remote: FakeRemote
) -> None:
    event_id, pdu, _, _ = remote_message(control, remote)
    denied_before = control.decisions("event", "deny", "federation")
    allowed_before = control.decisions("event", "allow", "ok")

    status, reply = remote.send_transaction(control.federation_url, SERVER_NAME, [pdu])

    assert status == 200, reply
    assert event_id in reply["pdus"], reply
    assert control.decisions("event", "deny", "federation") == denied_before
    assert control.decisions("event", "allow", "ok") > allowed_before


def test_with_federation_enabled_a_remote_cleartext_message_is_dropped(
    control: FederatingSynapse, remote: FakeRemote
) -> None:
    # Synapse asks check_event_allowed about federated knocks only: the guard judges other
    # federated events in should_drop_federated_event, so the room stays ciphertext only.
    event_id, pdu, member, room_id = remote_message(control, remote, "m.room.message", CLEARTEXT)
    before = control.decisions("event", "deny", "unencrypted")

    status, reply = remote.send_transaction(control.federation_url, SERVER_NAME, [pdu])

    assert status == 200, reply
    assert control.decisions("event", "deny", "unencrypted") == before + 1
    assert event_id not in [e["event_id"] for e in member.messages(room_id)]
