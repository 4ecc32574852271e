"""The per-request gate, its callback driven with a mocked ModuleApi and a served request.

The real request path (Synapse's logging context, `is_user_expired` on every authenticated
request, on every supported Synapse) is proven in tests/integration/test_gate.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import Mock, patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard import compat
from synapse_guard.compat import SynapseError
from synapse_guard.config import parse_guard_config
from synapse_guard.federation import decide_request_target, servers_named_in_url
from synapse_guard.geoip import GeoIPDatabase
from synapse_guard.lockdown.state import StateCache
from synapse_guard.network import VerdictCache, compile_network_rules
from synapse_guard.verdict import ALLOW, Check, Reason, deny
from tests.geoip_factory import replace_by_rename, write_corrupt, write_country_db
from tests.unit.conftest import ALICE, SERVER_NAME, create_module, decisions, make_api

FEDERATION_OFF = parse_guard_config({}).federation
VPN = {"network": {"allow_cidrs": ["10.8.0.0/24"], "revoke_sessions": False}}

# -- which servers a URL names ---------------------------------------------------------------

REMOTE_URLS = [
    # joins and knocks by remote alias, or asking remote servers
    ("/_matrix/client/v3/join/%23room%3Aother.example", ""),
    ("/_matrix/client/r0/join/!abc:other.example", ""),
    ("/_matrix/client/v3/join/!Vx3c9Qm2room", "server_name=other.example"),
    ("/_matrix/client/v3/join/!Vx3c9Qm2room", f"via={SERVER_NAME}&via=other.example"),
    ("/_matrix/client/v3/knock/%23room%3Aother.example", ""),
    ("/_matrix/client/v3/rooms/!abc:other.example/join", ""),
    # a remote room directory, alias resolution, profile
    ("/_matrix/client/v3/publicRooms", "server=other.example"),
    ("/_matrix/client/v3/directory/room/%23room%3Aother.example", ""),
    ("/_matrix/client/v3/profile/%40bob%3Aother.example", ""),
    # remote media, on the authenticated and the legacy endpoints
    ("/_matrix/client/v1/media/download/other.example/abcdef", ""),
    ("/_matrix/client/v1/media/thumbnail/other.example/abcdef", "width=32&height=32"),
    ("/_matrix/media/v3/download/other.example/abcdef/name.png", ""),
    # our name, told apart by case or port: another server to Synapse
    ("/_matrix/client/v3/join/%23room%3AGUARD.TEST", ""),
    (f"/_matrix/client/v3/profile/%40bob%3A{SERVER_NAME}%3A8448", ""),
]
LOCAL_URLS = [
    ("/_matrix/client/v3/sync", "since=s1_2&timeout=30000"),
    (f"/_matrix/client/v3/join/%23room%3A{SERVER_NAME}", ""),
    ("/_matrix/client/v3/join/!Vx3c9Qm2room", f"via={SERVER_NAME}"),
    ("/_matrix/client/v3/rooms/!Vx3c9Qm2room/send/m.room.encrypted/1", ""),
    (f"/_matrix/client/v1/media/download/{SERVER_NAME}/abcdef", ""),
    (f"/_matrix/client/v3/profile/%40bob%3A{SERVER_NAME}", ""),
    ("/_matrix/client/v3/publicRooms", ""),
    # the admin API does not federate: not read
    ("/_synapse/admin/v1/users/%40bob%3Aother.example/login", ""),
]


@pytest.mark.parametrize(("path", "query"), REMOTE_URLS)
def test_a_request_naming_another_server_is_refused(path: str, query: str) -> None:
    verdict = decide_request_target(FEDERATION_OFF, path, query, SERVER_NAME)
    assert verdict == deny(Reason.FEDERATION)


@pytest.mark.parametrize(("path", "query"), LOCAL_URLS)
def test_a_request_naming_only_this_server_passes(path: str, query: str) -> None:
    assert decide_request_target(FEDERATION_OFF, path, query, SERVER_NAME) == ALLOW


def test_with_federation_on_nothing_is_read() -> None:
    policy = parse_guard_config({"federation": {"enabled": True}}).federation
    path, query = REMOTE_URLS[0]
    assert decide_request_target(policy, path, query, SERVER_NAME) == ALLOW


@given(
    server=st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
    sigil=st.sampled_from("@#!"),
)
def test_any_identifier_of_another_server_in_a_path_is_seen(server: str, sigil: str) -> None:
    path = f"/_matrix/client/v3/rooms/{sigil}x%3A{server}/state"
    assert servers_named_in_url(path, "") == [server]
    expected = ALLOW if server == SERVER_NAME else deny(Reason.FEDERATION)
    assert decide_request_target(FEDERATION_OFF, path, "", SERVER_NAME) == expected


# -- the verdict cache -----------------------------------------------------------------------


def test_the_cache_keeps_verdicts_for_one_generation_only() -> None:
    cache = VerdictCache(max_entries=2)
    cache.put("192.0.2.1", 0, ALLOW)  # not the current generation yet: ignored
    assert cache.get("192.0.2.1", 0) is None
    cache.put("192.0.2.1", 0, ALLOW)
    assert cache.get("192.0.2.1", 0) == ALLOW
    assert cache.get("192.0.2.1", 1) is None  # a new database: everything is judged again
    cache.put("192.0.2.1", 1, deny(Reason.GEOIP_UNAVAILABLE))
    assert cache.get("192.0.2.1", 1) is None  # an outage is never remembered
    for i in range(3):
        cache.put(f"192.0.2.{i}", 1, ALLOW)
    assert cache.get("192.0.2.0", 1) is None  # bounded: the oldest went first
    assert cache.get("192.0.2.2", 1) == ALLOW


def test_a_repeated_address_is_looked_up_once_per_database(tmp_path: Path) -> None:
    db_path = write_country_db(tmp_path / "c.mmdb", {"FR": ["198.51.100.0/24"]})
    clock = Mock(return_value=0.0)
    db = GeoIPDatabase(str(db_path), check_interval_s=5.0, clock=clock)
    from synapse_guard.gate import AddressJudge

    policy = parse_guard_config(
        {"network": {"allow_countries": ["FR"], "geoip_database": str(db_path)}}
    ).network
    judge = AddressJudge(compile_network_rules(policy), db)
    with patch.object(db, "country", wraps=db.country) as lookups:
        for _ in range(5):
            assert judge.decide("198.51.100.7") == ALLOW
        assert lookups.call_count == 1
        # geoipupdate moves the range to another country: seen after the check interval
        replace_by_rename(db_path, lambda tmp: write_country_db(tmp, {"DE": ["198.51.100.0/24"]}))
        clock.return_value = 6.0
        assert judge.decide("198.51.100.7") == deny(Reason.COUNTRY_NOT_ALLOWED)
        assert lookups.call_count == 2
        # a damaged file: refused as an outage while it lasts, never cached
        replace_by_rename(db_path, write_corrupt)
        clock.return_value = 12.0
        assert judge.decide("198.51.100.7") == deny(Reason.GEOIP_UNAVAILABLE)
        assert judge.decide("198.51.100.7") == deny(Reason.GEOIP_UNAVAILABLE)


# -- the callback ----------------------------------------------------------------------------


class Database:
    """An in-memory database for the guard's tables, which can be taken down."""

    def __init__(self) -> None:
        self.cursor = sqlite3.connect(":memory:").cursor()
        self.cursor.execute(
            "CREATE TABLE access_tokens "
            "(user_id TEXT, device_id TEXT, token TEXT, puppets_user_id TEXT)"
        )
        self.down = False

    async def run_db_interaction(self, desc: str, func: Any, *args: Any) -> Any:
        if self.down:
            raise ConnectionError("could not connect to the database")
        return func(self.cursor, *args)


def guard(config: dict[str, Any], database: Database | None = None) -> Any:
    api = make_api()
    api.run_db_interaction.side_effect = (database or Database()).run_db_interaction
    loaded = create_module(config, api=api)
    loaded.guard._lockdown._cache = StateCache(ttl=0)  # every request reads the state
    return loaded


@pytest.fixture
def served() -> Iterator[Any]:
    """Play the request Synapse is serving: `served(address, path)`."""
    facts: dict[str, compat.RequestFacts | None] = {"now": None}

    def serve(address: str, path: str = "/_matrix/client/v3/sync", query: str = "") -> None:
        facts["now"] = compat.RequestFacts(address=address, path=path, query=query)

    with patch.object(compat, "current_request", side_effect=lambda: facts["now"]):
        yield serve


def expired(loaded: Any, user: str = ALICE) -> Any:
    return asyncio.run(loaded.callbacks["is_user_expired"](user))


def refusal(loaded: Any, user: str = ALICE) -> SynapseError:
    with pytest.raises(SynapseError) as info:
        expired(loaded, user)
    return info.value


def test_a_request_from_a_refused_address_gets_403_forbidden(served: Any) -> None:
    loaded = guard(VPN)
    before = decisions(Check.REQUEST, "deny", Reason.IP_NOT_ALLOWED)
    served("192.0.2.1")
    error = refusal(loaded)
    assert (error.code, error.errcode) == (403, "M_FORBIDDEN")  # not "account expired"
    assert decisions(Check.REQUEST, "deny", Reason.IP_NOT_ALLOWED) == before + 1
    served("10.8.0.5")
    assert expired(loaded) is None


def test_a_request_naming_another_server_gets_403(served: Any) -> None:
    loaded = guard(VPN)
    served("10.8.0.5", "/_matrix/client/v3/join/%23room%3Aother.example")
    assert refusal(loaded).code == 403


def test_a_request_whose_address_cannot_be_read_is_refused() -> None:
    loaded = guard(VPN)
    with patch.object(compat, "current_request", side_effect=LookupError("no address")):
        assert refusal(loaded).code == 403


def test_an_unexpected_error_refuses_and_is_counted(served: Any) -> None:
    loaded = guard(VPN)
    served("10.8.0.5")
    before = decisions(Check.REQUEST, "deny", Reason.INTERNAL_ERROR)
    with patch("synapse_guard.gate.decide_request_target", side_effect=ValueError("bug")):
        assert refusal(loaded).code == 403
    assert decisions(Check.REQUEST, "deny", Reason.INTERNAL_ERROR) == before + 1


def test_a_database_outage_answers_503_and_logs_once(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database()
    loaded = guard(VPN, database)
    served("10.8.0.5")
    assert expired(loaded) is None
    database.down = True
    with caplog.at_level(logging.INFO, logger="synapse_guard"):
        for _ in range(20):
            error = refusal(loaded)
            assert error.code == 503  # an outage, not a refusal: clients retry, sessions live
        database.down = False
        assert expired(loaded) is None
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in messages if "unavailable" in m]) == 1, messages
    assert len([m for m in messages if "is back" in m]) == 1, messages
    assert not [r for r in caplog.records if r.exc_info], "no traceback per request"


def test_a_geoip_outage_answers_503(served: Any, tmp_path: Path) -> None:
    db = write_country_db(tmp_path / "c.mmdb", {"FR": ["198.51.100.0/24"]})
    network = {"allow_countries": ["FR"], "geoip_database": str(db), "revoke_sessions": False}
    loaded = guard({"network": network})
    served("198.51.100.7")
    assert expired(loaded) is None
    loaded.guard._geoip.close()  # as a database that cannot be read any more
    served("198.51.100.8")
    assert refusal(loaded).code == 503


def test_outside_a_request_only_the_lockdown_answers() -> None:
    # The pusher pool asks is_user_expired with no request: never raise there (it would stop
    # every notification), and the network policy has no address to judge.
    loaded = guard(VPN)
    with patch.object(compat, "current_request", return_value=None):
        assert expired(loaded) is None


def requester(user: str, minted_by: str | None = None) -> Mock:
    found = Mock()
    found.user.to_string.return_value = user
    found.authenticated_entity = minted_by or user
    return found


def test_the_guards_endpoints_refuse_puppet_tokens_and_refused_addresses(served: Any) -> None:
    loaded = guard(VPN)
    gate = loaded.guard._gate
    served("10.8.0.5", "/_synapse/client/synapse_guard/lockdown")
    gate.refuse_endpoint_caller(requester(ALICE))  # the user's own token, from the VPN
    with pytest.raises(SynapseError) as puppet:
        gate.refuse_endpoint_caller(requester(ALICE, minted_by="@admin:test.local"))
    assert puppet.value.code == 403
    served("192.0.2.1", "/_synapse/client/synapse_guard/lockdown")
    with pytest.raises(SynapseError) as abroad:
        gate.refuse_endpoint_caller(requester(ALICE))
    assert abroad.value.code == 403


def test_refusals_are_counted_each_time_and_logged_once_in_a_while(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = guard(VPN)
    served("192.0.2.1")
    before = decisions(Check.REQUEST, "deny", Reason.IP_NOT_ALLOWED)
    with caplog.at_level(logging.INFO, logger="synapse_guard"):
        for _ in range(10):
            refusal(loaded)
    assert decisions(Check.REQUEST, "deny", Reason.IP_NOT_ALLOWED) == before + 10
    refused = [r for r in caplog.records if "refused: check=request" in r.getMessage()]
    assert len(refused) == 1


def every_segment_scanned(path: str) -> list[str]:
    """The reference: decode every segment and keep every identifier's server part."""
    named = []
    for segment in path.split("/"):
        segment = urllib.parse.unquote(segment)
        if segment[:1] in ("@", "#", "!") and ":" in segment:
            named.append(segment.split(":", 1)[1])
    return named


segment_text = st.text(alphabet="@#!:%3aA4021bcx/.-_", max_size=12)


@given(parts=st.lists(segment_text, max_size=6), encode=st.booleans())
def test_the_quick_scan_never_misses_a_server_name(parts: list[str], encode: bool) -> None:
    # Whatever mix of raw and percent-encoded sigils and colons: the one-regex shortcut
    # finds exactly what scanning every segment finds.
    segments = [urllib.parse.quote(p, safe="") if encode else p for p in parts]
    path = "/_matrix/client/v3/" + "/".join(segments)
    assert servers_named_in_url(path, "") == every_segment_scanned(path)
