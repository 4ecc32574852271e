"""Real servers for the integration tests: Synapse and PostgreSQL, started on 127.0.0.1.

Synapse runs as a separate process from a generated base config, the repository's
`homeserver.d/`, and a per-test override file (free ports, database, test secrets), exactly
as an operator would start it. Clients speak to it over HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
HOMESERVER_D = REPO / "homeserver.d"
SERVER_NAME = "guard.test"
SHARED_SECRET = "integration-shared-secret"
PASSWORD = "Correct-Horse-9-Battery"


class ServerMissing(RuntimeError):
    """A server binary this test needs is not installed."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def guard_config_from_fragments() -> dict[str, Any]:
    modules = yaml.safe_load((HOMESERVER_D / "90-modules.yaml").read_text())["modules"]
    (entry,) = [m for m in modules if m["module"] == "synapse_guard.Guard"]
    return dict(entry["config"])


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_bindir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise ServerMissing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")


class PostgresCluster:
    """A private cluster on a free loopback port; `initdb` refuses root, so run as postgres."""

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        # Not under pytest's tmp dir: that is private to root and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="synapse-guard-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            log = self.root / "pg.log"
            tail = "\n".join(log.read_text().splitlines()[-20:]) if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}{tail}")
        return result

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
            self.root.chmod(0o755)
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "--locale=C", "--encoding=UTF8",
            "-A", "trust", "-U", "postgres",
        )  # fmt: skip
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
            "-w", "-t", "60", "start", "-o", self._options(),
        )  # fmt: skip

    def _options(self, *extra: str) -> str:
        base = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        return " ".join((base, *extra))

    def restart_with(self, *options: str) -> None:
        """Restart with extra server options (e.g. `-c ssl=on`)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
            "-w", "-t", "60", "start", "-o", self._options(*options),
        )  # fmt: skip

    def pause(self) -> None:
        """Stop the server, keeping its data: the database is down until `resume`."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
            "-w", "-t", "60", "start", "-o", self._options(),
        )  # fmt: skip

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, database: str, sql: str) -> str:
        return self._run(
            str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
        ).stdout  # fmt: skip

    def create_database(self) -> dict[str, Any]:
        name = f"synapse_{uuid.uuid4().hex[:10]}"
        self.psql(
            "postgres",
            f"CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' "
            "TEMPLATE=template0",
        )
        return {
            "name": "psycopg2",
            "args": {
                "user": "postgres",
                "database": name,
                "host": "127.0.0.1",
                "port": self.port,
                "cp_min": 1,
                "cp_max": 5,
            },
        }


# --------------------------------------------------------------------------------------------
# Synapse


def generate_base_config(directory: Path) -> Path:
    """`--generate-config`, as an operator starts: the file homeserver.d/ is layered on."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "homeserver.yaml"
    subprocess.run(
        [
            sys.executable, "-m", "synapse.app.homeserver", "--generate-config",
            "--server-name", SERVER_NAME, "--report-stats=no",
            "--config-path", str(config), "--data-directory", str(directory),
        ],
        check=True, capture_output=True, text=True, timeout=120, cwd=directory,
    )  # fmt: skip
    return config


LOG_CONFIG = """
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
filters:
  context:
    (): synapse.logging.context.LoggingContextFilter
    request: ""
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {path}
    filters: [context]
loggers:
  synapse.storage.SQL: {{level: WARNING}}
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
"""


TEST_MODULES = Path(__file__).resolve().parent / "synapse_modules"


def _env() -> dict[str, str]:
    """Test-only Synapse modules on PYTHONPATH (synapse_guard itself comes from the install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TEST_MODULES), env.get("PYTHONPATH")]))
    return env


class SynapseServer:
    def __init__(
        self,
        workdir: Path,
        base_config: Path,
        *,
        database: Mapping[str, Any] | None = None,
        guard: Mapping[str, Any] | None = None,
        replace_guard: bool = False,
        extra: Mapping[str, Any] | None = None,
        extra_modules: list[dict[str, Any]] | None = None,
        fragments: Path = HOMESERVER_D,
    ) -> None:
        """`guard` is deep-merged into homeserver.d's guard config (or replaces it)."""
        self.workdir = workdir
        self.base_config = base_config
        self.fragments = fragments
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = dict(database) if database else None
        guard_config = dict(guard or {})
        if not replace_guard:
            guard_config = deep_merge(guard_config_from_fragments(), guard_config)
        self.guard_config = guard_config
        self.extra = dict(extra or {})
        self.extra_modules = list(extra_modules or [])
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = workdir / "homeserver.log"
        self.console_file = workdir / "console.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def _override(self) -> dict[str, Any]:
        listeners = yaml.safe_load((self.fragments / "10-listeners.yaml").read_text())["listeners"]
        for listener in listeners:
            listener["port"] = self.metrics_port if listener["type"] == "metrics" else self.port
        database = self.database or {
            "name": "sqlite3",
            "args": {"database": str(self.workdir / "homeserver.db")},
        }
        override: dict[str, Any] = {
            "public_baseurl": f"{self.url}/",
            "listeners": listeners,
            "database": database,
            "media_store_path": str(self.workdir / "media"),
            "pid_file": str(self.workdir / "homeserver.pid"),
            "log_config": str(self.workdir / "log.yaml"),
            "registration_shared_secret": SHARED_SECRET,
            # Test users: bcrypt cost 4, so logins are fast.
            "bcrypt_rounds": 4,
            # The production rate limits (70-ratelimits.yaml) would throttle the test client.
            "rc_login": {
                "address": {"per_second": 1000, "burst_count": 1000},
                "account": {"per_second": 1000, "burst_count": 1000},
                "failed_attempts": {"per_second": 1000, "burst_count": 1000},
            },
            "rc_registration": {"per_second": 1000, "burst_count": 1000},
            "rc_room_creation": {"per_second": 1000, "burst_count": 1000},
            "rc_admin_redaction": {"per_second": 1000, "burst_count": 1000},
            "rc_message": {"per_second": 1000, "burst_count": 1000},
            "rc_joins": {
                "local": {"per_second": 1000, "burst_count": 1000},
                "remote": {"per_second": 1000, "burst_count": 1000},
            },
            "rc_invites": {
                "per_room": {"per_second": 1000, "burst_count": 1000},
                "per_user": {"per_second": 1000, "burst_count": 1000},
            },
            "modules": [
                {"module": "synapse_guard.Guard", "config": self.guard_config},
                *self.extra_modules,
            ],
        }
        return deep_merge(override, self.extra)

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "log.yaml").write_text(LOG_CONFIG.format(path=self.log_file))
        path = self.workdir / "zz-test-override.yaml"
        path.write_text(yaml.safe_dump(self._override(), sort_keys=False))
        return path

    def command(self) -> list[str]:
        override = self.write_config()
        return [
            sys.executable, "-m", "synapse.app.homeserver",
            "-c", str(self.base_config), "-c", str(self.fragments), "-c", str(override),
        ]  # fmt: skip

    def start(self, timeout: float = 90.0) -> SynapseServer:
        cmd = self.command()
        console = self.console_file.open("ab")
        self.process = subprocess.Popen(
            cmd, stdout=console, stderr=subprocess.STDOUT, cwd=self.workdir, env=_env()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Synapse exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/_matrix/client/versions", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Synapse did not answer within {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, lines: int = 60) -> str:
        out = []
        for path in (self.console_file, self.log_file):
            if path.exists():
                out.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
        return "\n".join(out)

    def run_to_exit(self, timeout: float = 90.0) -> tuple[int, str]:
        """Start Synapse expecting it to refuse: returns its exit code and console output."""
        result = subprocess.run(
            self.command(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            env=_env(),
        )
        return result.returncode, result.stdout + result.stderr

    # -- admin provisioning and clients ------------------------------------------------------

    def register_user(self, localpart: str, password: str = PASSWORD, admin: bool = False) -> str:
        """Shared-secret registration (what register_new_matrix_user does)."""
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        nonce = requests.get(endpoint, timeout=10).json()["nonce"]
        # HMAC-SHA1 over the NUL-separated fields, as Synapse's admin register endpoint wants.
        mac = hmac.new(
            SHARED_SECRET.encode(),
            b"\x00".join(
                p.encode() for p in (nonce, localpart, password, "admin" if admin else "notadmin")
            ),
            hashlib.sha1,
        )
        response = requests.post(
            endpoint,
            json={
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
            timeout=30,
        )
        if not response.ok:
            raise RuntimeError(f"shared-secret registration failed: {response.text}")
        return str(response.json()["user_id"])

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{SERVER_NAME}"

    def client(self, token: str | None = None) -> MatrixClient:
        return MatrixClient(self.url, token)

    def login(self, localpart: str, password: str = PASSWORD, **headers: str) -> MatrixClient:
        client = self.client()
        status, body = client.login(localpart, password, headers=headers)
        if status != 200:
            raise RuntimeError(f"login of {localpart} failed: {status} {body}")
        return client

    def new_account(self, prefix: str, admin: bool = False) -> str:
        """Provision an account (admin provisioning, no login); returns its localpart."""
        localpart = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.register_user(localpart, admin=admin)
        return localpart

    def new_user(self, prefix: str, admin: bool = False) -> tuple[str, MatrixClient]:
        localpart = self.new_account(prefix, admin=admin)
        return self.user_id(localpart), self.login(localpart)

    # -- metrics -----------------------------------------------------------------------------

    def metrics_text(self) -> str:
        for attempt in range(3):
            response = requests.get(
                f"http://127.0.0.1:{self.metrics_port}/_synapse/metrics", timeout=10
            )
            # Synapse's own race (SYNAPSE_METRICS_RACE): the next scrape answers.
            if response.status_code != 500 or attempt == 2:
                break
            time.sleep(0.2)
        response.raise_for_status()
        return response.text

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample (0 if absent)."""
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def decisions(self, check: str, outcome: str, reason: str) -> float:
        return self.metric(
            "synapse_guard_decisions_total", check=check, outcome=outcome, reason=reason
        )


class MatrixClient:
    """A small client-server API client: what a Matrix client sends, nothing more."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token
        self.user_id: str | None = None
        self.device_id: str | None = None
        # Sent with every request (e.g. the X-Forwarded-For a proxy would set for this client).
        self.default_headers: dict[str, str] = {}
        self._txn = 0

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
        all_headers = {**self.default_headers, **(headers or {})}
        if auth and self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        response = requests.request(
            method,
            self.base_url + path,
            json=body,
            headers=all_headers,
            params=params,
            timeout=60,
        )
        try:
            payload = response.json()
        except ValueError:
            payload = response.text
        return response.status_code, payload

    def login(
        self, user: str, password: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        status, body = self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
            },
            headers=headers,
            auth=False,
        )
        if status == 200:
            self.token = body["access_token"]
            self.user_id = body["user_id"]
            self.device_id = body["device_id"]
        return status, body

    def create_room(self, **body: Any) -> tuple[int, Any]:
        return self.request("POST", "/_matrix/client/v3/createRoom", body)

    def room_id(self, **body: Any) -> str:
        status, reply = self.create_room(**body)
        assert status == 200, reply
        return str(reply["room_id"])

    def _room(self, room_id: str) -> str:
        return "/_matrix/client/v3/rooms/" + urllib.parse.quote(room_id, safe="")

    def send(
        self, room_id: str, content: Mapping[str, Any], event_type: str = "m.room.message"
    ) -> tuple[int, Any]:
        self._txn += 1
        txn = f"{uuid.uuid4().hex}-{self._txn}"
        return self.request("PUT", f"{self._room(room_id)}/send/{event_type}/{txn}", dict(content))

    def set_pusher(self, url: str, pushkey: str, **data: str) -> tuple[int, Any]:
        """Register an HTTP pusher the way Element's mobile apps do."""
        return self.request(
            "POST",
            "/_matrix/client/v3/pushers/set",
            {
                "kind": "http",
                "app_id": "org.example.messenger",
                "app_display_name": "Messenger",
                "device_display_name": "Phone",
                "pushkey": pushkey,
                "lang": "en",
                "data": {"url": url, **data},
            },
        )

    def send_text(self, room_id: str, text: str) -> tuple[int, Any]:
        return self.send(room_id, {"msgtype": "m.text", "body": text})

    def send_megolm(
        self,
        room_id: str,
        ciphertext: str | None = None,
        relates_to: Mapping[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """What an end-to-end encrypting client sends: a megolm event, the relation (edit,
        reply, thread) outside the ciphertext. A test's marker in `ciphertext` must be base64
        (hex is): anything else is not ciphertext, and the guard refuses it."""
        content: dict[str, Any] = {
            "algorithm": "m.megolm.v1.aes-sha2",
            # Unpadded base64, as libolm and vodozemac write it.
            "ciphertext": ciphertext or _unpadded_base64(os.urandom(96)),
            "session_id": _unpadded_base64(os.urandom(32)),
            "sender_key": _unpadded_base64(os.urandom(32)),
            "device_id": self.device_id or "DEVICE",
        }
        if relates_to is not None:
            content["m.relates_to"] = dict(relates_to)
        return self.send(room_id, content, "m.room.encrypted")

    def put_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> tuple[int, Any]:
        key = urllib.parse.quote(state_key, safe="")
        return self.request("PUT", f"{self._room(room_id)}/state/{event_type}/{key}", dict(content))

    def state(self, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        status, events = self.request("GET", f"{self._room(room_id)}/state")
        assert status == 200, events
        return {(e["type"], e["state_key"]): e for e in events}

    def state_content(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        event = self.state(room_id).get((event_type, state_key))
        return None if event is None else dict(event["content"])

    def invite(self, room_id: str, user_id: str) -> tuple[int, Any]:
        return self.request("POST", f"{self._room(room_id)}/invite", {"user_id": user_id})

    def join(self, room_id_or_alias: str, server_name: str | None = None) -> tuple[int, Any]:
        target = urllib.parse.quote(room_id_or_alias, safe="")
        params = {"server_name": server_name} if server_name else None
        return self.request("POST", f"/_matrix/client/v3/join/{target}", {}, params=params)

    def redact(self, room_id: str, event_id: str) -> tuple[int, Any]:
        self._txn += 1
        eid = urllib.parse.quote(event_id, safe="")
        return self.request(
            "PUT", f"{self._room(room_id)}/redact/{eid}/{uuid.uuid4().hex}", {"reason": "test"}
        )

    def messages(self, room_id: str) -> list[dict[str, Any]]:
        status, body = self.request(
            "GET", f"{self._room(room_id)}/messages", params={"dir": "b", "limit": "100"}
        )
        assert status == 200, body
        return list(body["chunk"])

    def upgrade(self, room_id: str, version: str) -> tuple[int, Any]:
        return self.request("POST", f"{self._room(room_id)}/upgrade", {"new_version": version})


# Synapse's metrics listener serves scrapes from a thread of its own and iterates dicts of
# metric hooks that the reactor may grow at that moment (a cache created lazily): the scrape
# then answers 500 and logs this (element-hq/synapse#19961, #18764, open). Synapse's race, not
# the guard's: scrapes are retried, and log checks leave exactly that traceback out.
SYNAPSE_METRICS_RACE = "RuntimeError: dictionary changed size during iteration"


def tracebacks(log: str) -> list[str]:
    """Every traceback of a log, except Synapse's metrics-thread race above."""
    found = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        head = "\n".join(block.splitlines()[:80])
        if SYNAPSE_METRICS_RACE in head and "prometheus_client/exposition.py" in head:
            continue
        found.append(head)
    return found


def query_database(server: SynapseServer, postgres: PostgresCluster | None, sql: str) -> str:
    """One statement on the server's own database (SQLite file, or its PostgreSQL database),
    next to the running server; rows as `a|b` lines."""
    if postgres is None:
        path = server.workdir / "homeserver.db"
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db, db:
            rows = db.execute(sql).fetchall()
        return "\n".join("|".join(str(v) for v in row) for row in rows)
    assert server.database is not None
    return postgres.psql(server.database["args"]["database"], sql).strip()


def _unpadded_base64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def iter_log_lines(server: SynapseServer) -> Iterator[str]:
    if server.log_file.exists():
        yield from server.log_file.read_text().splitlines()


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str)


def wait_until_listening(
    process: subprocess.Popen[Any], port: int, log: Callable[[], str], timeout: float = 20
) -> None:
    """Until 127.0.0.1:`port` accepts connections; fails the test if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout}s:\n{log()}")


def stop_gracefully(process: subprocess.Popen[Any] | None, sig: int = signal.SIGQUIT) -> None:
    """Ask a server to stop (nginx: SIGQUIT, workers finish first), then insist."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait(timeout=15)
