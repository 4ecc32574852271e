"""Small GeoIP (.mmdb) databases written by the tests themselves: nothing is downloaded.

Shared by the unit tests, the integration tests and the benchmark. Every writer produces a
dual-stack database (`ip_version=6`) with IPv4 reachable at `::/96`, like MaxMind's files.
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import netaddr  # type: ignore[import-untyped]
from mmdb_writer import MMDBWriter

COUNTRY_TYPE = "GeoLite2-Country"
CITY_TYPE = "GeoLite2-City"
ASN_TYPE = "GeoLite2-ASN"


def write_mmdb(
    path: str | os.PathLike[str],
    records: Iterable[tuple[Iterable[str], Mapping[str, Any]]],
    database_type: str = COUNTRY_TYPE,
    ip_version: int = 6,
) -> Path:
    """Write `records` (networks, record) to `path`; networks must not overlap."""
    writer = MMDBWriter(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        description="synapse-guard test database",
    )
    for networks, record in records:
        writer.insert_network(netaddr.IPSet(list(networks)), dict(record))
    writer.to_db_file(os.fspath(path))
    return Path(path)


def country_record(code: str, database_type: str = COUNTRY_TYPE) -> dict[str, Any]:
    record: dict[str, Any] = {
        "continent": {"code": "EU"},
        "country": {"iso_code": code, "names": {"en": code}},
        "registered_country": {"iso_code": code},
    }
    if "City" in database_type:
        record["city"] = {"geoname_id": 1, "names": {"en": f"Capital of {code}"}}
    return record


def write_country_db(
    path: str | os.PathLike[str],
    countries: Mapping[str, Iterable[str]],
    database_type: str = COUNTRY_TYPE,
    ip_version: int = 6,
) -> Path:
    """A Country (or, with `database_type=CITY_TYPE`, City) database: {"FR": ["192.0.2.0/24"]}."""
    return write_mmdb(
        path,
        [(networks, country_record(code, database_type)) for code, networks in countries.items()],
        database_type,
        ip_version,
    )


def write_asn_db(path: str | os.PathLike[str], networks: Iterable[str]) -> Path:
    """An ASN database: a valid .mmdb whose records carry no country."""
    record = {"autonomous_system_number": 64496, "autonomous_system_organization": "Example"}
    return write_mmdb(path, [(networks, record)], ASN_TYPE)


def write_corrupt(path: str | os.PathLike[str], data: bytes = b"not a maxmind database\n") -> Path:
    Path(path).write_bytes(data)
    return Path(path)


def replace_by_rename(path: str | os.PathLike[str], write: Any) -> None:
    """Do what geoipupdate does: write a sibling temporary file, then rename it over `path`.

    `write(tmp_path)` writes the new file.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    write(tmp)
    os.replace(tmp, target)


def random_country_db(
    path: str | os.PathLike[str],
    networks: int,
    seed: int = 1,
    codes: tuple[str, ...] = ("FR", "BE", "DE", "NL", "US", "CN"),
) -> tuple[Path, dict[str, list[str]]]:
    """About `networks` disjoint random networks (half IPv4, half IPv6) spread over `codes`."""
    rng = random.Random(seed)
    v4: set[ipaddress.IPv4Network] = set()
    v6: set[ipaddress.IPv6Network] = set()
    while len(v4) < networks // 2:
        v4.add(ipaddress.IPv4Network((rng.getrandbits(32), 24), strict=False))
    while len(v6) < networks - networks // 2:
        v6.add(ipaddress.IPv6Network(((0x2000 << 112) | rng.getrandbits(125), 48), strict=False))
    by_country: dict[str, list[str]] = {code: [] for code in codes}
    for network in [*sorted(v4), *sorted(v6)]:
        by_country[rng.choice(codes)].append(str(network))
    return write_country_db(path, by_country), by_country
