"""What looking for idle sessions costs (`sessions.idle_timeout`), at 10,000 users x 2 devices.

Run from the repository root (in an environment with Synapse):

    PYTHONPATH=. python bench/bench_idle.py [--users 10000] [--idle 0.001,0.25]

Two parts, each the median of 5 passes:
- the pure selection (`sessions.select_idle`) over every device, as if the query returned
  them all: the decision's own cost per device;
- the query one sweep runs (`sessions.select_idle_candidates`, one batch of at most
  `IDLE_BATCH`), on an SQLite file holding the columns and indexes of Synapse's `devices` and
  `access_tokens` tables, for a share of idle devices: 0.1% (a normal hour) and 25% (the
  first sweep after enabling it on a server that never closed a session).
"""

from __future__ import annotations

import argparse
import functools
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from synapse_guard import sessions

DAY_MS = 24 * 3600 * 1000
NOW = 1_800_000_000_000
TIMEOUT = 30 * DAY_MS
DEVICES_PER_USER = 2


def median_ms(run: Callable[[], object], passes: int = 5) -> float:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def last_uses(users: int, idle_share: float, rng: random.Random) -> list[tuple[int, int]]:
    """(last_seen, last_validated) per device: idle ones 31 to 90 days ago, others recent."""
    rows = []
    for _ in range(users * DEVICES_PER_USER):
        if rng.random() < idle_share:
            seen = NOW - rng.randint(31, 90) * DAY_MS
        else:
            seen = NOW - rng.randint(0, 29 * DAY_MS)
        rows.append((seen, seen - rng.randint(0, 200) * DAY_MS))
    return rows


def database(path: Path, users: int, idle_share: float, rng: random.Random) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE devices (user_id TEXT NOT NULL, device_id TEXT NOT NULL,
            display_name TEXT, last_seen BIGINT, ip TEXT, user_agent TEXT,
            hidden BOOLEAN DEFAULT 0, CONSTRAINT device_uniqueness UNIQUE (user_id, device_id));
        CREATE TABLE access_tokens (id BIGINT PRIMARY KEY, user_id TEXT NOT NULL,
            device_id TEXT, token TEXT NOT NULL, valid_until_ms BIGINT, puppets_user_id TEXT,
            last_validated BIGINT, refresh_token_id BIGINT, used BOOLEAN, UNIQUE (token));
        CREATE INDEX access_tokens_device_id ON access_tokens (user_id, device_id);
        """
    )
    uses = last_uses(users, idle_share, rng)
    devices, tokens = [], []
    for i, (seen, validated) in enumerate(uses):
        user, device = f"@member{i // DEVICES_PER_USER:05d}:example.org", f"DEVICE{i:06d}"
        devices.append((user, device, "Element", seen, "10.8.0.5", "Element/1.11", False))
        tokens.append((i, user, device, f"syt_{i:08d}_{rng.getrandbits(64):016x}", validated))
    # One hidden device (cross-signing) per user, as Synapse keeps them.
    devices += [(f"@member{u:05d}:example.org", f"KEYS{u:05d}", None, None, None, None, True)
                for u in range(users)]  # fmt: skip
    db.executemany("INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?)", devices)
    db.executemany(
        "INSERT INTO access_tokens (id, user_id, device_id, token, last_validated) "
        "VALUES (?, ?, ?, ?, ?)",
        tokens,
    )
    db.commit()
    db.execute("ANALYZE")
    return db


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--idle", default="0.001,0.25", help="shares of idle devices")
    args = parser.parse_args()
    rng = random.Random(13)
    count = args.users * DEVICES_PER_USER

    uses = [
        sessions.DeviceUse(f"@member{i // 2:05d}:example.org", f"DEVICE{i:06d}", seen, validated)
        for i, (seen, validated) in enumerate(last_uses(args.users, 0.05, rng))
    ]
    pure = median_ms(lambda: sessions.select_idle(uses, NOW, TIMEOUT))
    print(f"{args.users:,} users x {DEVICES_PER_USER} devices ({count:,} sessions)")
    print(
        f"  pure selection over every session: {pure:7.2f} ms  ({pure * 1000 / count:.2f} us each)"
    )

    for share in (float(s) for s in args.idle.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            db = database(Path(tmp) / "homeserver.db", args.users, share, rng)
            cursor = db.cursor()
            cutoff = sessions.idle_cutoff(NOW, TIMEOUT)
            found = sessions.select_idle_candidates(cursor, cutoff)
            query = median_ms(functools.partial(sessions.select_idle_candidates, cursor, cutoff))
            plan = " / ".join(
                str(row[-1]) for row in cursor.execute(
                    "EXPLAIN QUERY PLAN " + sessions.IDLE_SQL,
                    (False, cutoff, cutoff, sessions.IDLE_BATCH),
                )
            )  # fmt: skip
            db.close()
        print(
            f"  query, {share:.1%} idle: {query:7.2f} ms for one batch of {len(found)} "
            f"(at most {sessions.IDLE_BATCH})\n    plan: {plan}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
