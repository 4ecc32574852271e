"""End-to-end cost of the guard on a real Synapse: login, message send, /sync and an
authenticated GET, with and without the module, in one run.

Run from the repository root (in an environment with Synapse and the test extras):

    PYTHONPATH=. python bench/bench_e2e.py [--requests 200]

Two Synapse processes start side by side on 127.0.0.1 from the same generated base config and
homeserver.d/: one with the guard (registration closed, room policy, a network policy with
1,000 CIDRs and a GeoIP database, so every login takes the GeoIP path), one with `modules: []`.
Test users use `bcrypt_rounds: 4`, so bcrypt does not drown the signal. Requests alternate
between the two servers (A, B, A, B...) so that drift and background load hit both alike.
Prints median and p90 per operation and server, and the guarded/unguarded ratio of medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.geoip_factory import write_country_db
from tests.integration.harness import PASSWORD, SynapseServer, generate_base_config

OPERATIONS = ("login", "send", "sync", "get")
MEGOLM = {
    "algorithm": "m.megolm.v1.aes-sha2",
    "ciphertext": "AwgAEnA" + "x" * 180,
    "device_id": "BENCHDEVICE",
    "sender_key": "c2VuZGVyIGtleSBvZiB0aGUgYmVuY2g",
    "session_id": "c2Vzc2lvbiBvZiB0aGUgYmVuY2g",
}
SYNC = "/_matrix/client/v3/sync?timeout=0"
WHOAMI = "/_matrix/client/v3/account/whoami"
FR_ADDRESS = "198.51.100.7"  # placed in FR by the generated database, reached by XFF only


def timed(operation: Callable[..., tuple[int, object]], *args: object, **kwargs: object) -> float:
    start = time.perf_counter()
    status, _ = operation(*args, **kwargs)
    elapsed = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"request failed with {status}")
    return elapsed * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per operation and server")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="synapse-guard-bench-"))
    base = generate_base_config(work / "base")
    write_country_db(work / "fr.mmdb", {"FR": ["198.51.100.0/24"], "US": ["192.0.2.0/24"]})
    # 1,000 private CIDRs that logins (from FR_ADDRESS, by X-Forwarded-For) do not match, so
    # every login reaches the GeoIP lookup; plus loopback, where the other requests come from
    # (else the session sweep would rightly log the bench's sessions out).
    cidrs = [f"10.{i // 250}.{i % 250}.0/24" for i in range(1000)] + ["127.0.0.0/8"]
    guard = {
        "network": {
            "allow_cidrs": cidrs,
            "allow_countries": ["FR"],
            "geoip_database": str(work / "fr.mmdb"),
        }
    }
    servers = {
        "guarded": SynapseServer(work / "guarded", base, guard=guard),
        "unguarded": SynapseServer(work / "unguarded", base, extra={"modules": []}),
    }
    headers = {"X-Forwarded-For": FR_ADDRESS}
    try:
        for server in servers.values():
            server.start()
        users = {name: server.new_account("bench") for name, server in servers.items()}
        clients = {name: server.client() for name, server in servers.items()}
        rooms = {}
        for name, client in clients.items():
            client.login(users[name], PASSWORD, headers=headers)
            rooms[name] = client.room_id()

        samples: dict[tuple[str, str], list[float]] = {}
        # Warm-up, then measure, alternating servers request by request.
        for phase, count in (("warmup", 20), ("measure", args.requests)):
            for _ in range(count):
                for name, server in servers.items():
                    client = clients[name]
                    figures = {
                        "login": timed(
                            server.client().login, users[name], PASSWORD, headers=headers
                        ),
                        # What an E2EE client sends (the guard refuses cleartext messages in
                        # encrypted rooms): the server sees the same bytes either way.
                        "send": timed(client.send, rooms[name], MEGOLM, "m.room.encrypted"),
                        # Every authenticated request passes the gate: an incremental /sync
                        # and a plain authenticated GET, from the GeoIP-checked address.
                        "sync": timed(client.request, "GET", SYNC, headers=headers),
                        "get": timed(client.request, "GET", WHOAMI, headers=headers),
                    }
                    if phase == "measure":
                        for operation, ms in figures.items():
                            samples.setdefault((name, operation), []).append(ms)
    finally:
        for server in servers.values():
            server.stop()

    print(f"Synapse end-to-end latency, {args.requests} requests per operation and server")
    print(f"{'operation':<10}{'server':<12}{'median ms':>11}{'p90 ms':>9}")
    for (name, operation), values in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{operation:<10}{name:<12}{statistics.median(values):>11.2f}{p90:>9.2f}")
    for operation in OPERATIONS:
        ratio = statistics.median(samples[("guarded", operation)]) / statistics.median(
            samples[("unguarded", operation)]
        )
        print(f"{operation}: guarded/unguarded median ratio = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
