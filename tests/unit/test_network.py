"""The network decision (DESIGN.md, section 2), rule by rule, then against a slow reference."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable
from unittest.mock import Mock

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from synapse_guard.config import IPNetwork, NetworkPolicy
from synapse_guard.network import (
    CompiledNetworkRules,
    IPAddress,
    compile_network_rules,
    decide_address,
    parse_address,
)
from synapse_guard.verdict import ALLOW, Reason, Verdict, deny

MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def rules(
    allow: Iterable[str] = (), deny_: Iterable[str] = (), countries: Iterable[str] = ()
) -> CompiledNetworkRules:
    return compile_network_rules(
        NetworkPolicy(
            allow_cidrs=tuple(ipaddress.ip_network(n) for n in allow),
            deny_cidrs=tuple(ipaddress.ip_network(n) for n in deny_),
            allow_countries=frozenset(countries),
            geoip_database="/unused.mmdb" if countries else None,
        )
    )


def countries(table: dict[str, str]) -> Callable[[IPAddress], str | None]:
    """A lookup from exact address strings (as the decision hands them over) to countries."""
    return lambda ip: table.get(str(ip))


def lookup_fails(ip: IPAddress) -> str | None:
    raise RuntimeError("database unreadable")


# 1. Parsing -------------------------------------------------------------------------------

INVALID = [
    "not-an-ip",
    "",
    " ",
    "localhost",
    "1.2.3.4:80",
    "[::1]",
    "[::1]:8008",
    "[2001:db8::1]",
    "/run/synapse.sock",
    "unix:/run/synapse.sock",
    " 1.2.3.4",
    "1.2.3.4 ",
    "1.2.3.4\n",
    "1.2.3.4\x00",
    "1.2.3.4, 5.6.7.8",  # a whole X-Forwarded-For header
    "01.2.3.4",  # leading zero: octal in some parsers
    "1.2.3",
    "127.1",
    "2130706433",
    "0x7f.0.0.1",
    "1.2.3.4.5",
    "256.1.1.1",
    "1.2.3.-1",
    "\u0661.\u0662.\u0663.\u0664",  # Arabic-Indic digits
    "fe80::1%eth0",  # IPv6 zone index
    "fe80::1%1",
    "::ffff:1.2.3.4%eth0",
    "::1/128",
    "10.0.0.0/8",
    ":::",
    "1::2::3",
    "12345::",
    "::ffff:01.2.3.4",
    "g::1",
]


@pytest.mark.parametrize("address", INVALID)
def test_anything_that_is_not_an_ip_address_is_refused(address: str) -> None:
    expected = deny(Reason.INVALID_ADDRESS)
    assert decide_address(address, rules()) == expected
    assert decide_address(address, rules(allow=["0.0.0.0/0", "::/0"])) == expected
    assert parse_address(address) is None


@pytest.mark.parametrize("value", [None, b"1.2.3.4", 16909060, ipaddress.ip_address("1.2.3.4")])
def test_a_value_that_is_not_a_string_is_refused(value: object) -> None:
    assert decide_address(value, rules()) == deny(Reason.INVALID_ADDRESS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "normalised"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:192.0.2.1", "192.0.2.1"),
        ("::ffff:c000:201", "192.0.2.1"),
        ("0:0:0:0:0:ffff:192.0.2.1", "192.0.2.1"),
        ("::192.0.2.1", "::c000:201"),  # IPv4-compatible (deprecated) is not IPv4-mapped
        ("64:ff9b::192.0.2.1", "64:ff9b::c000:201"),  # NAT64 neither
        ("::", "::"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.255"),
    ],
)
def test_ipv4_mapped_ipv6_is_folded_to_ipv4(address: str, normalised: str) -> None:
    assert parse_address(address) == ipaddress.ip_address(normalised)


# 2-6. The rules ---------------------------------------------------------------------------


def test_no_rule_accepts_every_valid_address() -> None:
    for address in ("192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1", "::1", "127.0.0.1"):
        assert decide_address(address, rules()) == ALLOW


def test_deny_cidrs_refuse_even_without_allow_rules() -> None:
    compiled = rules(deny_=["192.0.2.0/24", "2001:db8:bad::/48"])
    assert decide_address("192.0.2.200", compiled) == deny(Reason.IP_DENIED)
    assert decide_address("2001:db8:bad::1", compiled) == deny(Reason.IP_DENIED)
    assert decide_address("192.0.3.1", compiled) == ALLOW
    assert decide_address("2001:db8:bae::1", compiled) == ALLOW


def test_allow_cidrs_accept_their_addresses_and_refuse_the_rest() -> None:
    compiled = rules(allow=["10.8.0.0/24", "fd00:8::/64"])
    assert decide_address("10.8.0.1", compiled) == ALLOW
    assert decide_address("fd00:8::42", compiled) == ALLOW
    assert decide_address("10.8.1.1", compiled) == deny(Reason.IP_NOT_ALLOWED)
    assert decide_address("fd00:9::1", compiled) == deny(Reason.IP_NOT_ALLOWED)


def test_deny_inside_allow_is_refused() -> None:
    compiled = rules(
        allow=["10.0.0.0/8", "2001:db8::/32"], deny_=["10.66.0.0/16", "2001:db8:66::/48"]
    )
    assert decide_address("10.66.1.2", compiled) == deny(Reason.IP_DENIED)
    assert decide_address("2001:db8:66::1", compiled) == deny(Reason.IP_DENIED)
    assert decide_address("10.65.255.255", compiled) == ALLOW
    assert decide_address("10.67.0.0", compiled) == ALLOW
    assert decide_address("2001:db8:67::1", compiled) == ALLOW


def test_deny_wins_over_an_allowed_country() -> None:
    compiled = rules(deny_=["192.0.2.0/24"], countries=["FR"])
    lookup = Mock(return_value="FR")
    assert decide_address("192.0.2.1", compiled, lookup) == deny(Reason.IP_DENIED)
    lookup.assert_not_called()


@pytest.mark.parametrize(
    ("allow", "inside", "outside"),
    [
        ("192.0.2.0/24", ["192.0.2.0", "192.0.2.255"], ["192.0.1.255", "192.0.3.0"]),
        ("192.0.2.7/32", ["192.0.2.7"], ["192.0.2.6", "192.0.2.8"]),
        ("0.0.0.0/0", ["0.0.0.0", "255.255.255.255"], ["::", "2001:db8::1"]),
        ("2001:db8::/32", ["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"], ["2001:db9::"]),
        ("2001:db8::1/128", ["2001:db8::1"], ["2001:db8::", "2001:db8::2"]),
        ("::/0", ["::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"], ["0.0.0.0", "::ffff:1.2.3.4"]),
    ],
)
def test_network_boundaries(allow: str, inside: list[str], outside: list[str]) -> None:
    compiled = rules(allow=[allow])
    for address in inside:
        assert decide_address(address, compiled) == ALLOW, address
    for address in outside:
        assert decide_address(address, compiled) == deny(Reason.IP_NOT_ALLOWED), address


def test_ipv4_mapped_addresses_are_judged_as_ipv4() -> None:
    compiled = rules(allow=["10.0.0.0/8"], deny_=["10.66.0.0/16"])
    assert decide_address("::ffff:10.1.2.3", compiled) == ALLOW
    assert decide_address("::ffff:a01:203", compiled) == ALLOW
    assert decide_address("::ffff:10.66.0.1", compiled) == deny(Reason.IP_DENIED)
    assert decide_address("::ffff:11.0.0.1", compiled) == deny(Reason.IP_NOT_ALLOWED)
    # IPv4-compatible addresses are IPv6 addresses.
    assert decide_address("::10.1.2.3", compiled) == deny(Reason.IP_NOT_ALLOWED)


def test_cidrs_written_in_ipv4_mapped_form_mean_the_ipv4_network() -> None:
    compiled = rules(allow=["::ffff:10.0.0.0/104"], deny_=["::ffff:10.66.0.0/112"])
    assert decide_address("10.1.2.3", compiled) == ALLOW
    assert decide_address("::ffff:10.1.2.3", compiled) == ALLOW
    assert decide_address("10.66.0.1", compiled) == deny(Reason.IP_DENIED)
    assert decide_address("11.0.0.1", compiled) == deny(Reason.IP_NOT_ALLOWED)


def test_a_wide_ipv6_network_does_not_match_ipv4_clients() -> None:
    compiled = rules(deny_=["::/0"])
    assert decide_address("2001:db8::1", compiled) == deny(Reason.IP_DENIED)
    assert decide_address("192.0.2.1", compiled) == ALLOW
    assert decide_address("::ffff:192.0.2.1", compiled) == ALLOW


def test_overlapping_and_adjacent_networks_merge() -> None:
    compiled = rules(
        allow=["10.0.0.0/25", "10.0.0.128/25", "10.0.0.64/26", "10.0.2.0/24", "10.0.0.0/24"]
    )
    assert (compiled.allow_v4.starts, compiled.allow_v4.ends) == (
        (int(ipaddress.IPv4Address("10.0.0.0")), int(ipaddress.IPv4Address("10.0.2.0"))),
        (int(ipaddress.IPv4Address("10.0.0.255")), int(ipaddress.IPv4Address("10.0.2.255"))),
    )
    assert decide_address("10.0.1.0", compiled) == deny(Reason.IP_NOT_ALLOWED)
    assert decide_address("10.0.0.200", compiled) == ALLOW


def test_compiled_rules_are_immutable() -> None:
    compiled = rules(allow=["10.0.0.0/8"])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        compiled.has_allow_rules = False  # type: ignore[misc]
    assert isinstance(compiled.allow_v4.starts, tuple)


# Countries --------------------------------------------------------------------------------


def test_an_address_in_an_allowed_country_is_accepted() -> None:
    compiled = rules(countries=["FR", "BE"])
    lookup = countries({"192.0.2.1": "FR", "2001:db8::1": "BE", "198.51.100.1": "DE"})
    assert decide_address("192.0.2.1", compiled, lookup) == ALLOW
    assert decide_address("2001:db8::1", compiled, lookup) == ALLOW
    assert decide_address("198.51.100.1", compiled, lookup) == deny(Reason.COUNTRY_NOT_ALLOWED)


def test_an_unknown_country_is_refused() -> None:
    compiled = rules(countries=["FR"])
    assert decide_address("192.0.2.1", compiled, countries({})) == deny(Reason.COUNTRY_UNKNOWN)


def test_a_failing_lookup_refuses_and_never_raises() -> None:
    compiled = rules(countries=["FR"])
    assert decide_address("192.0.2.1", compiled, lookup_fails) == deny(Reason.GEOIP_UNAVAILABLE)


def test_no_database_refuses_addresses_that_need_a_country() -> None:
    compiled = rules(allow=["10.0.0.0/8"], countries=["FR"])
    assert decide_address("192.0.2.1", compiled, None) == deny(Reason.COUNTRY_UNKNOWN)
    assert decide_address("10.0.0.1", compiled, None) == ALLOW


@pytest.mark.parametrize("bad", [["FR"], b"FR", 33, {"iso_code": "FR"}])
def test_a_lookup_returning_nonsense_counts_as_unknown(bad: object) -> None:
    compiled = rules(countries=["FR"])
    verdict = decide_address("192.0.2.1", compiled, lambda ip: bad)  # type: ignore[arg-type,return-value]
    assert verdict == deny(Reason.COUNTRY_UNKNOWN)


def test_country_codes_are_compared_exactly() -> None:
    compiled = rules(countries=["FR"])
    assert decide_address("192.0.2.1", compiled, lambda ip: "fr") == deny(
        Reason.COUNTRY_NOT_ALLOWED
    )


def test_allow_cidrs_accept_without_a_lookup() -> None:
    compiled = rules(allow=["10.0.0.0/8"], countries=["FR"])
    lookup = Mock(return_value="DE")
    assert decide_address("10.1.1.1", compiled, lookup) == ALLOW
    lookup.assert_not_called()
    assert decide_address("192.0.2.1", compiled, lookup) == deny(Reason.COUNTRY_NOT_ALLOWED)
    lookup.assert_called_once_with(ipaddress.IPv4Address("192.0.2.1"))


def test_without_allowed_countries_the_database_is_not_consulted() -> None:
    compiled = rules(allow=["10.0.0.0/8"])
    lookup = Mock(return_value="FR")
    assert decide_address("192.0.2.1", compiled, lookup) == deny(Reason.IP_NOT_ALLOWED)
    lookup.assert_not_called()


def test_the_lookup_gets_the_folded_ipv4_address() -> None:
    compiled = rules(countries=["FR"])
    lookup = Mock(return_value="FR")
    assert decide_address("::ffff:192.0.2.1", compiled, lookup) == ALLOW
    lookup.assert_called_once_with(ipaddress.IPv4Address("192.0.2.1"))


# Against a slow, obviously correct reference ----------------------------------------------


def reference_parse(address: object) -> IPAddress | None:
    if not isinstance(address, str):
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return None
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
    return ip


def reference_in(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    for net in networks:
        if ip in net:
            return True
        # A network written in IPv4-mapped form stands for the IPv4 network.
        if (
            ip.version == 4
            and net.version == 6
            and net.prefixlen >= 96
            and net.subnet_of(MAPPED)
            and ipaddress.IPv6Address(f"::ffff:{ip}") in net
        ):
            return True
    return False


def reference_decide(
    address: object, policy: NetworkPolicy, country_of: Callable[[IPAddress], str | None]
) -> Verdict:
    ip = reference_parse(address)
    if ip is None:
        return deny(Reason.INVALID_ADDRESS)
    if reference_in(ip, policy.deny_cidrs):
        return deny(Reason.IP_DENIED)
    if not policy.allow_cidrs and not policy.allow_countries:
        return ALLOW
    if reference_in(ip, policy.allow_cidrs):
        return ALLOW
    if not policy.allow_countries:
        return deny(Reason.IP_NOT_ALLOWED)
    try:
        country = country_of(ip)
    except Exception:
        return deny(Reason.GEOIP_UNAVAILABLE)
    if country is None:
        return deny(Reason.COUNTRY_UNKNOWN)
    return ALLOW if country in policy.allow_countries else deny(Reason.COUNTRY_NOT_ALLOWED)


def hashed_country(ip: IPAddress) -> str | None:
    """A deterministic stand-in for a database that also knows nothing and sometimes fails."""
    bucket = int(ip) % 7
    if bucket == 5:
        return None
    if bucket == 6:
        raise OSError("lookup failed")
    return ("FR", "BE", "DE", "US", "CN")[bucket]


def v4_networks() -> st.SearchStrategy[IPNetwork]:
    return st.builds(
        lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    )


def v6_networks() -> st.SearchStrategy[IPNetwork]:
    return st.builds(
        lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    )


def mapped_networks() -> st.SearchStrategy[IPNetwork]:
    return st.builds(
        lambda a, p: ipaddress.IPv6Network(((0xFFFF << 32) | a, 96 + p), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    )


NETWORKS = st.lists(st.one_of(v4_networks(), v6_networks(), mapped_networks()), max_size=12)
COUNTRIES = st.frozensets(st.sampled_from(["FR", "BE", "DE", "US", "CN"]), max_size=3)


def spellings(ip: IPAddress) -> list[str]:
    """Ways a valid address can be written, including IPv4-mapped forms of IPv4."""
    forms = [str(ip), ip.exploded, str(ip).upper()]
    if ip.version == 4:
        forms += [f"::ffff:{ip}", f"::FFFF:{ip}", str(ipaddress.IPv6Address(f"::ffff:{ip}"))]
        forms.append(ipaddress.IPv6Address(f"::ffff:{ip}").exploded)
    return forms


def address_at(value: int, version: int) -> IPAddress:
    """The address `value` (wrapped around the family's space) of that family."""
    if version == 4:
        return ipaddress.IPv4Address(value % 2**32)
    return ipaddress.IPv6Address(value % 2**128)


@st.composite
def addresses(draw: st.DrawFn, networks: list[IPNetwork]) -> str:
    """Addresses on and around the networks' edges, random ones, and near-miss strings."""
    choice = draw(st.integers(0, 3))
    if choice == 0 and networks:
        net = draw(st.sampled_from(networks))
        edge = draw(st.sampled_from([net.network_address, net.broadcast_address]))
        ip = address_at(int(edge) + draw(st.integers(-1, 1)), net.version)
        if ip.version == 6 and ip.ipv4_mapped is not None and draw(st.booleans()):
            ip = ip.ipv4_mapped
        return draw(st.sampled_from(spellings(ip)))
    text = draw(st.ip_addresses().flatmap(lambda ip: st.sampled_from(spellings(ip))))
    return draw(mutations(text)) if choice == 3 else text


@st.composite
def mutations(draw: st.DrawFn, text: str) -> str:
    """The text with one character inserted, deleted or replaced."""
    alphabet: st.SearchStrategy[str] = st.sampled_from(
        [*"0123456789abcdefABCDEFx:.%[]/ \n\x00", "\u0661"]
    )
    position = draw(st.integers(0, len(text)))
    action = draw(st.sampled_from(["insert", "delete", "replace"]))
    if action == "insert":
        return text[:position] + draw(alphabet) + text[position:]
    if action == "delete":
        return text[:position] + text[position + 1 :]
    return text[:position] + draw(alphabet) + text[position + 1 :]


@settings(max_examples=500)
@given(st.data(), NETWORKS, NETWORKS, COUNTRIES)
def test_decision_matches_the_reference(
    data: st.DataObject, allow: list[IPNetwork], deny_: list[IPNetwork], allowed: frozenset[str]
) -> None:
    policy = NetworkPolicy(
        allow_cidrs=tuple(allow), deny_cidrs=tuple(deny_), allow_countries=allowed
    )
    compiled = compile_network_rules(policy)
    for _ in range(10):
        address = data.draw(addresses(allow + deny_))
        assert decide_address(address, compiled, hashed_country) == reference_decide(
            address, policy, hashed_country
        ), address


@settings(max_examples=2000)
@given(
    st.ip_addresses()
    .flatmap(lambda ip: st.sampled_from(spellings(ip)))
    .flatmap(lambda text: st.one_of(st.just(text), mutations(text)))
)
@example("1:2:3:4:5:6:7::")
@example("::1:2:3:4:5:6:7")
@example("1::")
@example("::ffff:1.2.3.4")
def test_parsing_matches_ipaddress(text: str) -> None:
    assert parse_address(text) == reference_parse(text)


@given(st.text(max_size=45))
def test_parsing_matches_ipaddress_on_any_text(text: str) -> None:
    assert parse_address(text) == reference_parse(text)


def random_network(rng: random.Random) -> IPNetwork:
    if rng.random() < 0.5:
        return ipaddress.IPv4Network((rng.getrandbits(32), rng.randint(8, 32)), strict=False)
    return ipaddress.IPv6Network((rng.getrandbits(128), rng.randint(16, 128)), strict=False)


def test_many_cidrs_match_the_reference() -> None:
    rng = random.Random(20240501)
    allow = [random_network(rng) for _ in range(300)]
    deny_ = [random_network(rng) for _ in range(300)]
    policy = NetworkPolicy(
        allow_cidrs=tuple(allow), deny_cidrs=tuple(deny_), allow_countries=frozenset({"FR"})
    )
    compiled = compile_network_rules(policy)
    probes = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(300)]
    for net in allow + deny_:
        for edge in (int(net.network_address), int(net.broadcast_address)):
            probes += [str(address_at(edge + delta, net.version)) for delta in (-1, 0, 1)]
    for address in probes:
        assert decide_address(address, compiled, hashed_country) == reference_decide(
            address, policy, hashed_country
        ), address
