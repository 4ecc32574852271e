"""Alerts into the server, on a real Synapse: Alertmanager's webhook becomes a notice in the
admins' room, which an admin reads like any message.

The attacks: a delivery without the secret, with a wrong one, with an admin's access token, or
from outside `alerts.allow_cidrs` (an X-Forwarded-For naming another loopback address: what
Synapse believes on an x_forwarded listener), a malformed body, and labels that carry user IDs,
room IDs and addresses. Then end to end: a real Prometheus evaluates a rule that always fires,
a real Alertmanager (Debian's prometheus-alertmanager) delivers it with its credentials_file,
and the admin reads the notice.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.integration.conftest import SynapseFactory, require
from tests.integration.harness import (
    SERVER_NAME,
    MatrixClient,
    SynapseServer,
    free_port,
    stop_gracefully,
    tracebacks,
)

ALERTS = "/_synapse/client/synapse_guard/alerts"
BOT = "alertbot"
HOSTILE = ["@victim:guard.test", "!secretroom:guard.test", "10.8.0.7", "fe80::1", "db.internal"]


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alerts") / "alerts_secret"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o400)
    return path


@pytest.fixture(scope="module")
def server(synapse_factory: SynapseFactory, secret: Path) -> SynapseServer:
    guard = {
        "alerts": {
            "enabled": True,
            "secret_path": str(secret),
            # This server's: the alias and the account without the server name.
            "room": "#admins-alerts",
            "sender": BOT,
            "allow_cidrs": ["127.0.0.1/32"],
            "notices_per_minute": 30,
        }
    }
    return synapse_factory(guard=guard).start()


@pytest.fixture(scope="module")
def room(server: SynapseServer) -> tuple[MatrixClient, str]:
    """The admins' room (encrypted, as the guard makes every room), with the bot invited."""
    _admin_id, admin = server.new_user("admin", admin=True)
    bot_id = server.register_user(BOT)
    room_id = admin.room_id(name="Admins", room_alias_name="admins-alerts", invite=[bot_id])
    assert ("m.room.encryption", "") in admin.state(room_id)
    return admin, room_id


def deliver(server: SynapseServer, body: Any, token: str | None, **headers: str) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = requests.post(server.url + ALERTS, data=data, headers=headers, timeout=30)
    return response.status_code, response.json()


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "admins-room",
        "groupLabels": {"alertname": "GuardTest"},
        "commonLabels": {"instance": "10.8.0.7:9000"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.internal:9093",
        "alerts": list(alerts),
    }


def alert(name: str, severity: str = "warning", status: str = "firing") -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": name, "severity": severity}}


def notices(admin: MatrixClient, room_id: str) -> list[str]:
    return [
        event["content"]["body"]
        for event in admin.messages(room_id)
        if event["type"] == "m.room.message"
        and event["sender"] == f"@{BOT}:{SERVER_NAME}"
        and event["content"].get("msgtype") == "m.notice"
    ]


def wait_for_notice(admin: MatrixClient, room_id: str, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [body for body in notices(admin, room_id) if text in body]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no notice with {text!r} within {timeout}s: {notices(admin, room_id)}")


def outcome(server: SynapseServer, name: str) -> float:
    return server.metric("synapse_guard_alerts_delivered_total", outcome=name)


def test_a_delivery_without_the_secret_is_refused(
    server: SynapseServer, secret: Path, room: tuple[MatrixClient, str]
) -> None:
    admin, room_id = room
    before = outcome(server, "unauthenticated")
    body = webhook(alert("ForgedAlert"))
    assert deliver(server, body, None)[0] == 401
    status, reply = deliver(server, body, "0" * 64)
    assert (status, reply["errcode"]) == (403, "M_FORBIDDEN")
    # An admin's own access token is not the secret either.
    assert admin.token is not None
    assert deliver(server, body, admin.token)[0] == 403
    # The secret with something appended, or in another scheme.
    good = secret.read_text().strip()
    assert deliver(server, body, good + "x")[0] == 403
    assert deliver(server, body, None, Authorization=f"Basic {good}")[0] == 403
    assert outcome(server, "unauthenticated") == before + 5
    assert not [b for b in notices(admin, room_id) if "ForgedAlert" in b]


def test_a_delivery_from_outside_the_monitoring_network_is_refused(
    server: SynapseServer, secret: Path, room: tuple[MatrixClient, str]
) -> None:
    admin, room_id = room
    before = outcome(server, "address_refused")
    # The listener takes the address from X-Forwarded-For (as nginx sets it): the secret
    # alone does not open the endpoint to a client outside alerts.allow_cidrs.
    status, reply = deliver(
        server, webhook(alert("FromOutside")), secret.read_text().strip(),
        **{"X-Forwarded-For": "127.0.0.9"},
    )  # fmt: skip
    assert (status, reply["errcode"]) == (403, "M_FORBIDDEN")
    assert outcome(server, "address_refused") == before + 1
    assert not [b for b in notices(admin, room_id) if "FromOutside" in b]


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"version": "4", "alerts": "x"}', b'{"version": "4", "alerts": [' * 40],
)
def test_a_malformed_delivery_is_a_400_without_a_traceback(
    server: SynapseServer, secret: Path, body: bytes
) -> None:
    status, reply = deliver(server, body, secret.read_text().strip())
    assert status == 400, reply
    assert reply["errcode"] in ("M_NOT_JSON", "M_BAD_JSON")
    assert tracebacks(server.log_file.read_text()) == []


def test_a_webhook_becomes_a_notice_without_any_identifier(
    server: SynapseServer, secret: Path, room: tuple[MatrixClient, str]
) -> None:
    admin, room_id = room
    before = outcome(server, "posted")
    hostile = alert("GuardNoticeTest", "critical")
    for index, value in enumerate(HOSTILE):
        hostile["labels"][f"label{index}"] = value
    hostile["annotations"] = {"summary": " ".join(HOSTILE), "description": HOSTILE[0]}
    named_by_identifier = alert(HOSTILE[0], HOSTILE[2])
    resolved = alert("GuardNoticeTest", "critical", "resolved")
    status, reply = deliver(
        server, webhook(hostile, hostile, named_by_identifier, resolved), secret.read_text().strip()
    )
    assert (status, reply) == (200, {"posted": True})
    text = wait_for_notice(admin, room_id, "GuardNoticeTest", 10)
    assert text == (
        "Alertmanager: firing: 3, resolved: 1\n"
        "FIRING GuardNoticeTest (severity critical): 2 alerts\n"
        "FIRING unnamed_alert (severity unknown): 1 alert\n"
        "RESOLVED GuardNoticeTest (severity critical): 1 alert"
    )
    for value in HOSTILE:
        assert value not in json.dumps(admin.messages(room_id))
    assert outcome(server, "posted") == before + 1
    # The room stays encrypted, and the exception is the guard's own notice only: the bot
    # itself cannot send the same text in clear.
    bot = server.login(BOT)
    status, _ = bot.send(room_id, {"msgtype": "m.notice", "body": text})
    assert status == 403


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    found = {name: shutil.which(name) for name in ("prometheus", "prometheus-alertmanager")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        require(f"{' and '.join(missing)} not installed (scripts/install-system-deps)")
    return {name: str(path) for name, path in found.items()}


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def monitoring(
    tools: dict[str, str], server: SynapseServer, secret: Path, tmp_path: Path
) -> Iterator[None]:
    """Prometheus with a rule that always fires, and Alertmanager delivering to the guard."""
    am_port, prom_port = free_port(), free_port()
    am_config = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "deploy/alertmanager/alertmanager.yml").read_text()
    )
    # The deployment's file, pointed at this Synapse and with intervals short enough for a test.
    am_config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    (receiver,) = am_config["receivers"]
    (hook,) = receiver["webhook_configs"]
    hook["url"] = server.url + ALERTS
    hook["http_config"]["authorization"]["credentials_file"] = str(secret)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "test",
                        "rules": [
                            {
                                "alert": "GuardEndToEnd",
                                "expr": "vector(1)",
                                "labels": {"severity": "warning", "user": HOSTILE[0]},
                                "annotations": {"summary": f"about {HOSTILE[1]}"},
                            }
                        ],
                    }
                ]
            }
        )
    )
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"evaluation_interval": "1s"},
                "rule_files": [str(tmp_path / "rules.yml")],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
            }
        )
    )
    am_log, prom_log = tmp_path / "alertmanager.log", tmp_path / "prometheus.log"
    alertmanager = subprocess.Popen(
        [
            tools["prometheus-alertmanager"],
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",  # no gossip port
        ],
        stdout=am_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    prometheus = subprocess.Popen(
        [
            tools["prometheus"],
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--rules.alert.resend-delay=1s",
        ],
        stdout=prom_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{am_port}/-/ready", alertmanager, am_log)
        wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", prometheus, prom_log)
        yield
    finally:
        stop_gracefully(prometheus, signal.SIGTERM)
        stop_gracefully(alertmanager, signal.SIGTERM)


def test_a_firing_rule_reaches_the_admins_room_through_alertmanager(
    monitoring: None, server: SynapseServer, room: tuple[MatrixClient, str]
) -> None:
    admin, room_id = room
    text = wait_for_notice(admin, room_id, "GuardEndToEnd", 30)
    assert "FIRING GuardEndToEnd (severity warning): 1 alert" in text
    for value in HOSTILE:
        assert value not in json.dumps(admin.messages(room_id))
