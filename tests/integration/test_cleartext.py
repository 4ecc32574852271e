"""No cleartext at rest in encrypted rooms, on a real Synapse.

A hostile (or merely unencrypting) client sends readable content into an encrypted room every
way it can: each gets 403 and nothing of it reaches the database. What Element's SDKs send in
clear by design (reactions, redactions, in-room key verification) still passes, and two real
end-to-end encrypting clients (matrix-nio) exchange text, edits, replies, reactions, an
attachment, a poll and a location, each decrypted on the other side.
"""

from __future__ import annotations

import asyncio
import io
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import nio
import pytest
import requests
from nio.crypto.attachments import decrypt_attachment

from tests.integration.conftest import SynapseFactory
from tests.integration.db_inspect import Inspector, SqliteInspector, inspector_for
from tests.integration.harness import MatrixClient, PostgresCluster, SynapseServer
from tests.integration.test_e2ee import logged_in

MEGOLM = "m.megolm.v1.aes-sha2"
# What a megolm event looks like on the wire (base64 ciphertext, session, sender's keys).
MEGOLM_FIELDS = {
    "algorithm": MEGOLM,
    "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ",
    "sender_key": "SGVsbG8gd29ybGQgY3VydmUyNTUxOSBrZXkgaGVyZQ",
    "device_id": "RJYKSTBOIE",
}


def marker() -> str:
    """A unique, readable secret: found anywhere in the database, it leaked."""
    return f"secret-{uuid.uuid4().hex}"


def ciphertext() -> str:
    return uuid.uuid4().hex + "AwgAEpAB6y0Tlvu4CmuvlyqH3zKfxEDaPwNlHAtXvEmu6JRGfBomLTS"


def inspector(server: SynapseServer) -> Inspector:
    return SqliteInspector(server.workdir / "homeserver.db")


def quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class Room:
    """Alice's encrypted room (the guard made it so) with Bob in it."""

    def __init__(self, server: SynapseServer, room_version: str | None = None) -> None:
        self.alice_id, self.alice = server.new_user("alice")
        self.bob_id, self.bob = server.new_user("bob")
        body = {"room_version": room_version} if room_version else {}
        self.room_id = self.alice.room_id(invite=[self.bob_id], **body)
        status, reply = self.bob.join(self.room_id)
        assert status == 200, reply
        encryption = self.alice.state_content(self.room_id, "m.room.encryption")
        assert encryption == {"algorithm": MEGOLM}, "the guard should have encrypted the room"

    def message(self) -> str:
        """An event to react to, redact, reply to: megolm-shaped, as every client sends."""
        return self.sent(self.alice.send(self.room_id, megolm(), "m.room.encrypted"))

    @staticmethod
    def sent(reply: tuple[int, Any]) -> str:
        status, body = reply
        assert status == 200, body
        return str(body["event_id"])


def megolm(**fields: Any) -> dict[str, Any]:
    return {**MEGOLM_FIELDS, "ciphertext": ciphertext(), **fields}


def assert_refused(reply: tuple[int, Any]) -> None:
    status, body = reply
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"


def redact(client: MatrixClient, room_id: str, event_id: str, content: Any) -> tuple[int, Any]:
    path = f"/_matrix/client/v3/rooms/{quoted(room_id)}/redact/{quoted(event_id)}/"
    return client.request("PUT", path + uuid.uuid4().hex, content)


@pytest.fixture(scope="module")
def room(synapse: SynapseServer) -> Room:
    return Room(synapse)


# -- the attacker's tries ---------------------------------------------------------------------


def test_an_unencrypted_message_is_refused_and_never_stored(
    synapse: SynapseServer, room: Room
) -> None:
    secret = marker()
    refused_before = synapse.decisions("event", "deny", "unencrypted")

    assert_refused(room.alice.send_text(room.room_id, secret))

    assert synapse.decisions("event", "deny", "unencrypted") == refused_before + 1
    assert all(secret not in str(e["content"]) for e in room.bob.messages(room.room_id))
    db = inspector(synapse)
    assert not db.rows("SELECT event_id FROM event_json WHERE json LIKE ?", f"%{secret}%")
    assert db.tables_containing([secret]) == {}
    assert db.on_disk([secret]) == set()


def test_a_server_admins_unencrypted_message_is_refused_too(
    synapse: SynapseServer, room: Room
) -> None:
    admin_id, admin = synapse.new_user("admin", admin=True)
    assert room.alice.invite(room.room_id, admin_id)[0] == 200
    assert admin.join(room.room_id)[0] == 200
    secret = marker()

    assert_refused(admin.send_text(room.room_id, secret))

    assert inspector(synapse).tables_containing([secret]) == {}


ATTACKS = {
    "notice": ("m.room.message", lambda s, target: {"msgtype": "m.notice", "body": s}),
    "custom-type": ("com.example.note", lambda s, target: {"text": s}),
    "poll-in-clear": (
        "org.matrix.msc3381.poll.start",
        lambda s, target: {
            "org.matrix.msc3381.poll.start": {
                "question": {"org.matrix.msc1767.text": s},
                "answers": [{"id": "a", "org.matrix.msc1767.text": "yes"}],
            }
        },
    ),
    "reaction-with-body": (
        "m.reaction",
        lambda s, target: {
            "body": s,
            "m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "+1"},
        },
    ),
    "reaction-key-is-a-message": (
        "m.reaction",
        lambda s, target: {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": s * 3}
        },
    ),
    "fake-ciphertext-beside-a-body": ("m.room.encrypted", lambda s, target: megolm(body=s)),
    "ciphertext-in-clear": (
        "m.room.encrypted",
        lambda s, target: megolm(ciphertext=f"meet at 7 {s}"),
    ),
    "relation-carrying-text": (
        "m.room.encrypted",
        lambda s, target: megolm(
            **{"m.relates_to": {"rel_type": "m.replace", "event_id": target, "body": s}}
        ),
    ),
    "verification-request-with-a-message": (
        "m.room.message",
        lambda s, target: {
            "msgtype": "m.key.verification.request",
            "body": s,
            "from_device": "DEVICE",
            "methods": ["m.sas.v1"],
            "to": "@bob:guard.test",
        },
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_readable_content_in_any_other_shape_is_refused(
    synapse: SynapseServer, room: Room, attack: str
) -> None:
    event_type, content = ATTACKS[attack]
    secret = marker()

    assert_refused(room.alice.send(room.room_id, content(secret, room.message()), event_type))

    assert inspector(synapse).tables_containing([secret]) == {}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda s: {"reason": "spam", "body": s}, id="body-beside-reason"),
        pytest.param(lambda s: {"reason": s * 10}, id="reason-is-a-message"),
    ],
)
def test_a_redaction_carrying_extra_content_is_refused(
    synapse: SynapseServer, room: Room, content: Any
) -> None:
    secret = marker()
    target = room.message()

    assert_refused(redact(room.alice, room.room_id, target, content(secret)))

    assert inspector(synapse).tables_containing([secret]) == {}
    assert any(e["event_id"] == target for e in room.bob.messages(room.room_id))


# -- what stock clients send in clear, by design -----------------------------------------------


def test_a_reaction_and_a_redaction_with_a_reason_are_accepted(room: Room) -> None:
    target = room.message()
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "👍"}}

    room.sent(room.bob.send(room.room_id, reaction, "m.reaction"))
    room.sent(redact(room.alice, room.room_id, target, {"reason": "posted in the wrong room"}))


def test_a_megolm_event_with_its_relation_in_clear_is_accepted(room: Room) -> None:
    # matrix-rust-sdk (Element Web and X) leaves m.relates_to beside the ciphertext.
    target = room.message()
    edit = megolm(**{"m.relates_to": {"rel_type": "m.replace", "event_id": target}})
    reply = megolm(**{"m.relates_to": {"m.in_reply_to": {"event_id": target}}})

    room.sent(room.alice.send(room.room_id, edit, "m.room.encrypted"))
    room.sent(room.bob.send(room.room_id, reply, "m.room.encrypted"))


def test_element_webs_in_room_verification_is_accepted(room: Room) -> None:
    # matrix-js-sdk sends these unencrypted (rust-crypto.ts, OutgoingRequestProcessor.ts).
    body = (
        f"{room.alice_id} is requesting to verify your key, but your client does not support "
        "in-chat key verification. You will need to use legacy key verification to verify keys."
    )
    request = {
        "msgtype": "m.key.verification.request",
        "body": body,
        "from_device": room.alice.device_id,
        "methods": ["m.sas.v1", "m.qr_code.show.v1", "m.reciprocate.v1"],
        "to": room.bob_id,
    }
    request_id = room.sent(room.alice.send(room.room_id, request))
    reference = {"m.relates_to": {"rel_type": "m.reference", "event_id": request_id}}
    ready = {"from_device": room.bob.device_id, "methods": ["m.sas.v1"], **reference}
    cancel = {"code": "m.user", "reason": "The user cancelled the verification.", **reference}

    room.sent(room.bob.send(room.room_id, ready, "m.key.verification.ready"))
    room.sent(room.alice.send(room.room_id, cancel, "m.key.verification.cancel"))


def test_state_events_in_clear_are_judged_by_the_state_rules_only(room: Room) -> None:
    room.sent(room.alice.put_state(room.room_id, "m.room.topic", {"topic": "Q3 planning"}))
    assert_refused(room.alice.put_state(room.room_id, "m.room.join_rules", {"join_rule": "public"}))


def test_an_upgraded_room_stays_closed_to_cleartext(synapse: SynapseServer) -> None:
    room = Room(synapse, room_version="10")
    status, body = room.alice.upgrade(room.room_id, "11")
    assert status == 200, body
    new_room = str(body["replacement_room"])
    assert room.alice.state_content(new_room, "m.room.encryption") == {"algorithm": MEGOLM}

    assert_refused(room.alice.send_text(new_room, marker()))
    room.sent(room.alice.send(new_room, megolm(), "m.room.encrypted"))
    # The guard's own retention event (sent through the module API) still lands.
    for _ in range(100):
        if room.alice.state_content(new_room, "m.room.retention"):
            break
        time.sleep(0.1)
    assert room.alice.state_content(new_room, "m.room.retention")


# -- Synapse's own plaintext --------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_notices(synapse_factory: SynapseFactory) -> SynapseServer:
    return synapse_factory(
        extra={"server_notices": {"system_mxid_localpart": "notices", "room_name": "Notices"}}
    ).start()


def test_a_server_notice_is_refused_it_is_plaintext(with_notices: SynapseServer) -> None:
    # Synapse cannot encrypt: its notices would be the server writing cleartext to its disk.
    _, admin = with_notices.new_user("admin", admin=True)
    user_id, _ = with_notices.new_user("user")
    secret = marker()
    refused_before = with_notices.decisions("event", "deny", "unencrypted")

    status, body = admin.request(
        "POST",
        "/_synapse/admin/v1/send_server_notice",
        {"user_id": user_id, "content": {"msgtype": "m.text", "body": secret}},
    )

    assert status == 403, body
    assert with_notices.decisions("event", "deny", "unencrypted") == refused_before + 1
    assert inspector(with_notices).tables_containing([secret]) == {}


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def on_postgres(
    synapse_factory: SynapseFactory, postgres: PostgresCluster
) -> tuple[SynapseServer, Inspector]:
    server = synapse_factory(database=postgres.create_database()).start()
    return server, inspector_for(server, postgres)


def test_on_postgresql_an_unencrypted_message_is_refused_and_never_stored(
    on_postgres: tuple[SynapseServer, Inspector],
) -> None:
    server, db = on_postgres
    room = Room(server)
    secret = marker()

    assert_refused(room.alice.send_text(room.room_id, secret))
    room.sent(room.alice.send(room.room_id, megolm(), "m.room.encrypted"))

    assert db.tables_containing([secret]) == {}


# -- real end-to-end encrypting clients ---------------------------------------------------------


def download(server: SynapseServer, token: str, mxc: str) -> bytes:
    server_name, media_id = mxc.removeprefix("mxc://").split("/", 1)
    for path in (
        f"/_matrix/client/v1/media/download/{server_name}/{media_id}",  # authenticated media
        f"/_matrix/media/v3/download/{server_name}/{media_id}",  # before Synapse 1.111
    ):
        response = requests.get(
            server.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        if response.ok:
            return response.content
    raise AssertionError(f"could not download {mxc}: {response.status_code} {response.text}")


class Conversation:
    """Alice sends, with matrix-nio, what Element users send; Bob's nio decrypts it.

    nio encrypts every event type but reactions and, like matrix-rust-sdk, copies a
    relation (edit, reply) beside the ciphertext."""

    def __init__(self, server: SynapseServer, alice: nio.AsyncClient, bob: nio.AsyncClient):
        self.server = server
        self.alice = alice
        self.bob = bob
        self.room_id = ""
        self.secrets: dict[str, str] = {}

    async def open(self) -> None:
        created = await self.alice.room_create(invite=[self.bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        self.room_id = created.room_id
        await self.bob.sync(timeout=1000)
        assert isinstance(await self.bob.join(self.room_id), nio.JoinResponse)
        await self.alice.sync(timeout=1000, full_state=True)
        assert self.alice.rooms[self.room_id].encrypted
        if self.alice.should_query_keys:
            await self.alice.keys_query()

    async def send(self, event_type: str, content: dict[str, Any]) -> str:
        sent = await self.alice.room_send(
            self.room_id, event_type, content, ignore_unverified_devices=True
        )
        assert isinstance(sent, nio.RoomSendResponse), sent
        return sent.event_id

    def secret(self, name: str) -> str:
        self.secrets[name] = marker()
        return self.secrets[name]

    async def received(self, count: int) -> dict[str, dict[str, Any]]:
        """Bob's view: each event's type and content as his client decrypted it."""
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(30):
            sync = await self.bob.sync(timeout=1000)
            assert isinstance(sync, nio.SyncResponse), sync
            room = sync.rooms.join.get(self.room_id)
            for event in room.timeline.events if room else []:
                assert not isinstance(event, nio.MegolmEvent), "bob could not decrypt"
                seen[event.event_id] = {
                    "type": event.source["type"],
                    "content": event.source["content"],
                    "decrypted": bool(getattr(event, "decrypted", False)),
                }
            if len(seen) >= count:
                break
        return seen


async def converse(server: SynapseServer, tmp_path: Path, alice: str, bob: str) -> dict[str, Any]:
    alice_client = await logged_in(server, alice, tmp_path / "alice")
    bob_client = await logged_in(server, bob, tmp_path / "bob")
    talk = Conversation(server, alice_client, bob_client)
    try:
        await talk.open()
        await bob_client.sync(timeout=1000)  # everything before this is the room's creation
        ids: dict[str, str] = {}
        ids["text"] = await talk.send(
            "m.room.message", {"msgtype": "m.text", "body": talk.secret("text")}
        )
        ids["edit"] = await talk.send(
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": "* " + talk.secret("edit"),
                "m.new_content": {"msgtype": "m.text", "body": talk.secrets["edit"]},
                "m.relates_to": {"rel_type": "m.replace", "event_id": ids["text"]},
            },
        )
        ids["reply"] = await talk.send(
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": talk.secret("reply"),
                "m.relates_to": {"m.in_reply_to": {"event_id": ids["text"]}},
            },
        )
        ids["reaction"] = await talk.send(
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": ids["text"], "key": "👍"}},
        )
        attachment = f"{talk.secret('attachment')} quarterly figures".encode()
        uploaded, keys = await alice_client.upload(
            io.BytesIO(attachment),
            content_type="application/pdf",
            filename="q3.pdf",
            encrypt=True,
            filesize=len(attachment),
        )
        assert isinstance(uploaded, nio.UploadResponse), uploaded
        assert keys is not None
        ids["attachment"] = await talk.send(
            "m.room.message",
            {
                "msgtype": "m.file",
                "body": talk.secret("filename"),
                "file": {**keys, "url": uploaded.content_uri},
                "info": {"mimetype": "application/pdf", "size": len(attachment)},
            },
        )
        ids["poll"] = await talk.send(
            "org.matrix.msc3381.poll.start",
            {
                "org.matrix.msc3381.poll.start": {
                    "kind": "org.matrix.msc3381.poll.disclosed",
                    "max_selections": 1,
                    "question": {"org.matrix.msc1767.text": talk.secret("poll")},
                    "answers": [
                        {"id": "yes", "org.matrix.msc1767.text": "Yes"},
                        {"id": "no", "org.matrix.msc1767.text": "No"},
                    ],
                },
                "org.matrix.msc1767.text": talk.secrets["poll"],
            },
        )
        ids["location"] = await talk.send(
            "m.room.message",
            {
                "msgtype": "m.location",
                "body": talk.secret("location"),
                "geo_uri": "geo:48.8583,2.2945;u=10",
            },
        )
        seen = await talk.received(len(ids))
        return {
            "ids": ids,
            "seen": seen,
            "secrets": dict(talk.secrets),
            "room_id": talk.room_id,
            "attachment": attachment,
            "keys": keys,
            "mxc": uploaded.content_uri,
            "bob_token": bob_client.access_token,
        }
    finally:
        await alice_client.close()
        await bob_client.close()


def test_real_e2ee_clients_keep_working(synapse: SynapseServer, tmp_path: Path) -> None:
    alice = synapse.new_account("alice")
    bob = synapse.new_account("bob")

    talk = asyncio.run(converse(synapse, tmp_path, alice, bob))
    ids, seen, secrets = talk["ids"], talk["seen"], talk["secrets"]

    def received(name: str) -> dict[str, Any]:
        assert ids[name] in seen, f"bob never received the {name}"
        return dict(seen[ids[name]])

    def decrypted(name: str) -> dict[str, Any]:
        event = received(name)
        assert event["decrypted"], f"the {name} reached bob in clear"
        return dict(event["content"])

    assert decrypted("text")["body"] == secrets["text"]
    edit = decrypted("edit")
    assert edit["m.new_content"]["body"] == secrets["edit"]
    assert edit["m.relates_to"] == {"rel_type": "m.replace", "event_id": ids["text"]}
    reply = decrypted("reply")
    assert reply["body"] == secrets["reply"]
    assert reply["m.relates_to"]["m.in_reply_to"]["event_id"] == ids["text"]
    reaction = received("reaction")  # in clear, by design
    assert (reaction["type"], reaction["decrypted"]) == ("m.reaction", False)
    attachment = decrypted("attachment")
    assert attachment["body"] == secrets["filename"]
    poll = decrypted("poll")["org.matrix.msc3381.poll.start"]
    assert poll["question"]["org.matrix.msc1767.text"] == secrets["poll"]
    assert decrypted("location")["geo_uri"] == "geo:48.8583,2.2945;u=10"

    # Bob fetches the attachment and decrypts it; the server only ever held ciphertext.
    file_info = attachment["file"]
    stored = download(synapse, talk["bob_token"], talk["mxc"])
    assert talk["attachment"].decode() not in stored.decode("latin-1")
    plain = decrypt_attachment(
        stored, file_info["key"]["k"], file_info["hashes"]["sha256"], file_info["iv"]
    )
    assert plain == talk["attachment"]

    # The server holds nothing readable: only ciphertext and the reaction, in this room.
    db = inspector(synapse)
    assert db.tables_containing(secrets.values()) == {}
    media = [p.read_bytes() for p in (synapse.workdir / "media").rglob("*") if p.is_file()]
    assert all(secrets["attachment"].encode() not in data for data in media)
    timeline = {
        event_type
        for (event_type,) in db.rows(
            "SELECT type FROM events WHERE room_id = ? AND state_key IS NULL", talk["room_id"]
        )
    }
    assert timeline == {"m.room.encrypted", "m.reaction"}
