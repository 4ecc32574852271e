"""Alerts that reach a person, on the live stack: Alertmanager (deploy/alertmanager/) delivers
an alert group to the guard's endpoint on Synapse's monitoring listener, and an admin reads
the notice in the admins' room; Prometheus knows its Alertmanager; a delivery without the
secret or from another address is refused, and nginx does not publish the endpoint."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from tests.stack.conftest import MATRIX, SERVER_NAME, Stack
from tests.stack.test_operations import prometheus

ENDPOINT = "http://172.31.242.10:8009/_synapse/client/synapse_guard/alerts"
WEBHOOK = {
    "version": "4",
    "status": "firing",
    "receiver": "admins-room",
    "groupKey": '{}:{alertname="Forged"}',
    "alerts": [{"status": "firing", "labels": {"alertname": "Forged", "severity": "critical"}}],
}


@pytest.fixture(scope="module")
def admins_room(stack: Stack, https: requests.Session, admin_token: str) -> str:
    """deploy/README.md's set-up: the `alerts` account, the admins' room `#admins` it is in."""
    made = stack.bin("create-user", "--generate-password", "alerts")
    assert made.returncode == 0, made.stderr
    room = https.post(
        f"{MATRIX}/_matrix/client/v3/createRoom",
        headers={"Authorization": f"Bearer {admin_token}"},
        json={"room_alias_name": "admins", "invite": [f"@alerts:{SERVER_NAME}"]},
        timeout=30,
    )
    assert room.status_code == 200, room.text
    room_id: str = room.json()["room_id"]
    return room_id


def notices(https: requests.Session, token: str, room_id: str) -> list[dict[str, Any]]:
    history = https.get(
        f"{MATRIX}/_matrix/client/v3/rooms/{room_id}/messages",
        headers={"Authorization": f"Bearer {token}"},
        params={"dir": "b", "limit": "100"},
        timeout=30,
    )
    assert history.status_code == 200, history.text
    return [
        e
        for e in history.json()["chunk"]
        if e["type"] == "m.room.message" and e["content"].get("msgtype") == "m.notice"
    ]


def test_an_alert_reaches_the_admins_room(
    stack: Stack, https: requests.Session, admin_token: str, admins_room: str
) -> None:
    fired = stack.exec(
        "alertmanager", "amtool", "--alertmanager.url=http://127.0.0.1:9093",
        "alert", "add", "StackTestAlert", "severity=warning", "user=@alice:stack.test",
    )  # fmt: skip
    assert fired.returncode == 0, fired.stderr
    # group_wait is 30 s (deploy/alertmanager/alertmanager.yml), then the delivery.
    deadline = time.monotonic() + 120
    while not (
        found := [
            n
            for n in notices(https, admin_token, admins_room)
            if "StackTestAlert" in n["content"]["body"]
        ]
    ):
        assert time.monotonic() < deadline, "no notice in the admins' room"
        time.sleep(3)
    notice = found[0]
    assert notice["sender"] == f"@alerts:{SERVER_NAME}"
    assert "warning" in notice["content"]["body"]
    # Labels other than the name and the severity never reach the room.
    assert "@alice" not in json.dumps(notice["content"])


def test_prometheus_sends_its_alerts_to_alertmanager(stack: Stack) -> None:
    active = prometheus(stack, "/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"] for a in active] == ["http://alertmanager:9093/api/v2/alerts"], active


def deliver(stack: Stack, service: str, token: str | None) -> str:
    """POST a webhook from another container of the monitoring network; the HTTP status."""
    header = [f"--header=Authorization: Bearer {token}"] if token else []
    done = stack.exec(
        service, "wget", "-S", "-O", "/dev/null", "--header=Content-Type: application/json",
        *header, f"--post-data={json.dumps(WEBHOOK)}", ENDPOINT,
    )  # fmt: skip
    statuses = [line.split()[1] for line in done.stderr.splitlines() if "HTTP/" in line]
    assert statuses, done.stderr
    return statuses[-1]


def test_a_forged_delivery_is_refused(stack: Stack, admins_room: str) -> None:
    # Prometheus is on the monitoring network but is not Alertmanager; without the secret,
    # with a wrong one, or even with the right one from that address.
    secret = (stack.data / "secrets" / "alerts_secret").read_text().strip()
    assert deliver(stack, "prometheus", None) in ("401", "403")
    assert deliver(stack, "prometheus", "0" * 64) == "403"
    assert deliver(stack, "prometheus", secret) == "403"


def test_nginx_does_not_publish_the_endpoint(https: requests.Session) -> None:
    response = https.post(
        f"{MATRIX}/_synapse/client/synapse_guard/alerts", json=WEBHOOK, timeout=30
    )
    assert response.status_code == 404
