"""parse_guard_config: safe defaults, every key, and failures that name the faulty key."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard.config import (
    FederationPolicy,
    GuardConfig,
    GuardConfigError,
    MetricsConfig,
    NetworkPolicy,
    RegistrationPolicy,
    RetentionPolicy,
    RoomPolicy,
    parse_duration,
    parse_guard_config,
)

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
YEAR = 365 * DAY
UNIT_MS = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK, "y": YEAR}

SAFE_DEFAULTS = GuardConfig(
    registration=RegistrationPolicy(mode="closed", allow_3pid=False),
    federation=FederationPolicy(enabled=False),
    rooms=RoomPolicy(
        encryption="required",
        join_rule="invite",
        history_visibility="joined",
        guest_access=False,
        directory=False,
    ),
    retention=RetentionPolicy(max_lifetime_ms=15 * DAY, default_lifetime_ms=7 * DAY),
    network=NetworkPolicy(
        allow_cidrs=(),
        deny_cidrs=(),
        allow_countries=frozenset(),
        geoip_database=None,
        revoke_sessions=True,
        sweep_interval_ms=30 * SECOND,
    ),
    metrics=MetricsConfig(enabled=True),
)


def parse_error(raw: object) -> GuardConfigError:
    with pytest.raises(GuardConfigError) as caught:
        parse_guard_config(raw)
    return caught.value


# Successes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {},
        {"registration": None, "federation": None, "rooms": None},
        {"retention": {}, "network": {}, "metrics": {}},
    ],
    ids=["null", "empty", "null-sections", "empty-sections"],
)
def test_an_empty_config_gives_the_safe_defaults(raw: object) -> None:
    assert parse_guard_config(raw) == SAFE_DEFAULTS


def test_every_key_is_read() -> None:
    raw = {
        "registration": {"mode": "open", "allow_3pid": True},
        "federation": {"enabled": True},
        "rooms": {
            "encryption": "off",
            "join_rule": "knock",
            "history_visibility": "shared",
            "guest_access": True,
            "directory": True,
        },
        "retention": {"max_lifetime": "30d", "default_lifetime": "2w"},
        "network": {
            "allow_cidrs": ["10.8.0.0/24", "fd00:8::/64"],
            "deny_cidrs": ["10.8.0.66/32"],
            "allow_countries": ["FR", "BE"],
            "geoip_database": "/var/lib/GeoIP/GeoLite2-Country.mmdb",
            "revoke_sessions": False,
            "sweep_interval": "15m",
        },
        "metrics": {"enabled": False},
    }

    assert parse_guard_config(raw) == GuardConfig(
        registration=RegistrationPolicy(mode="open", allow_3pid=True),
        federation=FederationPolicy(enabled=True),
        rooms=RoomPolicy(
            encryption="off",
            join_rule="knock",
            history_visibility="shared",
            guest_access=True,
            directory=True,
        ),
        retention=RetentionPolicy(max_lifetime_ms=30 * DAY, default_lifetime_ms=2 * WEEK),
        network=NetworkPolicy(
            allow_cidrs=(
                ipaddress.IPv4Network("10.8.0.0/24"),
                ipaddress.IPv6Network("fd00:8::/64"),
            ),
            deny_cidrs=(ipaddress.IPv4Network("10.8.0.66/32"),),
            allow_countries=frozenset({"FR", "BE"}),
            geoip_database="/var/lib/GeoIP/GeoLite2-Country.mmdb",
            revoke_sessions=False,
            sweep_interval_ms=15 * MINUTE,
        ),
        metrics=MetricsConfig(enabled=False),
    )


def test_a_section_given_alone_keeps_the_defaults_of_the_others() -> None:
    config = parse_guard_config({"rooms": {"join_rule": "public"}})

    assert config == GuardConfig(rooms=RoomPolicy(join_rule="public"))
    assert config.registration == SAFE_DEFAULTS.registration
    assert config.rooms.encryption == "required"


@pytest.mark.parametrize("join_rule", ["invite", "knock", "public"])
def test_each_join_rule_is_accepted(join_rule: str) -> None:
    config = parse_guard_config({"rooms": {"join_rule": join_rule}})

    assert config.rooms == RoomPolicy(join_rule=join_rule)


@pytest.mark.parametrize("visibility", ["joined", "invited", "shared", "world_readable"])
def test_each_history_visibility_is_accepted(visibility: str) -> None:
    config = parse_guard_config({"rooms": {"history_visibility": visibility}})

    assert config.rooms == RoomPolicy(history_visibility=visibility)


def test_default_lifetime_may_equal_max_lifetime() -> None:
    config = parse_guard_config({"retention": {"max_lifetime": "7d", "default_lifetime": "7d"}})

    assert config.retention == RetentionPolicy(max_lifetime_ms=7 * DAY, default_lifetime_ms=7 * DAY)


def test_a_shorter_max_lifetime_alone_needs_a_shorter_default() -> None:
    config = parse_guard_config({"retention": {"max_lifetime": "1d", "default_lifetime": "12h"}})

    assert config.retention == RetentionPolicy(max_lifetime_ms=DAY, default_lifetime_ms=12 * HOUR)


def test_allow_countries_with_a_geoip_database() -> None:
    config = parse_guard_config(
        {"network": {"allow_countries": ["XK"], "geoip_database": "/data/country.mmdb"}}
    )

    assert config.network == NetworkPolicy(
        allow_countries=frozenset({"XK"}), geoip_database="/data/country.mmdb"
    )


# Durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("30s", 30 * SECOND),
        ("15m", 15 * MINUTE),
        ("12h", 12 * HOUR),
        ("7d", 7 * DAY),
        ("2w", 2 * WEEK),
        ("1y", YEAR),
        ("250ms", 250),
        ("1000", 1000),
        (86_400_000, DAY),
    ],
)
def test_synapse_duration_syntax(text: object, expected_ms: int) -> None:
    assert parse_duration(text, "retention.max_lifetime") == expected_ms


@given(amount=st.integers(min_value=1, max_value=10**9), unit=st.sampled_from(sorted(UNIT_MS)))
def test_any_positive_amount_with_a_unit_is_that_many_units(amount: int, unit: str) -> None:
    assert parse_duration(f"{amount}{unit}", "network.sweep_interval") == amount * UNIT_MS[unit]


@given(st.integers(min_value=1, max_value=2**63))
def test_a_positive_integer_is_milliseconds(ms: int) -> None:
    assert parse_duration(ms, "network.sweep_interval") == ms


@given(st.integers(max_value=0))
def test_zero_or_negative_milliseconds_are_refused(ms: int) -> None:
    with pytest.raises(GuardConfigError) as caught:
        parse_duration(ms, "retention.max_lifetime")

    assert caught.value.path == "retention.max_lifetime"
    assert str(caught.value) == f"retention.max_lifetime: must be longer than zero, got {ms!r}"


@pytest.mark.parametrize("text", ["0", "0s", "0ms", "0d", "00w"])
def test_a_zero_duration_is_refused(text: str) -> None:
    with pytest.raises(
        GuardConfigError, match=r"^network\.sweep_interval: must be longer than zero"
    ):
        parse_duration(text, "network.sweep_interval")


@pytest.mark.parametrize("flag", [True, False])
def test_a_boolean_is_not_a_duration(flag: bool) -> None:
    with pytest.raises(GuardConfigError) as caught:
        parse_duration(flag, "retention.default_lifetime")

    assert caught.value.path == "retention.default_lifetime"
    assert "must be a duration such as 30s, 15m, 12h, 7d" in str(caught.value)


NOT_DURATIONS = [
    "",
    "-5s",
    "-1",
    "1.5h",
    "7 days",
    "7D",
    "15min",
    "s",
    "1d2h",
    "P7D",
    1.5,
    None,
    [],
    {"d": 7},
]


@pytest.mark.parametrize("value", NOT_DURATIONS, ids=repr)
def test_anything_else_is_not_a_duration(value: object) -> None:
    with pytest.raises(GuardConfigError) as caught:
        parse_duration(value, "retention.max_lifetime")

    assert caught.value.path == "retention.max_lifetime"
    assert str(caught.value) == (
        f"retention.max_lifetime: {value!r} is not a duration: use milliseconds as an integer "
        "or a number followed by ms, s, m, h, d, w or y (e.g. 30s, 7d)"
    )


@given(
    st.one_of(
        st.text(max_size=12),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )
)
def test_a_duration_is_either_positive_milliseconds_or_a_config_error(value: object) -> None:
    ms: int | None = None
    error: GuardConfigError | None = None
    try:
        ms = parse_duration(value, "network.sweep_interval")
    except GuardConfigError as e:
        error = e

    if error is not None:
        assert error.path == "network.sweep_interval"
        assert str(error).startswith("network.sweep_interval: ")
    else:
        assert type(ms) is int
        assert ms > 0
        assert not isinstance(value, bool)


@pytest.mark.parametrize(
    "key", ["retention.max_lifetime", "retention.default_lifetime", "network.sweep_interval"]
)
@pytest.mark.parametrize("value", [True, 0, -1, "0s", "soon"], ids=repr)
def test_each_duration_key_refuses_bad_values_by_name(key: str, value: object) -> None:
    section, name = key.split(".")

    error = parse_error({section: {name: value}})

    assert error.path == key
    assert str(error).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("key", "attribute"),
    [
        ("retention.max_lifetime", "max_lifetime_ms"),
        ("network.sweep_interval", "sweep_interval_ms"),
    ],
)
def test_each_duration_key_reads_the_syntax(key: str, attribute: str) -> None:
    section, name = key.split(".")

    config = parse_guard_config({section: {name: "3w"}})

    assert getattr(getattr(config, section), attribute) == 3 * WEEK


# Failures ----------------------------------------------------------------------------------

FAILURES: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, config, key path, message after "<path>: ")
    (
        "unknown top-level key",
        {"room": {}},
        "room",
        "unknown key; known keys here: registration, federation, rooms, retention, network, "
        "metrics, audit, auth, lockdown, push, sessions, alerts",
    ),
    (
        "unknown registration key",
        {"registration": {"allow_email": True}},
        "registration.allow_email",
        "unknown key; known keys here: mode, allow_3pid",
    ),
    (
        "unknown federation key",
        {"federation": {"enable": True}},
        "federation.enable",
        "unknown key; known keys here: enabled",
    ),
    (
        "unknown rooms key",
        {"rooms": {"encrypted": "required"}},
        "rooms.encrypted",
        "unknown key; known keys here: encryption, join_rule, history_visibility, guest_access, "
        "directory",
    ),
    (
        "unknown retention key",
        {"retention": {"min_lifetime": "1d"}},
        "retention.min_lifetime",
        "unknown key; known keys here: max_lifetime, default_lifetime, daily_visits_max_age, "
        "daily_visits_purge_interval",
    ),
    (
        "unknown network key",
        {"network": {"allowed_cidrs": []}},
        "network.allowed_cidrs",
        "unknown key; known keys here: allow_cidrs, deny_cidrs, allow_countries, geoip_database, "
        "revoke_sessions, sweep_interval",
    ),
    (
        "unknown metrics key",
        {"metrics": {"port": 9000}},
        "metrics.port",
        "unknown key; known keys here: enabled",
    ),
    ("section not a mapping", {"rooms": "invite"}, "rooms", "must be a mapping, got str"),
    ("section a list", {"network": ["10.0.0.0/8"]}, "network", "must be a mapping, got list"),
    (
        "registration mode",
        {"registration": {"mode": "Closed"}},
        "registration.mode",
        "'Closed' is not one of: closed | open",
    ),
    (
        "registration mode not a string",
        {"registration": {"mode": False}},
        "registration.mode",
        "False is not one of: closed | open",
    ),
    (
        "allow_3pid as a string",
        {"registration": {"allow_3pid": "false"}},
        "registration.allow_3pid",
        "must be true or false, got 'false'",
    ),
    (
        "federation enabled as a number",
        {"federation": {"enabled": 0}},
        "federation.enabled",
        "must be true or false, got 0",
    ),
    (
        "encryption",
        {"rooms": {"encryption": "optional"}},
        "rooms.encryption",
        "'optional' is not one of: required | off",
    ),
    (
        "encryption as a boolean",
        {"rooms": {"encryption": True}},
        "rooms.encryption",
        "True is not one of: required | off",
    ),
    (
        "join_rule",
        {"rooms": {"join_rule": "restricted"}},
        "rooms.join_rule",
        "'restricted' is not one of: invite | knock | public",
    ),
    (
        "history_visibility",
        {"rooms": {"history_visibility": "world-readable"}},
        "rooms.history_visibility",
        "'world-readable' is not one of: joined | invited | shared | world_readable",
    ),
    (
        "guest_access",
        {"rooms": {"guest_access": "forbidden"}},
        "rooms.guest_access",
        "must be true or false, got 'forbidden'",
    ),
    (
        "directory",
        {"rooms": {"directory": None}},
        "rooms.directory",
        "must be true or false, got None",
    ),
    (
        "default_lifetime above max_lifetime",
        {"retention": {"max_lifetime": "1d", "default_lifetime": "2d"}},
        "retention.default_lifetime",
        "must not exceed retention.max_lifetime (86400000 ms), got 172800000 ms",
    ),
    (
        "max_lifetime below the default default_lifetime",
        {"retention": {"max_lifetime": "1d"}},
        "retention.default_lifetime",
        "must not exceed retention.max_lifetime (86400000 ms), got 604800000 ms",
    ),
    (
        "allow_cidrs not a list",
        {"network": {"allow_cidrs": "10.8.0.0/24"}},
        "network.allow_cidrs",
        "must be a list, got str",
    ),
    (
        "deny_cidrs null",
        {"network": {"deny_cidrs": None}},
        "network.deny_cidrs",
        "must be a list, got null",
    ),
    (
        "allow_cidrs entry a number",
        {"network": {"allow_cidrs": ["10.8.0.0/24", 10]}},
        "network.allow_cidrs[1]",
        "must be a CIDR string such as '10.8.0.0/24', got 10",
    ),
    (
        "allow_countries not a list",
        {"network": {"allow_countries": "FR", "geoip_database": "/x.mmdb"}},
        "network.allow_countries",
        "must be a list, got str",
    ),
    (
        "allow_countries name",
        {"network": {"allow_countries": ["FR", "France"], "geoip_database": "/x.mmdb"}},
        "network.allow_countries[1]",
        "'France' is not an ISO 3166-1 alpha-2 country code, e.g. 'FR' or 'BE'",
    ),
    (
        "allow_countries lower case",
        {"network": {"allow_countries": ["fr"], "geoip_database": "/x.mmdb"}},
        "network.allow_countries[0]",
        "'fr' is not an ISO 3166-1 alpha-2 country code, e.g. 'FR' or 'BE'",
    ),
    (
        "allow_countries unassigned code",
        {"network": {"allow_countries": ["BE", "EU"], "geoip_database": "/x.mmdb"}},
        "network.allow_countries[1]",
        "'EU' is not an ISO 3166-1 alpha-2 country code, e.g. 'FR' or 'BE'",
    ),
    (
        "allow_countries without geoip_database",
        {"network": {"allow_countries": ["FR"]}},
        "network.geoip_database",
        "is required when network.allow_countries is set: give the path of a MaxMind "
        "GeoIP2/GeoLite2 Country or City .mmdb file",
    ),
    (
        "geoip_database empty",
        {"network": {"geoip_database": ""}},
        "network.geoip_database",
        "must be a file path or null, got ''",
    ),
    (
        "geoip_database a number",
        {"network": {"geoip_database": 42}},
        "network.geoip_database",
        "must be a file path or null, got 42",
    ),
    (
        "revoke_sessions",
        {"network": {"revoke_sessions": "no"}},
        "network.revoke_sessions",
        "must be true or false, got 'no'",
    ),
    (
        "metrics enabled as a string",
        {"metrics": {"enabled": "true"}},
        "metrics.enabled",
        "must be true or false, got 'true'",
    ),
]


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [pytest.param(raw, path, message, id=name) for name, raw, path, message in FAILURES],
)
def test_a_bad_value_is_refused_with_its_key_path(
    raw: dict[str, Any], path: str, message: str
) -> None:
    error = parse_error(raw)

    assert error.path == path
    assert error.message == message
    assert str(error) == f"{path}: {message}"


@pytest.mark.parametrize("raw", [[], "rooms: {}", 42, True], ids=repr)
def test_a_config_that_is_not_a_mapping_is_refused(raw: object) -> None:
    error = parse_error(raw)

    assert error.path == ""
    assert str(error) == f"must be a mapping, got {type(raw).__name__}"


def test_a_non_string_key_is_reported_as_unknown() -> None:
    error = parse_error({"rooms": {1: "invite"}})

    assert error.path == "rooms.1"
    assert error.message.startswith("unknown key; known keys here: encryption, join_rule")


def test_an_unknown_key_is_refused_even_next_to_valid_ones() -> None:
    error = parse_error({"federation": {"enabled": False, "enabeld": True}})

    assert error.path == "federation.enabeld"


@pytest.mark.parametrize(
    ("cidr", "suggestion"),
    [("10.8.0.1/24", "10.8.0.0/24"), ("fd00:8::1/64", "fd00:8::/64")],
)
def test_a_cidr_with_host_bits_names_its_index_and_suggests_the_network(
    cidr: str, suggestion: str
) -> None:
    error = parse_error({"network": {"allow_cidrs": ["192.168.0.0/16", cidr]}})

    assert error.path == "network.allow_cidrs[1]"
    assert error.message.startswith(f"{cidr!r} is not a valid IPv4 or IPv6 network (")
    assert error.message.endswith(f"; did you mean '{suggestion}'?")


@pytest.mark.parametrize("cidr", ["vpn", "10.8.0.0/33", "10.8.0.0/", "10.8.0", ""], ids=repr)
def test_a_malformed_cidr_names_its_index_without_a_suggestion(cidr: str) -> None:
    error = parse_error({"network": {"deny_cidrs": ["10.0.0.0/8", "fd00::/8", cidr]}})

    assert error.path == "network.deny_cidrs[2]"
    assert re.fullmatch(
        re.escape(f"{cidr!r} is not a valid IPv4 or IPv6 network (") + r".+\)", error.message
    )


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10).filter(
            lambda key: key not in GuardConfig.__annotations__  # every section's name
        ),
        st.none(),
        min_size=1,
        max_size=3,
    )
)
def test_any_unknown_top_level_key_is_refused(raw: dict[str, None]) -> None:
    error = parse_error(raw)

    assert error.path in raw
    assert error.message.startswith("unknown key; known keys here: ")
