"""Prometheus metrics, created once at import so that loading the module twice never fails.

Synapse exports everything on the default registry from its metrics listener. No label holds
a user ID, room ID, address or content: only the fixed `Check`/`Reason` values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class _GaugeWhenSet(Collector):
    """A gauge exported only once a value was set.

    A GeoIP build time of 0 means "the database is unusable" (an alert); a server that
    configures no country has no database, and must export no value rather than that 0.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self._value: float | None = None

    @property
    def name(self) -> str:
        return self._name

    def set(self, value: float) -> None:
        self._value = value

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._value is not None:
            yield GaugeMetricFamily(self._name, self._documentation, value=self._value)

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to check for clashes before a value exists


GEOIP_BUILD_TIMESTAMP = _GaugeWhenSet(
    "synapse_guard_geoip_database_build_timestamp_seconds",
    "Build time of the loaded GeoIP database (Unix seconds); 0 while it is unusable",
)
REGISTRY.register(GEOIP_BUILD_TIMESTAMP)
INFO = Gauge("synapse_guard_info", "synapse-guard is loaded", ["version"])
INFO.labels(version=__version__).set(1)
LOCKDOWN_ACTIVE = Gauge(
    "synapse_guard_lockdown_active",
    "1 while the server is locked down (as last read from the database by this process)",
)
LOCKDOWNS = Counter(
    "synapse_guard_lockdowns_total",
    "Lockdowns entered, by cause (manual: the admin endpoint; deadman: no check-in in time)",
    ["cause"],
)
for _cause in ("manual", "deadman"):
    LOCKDOWNS.labels(cause=_cause)  # exported at 0 from the start, so increase() sees the first
DEADMAN_LAST_CHECKIN = _GaugeWhenSet(
    "synapse_guard_deadman_last_checkin_timestamp_seconds",
    "Time of the last dead man's switch check-in (Unix seconds); exported once known",
)
REGISTRY.register(DEADMAN_LAST_CHECKIN)
LOCKDOWN_SESSIONS_REVOKED = Counter(
    "synapse_guard_lockdown_sessions_revoked_total",
    "Sessions logged out when a lockdown was switched on with revoke_sessions",
)

MEMBER_ACTIONS = Counter(
    "synapse_guard_member_actions_total",
    "Admin actions on a member's account (synapse-guard member lock, unlock, remove)",
    ["action"],
)
for _action in ("lock", "unlock", "remove"):
    MEMBER_ACTIONS.labels(action=_action)

ALERT_OUTCOMES = (
    "posted",  # a notice is in the admins' room
    "rate_limited",  # counted into the next notice instead (alerts.notices_per_minute)
    "address_refused",  # not from alerts.allow_cidrs
    "unauthenticated",  # no bearer secret, or a wrong one
    "malformed",  # not an Alertmanager webhook, or too large
    "failed",  # the room could not be posted to (Alertmanager retries)
)
ALERTS_DELIVERED = Counter(
    "synapse_guard_alerts_delivered_total",
    "Alertmanager deliveries to the guard's alerts endpoint, by outcome",
    ["outcome"],
)
for _outcome in ALERT_OUTCOMES:
    ALERTS_DELIVERED.labels(outcome=_outcome)

# The metadata purge (metadata_purge.py); `table` is a table name of Synapse's, never a row.
METADATA_PURGED_ROWS = Counter(
    "synapse_guard_metadata_purged_rows_total",
    "Rows of Synapse's activity metadata deleted by the guard's purge, by table",
    ["table"],
)
METADATA_PURGE_FAILURES = Counter(
    "synapse_guard_metadata_purge_failures_total",
    "Purge runs that failed (retried at the next run), by table",
    ["table"],
)
METADATA_PURGED_ROWS.labels(table="user_daily_visits")
METADATA_PURGE_FAILURES.labels(table="user_daily_visits")


def record(check: Check, verdict: Verdict) -> None:
    DECISIONS.labels(check=check.value, outcome=verdict.outcome, reason=verdict.reason.value).inc()
