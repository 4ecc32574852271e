"""Network allowlists on a real Synapse behind `x_forwarded: true`, with a generated GeoIP db.

The client address is what Synapse resolves from X-Forwarded-For (as it would behind nginx);
the addresses below are documentation ranges that only ever appear in that header.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from synapse_guard import compat
from tests.geoip_factory import replace_by_rename, write_asn_db, write_country_db
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, MatrixClient, SynapseServer

COUNTRIES = {
    "FR": ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:f00::/48"],
    "US": ["192.0.2.0/24", "2001:db8:bad::/48"],
}
NETWORK = {
    "allow_cidrs": ["10.8.0.0/24", "fd00:8::/64"],
    "deny_cidrs": ["10.8.0.66/32", "203.0.113.0/26"],
    "allow_countries": ["FR"],
    "revoke_sessions": True,
    "sweep_interval": "6s",
}
# Synapse writes client addresses in 5 s batches: a use is visible to the sweep within 5 s,
# and revoked within 5 s + one interval, less than two intervals of 6 s.
SWEEP_S = 6


@pytest.fixture(scope="module")
def geoip_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_country_db(tmp_path_factory.mktemp("geoip") / "country.mmdb", COUNTRIES)


@pytest.fixture(scope="module")
def netguard(synapse_factory: SynapseFactory, geoip_db: Path) -> SynapseServer:
    return synapse_factory(guard={"network": {**NETWORK, "geoip_database": str(geoip_db)}}).start()


def login_from(
    server: SynapseServer, localpart: str, address: str
) -> tuple[int, Any, MatrixClient]:
    client = server.client()
    status, body = client.login(localpart, PASSWORD, headers={"X-Forwarded-For": address})
    return status, body, client


LOGINS = [
    ("10.8.0.5", True, "ok"),  # the VPN
    ("10.8.0.66", False, "ip_denied"),  # denied inside the VPN range
    ("198.51.100.7", True, "ok"),  # an allowed country
    ("203.0.113.7", False, "ip_denied"),  # a denied range inside an allowed country
    ("192.0.2.1", False, "country_not_allowed"),
    ("100.64.0.1", False, "country_unknown"),  # not in the database
    ("fd00:8::1", True, "ok"),  # IPv6 VPN
    ("2001:db8:f00::1", True, "ok"),  # IPv6 in an allowed country
    ("2001:db8:bad::1", False, "country_not_allowed"),
    ("::ffff:10.8.0.5", True, "ok"),  # IPv4-mapped IPv6 is the IPv4 address
    ("::ffff:192.0.2.1", False, "country_not_allowed"),
    ("not-an-ip", False, "invalid_address"),
]


@pytest.mark.parametrize(("address", "accepted", "reason"), LOGINS)
def test_login_is_decided_by_the_client_address(
    netguard: SynapseServer, address: str, accepted: bool, reason: str
) -> None:
    localpart = netguard.new_account("traveller")
    outcome = "allow" if accepted else "deny"
    before = netguard.decisions("login", outcome, reason)

    status, body, _ = login_from(netguard, localpart, address)

    assert (status == 200) is accepted, body
    if not accepted:
        assert status == 403
        assert body["errcode"] == "M_FORBIDDEN"
        assert "country" not in body["error"].lower()  # the client is not told which rule
    assert netguard.decisions("login", outcome, reason) == before + 1


def test_synapse_takes_the_leftmost_forwarded_address(netguard: SynapseServer) -> None:
    """Why nginx must overwrite X-Forwarded-For: Synapse believes its first entry."""
    status, body, _ = login_from(netguard, netguard.new_account("spoofer"), "10.8.0.5, 192.0.2.1")
    assert status == 200, body


def test_server_admins_are_not_exempt(netguard: SynapseServer) -> None:
    status, _, _ = login_from(netguard, netguard.new_account("boss", admin=True), "192.0.2.1")
    assert status == 403


def test_a_direct_connection_is_judged_by_its_peer_address(netguard: SynapseServer) -> None:
    status, body = netguard.client().login(netguard.new_account("local"), PASSWORD)
    assert status == 403, body  # 127.0.0.1 is in no allow rule


def wait_for(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout:.0f}s")


def whoami(client: MatrixClient, address: str) -> int:
    status, _ = client.request(
        "GET", "/_matrix/client/v3/account/whoami", headers={"X-Forwarded-For": address}
    )
    return status


def test_a_session_used_from_a_refused_address_is_logged_out(netguard: SynapseServer) -> None:
    """The gate refuses the request; the sweep logs out what Synapse recorded from there.

    Synapse records only requests that passed authentication, so a refused one leaves no
    trace; `/versions` with a token does (Synapse authenticates it with `allow_expired`, and
    the gate does not judge it). tests/integration/test_sweep.py covers the rest: refresh
    rotation, a GeoIP update, failing logouts, an unreadable database.
    """
    if compat.synapse_version() < (1, 111, 0):
        pytest.skip("Synapse < 1.111 does not authenticate /versions: nothing is recorded")
    localpart = netguard.new_account("roamer")
    _, _, moving = login_from(netguard, localpart, "10.8.0.5")
    _, _, staying = login_from(netguard, localpart, "198.51.100.9")
    assert whoami(moving, "10.8.0.5") == 200
    assert whoami(staying, "198.51.100.9") == 200
    revoked_before = netguard.metric("synapse_guard_sessions_revoked_total")

    assert whoami(moving, "192.0.2.1") == 403  # the gate: not even once, from abroad
    status, _ = moving.request(
        "GET", "/_matrix/client/versions", headers={"X-Forwarded-For": "192.0.2.1"}
    )
    assert status == 200  # ...but this one is recorded
    elapsed = wait_for(lambda: whoami(moving, "10.8.0.5") == 401, timeout=2 * SWEEP_S)

    # Counted once the logout returns, a moment after its tokens stop working.
    revoked = "synapse_guard_sessions_revoked_total"
    wait_for(lambda: netguard.metric(revoked) == revoked_before + 1, timeout=5)
    assert whoami(staying, "198.51.100.9") == 200, (
        "a session used only from allowed places survives"
    )
    print(f"session revoked {elapsed:.1f}s after its use from a refused address")


def test_a_replaced_geoip_database_is_used_without_restart(
    netguard: SynapseServer, geoip_db: Path
) -> None:
    localpart = netguard.new_account("mover")
    assert login_from(netguard, localpart, "192.0.2.1")[0] == 403
    # geoipupdate's way: write a new file, rename it over the old one.
    replace_by_rename(
        geoip_db,
        lambda tmp: write_country_db(tmp, {"FR": COUNTRIES["FR"] + COUNTRIES["US"]}),
    )
    try:
        wait_for(lambda: login_from(netguard, localpart, "192.0.2.1")[0] == 200, timeout=15)
    finally:
        replace_by_rename(geoip_db, lambda tmp: write_country_db(tmp, COUNTRIES))


def test_geoip_build_time_is_exposed(netguard: SynapseServer) -> None:
    assert netguard.metric("synapse_guard_geoip_database_build_timestamp_seconds") > 1_600_000_000


# --- Bad inputs stop Synapse at start-up ----------------------------------------------------


@pytest.mark.parametrize(
    ("network", "key", "accepted"),
    [
        ({"allow_cidrs": ["10.8.0.0/33"]}, "network.allow_cidrs[0]", "IPv4 or IPv6 network"),
        ({"deny_cidrs": ["2001:db8::/48", "not-a-cidr"]}, "network.deny_cidrs[1]", "network"),
        ({"allow_countries": ["France"]}, "network.allow_countries[0]", "ISO 3166-1 alpha-2"),
        ({"allow_countries": ["fr"]}, "network.allow_countries[0]", "ISO 3166-1 alpha-2"),
        ({"allow_countries": ["FR"]}, "network.geoip_database", "is required"),
    ],
    ids=["cidr-prefix", "not-a-cidr", "country-name", "lowercase-country", "no-database"],
)
def test_bad_network_config_refuses_to_start(
    synapse_factory: SynapseFactory, network: dict[str, Any], key: str, accepted: str
) -> None:
    code, output = synapse_factory(guard={"network": network}).run_to_exit()
    assert code != 0
    assert key in output, output
    assert accepted in output, output


@pytest.mark.parametrize("kind", ["asn", "missing", "corrupt"])
def test_an_unusable_geoip_database_refuses_to_start(
    synapse_factory: SynapseFactory, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "db.mmdb"
    if kind == "asn":
        write_asn_db(path, ["192.0.2.0/24"])
    elif kind == "corrupt":
        path.write_bytes(b"\x00" * 64)
    network = {"allow_countries": ["FR"], "geoip_database": str(path)}
    code, output = synapse_factory(guard={"network": network}).run_to_exit()
    assert code != 0
    assert "network.geoip_database" in output, output


# --- Token logins (how SSO ends) are judged like password logins ----------------------------


@pytest.fixture(scope="module")
def sso_netguard(synapse_factory: SynapseFactory) -> Any:
    from tests.integration.fake_idp import FakeCas

    with FakeCas(user="placeholder") as cas:
        server = synapse_factory(
            guard={"network": {"allow_cidrs": ["10.8.0.0/24"]}},
            extra={
                "cas_config": {"enabled": True, "server_url": cas.url},
                "sso": {"client_whitelist": ["http://client.invalid/"]},
            },
        ).start()
        yield server, cas


@pytest.mark.parametrize(("address", "status"), [("10.8.0.5", 200), ("192.0.2.1", 403)])
def test_an_sso_token_login_is_judged_by_the_client_address(
    sso_netguard: Any, address: str, status: int
) -> None:
    import requests

    server, cas = sso_netguard
    cas.user = server.new_account("sso")  # an account the admin created; the IdP vouches for it
    response = requests.get(
        f"{server.url}/_matrix/client/v3/login/cas/ticket",
        params={"redirectUrl": "http://client.invalid/", "ticket": "ST-1"},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 302, response.text
    token = response.headers["Location"].split("loginToken=")[1].split("&")[0]

    got, body = server.client().request(
        "POST",
        "/_matrix/client/v3/login",
        {"type": "m.login.token", "token": token},
        headers={"X-Forwarded-For": address},
        auth=False,
    )
    assert got == status, body


def test_every_admin_login_is_counted(netguard: SynapseServer) -> None:
    admin, member = netguard.new_account("chief", admin=True), netguard.new_account("staff")
    before = netguard.metric("synapse_guard_admin_logins_total")

    assert login_from(netguard, member, "10.8.0.5")[0] == 200
    assert netguard.metric("synapse_guard_admin_logins_total") == before
    assert login_from(netguard, admin, "10.8.0.5")[0] == 200
    assert netguard.metric("synapse_guard_admin_logins_total") == before + 1


# --- Client registration (registration.mode: open) is judged by the client address too ------


@pytest.mark.parametrize(("address", "status"), [("10.8.0.9", 200), ("192.0.2.1", 429)])
def test_client_registration_is_judged_by_the_client_address(
    synapse_factory: SynapseFactory, address: str, status: int
) -> None:
    server = synapse_factory(
        guard={"registration": {"mode": "open"}, "network": {"allow_cidrs": ["10.8.0.0/24"]}},
        extra={"enable_registration": True, "enable_registration_without_verification": True},
    ).start()
    try:
        client = server.client()
        body: dict[str, Any] = {"username": "newcomer", "password": PASSWORD}
        headers = {"X-Forwarded-For": address}
        got, reply = client.request(
            "POST", "/_matrix/client/v3/register", body, headers=headers, auth=False
        )
        assert got == 401, reply  # user-interactive auth: the dummy stage comes next
        body["auth"] = {"type": "m.login.dummy", "session": reply["session"]}
        got, reply = client.request(
            "POST", "/_matrix/client/v3/register", body, headers=headers, auth=False
        )
        assert got == status, reply  # 429: Synapse's disguise for a module's refusal
        reason = "ok" if status == 200 else "ip_not_allowed"
        outcome = "allow" if status == 200 else "deny"
        assert server.decisions("registration", outcome, reason) == 1
    finally:
        server.stop()
