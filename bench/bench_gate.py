"""What the per-request gate costs Synapse on every authenticated request, in-process.

Run from the repository root (in an environment with Synapse and the test extras):

    PYTHONPATH=. python bench/bench_gate.py [--calls 20000]

Loads the guard as Synapse does (the real `parse_config`, a mocked ModuleApi whose database is
an in-memory SQLite holding the guard's tables) and calls its `is_user_expired` callback the
way Synapse's auth does, for a request being served: an allowed address (VPN CIDR, then an
allowed country through a generated GeoIP database), a refused one, and a URL that names
another server. The lockdown state is read through its 2-second cache, as in production;
the request's facts come from a plain function instead of Synapse's logging context. Prints
the median of 5 passes, in microseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

from synapse_guard import compat
from synapse_guard.compat import SynapseError
from tests.geoip_factory import write_country_db
from tests.unit.test_gate import guard

SCENARIOS = [
    ("VPN address, /sync", "10.8.0.5", "/_matrix/client/v3/sync", "since=s1_2&timeout=30000"),
    ("allowed country, /sync", "198.51.100.7", "/_matrix/client/v3/sync", "timeout=30000"),
    (
        "allowed country, send (v11 room)",
        "198.51.100.7",
        "/_matrix/client/v3/rooms/%21abc%3Atest.local/send/m.room.encrypted/m1",
        "",
    ),
    ("refused country (403)", "192.0.2.1", "/_matrix/client/v3/sync", ""),
    ("remote alias join (403)", "10.8.0.5", "/_matrix/client/v3/join/%23x%3Aother.org", ""),
]


async def per_call_us(callback: object, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        with contextlib.suppress(SynapseError):  # a refusal is an answer too
            await callback("@alice:test.local")  # type: ignore[operator]
    return (time.perf_counter() - start) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the guard's start-up warnings, not the figures
    with tempfile.TemporaryDirectory() as tmp:
        db = write_country_db(Path(tmp) / "c.mmdb", {"FR": ["198.51.100.0/24"]})
        network = {
            "allow_cidrs": ["10.8.0.0/24"],
            "allow_countries": ["FR"],
            "geoip_database": str(db),
            "revoke_sessions": False,
        }
        loaded = guard({"network": network})
        loaded.guard._lockdown._cache = type(loaded.guard._lockdown._cache)()  # 2 s TTL
        callback = loaded.callbacks["is_user_expired"]
        print(f"is_user_expired per call, median of 5 passes of {args.calls:,} calls")
        for name, address, path, query in SCENARIOS:
            facts = compat.RequestFacts(address=address, path=path, query=query)
            with patch.object(compat, "current_request", new=lambda facts=facts: facts):
                asyncio.run(per_call_us(callback, 1000))  # warm up: caches filled
                passes = [asyncio.run(per_call_us(callback, args.calls)) for _ in range(5)]
            print(f"  {name:<34} {statistics.median(passes):6.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
