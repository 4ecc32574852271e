"""The network decision: may a client at this address log in or register?

One pure function, `decide_address`, applied to the address Synapse resolved for the request
(DESIGN.md, section 2, "Network decision"):

1. Anything that is not a valid IP address is refused (`invalid_address`). IPv4-mapped IPv6
   (`::ffff:a.b.c.d`) is treated as the IPv4 address.
2. In `deny_cidrs`: refused (`ip_denied`).
3. No allow rule configured: accepted.
4. In `allow_cidrs`: accepted.
5. `allow_countries` set and the GeoIP database places the address in one of them: accepted.
6. Otherwise refused: `country_unknown` when the lookup gave no country or failed,
   `country_not_allowed` for another country, `ip_not_allowed` when no country is allowed.

Parsing is strict: surrounding whitespace, a port (`1.2.3.4:80`), brackets (`[::1]`), an IPv6
zone (`fe80::1%eth0`), a prefix length or a UNIX socket path make the address invalid. The
CIDR lists are compiled once into sorted, disjoint integer intervals per address family, so a
decision costs one parse and at most two binary searches, whatever the size of the lists.

A CIDR written in IPv4-mapped form (`::ffff:10.0.0.0/104`, a prefix of 96 bits or more inside
`::ffff:0:0/96`) is compiled as the IPv4 network it denotes (`10.0.0.0/8`), because the
addresses it could match are all folded to IPv4. A wider IPv6 network that merely contains
that range (`::/0`) does not match IPv4 clients: `deny_cidrs: ["::/0"]` refuses IPv6 only.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Callable, Iterable

import attrs

from synapse_guard.config import IPNetwork, NetworkPolicy
from synapse_guard.verdict import ALLOW, Reason, Verdict, deny

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CountryLookup = Callable[[IPAddress], str | None]
"""Gives the ISO 3166-1 alpha-2 country of an address, None when unknown; may raise."""

_IPV4_MAPPED_PREFIX = 0xFFFF  # the top 96 bits of ::ffff:0:0/96
_IPV4_MASK = 0xFFFF_FFFF

_INVALID_ADDRESS = deny(Reason.INVALID_ADDRESS)
_IP_DENIED = deny(Reason.IP_DENIED)
_IP_NOT_ALLOWED = deny(Reason.IP_NOT_ALLOWED)
_COUNTRY_UNKNOWN = deny(Reason.COUNTRY_UNKNOWN)
_GEOIP_UNAVAILABLE = deny(Reason.GEOIP_UNAVAILABLE)
_COUNTRY_NOT_ALLOWED = deny(Reason.COUNTRY_NOT_ALLOWED)


def _parse(address: object) -> tuple[int, int] | None:
    """(4 or 6, the address as an integer), IPv4-mapped IPv6 folded to IPv4; None if invalid.

    `inet_pton` accepts exactly the textual forms of RFC 4291 and dotted-quad IPv4 (no
    leading zeros, no shorthand such as `10.1`), several times faster than `ipaddress`; the
    unit tests check it against `ipaddress.ip_address` on generated near-miss strings.
    """
    if not isinstance(address, str):
        return None
    try:
        if ":" in address:
            if "%" in address:  # a zone index names an interface, not an address
                return None
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big")
            if value >> 32 == _IPV4_MAPPED_PREFIX:
                return 4, value & _IPV4_MASK
            return 6, value
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
    except (OSError, ValueError):  # ValueError: embedded NUL or a non-encodable character
        return None


def parse_address(address: object) -> IPAddress | None:
    """The address Synapse gave, as the decision sees it (mapped IPv6 folded); None if invalid."""
    parsed = _parse(address)
    if parsed is None:
        return None
    version, value = parsed
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


@attrs.frozen(slots=True)
class _Intervals:
    """Sorted, disjoint, non-adjacent inclusive intervals [starts[i], ends[i]]."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def merge(cls, spans: Iterable[tuple[int, int]]) -> _Intervals:
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted(spans):
            if ends and start <= ends[-1] + 1:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        return cls(tuple(starts), tuple(ends))

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self.starts, value)
        return i > 0 and value <= self.ends[i - 1]

    def __len__(self) -> int:
        return len(self.starts)


def _spans(networks: Iterable[IPNetwork], version: int) -> Iterable[tuple[int, int]]:
    for network in networks:
        start, end = int(network.network_address), int(network.broadcast_address)
        if network.version == 6 and network.prefixlen >= 96 and start >> 32 == _IPV4_MAPPED_PREFIX:
            if version == 4:
                yield start & _IPV4_MASK, end & _IPV4_MASK
        elif network.version == version:
            yield start, end


@attrs.frozen(slots=True)
class CompiledNetworkRules:
    """A NetworkPolicy's CIDR lists as interval tables, built once at start-up."""

    deny_v4: _Intervals
    deny_v6: _Intervals
    allow_v4: _Intervals
    allow_v6: _Intervals
    allow_countries: frozenset[str]
    has_allow_rules: bool

    @classmethod
    def from_policy(cls, policy: NetworkPolicy) -> CompiledNetworkRules:
        return cls(
            deny_v4=_Intervals.merge(_spans(policy.deny_cidrs, 4)),
            deny_v6=_Intervals.merge(_spans(policy.deny_cidrs, 6)),
            allow_v4=_Intervals.merge(_spans(policy.allow_cidrs, 4)),
            allow_v6=_Intervals.merge(_spans(policy.allow_cidrs, 6)),
            allow_countries=policy.allow_countries,
            has_allow_rules=policy.has_allow_rules,
        )


def compile_network_rules(policy: NetworkPolicy) -> CompiledNetworkRules:
    return CompiledNetworkRules.from_policy(policy)


def decide_address(
    address: str, rules: CompiledNetworkRules, country_of: CountryLookup | None = None
) -> Verdict:
    """Decide one client address. Never raises: a failing `country_of` refuses the address.

    `country_of` is consulted only when the address is neither denied nor allowed by CIDR and
    `allow_countries` is set; None means no database, so every such address is refused.
    """
    parsed = _parse(address)
    if parsed is None:
        return _INVALID_ADDRESS
    version, value = parsed
    if value in (rules.deny_v4 if version == 4 else rules.deny_v6):
        return _IP_DENIED
    if not rules.has_allow_rules:
        return ALLOW
    if value in (rules.allow_v4 if version == 4 else rules.allow_v6):
        return ALLOW
    if not rules.allow_countries:
        return _IP_NOT_ALLOWED
    if country_of is None:
        return _COUNTRY_UNKNOWN
    ip = ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
    try:
        country = country_of(ip)
    except Exception:  # the lookup failed: refused, and told apart from an unknown country
        return _GEOIP_UNAVAILABLE
    if not isinstance(country, str):
        return _COUNTRY_UNKNOWN
    return ALLOW if country in rules.allow_countries else _COUNTRY_NOT_ALLOWED


class VerdictCache:
    """`decide_address` memoised per address, for one generation of the GeoIP database.

    A repeated address costs a dictionary lookup on the per-request path. The policy itself
    cannot change without a restart; the database can (geoipupdate), so a new generation
    empties the cache. A lookup failure is never kept: it lasts only as long as the outage.
    Bounded: past `max_entries` the oldest entry goes first.
    """

    def __init__(self, max_entries: int = 16384) -> None:
        self._max_entries = max_entries
        self._generation: int | None = None
        self._verdicts: dict[str, Verdict] = {}

    def get(self, address: str, generation: int) -> Verdict | None:
        if generation != self._generation:
            self._verdicts.clear()
            self._generation = generation
            return None
        return self._verdicts.get(address)

    def put(self, address: str, generation: int, verdict: Verdict) -> None:
        if generation != self._generation or verdict.reason is Reason.GEOIP_UNAVAILABLE:
            return
        if len(self._verdicts) >= self._max_entries:
            del self._verdicts[next(iter(self._verdicts))]
        self._verdicts[address] = verdict
