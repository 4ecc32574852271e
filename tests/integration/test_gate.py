"""The per-request gate on a real Synapse: what a stolen token can do from a refused address.

Nothing: every authenticated request from an address the policy refuses gets 403 M_FORBIDDEN
before Synapse acts on it, whatever the endpoint, the user agent or the token's age. The
addresses are documentation ranges that reach Synapse only in X-Forwarded-For, as behind
nginx (tests/integration/test_network.py has the policy itself).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from synapse_guard.compat import synapse_version
from tests.geoip_factory import replace_by_rename, write_corrupt, write_country_db
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import (
    PASSWORD,
    SERVER_NAME,
    MatrixClient,
    PostgresCluster,
    SynapseServer,
)

VPN, FRANCE, ABROAD = "10.8.0.5", "198.51.100.7", "192.0.2.1"
COUNTRIES = {"FR": ["198.51.100.0/24"], "US": ["192.0.2.0/24"]}
LOCKDOWN = "/_synapse/client/synapse_guard/lockdown"
CHECKIN = "/_synapse/client/synapse_guard/checkin"
BREAKGLASS = "breakglass"
EXPIRED = "ORG_MATRIX_EXPIRED_ACCOUNT"  # what a client must never be told: it ends sessions


def network(geoip_db: Path) -> dict[str, Any]:
    return {
        "allow_cidrs": ["10.8.0.0/24"],
        "allow_countries": ["FR"],
        "geoip_database": str(geoip_db),
        "revoke_sessions": False,  # the gate alone: the sweep is tests/integration/test_sweep*
    }


@pytest.fixture(scope="module")
def geoip_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_country_db(tmp_path_factory.mktemp("geoip") / "country.mmdb", COUNTRIES)


@pytest.fixture(scope="module")
def gated(synapse_factory: SynapseFactory, geoip_db: Path) -> SynapseServer:
    guard = {
        "network": network(geoip_db),
        "lockdown": {"exempt_users": [f"@{BREAKGLASS}:{SERVER_NAME}"]},
    }
    server = synapse_factory(guard=guard).start()
    server.register_user(BREAKGLASS, admin=True)
    return server


def from_(address: str, user_agent: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": address}
    if user_agent:
        headers["User-Agent"] = user_agent
    return headers


def login(server: SynapseServer, localpart: str, address: str = VPN) -> MatrixClient:
    client = server.client()
    client.default_headers = from_(address)  # the place this client is, as nginx reports it
    status, body = client.login(localpart, PASSWORD)
    assert status == 200, body
    return client


def attempt(
    client: MatrixClient, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    return client.request(method, path, body, headers={**from_(ABROAD), **headers})


def refused(status: int, body: Any) -> bool:
    return status == 403 and isinstance(body, dict) and body.get("errcode") == "M_FORBIDDEN"


# What a thief tries first with a stolen token (and the owner's password, for UIA).
def attacks(server: SynapseServer, owner: MatrixClient, owner_id: str) -> list[tuple[Any, ...]]:
    room = owner.room_id()
    uia = {"type": "m.login.password", "user": owner_id, "password": PASSWORD}
    return [
        ("GET", "/_matrix/client/v3/sync?timeout=0", None),
        ("GET", "/_matrix/client/v3/account/whoami", None),
        ("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t1", {"body": "x"}),
        (
            "POST",
            "/_matrix/client/v3/account/password",
            {"new_password": "Stolen-Password-2026!", "auth": uia},
        ),
        ("POST", "/_matrix/client/v3/delete_devices", {"devices": [owner.device_id], "auth": uia}),
        ("POST", "/_matrix/client/v3/account/deactivate", {"auth": uia}),
        ("POST", "/_matrix/client/v3/keys/device_signing/upload", {"auth": uia}),
        ("POST", "/_matrix/client/v3/keys/upload", {"one_time_keys": {}}),
        ("GET", "/_matrix/client/v3/devices", None),
        ("POST", "/_matrix/client/v3/pushers/set", {"kind": None, "app_id": "a", "pushkey": "k"}),
        ("GET", "/_matrix/client/v3/voip/turnServer", None),
        ("POST", "/_synapse/client/synapse_guard/lockdown", {"locked": True}),
    ]


@pytest.mark.parametrize("user_agent", [None, "sync-v3-proxy-stolen", "Element X/1.0"])
def test_a_stolen_member_token_does_nothing_from_a_refused_address(
    gated: SynapseServer, user_agent: str | None
) -> None:
    localpart = gated.new_account("victim")
    owner = login(gated, localpart)
    owner_id = gated.user_id(localpart)
    thief = gated.client(owner.token)
    before = gated.decisions("request", "deny", "country_not_allowed")

    plays = attacks(gated, owner, owner_id)
    for method, path, body in plays:
        status, reply = attempt(thief, method, path, body, **from_(ABROAD, user_agent))
        assert refused(status, reply), (method, path, status, reply)

    assert gated.decisions("request", "deny", "country_not_allowed") >= before + len(plays)
    # Nothing happened: the owner's session, password and devices are as they were.
    assert owner.request("GET", "/_matrix/client/v3/account/whoami", headers=from_(VPN))[0] == 200
    assert gated.client().login(localpart, PASSWORD, headers=from_(FRANCE))[0] == 200
    # And the same token from the VPN works: the owner, not the token, is judged by place.
    assert thief.request("GET", "/_matrix/client/v3/sync?timeout=0", headers=from_(VPN))[0] == 200


def test_a_stolen_admin_token_cannot_create_an_admin_or_mint_a_login_token(
    gated: SynapseServer,
) -> None:
    admin_localpart = gated.new_account("admin", admin=True)
    admin = login(gated, admin_localpart)
    victim = gated.user_id(gated.new_account("target"))
    for method, path, body in [
        ("PUT", f"/_synapse/admin/v2/users/@evil:{SERVER_NAME}", {"password": "x", "admin": True}),
        ("POST", f"/_synapse/admin/v1/users/{victim}/login", {}),
        ("GET", "/_synapse/admin/v2/users", None),
        ("POST", LOCKDOWN, {"locked": False}),
        ("POST", CHECKIN, {}),
    ]:
        status, reply = attempt(admin, method, path, body)
        assert refused(status, reply), (path, status, reply)
    status, _ = admin.request(
        "GET", f"/_synapse/admin/v2/users/@evil:{SERVER_NAME}", headers=from_(VPN)
    )
    assert status == 404, "no admin account was created"


def test_a_refreshed_token_is_as_useless_from_a_refused_address(
    synapse_factory: SynapseFactory, geoip_db: Path
) -> None:
    # Refresh tokens (on by default in Synapse 1.163 for clients that ask): /refresh itself
    # is not an authenticated request, but what it yields is refused where the old one was.
    server = synapse_factory(
        guard={"network": network(geoip_db)},
        extra={"refreshable_access_token_lifetime": "5m"},
    ).start()
    localpart = server.new_account("refresher")
    status, body = server.client().request(
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": PASSWORD,
            "refresh_token": True,
        },
        headers=from_(VPN),
    )
    assert status == 200, body
    assert "refresh_token" in body, body
    status, renewed = server.client().request(
        "POST",
        "/_matrix/client/v3/refresh",
        {"refresh_token": body["refresh_token"]},
        headers=from_(ABROAD),
    )
    if status == 200:
        thief = server.client(renewed["access_token"])
        assert refused(*attempt(thief, "GET", "/_matrix/client/v3/sync?timeout=0"))
        assert (
            thief.request("GET", "/_matrix/client/v3/account/whoami", headers=from_(VPN))[0] == 200
        )
    else:
        assert status in (401, 403), renewed


REMOTE = [
    ("POST", "/_matrix/client/v3/join/%23room%3Aremote.example", {}),
    ("POST", "/_matrix/client/v3/join/!abc:remote.example", {}),
    ("POST", "/_matrix/client/v3/join/!Vx3c9Qm2room?server_name=remote.example", {}),
    ("POST", "/_matrix/client/v3/knock/%23room%3Aremote.example?via=remote.example", {}),
    ("GET", "/_matrix/client/v3/publicRooms?server=remote.example", None),
    ("POST", "/_matrix/client/v3/publicRooms?server=remote.example", {}),
    ("GET", "/_matrix/client/v1/media/download/remote.example/abcdefgh", None),
    ("GET", "/_matrix/client/v1/media/thumbnail/remote.example/abcdefgh?width=8&height=8", None),
    ("GET", "/_matrix/client/v3/profile/%40someone%3Aremote.example", None),
]


@pytest.fixture(scope="module")
def open_synapse(synapse_factory: SynapseFactory) -> SynapseServer:
    """Synapse's own federation layer off (it would federate with anyone): the module alone."""
    return synapse_factory(
        extra={"federation_domain_whitelist": None, "allow_profile_lookup_over_federation": True}
    ).start()


@pytest.mark.parametrize(("method", "path", "body"), REMOTE)
def test_with_synapses_layer_off_no_request_names_another_server(
    open_synapse: SynapseServer, method: str, path: str, body: Any
) -> None:
    if "/v1/media/" in path and synapse_version() < (1, 111, 0):
        pytest.skip(
            "authenticated media (/_matrix/client/v1/media) exists from Synapse 1.111; before, "
            "media is fetched unauthenticated, which only Synapse's own layer stops (README)"
        )
    _, admin = open_synapse.new_user("remoteadmin", admin=True)  # admins skip user_may_join_room
    before = open_synapse.decisions("request", "deny", "federation")
    status, reply = admin.request(method, path, body)
    assert refused(status, reply), (status, reply)
    assert open_synapse.decisions("request", "deny", "federation") == before + 1
    # Local names still work.
    room = admin.room_id()
    assert admin.request("POST", f"/_matrix/client/v3/join/{room}?via={SERVER_NAME}", {})[0] == 200


# -- lockdown: exemption belongs to whoever holds the token --------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def lockable(
    request: pytest.FixtureRequest, synapse_factory: SynapseFactory, geoip_db: Path
) -> Iterator[SynapseServer]:
    """A gated server, on each database (the lockdown state and the tokens live there)."""
    if request.param == "sqlite":
        server = request.getfixturevalue("gated")
    else:
        database = request.getfixturevalue("postgres").create_database()
        server = synapse_factory(
            database=database,
            guard={
                "network": network(geoip_db),
                "lockdown": {"exempt_users": [f"@{BREAKGLASS}:{SERVER_NAME}"]},
            },
        ).start()
        server.register_user(BREAKGLASS, admin=True)
    yield server
    breakglass = login(server, BREAKGLASS)
    status, body = breakglass.request("POST", LOCKDOWN, {"locked": False})
    assert status == 200, body


def test_a_login_as_token_minted_for_the_breakglass_admin_dies_with_the_lockdown(
    lockable: SynapseServer,
) -> None:
    server = lockable
    breakglass = login(server, BREAKGLASS)
    admin = login(server, server.new_account("insider", admin=True))
    status, minted = admin.request(
        "POST", f"/_synapse/admin/v1/users/{server.user_id(BREAKGLASS)}/login", {}
    )
    assert status == 200, minted
    puppet = server.client(minted["access_token"])
    puppet.default_headers = from_(VPN)
    sync = "/_matrix/client/v3/sync?timeout=0"
    assert puppet.request("GET", sync)[0] == 200
    # Even unlocked, the guard's own endpoints refuse a token minted by someone else.
    assert refused(*puppet.request("POST", LOCKDOWN, {"locked": True}))

    status, body = admin.request("POST", LOCKDOWN, {"locked": True})
    assert status == 200, body
    time.sleep(2.5)  # every process trusts its last read of the state for 2 s

    assert refused(*puppet.request("GET", sync))
    # Refused, and revoked: it can no more lift the lockdown than read.
    assert puppet.request("POST", LOCKDOWN, {"locked": False})[0] == 401
    assert server.metric("synapse_guard_lockdown_active") == 1
    assert server.decisions("request", "deny", "puppet_token") >= 1
    # The break-glass admin's own token keeps working, and the puppet token is gone for good.
    assert breakglass.request("GET", sync)[0] == 200
    assert puppet.request("GET", sync)[0] == 401


# -- a bad day: dependencies down -----------------------------------------------------------


def test_a_geoip_database_gone_bad_answers_503_until_it_is_restored(
    synapse_factory: SynapseFactory, tmp_path: Path
) -> None:
    db = write_country_db(tmp_path / "country.mmdb", COUNTRIES)
    server = synapse_factory(guard={"network": network(db)}).start()
    member = login(server, server.new_account("field"), FRANCE)
    sync = "/_matrix/client/v3/sync?timeout=0"
    assert member.request("GET", sync, headers=from_(FRANCE))[0] == 200

    replace_by_rename(db, write_corrupt)  # a bad geoipupdate run
    deadline = time.monotonic() + 15
    while member.request("GET", sync, headers=from_(FRANCE))[0] != 503:
        assert time.monotonic() < deadline, "the damaged database was not noticed"
        time.sleep(0.5)
    assert member.request("GET", sync, headers=from_(VPN))[0] == 200  # CIDRs need no lookup

    replace_by_rename(db, lambda tmp: write_country_db(tmp, COUNTRIES))
    deadline = time.monotonic() + 15
    while member.request("GET", sync, headers=from_(FRANCE))[0] != 200:
        assert time.monotonic() < deadline, "the restored database was not picked up"
        time.sleep(0.5)


def test_a_database_outage_answers_5xx_not_expired_and_logs_once(
    synapse_factory: SynapseFactory, own_postgres: PostgresCluster, geoip_db: Path
) -> None:
    server = synapse_factory(
        database=own_postgres.create_database(), guard={"network": network(geoip_db)}
    ).start()
    member = login(server, server.new_account("steady"), VPN)
    whoami = "/_matrix/client/v3/account/whoami"
    assert member.request("GET", whoami, headers=from_(VPN))[0] == 200

    own_postgres.pause()
    time.sleep(2.5)  # past the 2 s for which every process trusts its last read of the state
    try:
        statuses = []
        for _ in range(12):
            status, body = member.request("GET", whoami, headers=from_(VPN))
            statuses.append(status)
            assert status != 200, "nothing passes while the guard cannot read its state"
            assert not (
                isinstance(body, dict) and body.get("errcode") == "ORG_MATRIX_EXPIRED_ACCOUNT"
            )
            time.sleep(0.25)
    finally:
        own_postgres.resume()
    assert all(status >= 500 for status in statuses), statuses
    print(f"answers while the database was down: {statuses}")

    deadline = time.monotonic() + 30
    while member.request("GET", whoami, headers=from_(VPN))[0] != 200:
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.5)
    guard_lines = [
        line
        for line in server.log_file.read_text().splitlines()
        if " - synapse_guard - " in line and "lockdown state" in line
    ]
    assert len(guard_lines) <= 2, guard_lines  # down once, back once
    assert "Traceback" not in "\n".join(guard_lines)
