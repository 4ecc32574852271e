"""Alertmanager's webhook (version 4), reduced to what a notice may say.

Alertmanager posts `{"version": "4", "status", "alerts": [{"status", "labels",
"annotations", ...}], "groupLabels", "commonLabels", "externalURL", ...}`. Everything but each
alert's `status` and its `alertname` and `severity` labels is dropped unread: labels and
annotations can hold user IDs, room IDs, addresses or instance names, and none of that may
reach a room. A name or severity that is not a plain word is replaced, so that even a hostile
rule file cannot smuggle an identifier through them.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import attrs

from synapse_guard.request_body import RequestError, parse_object

# Alertmanager sends one group per delivery; a group of a few hundred alerts stays far below.
MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 6  # {"alerts": [{"labels": {...}}]}: three levels, plus room for what AM adds
MAX_ALERTS = 1000
MAX_LINES = 20  # distinct (status, name, severity) lines in one notice, then "and N more"

# No dot, colon, @, ! or #: no address, user ID, room ID or alias fits.
_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
SEVERITIES = frozenset({"critical", "error", "warning", "info", "page", "ticket", "none"})
STATUSES = ("firing", "resolved")
UNNAMED = "unnamed_alert"
UNKNOWN_SEVERITY = "unknown"


@attrs.frozen(slots=True)
class Alert:
    status: str  # firing | resolved
    name: str
    severity: str


@attrs.frozen(slots=True)
class Delivery:
    alerts: tuple[Alert, ...]


def _label(labels: object, key: str) -> object:
    return labels.get(key) if isinstance(labels, dict) else None


def _name(value: object) -> str:
    return value if isinstance(value, str) and _WORD.match(value) else UNNAMED


def _severity(value: object) -> str:
    return value if isinstance(value, str) and value in SEVERITIES else UNKNOWN_SEVERITY


def parse_webhook(body: bytes) -> Delivery:
    """The alerts of one delivery; RequestError (400, or 413 when too large) otherwise."""
    data = parse_object(body, max_bytes=MAX_BODY_BYTES, max_depth=MAX_DEPTH)
    if data.get("version") != "4":
        raise RequestError("not an Alertmanager webhook (version 4)")
    raw_alerts = data.get("alerts")
    if not isinstance(raw_alerts, list) or not raw_alerts:
        raise RequestError("alerts must be a non-empty list")
    if len(raw_alerts) > MAX_ALERTS:
        raise RequestError(f"more than {MAX_ALERTS} alerts in one delivery")
    alerts = []
    for raw in raw_alerts:
        if not isinstance(raw, dict) or raw.get("status") not in STATUSES:
            raise RequestError("every alert needs a status: firing or resolved")
        labels: Any = raw.get("labels")
        alerts.append(
            Alert(
                status=raw["status"],
                name=_name(_label(labels, "alertname")),
                severity=_severity(_label(labels, "severity")),
            )
        )
    return Delivery(alerts=tuple(alerts))


def _plural(count: int) -> str:
    return f"{count} alert" if count == 1 else f"{count} alerts"


def render_notice(delivery: Delivery, suppressed: int = 0) -> str:
    """The notice text: counts per status, then one line per status, name and severity.

    `suppressed`: deliveries the rate limit kept out of the room since the last notice."""
    totals = Counter(alert.status for alert in delivery.alerts)
    head = ", ".join(f"{status}: {totals[status]}" for status in STATUSES if totals[status])
    lines = [f"Alertmanager: {head}"]
    groups = Counter((a.status, a.name, a.severity) for a in delivery.alerts)
    ordered = sorted(groups.items(), key=lambda item: (STATUSES.index(item[0][0]), item[0][1:]))
    for (status, name, severity), count in ordered[:MAX_LINES]:
        lines.append(f"{status.upper()} {name} (severity {severity}): {_plural(count)}")
    if len(ordered) > MAX_LINES:
        lines.append(f"... and {len(ordered) - MAX_LINES} more")
    if suppressed:
        lines.append(
            f"({suppressed} earlier deliveries were not posted: more than the notice rate "
            "limit; see Alertmanager or Prometheus)"
        )
    return "\n".join(lines)


class NoticeBudget:
    """At most `per_minute` notices in any 60 s; the rest are counted for the next notice."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._sent: list[float] = []
        self.suppressed = 0

    def take(self, now: float) -> bool:
        self._sent = [t for t in self._sent if now - t < 60.0]
        if len(self._sent) >= self._per_minute:
            self.suppressed += 1
            return False
        self._sent.append(now)
        return True

    def give_back(self, now: float) -> None:
        """A notice that could not be sent does not use up the budget."""
        if now in self._sent:
            self._sent.remove(now)


def bearer_matches(header: bytes | None, secret: bytes) -> bool:
    """`Authorization: Bearer <secret>`, compared in constant time."""
    if header is None or not header.startswith(b"Bearer "):
        return False
    return hmac.compare_digest(header[len(b"Bearer ") :].strip(), secret)


def address_allowed(
    address: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # a UNIX socket path, or nothing
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)
