"""The session sweep on a real Synapse: the second layer behind the per-request gate.

The gate refuses every authenticated request from a refused address, and Synapse records in
`user_ips` only requests that passed authentication. What the sweep still finds there: uses
recorded before the GeoIP database moved their address to a refused country (geoipupdate),
and requests the gate does not judge (`/versions` with a token, `allow_expired` in Synapse).
A stolen token hidden by refresh-token rotation is found through its device, a failing
logout is retried and counted once, and an unreadable GeoIP database logs nobody out.

Addresses reach Synapse in X-Forwarded-For (`x_forwarded: true`), as behind nginx; they are
documentation ranges that only ever appear in that header.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from synapse_guard import compat
from synapse_guard.record.audit import Pseudonymizer
from tests.geoip_factory import replace_by_rename, write_corrupt, write_country_db
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, MatrixClient, SynapseServer, iter_log_lines

HOME = "10.8.0.5"  # the VPN: allowed by CIDR, no country lookup
FRANCE = "198.51.100.7"  # an allowed country, before and after the update
MOVED = "198.51.100.200"  # France until geoipupdate moves its range to the US
ABROAD = "192.0.2.1"  # a refused country
ORIGINAL = {"FR": ["198.51.100.0/24"], "US": ["192.0.2.0/24"]}
UPDATED = {"FR": ["198.51.100.0/25"], "US": ["198.51.100.128/25", "192.0.2.0/24"]}
SWEEP_S = 3
# A use reaches user_ips within Synapse's 5 s batch; the next sweep then sees it.
WITHIN_S = 5 + 2 * SWEEP_S + 2
GEOIP_CHECK_S = 5  # geoip.DEFAULT_CHECK_INTERVAL_S: how often a lookup notices a new file
OVERLAP_S = 15  # sessions.OVERLAP_MS: what each sweep re-reads before the newest row
AUDIT_KEY = b"s" * 32
REVOKED = "synapse_guard_sessions_revoked_total"


@pytest.fixture(scope="module")
def geoip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_country_db(tmp_path_factory.mktemp("geoip") / "country.mmdb", ORIGINAL)


@pytest.fixture(scope="module")
def server(
    synapse_factory: SynapseFactory, geoip: Path, tmp_path_factory: pytest.TempPathFactory
) -> SynapseServer:
    key = tmp_path_factory.mktemp("audit") / "audit.key"
    key.write_bytes(AUDIT_KEY)
    network = {
        "allow_cidrs": ["10.8.0.0/24"],
        "allow_countries": ["FR"],
        "geoip_database": str(geoip),
        "revoke_sessions": True,
        "sweep_interval": f"{SWEEP_S}s",
    }
    audit = {"enabled": True, "pseudonym_key_path": str(key)}
    return synapse_factory(guard={"network": network, "audit": audit}).start()


@contextlib.contextmanager
def geoip_replaced(path: Path, write: Callable[[Path], Any]) -> Iterator[None]:
    """geoipupdate's way (a sibling file renamed over the old one); the original afterwards."""
    replace_by_rename(path, write)
    try:
        yield
    finally:
        replace_by_rename(path, lambda tmp: write_country_db(tmp, ORIGINAL))
        time.sleep(GEOIP_CHECK_S + 1)  # every request judged by the original again


def login(server: SynapseServer, address: str, refresh: bool = False) -> tuple[MatrixClient, Any]:
    client = server.client()
    localpart = server.new_account("roamer")
    status, body = client.request(
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": PASSWORD,
            "refresh_token": refresh,
        },
        headers={"X-Forwarded-For": address},
        auth=False,
    )
    assert status == 200, body
    client.token, client.user_id, client.device_id = (
        body["access_token"],
        body["user_id"],
        body["device_id"],
    )
    return client, body


def whoami(client: MatrixClient, address: str, token: str | None = None) -> int:
    headers = {"X-Forwarded-For": address}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, _ = client.request(
        "GET", "/_matrix/client/v3/account/whoami", headers=headers, auth=token is None
    )
    return status


def refresh(client: MatrixClient, refresh_token: str, address: str) -> tuple[str, str]:
    status, body = client.request(
        "POST",
        "/_matrix/client/v3/refresh",
        {"refresh_token": refresh_token},
        headers={"X-Forwarded-For": address},
        auth=False,
    )
    assert status == 200, body
    return str(body["access_token"]), str(body["refresh_token"])


def token_exists(server: SynapseServer, token: str) -> bool:
    with contextlib.closing(sqlite3.connect(server.workdir / "homeserver.db")) as database:
        row = database.execute("SELECT 1 FROM access_tokens WHERE token = ?", (token,))
        return row.fetchone() is not None


def rotate_twice(server: SynapseServer, client: MatrixClient, login_body: Any) -> None:
    """Refresh twice from home: Synapse then deletes the first access token."""
    first = str(login_body["access_token"])
    token, refresh_token = refresh(client, login_body["refresh_token"], HOME)
    assert whoami(client, HOME, token) == 200
    token, _ = refresh(client, refresh_token, HOME)
    assert whoami(client, HOME, token) == 200
    client.token = token
    assert not token_exists(server, first), "the rotated token is gone from access_tokens"


def wait_for(predicate: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout:.0f}s")


def log_lines(server: SynapseServer, text: str) -> int:
    return sum(text in line for line in iter_log_lines(server))


def revocations_audited(server: SynapseServer, user_id: str) -> int:
    pseudonym = Pseudonymizer(AUDIT_KEY).user(user_id)
    return sum(
        '"event": "session_revoked"' in line and pseudonym in line
        for line in iter_log_lines(server)
    )


def versions_records_tokens() -> bool:
    """Synapse authenticates `/versions` with a token (allow_expired) from 1.111."""
    return compat.synapse_version() >= (1, 111, 0)


# -- a session rotated by /refresh, seen from a refused address, is logged out ---------------


@pytest.mark.parametrize("how", ["geoip_update", "versions"])
def test_a_token_hidden_by_refresh_rotation_is_found_through_its_device(
    server: SynapseServer, geoip: Path, how: str
) -> None:
    """The attacker's use from a refused address is recorded under a token /refresh deleted.

    geoip_update: the use was from an allowed country, then geoipupdate moved that range to
    a refused one. versions: `/versions` with the token, which the gate does not judge.
    """
    if how == "versions" and not versions_records_tokens():
        pytest.skip("Synapse < 1.111 does not authenticate /versions: nothing is recorded")
    revoked = server.metric(REVOKED)
    refused = server.decisions("session", "deny", "country_not_allowed")
    client, body = login(server, MOVED if how == "geoip_update" else HOME, refresh=True)
    stolen = str(body["access_token"])
    if how == "geoip_update":
        assert whoami(client, MOVED, stolen) == 200  # France, for now
    else:
        status, _ = client.request(
            "GET",
            "/_matrix/client/versions",
            headers={"X-Forwarded-For": ABROAD, "Authorization": f"Bearer {stolen}"},
            auth=False,
        )
        assert status == 200
        assert whoami(client, ABROAD, stolen) == 403, "the gate refuses every other request"
    rotate_twice(server, client, body)

    if how == "geoip_update":
        # Long enough for the sweep to have judged that use (allowed) and moved past it: a
        # later use elsewhere moves its marker beyond the overlap it re-reads.
        time.sleep(OVERLAP_S + 2)
        bystander, _ = login(server, HOME)
        assert whoami(bystander, HOME) == 200
        time.sleep(5 + 2 * SWEEP_S)
        assert whoami(client, HOME) == 200
        # The new database makes the sweep judge every recorded session again.
        with geoip_replaced(geoip, lambda tmp: write_country_db(tmp, UPDATED)):
            elapsed = wait_for(lambda: whoami(client, HOME) == 401, timeout=WITHIN_S)
            time.sleep(2 * SWEEP_S)  # later sweeps read the same rows again
    else:
        elapsed = wait_for(lambda: whoami(client, HOME) == 401, timeout=WITHIN_S)
        time.sleep(2 * SWEEP_S)

    assert whoami(client, HOME, stolen) == 401, "nor does Synapse's token cache keep it"
    assert server.metric(REVOKED) == revoked + 1, "revoked once, however many sweeps"
    assert server.decisions("session", "deny", "country_not_allowed") == refused + 1
    assert revocations_audited(server, str(client.user_id)) == 1
    print(f"rotated session logged out {elapsed:.1f}s after {how}")


def test_a_refresh_from_a_refused_address_yields_no_usable_token(server: SynapseServer) -> None:
    """No module callback sees /refresh: Synapse answers it (nginx refuses it at the edge).

    What it returns is refused by the gate from that address, like any token."""
    client, body = login(server, HOME, refresh=True)
    token, _ = refresh(client, body["refresh_token"], ABROAD)
    assert whoami(client, ABROAD, token) == 403
    status, _ = client.request(
        "GET",
        "/_matrix/client/v3/sync",
        headers={"X-Forwarded-For": ABROAD, "Authorization": f"Bearer {token}"},
        auth=False,
    )
    assert status == 403


# -- a logout that fails is retried, and counted once ---------------------------------------


@contextlib.contextmanager
def deleting_device_fails(server: SynapseServer, device_id: str) -> Iterator[None]:
    """A real database fault: deleting this device's row aborts Synapse's transaction."""
    database = sqlite3.connect(server.workdir / "homeserver.db", timeout=30)
    with database:
        database.execute(
            "CREATE TRIGGER guard_test_fail_delete BEFORE DELETE ON devices "
            f"WHEN OLD.device_id = '{device_id}' BEGIN SELECT RAISE(ABORT, 'injected'); END"
        )
    try:
        yield
    finally:
        with database:
            database.execute("DROP TRIGGER guard_test_fail_delete")
        database.close()


def test_a_failing_logout_is_retried_at_every_sweep_and_counted_once(
    server: SynapseServer, geoip: Path
) -> None:
    failing, _ = login(server, MOVED)
    other, _ = login(server, MOVED)
    assert whoami(failing, MOVED) == 200
    assert whoami(other, MOVED) == 200
    revoked = server.metric(REVOKED)
    refused = server.decisions("session", "deny", "country_not_allowed")
    errors = server.decisions("session", "deny", "internal_error")
    warnings = log_lines(server, "logout(s) failed")
    tracebacks = log_lines(server, "Traceback")

    with geoip_replaced(geoip, lambda tmp: write_country_db(tmp, UPDATED)):
        with deleting_device_fails(server, str(failing.device_id)):
            wait_for(lambda: whoami(other, HOME) == 401, timeout=WITHIN_S)  # the sweep went on
            time.sleep(4 * SWEEP_S)
            assert whoami(failing, HOME) == 200  # its logout keeps failing
            assert server.decisions("session", "deny", "internal_error") == errors + 1
            assert log_lines(server, "logout(s) failed") == warnings + 1
            assert log_lines(server, "Traceback") == tracebacks + 1  # once, not per sweep
            assert server.metric(REVOKED) == revoked + 1
        # The database fault is fixed: the next sweep retries, and the logout succeeds.
        wait_for(lambda: whoami(failing, HOME) == 401, timeout=WITHIN_S)

    assert server.metric(REVOKED) == revoked + 2
    assert server.decisions("session", "deny", "country_not_allowed") == refused + 2
    assert server.decisions("session", "deny", "internal_error") == errors + 1
    assert revocations_audited(server, str(failing.user_id)) == 1


# -- an unreadable GeoIP database logs nobody out --------------------------------------------


def test_a_bad_geoipupdate_run_logs_nobody_out_and_the_sweep_resumes(
    server: SynapseServer, geoip: Path
) -> None:
    """The database is replaced by garbage, then by a good update that moves one range."""
    staying, _ = login(server, FRANCE)
    moving, _ = login(server, MOVED)
    revoked = server.metric(REVOKED)
    outages = server.decisions("session", "deny", "geoip_unavailable")
    told = log_lines(server, "cannot be judged")

    # Used just before the outage: the sweep meets these rows with the database broken.
    assert whoami(staying, FRANCE) == 200
    assert whoami(moving, MOVED) == 200
    with geoip_replaced(geoip, write_corrupt):
        time.sleep(5 + 4 * SWEEP_S)  # several sweeps during the outage
        assert whoami(staying, HOME) == 200
        assert whoami(moving, HOME) == 200
        assert server.metric(REVOKED) == revoked
        assert server.decisions("session", "deny", "geoip_unavailable") == outages + 1
        assert log_lines(server, "cannot be judged") == told + 1
        assert server.metric("synapse_guard_geoip_database_build_timestamp_seconds") == 0

        # The next geoipupdate run is good, and moves MOVED's range to a refused country.
        replace_by_rename(geoip, lambda tmp: write_country_db(tmp, UPDATED))
        wait_for(lambda: whoami(moving, HOME) == 401, timeout=WITHIN_S)
        # Counted once the logout returns, a moment after its tokens stop working.
        wait_for(lambda: server.metric(REVOKED) == revoked + 1, timeout=5)

    time.sleep(SWEEP_S)
    assert whoami(staying, FRANCE) == 200, "a session from an allowed country survived"
    assert login(server, FRANCE)[0].token
    status, _ = server.client().login(
        server.new_account("late"), PASSWORD, headers={"X-Forwarded-For": ABROAD}
    )
    assert status == 403
    assert log_lines(server, "every session is judged again") >= 1
    assert server.metric(REVOKED) == revoked + 1
