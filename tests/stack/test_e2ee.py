"""Two members talk end to end encrypted through nginx (matrix-nio with vodozemac), and the
server refuses cleartext in their encrypted room."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import nio
import requests

from tests.stack.conftest import MATRIX, Session, Stack

SECRET_TEXT = "the stack test's secret: meet at seven"


def client(stack: Stack, session: Session, store: Path) -> nio.AsyncClient:
    store.mkdir(parents=True, exist_ok=True)
    c = nio.AsyncClient(
        MATRIX,
        session.member.user_id,
        store_path=str(store),
        config=nio.AsyncClientConfig(store_sync_tokens=True, encryption_enabled=True),
        ssl=ssl.create_default_context(cafile=stack.ca),
    )
    # The sessions' logins (Synapse's rc_login allows few per address), new device keys.
    c.restore_login(session.member.user_id, session.device_id, session.access_token)
    return c


async def exchange(stack: Stack, sessions: tuple[Session, Session], tmp: Path) -> tuple[str, str]:
    alice = client(stack, sessions[0], tmp / "alice")
    bob = client(stack, sessions[1], tmp / "bob")
    try:
        for c in (alice, bob):
            if c.should_upload_keys:
                assert isinstance(await c.keys_upload(), nio.KeysUploadResponse)
        created = await alice.room_create(invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        await bob.sync(timeout=1000)
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await alice.sync(timeout=1000, full_state=True)
        assert alice.rooms[room_id].encrypted, "the guard should have made the room encrypted"
        if alice.should_query_keys:
            await alice.keys_query()
        sent = await alice.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": SECRET_TEXT},
            ignore_unverified_devices=True,
        )
        assert isinstance(sent, nio.RoomSendResponse), sent
        for _ in range(20):
            sync = await bob.sync(timeout=1000)
            assert isinstance(sync, nio.SyncResponse), sync
            room = sync.rooms.join.get(room_id)
            for event in room.timeline.events if room else []:
                if isinstance(event, nio.RoomMessageText):
                    return room_id, event.body
                assert not isinstance(event, nio.MegolmEvent), "bob could not decrypt"
        raise AssertionError("bob never received the message")
    finally:
        await alice.close()
        await bob.close()


def test_two_members_exchange_an_encrypted_message_and_cleartext_is_refused(
    stack: Stack, https: requests.Session, sessions: tuple[Session, Session], tmp_path: Path
) -> None:
    room_id, received = asyncio.run(exchange(stack, sessions, tmp_path))
    assert received == SECRET_TEXT

    alice = sessions[0]
    messages = https.get(
        f"{MATRIX}/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50",
        headers=alice.headers,
        timeout=30,
    )
    assert messages.status_code == 200, messages.text
    mine = [e for e in messages.json()["chunk"] if e["sender"] == alice.member.user_id]
    assert "m.room.encrypted" in {e["type"] for e in mine}
    assert SECRET_TEXT not in messages.text, "the server holds the plaintext"

    # A client that sends cleartext into the encrypted room is refused.
    cleartext = https.put(
        f"{MATRIX}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/stack-cleartext-1",
        headers=alice.headers,
        json={"msgtype": "m.text", "body": "in the clear"},
        timeout=30,
    )
    assert cleartext.status_code == 403, cleartext.text
