"""deploy/push-proxy: Synapse's only way out opens tunnels to the allowed gateways and nothing else.

The static tests hold the proxy's config to the compose file and to the guard's
`push.allowed_gateways`. The real ones run Debian's tinyproxy with the deploy's own files on
127.0.0.1 (addresses and the port moved to loopback, nothing else changed) and speak to it
like a compromised Synapse would. Every refused request is refused before the proxy resolves a
name, so nothing leaves the machine; the one allowed host is `localhost`.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from synapse_guard.config import parse_guard_config
from synapse_guard.push.gateways import NOTIFY_PATH as NOTIFY
from tests.conftest import SynapseFactory, require
from tests.deploy.compose import DEPLOY, load_compose, mounts
from tests.integration.harness import HOMESERVER_D, free_port, iter_log_lines

PROXY_DIR = DEPLOY / "push-proxy"
CONF = PROXY_DIR / "tinyproxy.conf"
ALLOWED_GATEWAYS = PROXY_DIR / "allowed-gateways"
ZZ_DEPLOY = DEPLOY / "synapse" / "zz-deploy.yaml"
COMPOSE = load_compose()


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            found.setdefault(name, []).append(value.strip().strip('"'))
    return found


def filter_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def address_on(service: str, net: str) -> str:
    return str(COMPOSE["services"][service]["networks"][net]["ipv4_address"])


CONFIG = directives(CONF.read_text(encoding="utf-8"))


# -- the config agrees with the compose file ---------------------------------------------------


def test_the_proxy_listens_on_its_push_egress_address_and_loopback_only() -> None:
    assert set(CONFIG["Listen"]) == {address_on("push-proxy", "push-egress"), "127.0.0.1"}
    assert CONFIG["Port"] == ["8888"]
    assert COMPOSE["services"]["synapse"]["environment"]["HTTPS_PROXY"].endswith(":8888")


def test_the_proxy_serves_synapse_and_its_own_healthcheck_only() -> None:
    assert set(CONFIG["Allow"]) == {address_on("synapse", "push-egress"), "127.0.0.1"}
    assert "Deny" not in CONFIG


def test_the_proxy_tunnels_to_allowed_targets_on_port_443_only() -> None:
    assert CONFIG["ConnectPort"] == ["443"]
    assert CONFIG["FilterDefaultDeny"] == ["Yes"]
    assert CONFIG["FilterURLs"] == ["On"]  # the whole target, so the port and scheme count
    assert CONFIG["FilterType"] == ["ere"]
    assert "Upstream" not in CONFIG
    assert "ReversePath" not in CONFIG


def test_the_compose_file_mounts_the_files_the_config_reads() -> None:
    targets = mounts(COMPOSE["services"]["push-proxy"])
    assert targets["/etc/tinyproxy/tinyproxy.conf"] == "./push-proxy/tinyproxy.conf"
    (filter_path,) = CONFIG["Filter"]
    assert targets[filter_path] == "./push-proxy/allowed-gateways"


def test_the_proxy_writes_no_file() -> None:
    # read_only: true in compose; tinyproxy must not need a pid or log file.
    for name in ("PidFile", "LogFile", "Syslog"):
        assert name not in CONFIG, name


def guard_push(path: Path) -> dict[str, object]:
    (entry,) = yaml.safe_load(path.read_text(encoding="utf-8"))["modules"]
    return dict(entry["config"]["push"])


def filter_for(hosts: set[str]) -> set[str]:
    return {"^" + host.replace(".", r"\.") + ":443$" for host in hosts}


def test_the_proxys_allowlist_names_exactly_the_hosts_of_the_allowed_gateways() -> None:
    push = parse_guard_config({"push": guard_push(ZZ_DEPLOY)}).push
    for gateway in push.allowed_gateways:
        # The proxy tunnels to 443 only: a gateway elsewhere would fail silently.
        assert (gateway.scheme, gateway.port) == ("https", 443), str(gateway)

    lines = filter_lines(ALLOWED_GATEWAYS.read_text(encoding="utf-8"))

    assert set(lines) == filter_for({g.host for g in push.allowed_gateways})
    assert guard_push(ZZ_DEPLOY) == guard_push(HOMESERVER_D / "90-modules.yaml")


def test_the_shipped_allowlist_is_empty_as_the_guards_default() -> None:
    assert filter_lines(ALLOWED_GATEWAYS.read_text(encoding="utf-8")) == []
    assert guard_push(HOMESERVER_D / "90-modules.yaml")["allowed_gateways"] == []


# -- the real proxy, on loopback ---------------------------------------------------------------


class Upstream:
    """A TCP server on 127.0.0.1 standing in for the gateway: echoes what it gets."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                data = conn.recv(1024)
                if data:
                    conn.sendall(b"echo:" + data)

    def close(self) -> None:
        self.sock.close()


class Proxy:
    def __init__(self, workdir: Path, upstream_port: int, allowlist: str) -> None:
        binary = shutil.which("tinyproxy")
        if binary is None:
            require("tinyproxy is not installed (apt-get install tinyproxy-bin)")
        self.port = free_port()
        (workdir / "allowed-gateways").write_text(allowlist)
        # The deploy's config, moved to loopback: addresses, port, filter path, tunnel port.
        text = CONF.read_text(encoding="utf-8")
        text = re.sub(r"^Listen .*\n", "", text, flags=re.M)
        text = re.sub(r"^Allow .*\n", "", text, flags=re.M)
        text = re.sub(
            r"^Port .*$", f"Port {self.port}\nListen 127.0.0.1\nAllow 127.0.0.1", text, flags=re.M
        )
        text = text.replace("/etc/tinyproxy/allowed-gateways", str(workdir / "allowed-gateways"))
        text = text.replace("ConnectPort 443", f"ConnectPort {upstream_port}")
        text = re.sub(r"^(User|Group) .*\n", "", text, flags=re.M)
        (workdir / "tinyproxy.conf").write_text(text)
        self.log = (workdir / "tinyproxy.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "-d", "-c", str(workdir / "tinyproxy.conf")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("tinyproxy did not start")

    def ask(self, request: str, source: str = "127.0.0.1") -> tuple[str, socket.socket]:
        sock = socket.socket()
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", self.port))
        sock.sendall(request.encode())
        status = b""
        while b"\r\n\r\n" not in status and (chunk := sock.recv(1)):
            status += chunk
        return status.split(b"\r\n")[0].decode(), sock

    def status(self, request: str, source: str = "127.0.0.1") -> str:
        line, sock = self.ask(request, source)
        sock.close()
        return line

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Proxy]:
    """The deploy's proxy with `localhost` as the one allowed gateway host."""
    shipped = ALLOWED_GATEWAYS.read_text(encoding="utf-8")
    allowlist = shipped + f"^localhost:{upstream.port}$\n"
    running = Proxy(tmp_path_factory.mktemp("push-proxy"), upstream.port, allowlist)
    yield running
    running.stop()


def connect(target: str) -> str:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"


def test_a_tunnel_to_the_allowed_host_and_port_carries_the_traffic(
    proxy: Proxy, upstream: Upstream
) -> None:
    line, sock = proxy.ask(connect(f"localhost:{upstream.port}"))
    with sock:
        assert line.split()[1] == "200", line
        sock.sendall(b"notify")
        assert sock.recv(64) == b"echo:notify"


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:{port}",  # the same host by another name
        "localhost.evil.example:{port}",
        "evil-localhost:{port}",
        "xlocalhost:{port}",
        "localhost:{port}.evil.example",
        "localhost:{port}@evil.example:443",
        "localhost:{other}",  # another port on the allowed host
        "healthcheck.invalid:443",
    ],
)
def test_a_tunnel_anywhere_else_is_refused(proxy: Proxy, upstream: Upstream, target: str) -> None:
    before = upstream.accepted
    line = proxy.status(connect(target.format(port=upstream.port, other=upstream.port + 1)))

    assert line.split()[1] == "403", line
    assert upstream.accepted == before


def test_plain_http_even_to_the_allowed_host_is_refused(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.accepted
    line = proxy.status(
        f"GET http://localhost:{upstream.port}/ HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )

    assert line.split()[1] == "403", line
    assert upstream.accepted == before


def test_any_other_client_than_synapse_is_refused(proxy: Proxy, upstream: Upstream) -> None:
    line = proxy.status(connect(f"localhost:{upstream.port}"), source="127.0.0.2")

    assert line.split()[1:3] == ["403", "Access"], line


def test_the_compose_healthcheck_passes_against_the_proxy(proxy: Proxy) -> None:
    test = COMPOSE["services"]["push-proxy"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = test[3].replace("/dev/tcp/127.0.0.1/8888", f"/dev/tcp/127.0.0.1/{proxy.port}")

    assert subprocess.run(["bash", "-c", script], timeout=10, check=False).returncode == 0


def test_the_shipped_allowlist_refuses_every_tunnel(tmp_path: Path, upstream: Upstream) -> None:
    empty = Proxy(tmp_path, upstream.port, ALLOWED_GATEWAYS.read_text(encoding="utf-8"))
    try:
        line = empty.status(connect(f"localhost:{upstream.port}"))
    finally:
        empty.stop()

    assert line.split()[1] == "403", line


# -- a real Synapse pushing through the real proxy ---------------------------------------------


def certificate_for_localhost(directory: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for `localhost`, trusted by Synapse below."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gateway.crt", directory / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TlsGateway:
    """A push gateway over HTTPS on 127.0.0.1 (as `localhost`); records the pushkeys it gets."""

    def __init__(self, directory: Path) -> None:
        self.pushkeys: list[str] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                for device in body.get("notification", {}).get("devices", []):
                    gateway.pushkeys.append(device["pushkey"])
                reply = b'{"rejected": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.cert, key = certificate_for_localhost(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def megolm() -> dict[str, str]:
    return {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEpAB" + uuid.uuid4().hex,
        "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ",
        "sender_key": "SGVsbG8gd29ybGQgY3VydmUyNTUxOSBrZXkgaGVyZQ",
        "device_id": "PUSHTESTER",
    }


def test_synapse_pushes_through_the_proxy_and_nowhere_it_refuses(
    tmp_path: Path, synapse_factory: SynapseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = TlsGateway(tmp_path)
    proxy = Proxy(
        tmp_path,
        gateway.port,
        ALLOWED_GATEWAYS.read_text(encoding="utf-8") + f"^localhost:{gateway.port}$\n",
    )
    through_proxy = f"https://localhost:{gateway.port}{NOTIFY}"
    # Allowed by the guard, not by the proxy (the two lists disagree: a misconfiguration).
    # Synapse does not resolve a name it sends to a proxy, and the proxy refuses it before
    # resolving it: nothing is looked up.
    not_in_proxy = f"https://push.invalid:{gateway.port}{NOTIFY}"
    server = synapse_factory(
        guard={"push": {"allowed_gateways": [through_proxy, not_in_proxy]}},
        # No ip_range_whitelist: Synapse refuses loopback itself, so whatever reaches the
        # gateway came through the proxy (which resolves names itself: the proxy, not
        # ip_range_blacklist, decides where pushes go).
        extra={"push": {"include_content": False}},
    )
    try:
        with monkeypatch.context() as env:
            # As docker-compose.yml sets it; SSL_CERT_FILE makes Synapse trust the gateway.
            env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
            env.setenv("SSL_CERT_FILE", str(gateway.cert))
            server.start()
        recipient_id, recipient = server.new_user("recipient")
        _, sender = server.new_user("sender")
        room = sender.room_id(invite=[recipient_id])
        assert recipient.join(room)[0] == 200
        assert recipient.set_pusher(through_proxy, "via-proxy", format="event_id_only")[0] == 200
        assert recipient.set_pusher(not_in_proxy, "not-in-proxy", format="event_id_only")[0] == 200

        status, body = sender.send(room, megolm(), "m.room.encrypted")
        assert status == 200, body
        deadline = time.monotonic() + 30
        while "via-proxy" not in gateway.pushkeys and time.monotonic() < deadline:
            time.sleep(0.2)

        assert "via-proxy" in gateway.pushkeys
        assert "not-in-proxy" not in gateway.pushkeys
        # Synapse tried, through the proxy, which refused the tunnel.
        failed = [line for line in iter_log_lines(server) if "Failed to push data" in line]
        assert any("not-in-proxy" in line and "403" in line for line in failed), failed
    finally:
        server.stop()
        proxy.stop()
        gateway.close()
