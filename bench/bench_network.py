"""How long one network decision takes, compiled against a naive linear scan.

Run from the repository root:

    PYTHONPATH=. python bench/bench_network.py

For 10, 10,000 and 100,000 random CIDRs (mixed IPv4/IPv6, half allow, half deny, fixed seed)
it times `decide_address` on compiled rules and a naive reference (a linear scan over the
`ipaddress` networks) in the same run, then both again with `allow_countries` and a GeoIP
database of a few thousand networks generated on the spot. It also times what the
per-request gate pays: the decision memoised per address (`gate.AddressJudge`, a repeated
address), and that plus reading a /sync URL for other servers' names.

Each sampled address is decided `repeat` times in a row under one `perf_counter_ns` pair and
the cost per decision is that batch's time divided by `repeat`, the fastest of three passes
(so that preemption by another process is not counted); median and p99 are over the
sampled addresses (a mix of IPv4, IPv6, IPv4-mapped IPv6, inside and outside the networks).
The naive scan is slow by design, so it samples fewer addresses at 10,000 and 100,000 CIDRs.
"""

from __future__ import annotations

import argparse
import functools
import gc
import ipaddress
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from synapse_guard.config import IPNetwork, NetworkPolicy, parse_guard_config
from synapse_guard.federation import decide_request_target
from synapse_guard.gate import AddressJudge
from synapse_guard.geoip import GeoIPDatabase
from synapse_guard.network import IPAddress, compile_network_rules, decide_address
from synapse_guard.verdict import ALLOW, Reason, Verdict, deny
from tests.geoip_factory import random_country_db

SEED = 20240501
FEDERATION_OFF = parse_guard_config({}).federation
SYNC_PATH, SYNC_QUERY = "/_matrix/client/v3/sync", "since=s72594_4483_1934&timeout=30000"
SIZES = (10, 10_000, 100_000)
GEOIP_NETWORKS = 4_000
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
CountryOf = Callable[[IPAddress], "str | None"]


def random_networks(rng: random.Random, count: int) -> list[IPNetwork]:
    networks: list[IPNetwork] = []
    for _ in range(count):
        if rng.random() < 0.5:
            networks.append(
                ipaddress.IPv4Network((rng.getrandbits(32), rng.randint(16, 32)), strict=False)
            )
        else:
            networks.append(
                ipaddress.IPv6Network((rng.getrandbits(128), rng.randint(32, 128)), strict=False)
            )
    return networks


def sample_addresses(
    rng: random.Random, networks: Sequence[IPNetwork], extra: Sequence[IPNetwork], count: int
) -> list[str]:
    """A third inside the CIDRs, a third inside the GeoIP networks, a third anywhere."""
    pools = [list(networks), list(extra)]
    out: list[str] = []
    for i in range(count):
        pool = pools[i % 3] if i % 3 < 2 and pools[i % 3] else None
        if pool is not None:
            net = rng.choice(pool)
            value = int(net.network_address) + rng.randrange(net.num_addresses)
            ip: IPAddress = (
                ipaddress.IPv4Address(value) if net.version == 4 else ipaddress.IPv6Address(value)
            )
        elif rng.random() < 0.5:
            ip = ipaddress.IPv4Address(rng.getrandbits(32))
        else:
            ip = ipaddress.IPv6Address(rng.getrandbits(128))
        text = str(ip)
        if ip.version == 4 and rng.random() < 0.2:
            text = f"::ffff:{ip}"  # what a dual-stack listener reports
        out.append(text)
    return out


def naive_decide(address: str, policy: NetworkPolicy, country_of: CountryOf | None) -> Verdict:
    """The obviously-correct version: parse with ipaddress, scan every network."""
    try:
        ip: IPAddress = ipaddress.ip_address(address)
    except ValueError:
        return deny(Reason.INVALID_ADDRESS)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return deny(Reason.INVALID_ADDRESS)
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    if any(ip in net for net in policy.deny_cidrs):
        return deny(Reason.IP_DENIED)
    if not policy.has_allow_rules:
        return ALLOW
    if any(ip in net for net in policy.allow_cidrs):
        return ALLOW
    if not policy.allow_countries or country_of is None:
        return deny(Reason.IP_NOT_ALLOWED)
    try:
        country = country_of(ip)
    except Exception:
        return deny(Reason.COUNTRY_UNKNOWN)
    if country is None:
        return deny(Reason.COUNTRY_UNKNOWN)
    return ALLOW if country in policy.allow_countries else deny(Reason.COUNTRY_NOT_ALLOWED)


def measure(
    decide: Callable[[str], Verdict], addresses: Sequence[str], repeat: int, rounds: int = 3
) -> tuple[list[float], list[Verdict]]:
    """Per-decision cost in microseconds, one figure per address, and the verdicts.

    Every address is timed in `rounds` separate passes and keeps its fastest batch, so that
    a pass preempted by another process does not pass for the decision's own cost.
    """
    for address in addresses[:50]:  # warm up
        decide(address)
    best = [float("inf")] * len(addresses)
    verdicts: list[Verdict] = []
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            verdicts = []
            for i, address in enumerate(addresses):
                start = clock()
                for _ in range(repeat):
                    verdict = decide(address)
                best[i] = min(best[i], (clock() - start) / repeat / 1000)
                verdicts.append(verdict)
    finally:
        gc.enable()
    return best, verdicts


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def row(cidrs: int, variant: str, costs: list[float], repeat: int, compile_ms: float | None) -> str:
    compiled = f"{compile_ms:10.0f}" if compile_ms is not None else f"{'':>10}"
    return (
        f"{cidrs:>8,} | {variant:<19} | {len(costs):>7} x{repeat:<3} | "
        f"{statistics.median(costs):>11.2f} | {p99(costs):>9.2f} | {compiled}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="addresses per compiled case")
    args = parser.parse_args(argv)

    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        db_path, by_country = random_country_db(
            Path(tmp) / "bench-Country.mmdb", GEOIP_NETWORKS, seed=SEED
        )
        db = GeoIPDatabase(str(db_path), metrics_enabled=False)
        geo_networks = [ipaddress.ip_network(n) for nets in by_country.values() for n in nets]

        print(
            f"Python {sys.version.split()[0]}; GeoIP database: {GEOIP_NETWORKS:,} networks, "
            f"type {db.database_type}; times in microseconds per decision"
        )
        header = (
            f"{'CIDRs':>8} | {'variant':<19} | {'samples':>12} | {'median (us)':>11} | "
            f"{'p99 (us)':>9} | {'compile ms':>10}"
        )
        print(header)
        print("-" * len(header))
        outcomes: Counter[str] = Counter()
        for size in SIZES:
            networks = random_networks(rng, size)
            half = size // 2
            addresses = sample_addresses(rng, networks, geo_networks, args.samples)
            naive_samples = {10: args.samples, 10_000: 300, 100_000: 50}[size]
            naive_repeat = 20 if size == 10 else 1
            for with_geoip in (False, True):
                policy = NetworkPolicy(
                    allow_cidrs=tuple(networks[:half]),
                    deny_cidrs=tuple(networks[half:]),
                    allow_countries=frozenset({"FR", "BE"}) if with_geoip else frozenset(),
                    geoip_database=str(db_path) if with_geoip else None,
                )
                country_of = db.country if with_geoip else None
                start = time.perf_counter_ns()
                rules = compile_network_rules(policy)
                compile_ms = (time.perf_counter_ns() - start) / 1e6
                suffix = " + GeoIP" if with_geoip else ""
                compiled = functools.partial(decide_address, rules=rules, country_of=country_of)
                costs, verdicts = measure(compiled, addresses, 20)
                print(row(size, "compiled" + suffix, costs, 20, compile_ms))
                # The per-request gate: the same decision memoised per address (the 20 repeats
                # of an address hit the cache), then the URL's server names (a /sync URL).
                judge = AddressJudge(rules, db if with_geoip else None)
                gate_costs, gate_verdicts = measure(judge.decide, addresses, 20)
                assert gate_verdicts == verdicts
                print(row(size, "gate cached" + suffix, gate_costs, 20, None))

                def request(address: str, judge: AddressJudge = judge) -> Verdict:
                    verdict = judge.decide(address)
                    return (
                        verdict
                        if not verdict.allowed
                        else decide_request_target(
                            FEDERATION_OFF, SYNC_PATH, SYNC_QUERY, "example.org"
                        )
                    )

                request_costs, _ = measure(request, addresses, 20)
                print(row(size, "gate + URL" + suffix, request_costs, 20, None))
                naive_costs, naive_verdicts = measure(
                    functools.partial(naive_decide, policy=policy, country_of=country_of),
                    addresses[:naive_samples],
                    naive_repeat,
                )
                print(row(size, "naive" + suffix, naive_costs, naive_repeat, None))
                # The two must agree, or the comparison means nothing.
                assert verdicts[:naive_samples] == naive_verdicts
                outcomes.update(f"{v.outcome}:{v.reason.value}" for v in verdicts)
                sys.stdout.flush()
        db.close()
    print(
        "verdict mix of the compiled samples:",
        ", ".join(f"{k}={n}" for k, n in sorted(outcomes.items())),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
