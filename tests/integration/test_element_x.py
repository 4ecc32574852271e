"""Element X's first use, over HTTP against a real Synapse with the guard.

What the app calls after the server discovery (`/.well-known/matrix/client`, served by nginx:
tests/deploy/test_nginx_e2e.py): `/versions`, the OIDC discovery it falls back from, the login
flows, a password login with its body, `/capabilities`, simplified sliding sync (MSC4186,
`POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`) for its room list and its
encryption loop, and the rooms it creates. The per-request gate judges sliding sync like
/sync: served from an allowed address, 403 from a refused one whatever the token.

Simplified sliding sync is served and on by default from Synapse 1.114.0 (1.110 to 1.113 only
with `experimental_features.msc3575_enabled: true`; absent before); its tests skip below
1.114.0, where Element X cannot sync at all. The addresses are documentation ranges that reach
Synapse only in X-Forwarded-For, as behind nginx.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from synapse_guard.compat import synapse_version
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, MatrixClient, SynapseServer
from tests.integration.test_rooms import MEGOLM, assert_compliant

VPN, ABROAD = "10.8.0.5", "192.0.2.1"
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
NATIVE_SLIDING_SYNC_SINCE = (1, 114, 0)
needs_sliding_sync = pytest.mark.skipif(
    synapse_version() < NATIVE_SLIDING_SYNC_SINCE,
    reason="simplified sliding sync (MSC4186), which Element X needs, is native in Synapse "
    ">= 1.114.0 only",
)
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}

# The room list, as Element X's SDK (matrix-rust-sdk's RoomListService) first asks for it.
ROOM_LIST = {
    "conn_id": "room-list",
    "lists": {
        "all_rooms": {
            "ranges": [[0, 19]],
            "timeline_limit": 1,
            "required_state": [
                ["m.room.encryption", ""],
                ["m.room.member", "$LAZY"],
                ["m.room.member", "$ME"],
                ["m.room.name", ""],
                ["m.room.topic", ""],
                ["m.room.avatar", ""],
                ["m.room.canonical_alias", ""],
                ["m.room.power_levels", ""],
                ["m.room.join_rules", ""],
                ["m.room.create", ""],
                ["m.room.history_visibility", ""],
                ["m.room.tombstone", ""],
                ["m.room.pinned_events", ""],
                ["m.call.member", "*"],
            ],
            "filters": {"not_room_types": ["m.space"]},
        }
    },
    "extensions": {
        "account_data": {"enabled": True},
        "receipts": {"enabled": True, "rooms": ["*"]},
        "typing": {"enabled": True},
    },
}
# Its separate encryption loop (to-device messages and device list changes).
ENCRYPTION_LOOP = {
    "conn_id": "encryption",
    "extensions": {"to_device": {"enabled": True}, "e2ee": {"enabled": True}},
}


@pytest.fixture(scope="module")
def server(synapse_factory: SynapseFactory) -> SynapseServer:
    guard = {"network": {"allow_cidrs": ["10.8.0.0/24"], "revoke_sessions": False}}
    return synapse_factory(guard=guard).start()


def element_x_login(server: SynapseServer, localpart: str) -> MatrixClient:
    """Log in with the body Element X sends, from the team's VPN."""
    client = server.client()
    client.default_headers = {"X-Forwarded-For": VPN, "User-Agent": "Element X/25.11 (Android)"}
    status, body = client.request(
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": PASSWORD,
            "initial_device_display_name": "Element X Android",
        },
        auth=False,
    )
    assert status == 200, body
    client.token, client.user_id, client.device_id = (
        body["access_token"],
        body["user_id"],
        body["device_id"],
    )
    return client


@pytest.fixture(scope="module")
def phone(server: SynapseServer) -> MatrixClient:
    return element_x_login(server, server.new_account("member"))


def sliding_sync(
    client: MatrixClient, body: dict[str, Any], pos: str | None = None, **headers: str
) -> tuple[int, Any]:
    params = {"timeout": "0", **({"pos": pos} if pos else {})}
    return client.request("POST", SLIDING_SYNC, body, params=params, headers=headers)


def forbidden(status: int, body: Any) -> bool:
    return status == 403 and isinstance(body, dict) and body.get("errcode") == "M_FORBIDDEN"


# --- Discovery and login ----------------------------------------------------------------------


def test_versions_answer_with_and_without_a_token(
    server: SynapseServer, phone: MatrixClient
) -> None:
    for client in (server.client(), phone):
        status, body = client.request("GET", "/_matrix/client/versions")
        assert status == 200, body
        assert "v1.1" in body["versions"]
        native = synapse_version() >= NATIVE_SLIDING_SYNC_SINCE
        # Element X decides from this flag that the server syncs natively.
        assert body["unstable_features"].get("org.matrix.simplified_msc3575", False) is native


def test_no_oidc_so_element_x_offers_password_login(server: SynapseServer) -> None:
    client = server.client()
    for path in (
        "/_matrix/client/v1/auth_metadata",
        "/_matrix/client/unstable/org.matrix.msc2965/auth_issuer",
    ):
        status, body = client.request("GET", path)
        assert status == 404, (path, status, body)
    status, body = client.request("GET", "/_matrix/client/v3/login")
    assert status == 200, body
    flows = {flow["type"] for flow in body["flows"]}
    # Password only: no SSO, CAS, JWT or login token (appservices are the admin's config).
    assert flows == {"m.login.password", "m.login.application_service"}, flows


# --- After login ------------------------------------------------------------------------------


def test_capabilities(phone: MatrixClient) -> None:
    status, body = phone.request("GET", "/_matrix/client/v3/capabilities")
    assert status == 200, body
    capabilities = body["capabilities"]
    assert capabilities["m.room_versions"]["default"]
    assert capabilities["m.3pid_changes"]["enabled"] is False  # 20-accounts.yaml
    assert "m.change_password" in capabilities
    # No sign-in by QR code from another session (MSC3882): every device logs in itself.
    assert capabilities.get("m.get_login_token", {"enabled": False})["enabled"] is False


def test_the_calls_after_login_are_served(phone: MatrixClient) -> None:
    me = urllib.parse.quote(phone.user_id or "", safe="")
    media = "/_matrix/client/v1/media" if synapse_version() >= (1, 111, 0) else "/_matrix/media/v3"
    calls: list[tuple[str, str, Any, int]] = [
        ("GET", "/_matrix/client/v3/account/whoami", None, 200),
        ("GET", "/_matrix/client/v3/pushrules/", None, 200),
        ("GET", f"/_matrix/client/v3/profile/{me}", None, 200),
        ("GET", "/_matrix/client/v3/devices", None, 200),
        ("POST", "/_matrix/client/v3/keys/upload", {"one_time_keys": {}}, 200),
        ("POST", "/_matrix/client/v3/keys/query", {"device_keys": {phone.user_id: []}}, 200),
        ("GET", f"{media}/config", None, 200),
        # No key backup and no secret storage yet: the app offers to set them up.
        ("GET", "/_matrix/client/v3/room_keys/version", None, 404),
        (
            "GET",
            f"/_matrix/client/v3/user/{me}/account_data/m.secret_storage.default_key",
            None,
            404,
        ),
    ]
    for method, path, body, expected in calls:
        status, reply = phone.request(method, path, body)
        assert status == expected, (path, status, reply)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"preset": "trusted_private_chat", "is_direct": True, "initial_state": [ENCRYPTION]},
            id="direct-chat",
        ),
        pytest.param(
            {
                "name": "Terrain",
                "preset": "private_chat",
                "visibility": "private",
                "is_direct": False,
                "initial_state": [ENCRYPTION],
            },
            id="private-room",
        ),
    ],
)
def test_rooms_element_x_creates_get_the_room_policy(
    server: SynapseServer, phone: MatrixClient, body: dict[str, Any]
) -> None:
    teammate = server.user_id(server.new_account("teammate"))
    status, reply = phone.create_room(**body, invite=[teammate])
    assert status == 200, reply
    assert_compliant(phone, reply["room_id"])


@needs_sliding_sync
def test_sliding_sync_serves_the_room_list_and_the_encryption_loop(phone: MatrixClient) -> None:
    room_id = phone.room_id(preset="private_chat", initial_state=[ENCRYPTION])
    assert phone.send_megolm(room_id)[0] == 200

    status, body = sliding_sync(phone, ROOM_LIST)
    assert status == 200, body
    assert body["pos"]
    assert room_id in body["rooms"]
    state = {
        (e["type"], e["state_key"]): e["content"] for e in body["rooms"][room_id]["required_state"]
    }
    assert state[("m.room.encryption", "")]["algorithm"] == MEGOLM
    assert state[("m.room.join_rules", "")]["join_rule"] == "invite"
    # The next round trip, from the position it was given.
    status, again = sliding_sync(phone, ROOM_LIST, pos=body["pos"])
    assert status == 200, again

    status, body = sliding_sync(phone, ENCRYPTION_LOOP)
    assert status == 200, body
    assert "next_batch" in body["extensions"]["to_device"]
    assert "signed_curve25519" in body["extensions"]["e2ee"]["device_one_time_keys_count"]


@needs_sliding_sync
def test_a_stolen_token_cannot_sliding_sync_from_a_refused_address(
    server: SynapseServer,
) -> None:
    owner = element_x_login(server, server.new_account("victim"))
    room_id = owner.room_id(preset="private_chat", initial_state=[ENCRYPTION])
    before = server.decisions("request", "deny", "ip_not_allowed")
    for body in (ROOM_LIST, ENCRYPTION_LOOP):
        status, reply = sliding_sync(owner, body, **{"X-Forwarded-For": ABROAD})
        assert forbidden(status, reply), (status, reply)
        assert room_id not in str(reply)
    # Like /sync.
    status, reply = owner.request(
        "GET",
        "/_matrix/client/v3/sync",
        params={"timeout": "0"},
        headers={"X-Forwarded-For": ABROAD},
    )
    assert forbidden(status, reply), (status, reply)
    assert server.decisions("request", "deny", "ip_not_allowed") >= before + 3
    # The owner, back on the VPN, keeps their session.
    status, reply = sliding_sync(owner, ROOM_LIST)
    assert status == 200, reply
    assert room_id in reply["rooms"]


@pytest.mark.skipif(
    synapse_version() >= NATIVE_SLIDING_SYNC_SINCE, reason="this Synapse serves sliding sync"
)
def test_before_1_114_there_is_no_sliding_sync_for_element_x(phone: MatrixClient) -> None:
    status, body = sliding_sync(phone, ROOM_LIST)
    assert status in (400, 404), (status, body)  # an unknown endpoint, or off by default
    assert body["errcode"] == "M_UNRECOGNIZED", body
