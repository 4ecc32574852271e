"""The alerts endpoint's pure parts: what a webhook may put into the admins' room, and who may
post one. A hostile sender (a compromised exporter, a crafted rule, a forged delivery) must
not get an identifier into the room, a traceback into the log, or past the secret."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard.alerts.control import load_secret
from synapse_guard.alerts.webhook import (
    MAX_BODY_BYTES,
    MAX_LINES,
    NoticeBudget,
    address_allowed,
    bearer_matches,
    parse_webhook,
    render_notice,
)
from synapse_guard.config import AlertsConfig, GuardConfigError, parse_guard_config
from synapse_guard.request_body import RequestError

HOSTILE = [
    "@alice:example.org",
    "!secretroom:example.org",
    "#admins:example.org",
    "10.8.0.7",
    "fe80::1",
    "203.0.113.9:9000",
    "synapse.internal",
]
# What would give an identifier away: a sigil, an address, a host name.
LEAK = re.compile(r"[@!#]|\d+\.\d+\.\d+|::|\.internal")


def webhook(*alerts: dict[str, Any], **extra: Any) -> bytes:
    body = {
        "version": "4",
        "status": "firing",
        "receiver": "admins-room",
        "groupKey": '{}:{alertname="SynapseDown"}',
        "groupLabels": {"alertname": "SynapseDown"},
        "commonLabels": {"instance": "10.8.0.7:9000"},
        "externalURL": "http://alertmanager.internal:9093",
        "alerts": list(alerts),
        **extra,
    }
    return json.dumps(body).encode()


def alert(
    name: Any = "SynapseDown", severity: Any = "critical", status: str = "firing"
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": severity, "instance": "10.8.0.7:9000"},
        "annotations": {"summary": "user @alice:example.org in !secretroom:example.org"},
        "generatorURL": "http://prometheus.internal:9090/graph?g0.expr=up",
        "fingerprint": "0123456789abcdef",
    }


def test_a_notice_carries_names_severities_statuses_and_counts() -> None:
    delivery = parse_webhook(
        webhook(
            alert("SynapseDown"),
            alert("GuardAdminLogin", "warning"),
            alert("GuardAdminLogin", "warning"),
            alert("LockdownActive", "critical", "resolved"),
        )
    )
    assert render_notice(delivery) == (
        "Alertmanager: firing: 3, resolved: 1\n"
        "FIRING GuardAdminLogin (severity warning): 2 alerts\n"
        "FIRING SynapseDown (severity critical): 1 alert\n"
        "RESOLVED LockdownActive (severity critical): 1 alert"
    )


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_labels_and_annotations_never_reach_the_text(value: str) -> None:
    hostile = alert(value, value)
    hostile["labels"].update({"user": value, "room": value, "instance": value})
    hostile["annotations"] = {"summary": value, "description": value}
    text = render_notice(parse_webhook(webhook(hostile, commonLabels={"x": value})))
    assert value not in text
    assert not LEAK.search(text), text
    assert "unnamed_alert (severity unknown)" in text


@given(name=st.text(max_size=80), severity=st.text(max_size=20))
def test_no_name_or_severity_can_carry_a_sigil_or_an_address(name: str, severity: str) -> None:
    text = render_notice(parse_webhook(webhook(alert(name, severity))))
    assert not LEAK.search(text), text


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": "3", "alerts": [{"status": "firing"}]}',
        json.dumps({"version": "4", "alerts": []}).encode(),
        json.dumps({"version": "4", "alerts": "firing"}).encode(),
        json.dumps({"version": "4", "alerts": [{"status": "pending"}]}).encode(),
        json.dumps({"version": "4", "alerts": [7]}).encode(),
        b'{"version": "4", "version": "4", "alerts": [{"status": "firing"}]}',
        b'{"version": "4", "alerts": [{"status": "firing", "labels": '
        + b"[" * 50
        + b"]" * 50
        + b"}]}",
        b"\xff\xfe",
    ],
)
def test_a_malformed_delivery_is_a_400(body: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_webhook(body)
    assert caught.value.status == 400


def test_an_oversized_delivery_is_a_413() -> None:
    with pytest.raises(RequestError) as caught:
        parse_webhook(webhook(alert(), padding="x" * MAX_BODY_BYTES))
    assert caught.value.status == 413


def test_labels_of_another_shape_are_an_unnamed_alert() -> None:
    raw = {"status": "firing", "labels": ["alertname", "SynapseDown"]}
    (parsed,) = parse_webhook(webhook(raw)).alerts
    assert (parsed.name, parsed.severity) == ("unnamed_alert", "unknown")


def test_a_large_group_is_summarised() -> None:
    alerts = [alert(f"Alert{i}") for i in range(MAX_LINES + 5)]
    lines = render_notice(parse_webhook(webhook(*alerts))).splitlines()
    assert len(lines) == MAX_LINES + 2
    assert lines[-1] == "... and 5 more"


def test_the_rate_limit_counts_what_it_kept_out_into_the_next_notice() -> None:
    budget = NoticeBudget(per_minute=2)
    assert budget.take(0.0)
    assert budget.take(1.0)
    assert not budget.take(2.0)
    assert not budget.take(59.0)
    assert budget.suppressed == 2
    assert budget.take(60.5)  # the first one left the window
    text = render_notice(parse_webhook(webhook(alert())), budget.suppressed)
    assert text.endswith(
        "(2 earlier deliveries were not posted: more than the notice rate limit; see "
        "Alertmanager or Prometheus)"
    )


def test_a_notice_that_failed_gives_its_place_back() -> None:
    budget = NoticeBudget(per_minute=1)
    assert budget.take(5.0)
    budget.give_back(5.0)
    assert budget.take(6.0)


SECRET = b"s" * 40


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"Bearer " + SECRET, True),
        (b"Bearer " + SECRET + b" ", True),
        (b"Bearer " + SECRET[:-1], False),
        (b"Bearer " + SECRET + b"x", False),
        (b"bearer " + SECRET, False),
        (b"Basic " + SECRET, False),
        (SECRET, False),
        (b"Bearer ", False),
        (None, False),
    ],
)
def test_only_the_exact_bearer_secret_is_accepted(header: bytes | None, expected: bool) -> None:
    assert bearer_matches(header, SECRET) is expected


MONITORING = (ipaddress.ip_network("172.31.242.0/24"),)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("172.31.242.20", True),
        ("::ffff:172.31.242.20", True),
        ("172.31.240.2", False),  # nginx's network
        ("127.0.0.1", False),
        ("::1", False),
        ("/run/synapse.sock", False),
        ("", False),
    ],
)
def test_only_the_monitoring_network_may_deliver(address: str, expected: bool) -> None:
    assert address_allowed(address, MONITORING) is expected


# -- config -------------------------------------------------------------------------------

ENABLED = {
    "enabled": True,
    "secret_path": "/run/secrets/alerts_secret",
    "room": "#admins:example.org",
    "sender": "@alerts:example.org",
    "allow_cidrs": ["172.31.242.0/24"],
}


def test_a_localpart_and_a_local_alias_name_this_server() -> None:
    raw = {**ENABLED, "sender": "alerts", "room": "#admins"}
    config = parse_guard_config({"alerts": raw}).alerts
    assert (config.sender, config.room) == ("alerts", "#admins")


def test_alerts_are_off_by_default() -> None:
    assert parse_guard_config({}).alerts == AlertsConfig()


def test_an_enabled_alerts_section_is_read() -> None:
    config = parse_guard_config({"alerts": {**ENABLED, "notices_per_minute": 3}}).alerts
    assert config == AlertsConfig(
        enabled=True,
        secret_path="/run/secrets/alerts_secret",
        room="#admins:example.org",
        sender="@alerts:example.org",
        allow_cidrs=MONITORING,
        notices_per_minute=3,
    )


@pytest.mark.parametrize("key", ["secret_path", "room", "sender", "allow_cidrs"])
def test_enabled_alerts_need_each_of_their_keys(key: str) -> None:
    raw = {k: v for k, v in ENABLED.items() if k != key}
    with pytest.raises(
        GuardConfigError, match=rf"^alerts\.{key}: is required when alerts\.enabled"
    ):
        parse_guard_config({"alerts": raw})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("room", "admins", r"^alerts\.room: 'admins' is not a room ID or alias"),
        ("sender", "@alerts", r"^alerts\.sender: '@alerts' is not a full user ID"),
        ("sender", "Alerts Bot", r"^alerts\.sender: 'Alerts Bot' is not a full user ID"),
        ("room", "#", r"^alerts\.room: '#' is not a room ID or alias"),
        ("allow_cidrs", ["172.31.242.1/24"], r"^alerts\.allow_cidrs\[0\]: .*did you mean"),
        ("notices_per_minute", 0, r"^alerts\.notices_per_minute: must be a whole number"),
        ("secret", "x", r"^alerts\.secret: unknown key"),
    ],
)
def test_a_wrong_alerts_value_names_its_key(key: str, value: object, message: str) -> None:
    with pytest.raises(GuardConfigError, match=message):
        parse_guard_config({"alerts": {**ENABLED, key: value}})


def _secret_file(tmp_path: Path, data: bytes) -> AlertsConfig:
    path = tmp_path / "alerts_secret"
    path.write_bytes(data)
    return AlertsConfig(enabled=True, secret_path=str(path))


def test_the_secret_is_read_as_alertmanager_sends_it(tmp_path: Path) -> None:
    assert load_secret(_secret_file(tmp_path, b"a" * 64 + b"\n")) == b"a" * 64


@pytest.mark.parametrize("data", [b"short\n", b"a" * 20 + b" " + b"a" * 20, b"\xff" * 40])
def test_a_weak_or_unsendable_secret_is_refused_at_start(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(GuardConfigError, match=r"^alerts\.secret_path: "):
        load_secret(_secret_file(tmp_path, data))


def test_a_missing_secret_file_is_refused_at_start(tmp_path: Path) -> None:
    config = AlertsConfig(enabled=True, secret_path=str(tmp_path / "absent"))
    with pytest.raises(GuardConfigError, match=r"^alerts\.secret_path: cannot read"):
        load_secret(config)
