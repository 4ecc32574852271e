"""GeoIP lookups on databases written by the test: types, failures and hot reload."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import attrs
import maxminddb
import pytest
from prometheus_client import REGISTRY

from synapse_guard import geoip
from synapse_guard.config import GuardConfigError, NetworkPolicy, parse_guard_config
from synapse_guard.geoip import GeoIPDatabase, GeoIPError, GeoIPUnavailable, load_geoip_database
from synapse_guard.network import compile_network_rules, decide_address
from synapse_guard.record import metrics
from synapse_guard.verdict import ALLOW, Reason, deny
from tests.geoip_factory import (
    CITY_TYPE,
    replace_by_rename,
    write_asn_db,
    write_corrupt,
    write_country_db,
    write_mmdb,
)
from tests.unprivileged import run_python

FR_NET, BE_NET, FR_NET6 = "192.0.2.0/24", "198.51.100.0/24", "2001:db8:f::/48"
GAUGE = "synapse_guard_geoip_database_build_timestamp_seconds"


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def gauge() -> float | None:
    return REGISTRY.get_sample_value(GAUGE)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def country_db(tmp_path: Path) -> Path:
    return write_country_db(
        tmp_path / "GeoLite2-Country.mmdb", {"FR": [FR_NET, FR_NET6], "BE": [BE_NET]}
    )


def policy_for(path: Path | str | None, countries: tuple[str, ...] = ("FR",)) -> NetworkPolicy:
    return NetworkPolicy(
        allow_countries=frozenset(countries),
        geoip_database=None if path is None else str(path),
    )


# Lookups ----------------------------------------------------------------------------------


def test_a_country_database_gives_iso_codes(country_db: Path) -> None:
    db = GeoIPDatabase(str(country_db))
    assert db.country(ip("192.0.2.10")) == "FR"
    assert db.country(ip("198.51.100.255")) == "BE"
    assert db.country(ip("2001:db8:f::1")) == "FR"
    assert db.country(ip("203.0.113.1")) is None
    assert db.country(ip("2001:db8:e::1")) is None
    assert db.database_type == "GeoLite2-Country"
    assert db.available


def test_a_city_database_is_accepted(tmp_path: Path) -> None:
    path = write_country_db(tmp_path / "city.mmdb", {"BE": [BE_NET]}, database_type=CITY_TYPE)
    db = GeoIPDatabase(str(path))
    assert db.database_type == CITY_TYPE
    assert db.country(ip("198.51.100.1")) == "BE"


def test_registered_country_alone_is_not_a_location(tmp_path: Path) -> None:
    """No fall back: a record MaxMind could not locate stays unknown, which refuses."""
    path = write_mmdb(
        tmp_path / "db.mmdb",
        [([FR_NET], {"continent": {"code": "EU"}, "registered_country": {"iso_code": "FR"}})],
    )
    db = GeoIPDatabase(str(path))
    assert db.country(ip("192.0.2.1")) is None
    rules = compile_network_rules(policy_for(path))
    assert decide_address("192.0.2.1", rules, db.country) == deny(Reason.COUNTRY_UNKNOWN)


def test_malformed_records_are_unknown(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "db.mmdb",
        [
            (["192.0.2.0/26"], {"country": "FR"}),
            (["192.0.2.64/26"], {"country": {"iso_code": 33}}),
            (["192.0.2.128/26"], {"country": {"names": {"en": "France"}}}),
        ],
    )
    db = GeoIPDatabase(str(path))
    for address in ("192.0.2.1", "192.0.2.65", "192.0.2.129"):
        assert db.country(ip(address)) is None


def test_an_ipv4_only_database_knows_no_ipv6(tmp_path: Path) -> None:
    path = write_country_db(tmp_path / "v4.mmdb", {"FR": [FR_NET]}, ip_version=4)
    db = GeoIPDatabase(str(path))
    assert db.country(ip("192.0.2.1")) == "FR"
    assert db.country(ip("2001:db8::1")) is None


def test_decisions_with_a_real_database(country_db: Path) -> None:
    db = GeoIPDatabase(str(country_db))
    rules = compile_network_rules(
        NetworkPolicy(
            allow_cidrs=(ipaddress.ip_network("10.8.0.0/24"),),
            deny_cidrs=(ipaddress.ip_network("192.0.2.66/32"),),
            allow_countries=frozenset({"FR"}),
            geoip_database=str(country_db),
        )
    )
    assert decide_address("192.0.2.1", rules, db.country) == ALLOW
    # Synapse on a dual-stack socket reports IPv4 clients in mapped form; the test file, like
    # most writers other than MaxMind's, has nothing at ::ffff:0:0/96, so only folding finds it.
    assert decide_address("::ffff:192.0.2.1", rules, db.country) == ALLOW
    assert decide_address("2001:db8:f::99", rules, db.country) == ALLOW
    assert decide_address("10.8.0.5", rules, db.country) == ALLOW
    assert decide_address("192.0.2.66", rules, db.country) == deny(Reason.IP_DENIED)
    assert decide_address("198.51.100.1", rules, db.country) == deny(Reason.COUNTRY_NOT_ALLOWED)
    assert decide_address("203.0.113.1", rules, db.country) == deny(Reason.COUNTRY_UNKNOWN)


def test_build_epoch_is_exposed_and_exported(country_db: Path) -> None:
    db = GeoIPDatabase(str(country_db))
    with maxminddb.open_database(str(country_db)) as reader:
        expected = reader.metadata().build_epoch
    assert db.build_epoch == expected > 0
    assert gauge() == expected


def test_metrics_disabled_leaves_the_gauge_alone(country_db: Path) -> None:
    metrics.GEOIP_BUILD_TIMESTAMP.set(7)
    GeoIPDatabase(str(country_db), metrics_enabled=False)
    assert gauge() == 7


# Loading at start-up ----------------------------------------------------------------------


def test_loader_returns_the_database_when_countries_are_allowed(country_db: Path) -> None:
    db = load_geoip_database(policy_for(country_db))
    assert db is not None
    assert db.country(ip("192.0.2.1")) == "FR"


def test_loader_uses_the_parsed_config(country_db: Path) -> None:
    config = parse_guard_config(
        {"network": {"allow_countries": ["FR"], "geoip_database": str(country_db)}}
    )
    db = load_geoip_database(config.network)
    assert db is not None
    assert db.path == str(country_db)


def test_without_allowed_countries_the_database_is_not_opened(tmp_path: Path) -> None:
    policy = NetworkPolicy(geoip_database=str(tmp_path / "absent.mmdb"))
    assert load_geoip_database(policy) is None
    assert load_geoip_database(NetworkPolicy()) is None


def refusal(path: Path | str | None) -> GuardConfigError:
    with pytest.raises(GuardConfigError) as info:
        load_geoip_database(policy_for(path))
    error = info.value
    assert error.path == "network.geoip_database"
    assert "Country or City" in error.message
    assert str(error).startswith("network.geoip_database: ")
    return error


def test_a_missing_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "missing.mmdb"
    error = refusal(path)
    assert repr(str(path)) in error.message
    assert "No such file" in error.message


def test_a_missing_path_refuses_to_start() -> None:
    assert "required" in refusal(None).message


@pytest.mark.parametrize(
    "data",
    [b"", b"not a maxmind database\n", b"\x00" * 4096],
    ids=["empty", "text", "zeros"],
)
def test_a_corrupt_file_refuses_to_start(tmp_path: Path, data: bytes) -> None:
    path = write_corrupt(tmp_path / "corrupt.mmdb", data)
    assert repr(str(path)) in refusal(path).message


def test_a_truncated_file_refuses_to_start(tmp_path: Path, country_db: Path) -> None:
    path = write_corrupt(tmp_path / "truncated.mmdb", country_db.read_bytes()[:-100])
    assert repr(str(path)) in refusal(path).message


def test_a_damaged_search_tree_refuses_to_start(tmp_path: Path, country_db: Path) -> None:
    data = country_db.read_bytes()
    path = write_corrupt(tmp_path / "damaged.mmdb", b"\xff" * 64 + data[64:])
    assert "corrupt" in refusal(path).message


def test_a_directory_refuses_to_start(tmp_path: Path) -> None:
    refusal(tmp_path)


_LOAD_AS_SYNAPSE = """
import sys
from synapse_guard.config import GuardConfigError, parse_guard_config
from synapse_guard.geoip import load_geoip_database
policy = parse_guard_config(
    {"network": {"allow_countries": ["FR"], "geoip_database": sys.argv[1]}}
).network
try:
    load_geoip_database(policy)
except GuardConfigError as e:
    print(e)
    sys.exit(3)
print("loaded")
"""


def test_an_unreadable_file_refuses_to_start(country_db: Path) -> None:
    # Run as a process that cannot read a mode-000 file (tests/unprivileged.py), as Synapse's
    # own user would be: the loader must refuse, not fail later on the first lookup.
    assert run_python(_LOAD_AS_SYNAPSE, str(country_db)).stdout.strip() == "loaded"
    country_db.chmod(0)
    result = run_python(_LOAD_AS_SYNAPSE, str(country_db))
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("network.geoip_database: ")
    assert "Country or City" in result.stdout


def test_an_asn_database_refuses_to_start(tmp_path: Path) -> None:
    path = write_asn_db(tmp_path / "GeoLite2-ASN.mmdb", [FR_NET])
    error = refusal(path)
    assert "'GeoLite2-ASN' database" in error.message


def test_the_class_itself_refuses_what_the_loader_refuses(tmp_path: Path) -> None:
    with pytest.raises(GeoIPError, match="no country data"):
        GeoIPDatabase(str(write_asn_db(tmp_path / "asn.mmdb", [FR_NET])))


# Hot reload -------------------------------------------------------------------------------


def open_db(path: Path, clock: FakeClock) -> GeoIPDatabase:
    return GeoIPDatabase(str(path), check_interval_s=5.0, clock=clock)


def test_a_replaced_file_is_picked_up_after_the_check_interval(
    country_db: Path, clock: FakeClock
) -> None:
    db = open_db(country_db, clock)
    old_epoch = db.build_epoch
    replace_by_rename(country_db, lambda tmp: write_country_db(tmp, {"DE": [FR_NET]}))
    clock.advance(4.9)
    assert db.country(ip("192.0.2.1")) == "FR"  # not checked yet
    clock.advance(0.2)
    assert db.country(ip("192.0.2.1")) == "DE"
    assert db.country(ip("198.51.100.1")) is None
    assert db.build_epoch is not None
    assert db.build_epoch >= (old_epoch or 0)
    assert gauge() == db.build_epoch


def test_a_same_size_same_mtime_replacement_is_detected_by_inode(
    country_db: Path, clock: FakeClock
) -> None:
    db = open_db(country_db, clock)
    before = os.stat(country_db)

    def write(tmp: Path) -> None:
        write_country_db(tmp, {"BE": [FR_NET, FR_NET6], "FR": [BE_NET]})
        os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))

    replace_by_rename(country_db, write)
    after = os.stat(country_db)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    clock.advance(5)
    assert db.country(ip("192.0.2.1")) == "BE"


def test_the_file_is_checked_at_most_once_per_interval(
    country_db: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_db(country_db, clock)
    stats: list[str] = []
    real_signature = geoip._signature

    def counting(path: str) -> tuple[int, int, int, int, int]:
        stats.append(path)
        return real_signature(path)

    monkeypatch.setattr(geoip, "_signature", counting)
    start = clock.now
    for tenth in range(101):  # 10 s of lookups, ten a second
        clock.now = start + tenth / 10
        db.country(ip("192.0.2.1"))
    assert len(stats) == 2  # at 5 s and at 10 s


def test_an_unchanged_file_is_not_reopened(
    country_db: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_db(country_db, clock)
    monkeypatch.setattr(geoip, "_load", lambda path: pytest.fail("reopened"))
    clock.advance(60)
    assert db.country(ip("192.0.2.1")) == "FR"


def test_a_corrupt_replacement_makes_lookups_fail_until_fixed(
    country_db: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    db = open_db(country_db, clock)
    rules = compile_network_rules(policy_for(country_db))
    replace_by_rename(country_db, write_corrupt)
    clock.advance(5)
    with caplog.at_level(logging.WARNING, logger="synapse_guard"):
        with pytest.raises(GeoIPUnavailable):
            db.country(ip("192.0.2.1"))
        assert decide_address("192.0.2.1", rules, db.country) == deny(Reason.GEOIP_UNAVAILABLE)
        assert not db.available
        assert db.build_epoch is None
        assert gauge() == 0
        clock.advance(5)  # retried, still broken: no second warning for the same problem
        assert decide_address("192.0.2.1", rules, db.country) == deny(Reason.GEOIP_UNAVAILABLE)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(country_db) in warnings[0].getMessage()
    assert "192.0.2.1" not in caplog.text  # no client address in the logs

    replace_by_rename(country_db, lambda tmp: write_country_db(tmp, {"FR": [FR_NET]}))
    clock.advance(5)
    assert decide_address("192.0.2.1", rules, db.country) == ALLOW
    assert db.available
    assert gauge() == db.build_epoch


def test_a_file_made_unreadable_makes_lookups_fail(
    country_db: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chmod changes only the ctime; the open failure root cannot see here is simulated."""
    db = open_db(country_db, clock)
    country_db.chmod(0)

    def refuse(path: str, mode: int) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(maxminddb, "open_database", refuse)
    clock.advance(5)
    with pytest.raises(GeoIPUnavailable):
        db.country(ip("192.0.2.1"))


def test_a_wrong_type_replacement_makes_lookups_fail(country_db: Path, clock: FakeClock) -> None:
    db = open_db(country_db, clock)
    replace_by_rename(country_db, lambda tmp: write_asn_db(tmp, [FR_NET]))
    clock.advance(5)
    with pytest.raises(GeoIPUnavailable):
        db.country(ip("192.0.2.1"))


def test_a_deleted_file_makes_lookups_fail_until_it_returns(
    country_db: Path, clock: FakeClock
) -> None:
    db = open_db(country_db, clock)
    data = country_db.read_bytes()
    country_db.unlink()
    clock.advance(5)
    with pytest.raises(GeoIPUnavailable):
        db.country(ip("192.0.2.1"))
    country_db.write_bytes(data)
    clock.advance(5)
    assert db.country(ip("192.0.2.1")) == "FR"


def test_a_failing_lookup_is_reported_once_and_refuses(
    country_db: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    db = open_db(country_db, clock)

    class BrokenReader:
        def get(self, ip: object) -> object:
            raise RuntimeError("The MaxMind DB file's data section contains bad data")

    assert db._loaded is not None
    db._loaded = attrs.evolve(db._loaded, reader=BrokenReader())  # type: ignore[arg-type]
    rules = compile_network_rules(policy_for(country_db))
    with caplog.at_level(logging.WARNING, logger="synapse_guard"):
        for _ in range(3):
            assert decide_address("192.0.2.1", rules, db.country) == deny(Reason.GEOIP_UNAVAILABLE)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_a_closed_database_refuses(country_db: Path) -> None:
    db = GeoIPDatabase(str(country_db))
    db.close()
    with pytest.raises(GeoIPUnavailable):
        db.country(ip("192.0.2.1"))
    db.reload_if_changed()  # does not reopen
    assert not db.available


def test_reload_if_changed_checks_now(country_db: Path, clock: FakeClock) -> None:
    db = open_db(country_db, clock)
    replace_by_rename(country_db, lambda tmp: write_country_db(tmp, {"NL": [FR_NET]}))
    db.reload_if_changed()
    assert db.country(ip("192.0.2.1")) == "NL"
