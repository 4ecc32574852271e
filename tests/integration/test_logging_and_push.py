"""What a real Synapse writes to its logs and sends to a push gateway about its users.

Logs: Synapse runs with the production log config (deploy/synapse/log.yaml, paths moved to a
temporary directory) and the guard's audit trail on. After provisioning, logins accepted and
refused by the network policy (X-Forwarded-For, as behind nginx), a wrong password, an unknown
user, a room with messages and a refused state change, no log file holds an address, a user ID,
a localpart, the room's name or a message; the audit trail holds the expected records, with
pseudonyms that correlate the same user (and the same address) across records.

Push: a push gateway on 127.0.0.1 receives, with `push.include_content: false`, no message
(not even its ciphertext), but still the sender's user ID, display name and the room's name,
and that the event is `m.room.encrypted`; a pusher with
`format: event_id_only` receives only the event ID, room ID, unread count and priority.
"""

from __future__ import annotations

import base64
import json
import logging
import logging.handlers
import queue
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from synapse_guard.record.audit import Pseudonymizer, load_key
from synapse_guard.record.logfilter import IP, USER
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, REPO, MatrixClient, SynapseServer

PRODUCTION_LOG_CONFIG = REPO / "deploy" / "synapse" / "log.yaml"
LOG_DIR = "/var/log/synapse/"
VPN = ("10.8.0.5", "10.8.0.7")  # accepted (allow_cidrs)
ABROAD = "192.0.2.1"  # refused: outside the VPN
ABROAD_V6 = "2001:db8:bad::1"  # refused: outside the VPN
DIRECT = "127.0.0.1"  # a client reaching Synapse without the proxy: refused
SECRET = "Nightingale-launch-code-7731"
# Every room is encrypted: clients send megolm. The secret stands in for the ciphertext
# (base64, as the guard requires); neither may reach a log or a push gateway.
CIPHERTEXT = base64.b64encode(SECRET.encode()).decode().rstrip("=")
ROOM_NAME = "Operation Kestrel"
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - (?P<logger>\S+) - \d+ - (?P<level>\w+) - "
)


class ForwardedClient(MatrixClient):
    """A client behind the proxy: every request carries X-Forwarded-For, as nginx sets it."""

    def __init__(self, base_url: str, address: str) -> None:
        super().__init__(base_url)
        self.address = address

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, Any]:
        forwarded = {"X-Forwarded-For": self.address, **(headers or {})}
        return super().request(method, path, body, headers=forwarded, params=params, auth=auth)


def production_log_config(directory: Path) -> tuple[Path, Path]:
    """deploy/synapse/log.yaml with its files moved under `directory`/logs."""
    text = PRODUCTION_LOG_CONFIG.read_text()
    assert f"filename: {LOG_DIR}homeserver.log" in text
    assert f"filename: {LOG_DIR}audit.log" in text
    logs = directory / "logs"
    logs.mkdir(parents=True)
    config = directory / "production-log.yaml"
    config.write_text(text.replace(LOG_DIR, f"{logs}/"))
    return config, logs


@dataclass
class Scenario:
    logs: Path
    console: Path  # Synapse's stdout and stderr (before its logging is set up, and after)
    key: bytes
    alice: str  # user IDs
    bob: str
    ghost: str  # a user who does not exist
    localparts: tuple[str, ...]

    def text(self, name: str) -> str:
        return (self.logs / name).read_text()

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text("audit.log").splitlines()]


@pytest.fixture(scope="module")
def scenario(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    directory = tmp_path_factory.mktemp("logging")
    log_config, logs = production_log_config(directory)
    # 32 random bytes as hex: `load_key` strips surrounding whitespace, so raw random bytes
    # ending in a whitespace byte would be cut short (and refused).
    (directory / "audit.key").write_text(secrets.token_hex(32))
    key = load_key(str(directory / "audit.key"))  # the key exactly as the guard reads it
    server = synapse_factory(
        guard={
            "network": {"allow_cidrs": ["10.8.0.0/24"]},
            "audit": {"enabled": True, "pseudonym_key_path": str(directory / "audit.key")},
        },
        extra={"log_config": str(log_config)},
    ).start()
    try:
        ghost = f"ghost-{uuid.uuid4().hex[:8]}"
        alice_lp, bob_lp = server.new_account("alice"), server.new_account("bob")
        alice, bob = server.user_id(alice_lp), server.user_id(bob_lp)

        def login(localpart: str, address: str | None, password: str = PASSWORD) -> int:
            client = server.client()
            headers = {"X-Forwarded-For": address} if address else {}
            return client.login(localpart, password, headers=headers)[0]

        # Refused by the network policy (audited), then wrong password and unknown user
        # (Synapse's own WARNING lines), then accepted.
        assert login(alice_lp, ABROAD) == 403
        assert login(bob_lp, ABROAD) == 403
        assert login(bob_lp, ABROAD_V6) == 403
        assert login(bob_lp, None) == 403  # judged by the peer address, 127.0.0.1
        assert login(alice_lp, VPN[0], password="Wrong-Horse-9-Battery") == 403
        assert login(ghost, VPN[0]) == 403
        alice_client, bob_client = (
            ForwardedClient(server.url, VPN[0]),
            ForwardedClient(server.url, VPN[1]),
        )
        assert alice_client.login(alice_lp, PASSWORD)[0] == 200
        assert bob_client.login(bob_lp, PASSWORD)[0] == 200

        room = alice_client.room_id(name=ROOM_NAME, invite=[bob])
        assert bob_client.join(room)[0] == 200
        assert alice_client.send_megolm(room, CIPHERTEXT)[0] == 200
        assert bob_client.send_megolm(room, CIPHERTEXT)[0] == 200
        status, _ = alice_client.put_state(room, "m.room.join_rules", {"join_rule": "public"})
        assert status == 403
    finally:
        server.stop()  # the log files are complete (flushed and closed) once Synapse exits
    return Scenario(
        logs,
        server.console_file,
        key,
        alice,
        bob,
        server.user_id(ghost),
        (alice_lp, bob_lp, ghost),
    )


def test_the_production_log_config_writes_only_the_two_files(scenario: Scenario) -> None:
    assert sorted(p.name for p in scenario.logs.iterdir()) == ["audit.log", "homeserver.log"]


def test_no_log_file_outlives_seven_days(tmp_path: Path) -> None:
    """Each file handler rotates daily and keeps 6 old files: 10 rollovers leave 7 files."""
    handlers = yaml.safe_load(PRODUCTION_LOG_CONFIG.read_text())["handlers"]
    files = {n: h for n, h in handlers.items() if h["class"].endswith("FileHandler")}
    assert set(files) == {"homeserver", "audit"}
    for name, config in files.items():
        assert config["class"] == "logging.handlers.TimedRotatingFileHandler"
        assert (config["when"], config["backupCount"]) == ("midnight", 6)
        handler = logging.handlers.TimedRotatingFileHandler(
            tmp_path / f"{name}.log",
            when=config["when"],
            backupCount=config["backupCount"],
            utc=config["utc"],
            encoding=config["encoding"],
        )
        first = handler.rolloverAt
        for day in range(10):
            handler.emit(logging.makeLogRecord({"msg": f"day {day}"}))
            handler.rolloverAt = first + day * 24 * 3600  # as if this day's midnight came
            handler.doRollover()
        handler.close()
        assert len(list(tmp_path.glob(f"{name}.log*"))) == 7


def test_no_log_file_holds_an_address_a_user_or_a_message(scenario: Scenario) -> None:
    forbidden = [
        *VPN, ABROAD, ABROAD_V6, DIRECT,
        scenario.alice, scenario.bob, scenario.ghost, *scenario.localparts,
        SECRET, CIPHERTEXT, ROOM_NAME,
    ]  # fmt: skip
    for path in [*scenario.logs.iterdir(), scenario.console]:
        text = path.read_text()
        leaks = [value for value in forbidden if value.lower() in text.lower()]
        assert not leaks, f"{path.name} holds {leaks}"


def test_homeserver_log_has_warnings_and_the_guards_refusals_only(scenario: Scenario) -> None:
    lines = [m for m in map(LINE.match, scenario.text("homeserver.log").splitlines()) if m]
    assert lines
    for line in lines:
        assert not line["logger"].startswith("synapse.access"), line.string
        if line["level"] in ("DEBUG", "INFO"):
            assert line["logger"] == "synapse_guard", line.string
    refusals = {m.string.split(" - ")[-1] for m in lines if m["logger"] == "synapse_guard"}
    assert "refused: check=login reason=ip_not_allowed" in refusals
    assert "refused: check=event reason=join_rule" in refusals


def test_synapse_warnings_that_name_users_are_redacted(scenario: Scenario) -> None:
    """Synapse logs these at WARNING with the full user ID; the filter replaces it."""
    text = scenario.text("homeserver.log")
    assert f"Failed password login for user {USER}" in text
    assert f"Attempted to login as {USER} but they do not exist" in text


def test_audit_records_are_pseudonymous_and_correlatable(scenario: Scenario) -> None:
    pseudonyms = Pseudonymizer(scenario.key)
    alice, bob = pseudonyms.user(scenario.alice), pseudonyms.user(scenario.bob)
    records = scenario.audit()
    for record in records:
        assert set(record) <= {"ts", "check", "outcome", "reason", "user", "address", "event"}
        assert record["user"] is None or re.fullmatch(r"u:[0-9a-f]{16}", record["user"])
        assert record["address"] is None or re.fullmatch(r"a:[0-9a-f]{16}", record["address"])
    assert IP not in scenario.text("audit.log")
    assert USER not in scenario.text("audit.log")

    def without_ts(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k != "ts"}

    def login_refusal(user: str, address: str) -> dict[str, Any]:
        return {
            "check": "login",
            "outcome": "deny",
            "reason": "ip_not_allowed",
            "user": user,
            "address": pseudonyms.address(address),
        }

    def provisioned(user: str) -> dict[str, Any]:
        return {
            "check": "registration",
            "outcome": "allow",
            "reason": "admin_provisioning",
            "user": user,
            "address": None,
            "event": "account_provisioned",
        }

    # In order; accepted logins, the wrong password and the unknown user are not audited (the
    # guard's login check runs only after Synapse accepted the password).
    assert [without_ts(r) for r in records] == [
        provisioned(alice),
        provisioned(bob),
        login_refusal(alice, ABROAD),
        login_refusal(bob, ABROAD),
        login_refusal(bob, ABROAD_V6),
        login_refusal(bob, DIRECT),
        {
            "check": "event",
            "outcome": "deny",
            "reason": "join_rule",
            "user": alice,
            "address": None,
        },
    ]
    # Correlation: one pseudonym per user and per address, whatever the record.
    assert alice != bob
    assert [r["user"] for r in records].count(alice) == 3  # provisioned, login, event
    assert len({r["address"] for r in records[2:6]}) == 3  # two logins from ABROAD


# --------------------------------------------------------------------------------------------
# Push


class PushGateway:
    """`POST /_matrix/push/v1/notify` on 127.0.0.1: records each notification, rejects none."""

    def __init__(self) -> None:
        self.notifications: queue.Queue[dict[str, Any]] = queue.Queue()
        self.raw: list[bytes] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                gateway.raw.append(body)
                ok = self.path == "/_matrix/push/v1/notify"
                if ok:
                    gateway.notifications.put(json.loads(body)["notification"])
                reply = json.dumps({"rejected": []} if ok else {}).encode()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/_matrix/push/v1/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, event_id: str, pushkeys: set[str], timeout: float = 30.0) -> dict[str, Any]:
        """The notification of `event_id` to each pushkey (badge-only updates are skipped)."""
        found: dict[str, Any] = {}
        while set(found) != pushkeys:
            try:
                notification = self.notifications.get(timeout=timeout)
            except queue.Empty:
                missing = pushkeys - set(found)
                raise AssertionError(f"no notification of {event_id} to {missing}") from None
            if notification.get("event_id") == event_id:
                found[notification["devices"][0]["pushkey"]] = notification
        return found


@pytest.fixture(scope="module")
def gateway() -> Iterator[PushGateway]:
    sink = PushGateway()
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def push_server(synapse_factory: SynapseFactory, gateway: PushGateway) -> SynapseServer:
    return synapse_factory(
        # The guard pushes only to the gateways the operator allows (none by default).
        guard={"push": {"allowed_gateways": [gateway.url]}},
        extra={
            # Synapse refuses pushers on private and loopback addresses; the test gateway is
            # on 127.0.0.1.
            "ip_range_whitelist": ["127.0.0.1"],
            # Synapse merges config files shallowly: this `push:` replaces homeserver.d's, so
            # it repeats include_content: false, with a shorter jitter than its 10s.
            "push": {"include_content": False, "jitter_delay": "1s"},
        },
    ).start()


def set_pusher(client: MatrixClient, gateway: PushGateway, pushkey: str, **data: str) -> None:
    status, body = client.set_pusher(gateway.url, pushkey, **data)
    assert status == 200, body


FULL_KEYS = {
    "id", "event_id", "room_id", "type", "sender", "prio", "counts", "devices",
    "sender_display_name", "room_name",
}  # fmt: skip


def test_push_notifications_carry_no_message(
    push_server: SynapseServer, gateway: PushGateway
) -> None:
    recipient, phone = push_server.new_user("recipient")
    tablet = push_server.login(recipient.split(":")[0][1:])
    sender, sender_client = push_server.new_user("sender")
    display_name = "Sender Display Name"
    status, _ = sender_client.request(
        "PUT", f"/_matrix/client/v3/profile/{sender}/displayname", {"displayname": display_name}
    )
    assert status == 200
    set_pusher(phone, gateway, "full-pushkey")
    set_pusher(tablet, gateway, "id-only-pushkey", format="event_id_only")
    room = sender_client.room_id(name=ROOM_NAME, invite=[recipient])
    assert phone.join(room)[0] == 200

    status, body = sender_client.send_megolm(room, CIPHERTEXT)
    assert status == 200, body
    event_id = body["event_id"]
    pushed = gateway.wait_for(event_id, {"full-pushkey", "id-only-pushkey"})

    assert all(CIPHERTEXT.encode() not in raw for raw in gateway.raw)

    # include_content: false drops only the body: who sent what, where, is still pushed.
    full = pushed["full-pushkey"]
    assert set(full) == FULL_KEYS, full
    assert "content" not in full
    assert full["sender"] == sender
    assert full["sender_display_name"] == display_name
    assert full["room_name"] == ROOM_NAME
    assert full["type"] == "m.room.encrypted"
    assert full["event_id"] == full["id"] == event_id
    assert full["room_id"] == room

    # format: event_id_only: nothing but where to fetch the event, an unread count and a
    # priority; the app fetches the event from this server.
    only = pushed["id-only-pushkey"]
    assert set(only) == {"event_id", "room_id", "counts", "prio", "devices"}, only
    assert only["event_id"] == event_id
    assert only["room_id"] == room
    assert set(only["counts"]) == {"unread"}
    assert only["prio"] in ("high", "low")
    (device,) = only["devices"]
    assert device["pushkey"] == "id-only-pushkey"
    assert device["data"] == {"format": "event_id_only"}  # the gateway URL is not sent
    assert "tweaks" not in device
    text = json.dumps(only)
    for metadata in (sender, display_name, ROOM_NAME):
        assert metadata not in text


def test_synapse_logs_addresses_and_users_without_the_production_config(
    push_server: SynapseServer,
) -> None:
    """The control: at INFO (the harness's config) the request lines name user and address."""
    user_id, client = push_server.new_user("control")
    assert client.request("GET", "/_matrix/client/v3/account/whoami")[0] == 200
    deadline = time.monotonic() + 10  # the request line is written as the response ends
    while user_id not in (text := push_server.log_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "synapse.access" in text
    assert DIRECT in text
    assert user_id in text
