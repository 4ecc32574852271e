"""Room policy on a real Synapse: rooms are born compliant and cannot be weakened later.

A member (and a server admin, whom Synapse exempts from some spam checks) tries every way to
open a room; normal use (messages, mentions, direct chats, invites, upgrades) keeps working.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import MatrixClient, SynapseServer

MEGOLM = "m.megolm.v1.aes-sha2"
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
FIFTEEN_DAYS_MS = 15 * 24 * 3600 * 1000

OPENING_INITIAL_STATE = [
    {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "public"}},
    {
        "type": "m.room.history_visibility",
        "state_key": "",
        "content": {"history_visibility": "world_readable"},
    },
    {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}},
    {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.none"}},
    {
        "type": "m.room.retention",
        "state_key": "",
        "content": {"max_lifetime": 10 * FIFTEEN_DAYS_MS},
    },
]


@pytest.fixture(scope="module")
def member(synapse: SynapseServer) -> MatrixClient:
    return synapse.new_user("member")[1]


@pytest.fixture(scope="module")
def admin(synapse: SynapseServer) -> MatrixClient:
    return synapse.new_user("admin", admin=True)[1]


@pytest.fixture(params=["member", "admin"])
def creator(
    request: pytest.FixtureRequest, member: MatrixClient, admin: MatrixClient
) -> MatrixClient:
    return member if request.param == "member" else admin


def assert_compliant(client: MatrixClient, room_id: str, retention: bool = True) -> None:
    state = client.state(room_id)

    def content(event_type: str) -> dict[str, Any]:
        assert (event_type, "") in state, f"{event_type} missing from {sorted(state)}"
        return dict(state[(event_type, "")]["content"])

    assert content("m.room.create").get("m.federate") is False
    assert content("m.room.encryption")["algorithm"] == MEGOLM
    assert content("m.room.join_rules")["join_rule"] == "invite"
    assert content("m.room.history_visibility")["history_visibility"] == "joined"
    assert content("m.room.guest_access")["guest_access"] == "forbidden"
    if retention:
        assert 0 < content("m.room.retention")["max_lifetime"] <= FIFTEEN_DAYS_MS


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="no-preset"),
        pytest.param({"preset": "private_chat"}, id="private_chat"),
        pytest.param({"preset": "trusted_private_chat", "is_direct": True}, id="direct"),
        pytest.param({"preset": "public_chat"}, id="public_chat"),
        pytest.param({"visibility": "public"}, id="visibility-public"),
        pytest.param(
            {
                "preset": "public_chat",
                "visibility": "public",
                "initial_state": OPENING_INITIAL_STATE,
                "creation_content": {"m.federate": True},
            },
            id="everything-open",
        ),
        pytest.param({"room_version": "10", "preset": "public_chat"}, id="room-v10"),
    ],
)
def test_every_new_room_is_born_compliant(creator: MatrixClient, body: dict[str, Any]) -> None:
    room_id = creator.room_id(**body)
    assert_compliant(creator, room_id)


def test_new_rooms_get_the_default_lifetime(member: MatrixClient) -> None:
    room_id = member.room_id()
    assert member.state_content(room_id, "m.room.retention") == {"max_lifetime": SEVEN_DAYS_MS}


def test_a_shorter_lifetime_asked_at_creation_is_kept(member: MatrixClient) -> None:
    one_day = 24 * 3600 * 1000
    room_id = member.room_id(
        initial_state=[
            {"type": "m.room.retention", "state_key": "", "content": {"max_lifetime": one_day}}
        ]
    )
    assert member.state_content(room_id, "m.room.retention") == {"max_lifetime": one_day}


WEAKENING = [
    pytest.param("m.room.join_rules", {"join_rule": "public"}, "join_rule", id="join-public"),
    pytest.param("m.room.join_rules", {"join_rule": "knock"}, "join_rule", id="join-knock"),
    pytest.param(
        "m.room.history_visibility",
        {"history_visibility": "world_readable"},
        "history_visibility",
        id="history-world-readable",
    ),
    pytest.param(
        "m.room.history_visibility",
        {"history_visibility": "shared"},
        "history_visibility",
        id="history-shared",
    ),
    pytest.param("m.room.guest_access", {"guest_access": "can_join"}, "guest_access", id="guests"),
    pytest.param("m.room.encryption", {"algorithm": "m.none"}, "encryption", id="encryption-off"),
    pytest.param(
        "m.room.encryption",
        {"algorithm": MEGOLM, "rotation_period_msgs": 100000},
        "encryption",
        id="encryption-weaker-rotation",
    ),
    pytest.param(
        "m.room.retention",
        {"max_lifetime": FIFTEEN_DAYS_MS + 1},
        "retention",
        id="retention-raised",
    ),
    pytest.param("m.room.retention", {}, "retention", id="retention-removed"),
]


@pytest.mark.parametrize(("event_type", "content", "reason"), WEAKENING)
def test_weakening_state_is_refused(
    synapse: SynapseServer,
    creator: MatrixClient,
    event_type: str,
    content: dict[str, Any],
    reason: str,
) -> None:
    room_id = creator.room_id()
    before_state = creator.state_content(room_id, event_type)
    before = synapse.decisions("event", "deny", reason)

    status, reply = creator.put_state(room_id, event_type, content)

    assert status == 403, reply
    assert creator.state_content(room_id, event_type) == before_state
    assert synapse.decisions("event", "deny", reason) == before + 1


def test_tightening_state_is_allowed(member: MatrixClient) -> None:
    room_id = member.room_id()
    assert member.put_state(room_id, "m.room.retention", {"max_lifetime": 3600 * 1000})[0] == 200
    assert (
        member.put_state(room_id, "m.room.history_visibility", {"history_visibility": "joined"})[0]
        == 200
    )
    assert member.put_state(room_id, "m.room.name", {"name": "Campaign HQ"})[0] == 200


def test_redacting_protected_state_is_refused(
    synapse: SynapseServer, creator: MatrixClient
) -> None:
    room_id = creator.room_id()
    state = creator.state(room_id)
    for event_type in ("m.room.encryption", "m.room.retention", "m.room.join_rules"):
        before = synapse.decisions("event", "deny", "protected_state")
        status, reply = creator.redact(room_id, state[(event_type, "")]["event_id"])
        assert status == 403, (event_type, reply)
        assert synapse.decisions("event", "deny", "protected_state") == before + 1
    assert_compliant(creator, room_id)


def test_messages_work(synapse: SynapseServer, member: MatrixClient) -> None:
    """Every guarded room is encrypted: members send megolm, and the server stores it as is."""
    room_id = member.room_id()
    first, second = uuid.uuid4().hex, uuid.uuid4().hex  # hex: valid base64 ciphertext
    assert member.send_megolm(room_id, first)[0] == 200
    status, reply = member.send_megolm(room_id, second)
    assert status == 200, reply
    status, reply = member.send_megolm(
        room_id, relates_to={"m.in_reply_to": {"event_id": reply["event_id"]}}
    )
    assert status == 200, reply
    ciphertexts = [
        e["content"]["ciphertext"]
        for e in member.messages(room_id)
        if e["type"] == "m.room.encrypted"
    ]
    assert ciphertexts[1:3] == [second, first]


@pytest.fixture(scope="module")
def cleartext_synapse(synapse_factory: SynapseFactory) -> SynapseServer:
    """Rooms still encrypted (Synapse's own default), but the guard lets cleartext in."""
    return synapse_factory(guard={"rooms": {"encryption": "off"}}).start()


def test_mentions_work_where_cleartext_is_allowed(cleartext_synapse: SynapseServer) -> None:
    """Element sends m.mentions with every message; Synapse < 1.162 needs the guard's shim
    (compat.thawed_event_dict_if_needed) for it. An E2EE client puts m.mentions inside the
    ciphertext, and the guard refuses cleartext in encrypted rooms, so the shim is reached
    only on a server with `rooms.encryption: off` (where clients may send in clear)."""
    _, member = cleartext_synapse.new_user("member")
    room_id = member.room_id()
    assert member.send_text(room_id, "hello")[0] == 200
    status, reply = member.send(
        room_id,
        {"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": [member.user_id]}},
    )
    assert status == 200, reply
    bodies = [
        e["content"].get("body") for e in member.messages(room_id) if e["type"] == "m.room.message"
    ]
    assert bodies[:2] == ["hi", "hello"]


def test_direct_chat_with_a_local_user(synapse: SynapseServer, member: MatrixClient) -> None:
    friend_id, friend = synapse.new_user("friend")
    room_id = member.room_id(preset="trusted_private_chat", is_direct=True, invite=[friend_id])
    assert friend.join(room_id)[0] == 200
    assert friend.send_megolm(room_id)[0] == 200
    assert_compliant(friend, room_id)


def test_local_invites_and_joins_work(synapse: SynapseServer, member: MatrixClient) -> None:
    guest_id, guest = synapse.new_user("colleague")
    room_id = member.room_id()
    before = synapse.decisions("join", "allow", "ok")
    assert member.invite(room_id, guest_id)[0] == 200
    assert guest.join(room_id)[0] == 200
    assert synapse.decisions("join", "allow", "ok") == before + 1


def test_uninvited_users_cannot_join(synapse: SynapseServer, member: MatrixClient) -> None:
    _, outsider = synapse.new_user("outsider")
    room_id = member.room_id(preset="public_chat")
    status, _ = outsider.join(room_id)
    assert status == 403


@pytest.mark.parametrize("old_version", ["10", None])
def test_room_upgrade_keeps_the_policy(member: MatrixClient, old_version: str | None) -> None:
    room_id = member.room_id(**({"room_version": old_version} if old_version else {}))
    status, reply = member.request("GET", "/_matrix/client/v3/capabilities")
    assert status == 200
    versions = reply["capabilities"]["m.room_versions"]
    target = versions["default"]  # 12 on Synapse >= 1.162, 10 before
    status, reply = member.upgrade(room_id, target)
    assert status == 200, reply
    new_room = reply["replacement_room"]
    assert member.send_megolm(new_room)[0] == 200
    # Synapse does not copy m.room.retention on upgrade; the guard gives the new room one.
    for _ in range(50):
        if member.state_content(new_room, "m.room.retention"):
            break
        time.sleep(0.1)
    assert_compliant(member, new_room)


def test_publishing_to_the_directory_is_refused(
    synapse: SynapseServer, creator: MatrixClient
) -> None:
    room_id = creator.room_id()
    before = synapse.decisions("publish", "deny", "directory")
    status, _ = creator.request(
        "PUT", f"/_matrix/client/v3/directory/list/room/{room_id}", {"visibility": "public"}
    )
    assert status == 403
    assert synapse.decisions("publish", "deny", "directory") >= before + 1
    status, reply = creator.request("GET", "/_matrix/client/v3/publicRooms")
    assert status == 200
    assert reply["chunk"] == []
