"""Two real end-to-end encrypting clients (matrix-nio with vodozemac) talk in a guarded room.

The server only ever sees `m.room.encrypted` events; the receiving client decrypts the text.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nio  # matrix-nio[e2e], a test dependency: missing, the suite fails to collect

from tests.integration.harness import PASSWORD, SynapseServer

SECRET_TEXT = "meet at the usual place at 7"


async def logged_in(server: SynapseServer, localpart: str, store: Path) -> nio.AsyncClient:
    store.mkdir(parents=True, exist_ok=True)
    client = nio.AsyncClient(
        server.url,
        server.user_id(localpart),
        store_path=str(store),
        config=nio.AsyncClientConfig(store_sync_tokens=True, encryption_enabled=True),
    )
    response = await client.login(PASSWORD, device_name=f"{localpart}-device")
    assert isinstance(response, nio.LoginResponse), response
    if client.should_upload_keys:
        assert isinstance(await client.keys_upload(), nio.KeysUploadResponse)
    return client


async def exchange(
    server: SynapseServer, tmp_path: Path, alice_name: str, bob_name: str
) -> tuple[str, str]:
    alice = await logged_in(server, alice_name, tmp_path / "alice")
    bob = await logged_in(server, bob_name, tmp_path / "bob")
    try:
        # A plain createRoom: the guard makes it encrypted, invite-only and non-federating.
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


def test_two_clients_exchange_an_encrypted_message(synapse: SynapseServer, tmp_path: Path) -> None:
    alice_id, alice_raw = synapse.new_user("alice")
    bob_id, _ = synapse.new_user("bob")

    room_id, received = asyncio.run(
        exchange(synapse, tmp_path, alice_id[1:].split(":")[0], bob_id[1:].split(":")[0])
    )

    assert received == SECRET_TEXT
    stored = [e for e in alice_raw.messages(room_id) if e["sender"] == alice_id]
    assert {e["type"] for e in stored} >= {"m.room.encrypted"}
    assert all(SECRET_TEXT not in str(e) for e in stored), "the server saw the plaintext"
