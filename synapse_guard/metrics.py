"""Prometheus metrics, created once at import so that loading the module twice never fails.

Synapse exports everything on the default registry from its metrics listener. No label holds
a user ID, room ID, address or content: only the fixed `Check`/`Reason` values.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from synapse_guard import __version__
from synapse_guard.verdict import Check, Verdict

DECISIONS = Counter(
    "synapse_guard_decisions_total",
    "Decisions taken by synapse-guard",
    ["check", "outcome", "reason"],
)
SESSIONS_REVOKED = Counter(
    "synapse_guard_sessions_revoked_total",
    "Sessions logged out because they were used from a refused address",
)
ADMIN_LOGINS = Counter(
    "synapse_guard_admin_logins_total",
    "Logins of server admins that the guard let through (each also audited)",
)
GEOIP_BUILD_TIMESTAMP = Gauge(
    "synapse_guard_geoip_database_build_timestamp_seconds",
    "Build time of the loaded GeoIP database (Unix seconds); 0 when none is loaded",
)
INFO = Gauge("synapse_guard_info", "synapse-guard is loaded", ["version"])
INFO.labels(version=__version__).set(1)


def record(check: Check, verdict: Verdict) -> None:
    DECISIONS.labels(check=check.value, outcome=verdict.outcome, reason=verdict.reason.value).inc()
