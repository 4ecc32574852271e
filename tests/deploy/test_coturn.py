"""TURN for calls (deploy/coturn/, the compose service `coturn`), attacked as TURN servers are.

Debian's turnserver runs natively on 127.0.0.1 from the deploy's own turnserver.conf and start
script; a real guarded Synapse hands out credentials on /voip/turnServer; coturn's own client
(turnutils_uclient) then relays with them, or is refused.

Only loopback may receive test traffic, and the hardening denies loopback peers. So the test's
copy of the config is the deploy file plus ONE line, `allow-loopback-peers` (a test asserts the
rest is the file, byte for byte), and the peer runs on 127.0.0.2, which the test names the way
an operator names the VPN (TURN_ALLOWED_PEER_IPS). A relay towards 127.0.0.1 is then refused
by the deploy's own `denied-peer-ip=127.0.0.0-127.255.255.255`, not by coturn's loopback
default. Private ranges are checked statically (no packet may go there, even if a denial broke).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from synapse_guard.compat import synapse_version
from tests.conftest import require
from tests.deploy.compose import DEPLOY, load_compose
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import SynapseServer, free_port

COTURN = DEPLOY / "coturn"
CONFIG = COTURN / "turnserver.conf"
START = COTURN / "start"
ZZ_DEPLOY = DEPLOY / "synapse" / "zz-deploy.yaml"
INIT = DEPLOY / "bin" / "init"
COMPOSE = load_compose()

ALLOWED_PEER = "127.0.0.2"  # the test's "VPN": the one exception it names
DENIED_PEER = "127.0.0.1"  # loopback, in the deploy's denied ranges
REALM = "matrix.guard.test"


def config_lines() -> list[str]:
    return [
        line.strip()
        for line in CONFIG.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def denied_ranges() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]]:
    ranges = []
    for line in config_lines():
        if line.startswith("denied-peer-ip="):
            low, _, high = line.split("=", 1)[1].partition("-")
            ranges.append((ipaddress.ip_address(low), ipaddress.ip_address(high or low)))
    return ranges


def is_denied(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(type(low) is type(ip) and low <= ip <= high for low, high in denied_ranges())


# -- the static hardening ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "use-auth-secret",  # Synapse's HMAC credentials only
        "no-cli",  # no telnet management interface
        "no-tlsv1",
        "no-tlsv1_1",
        "no-dtls",
        "no-tcp-relay",  # no TCP connections opened from this host
        "no-multicast-peers",
        "no-software-attribute",
        "no-rfc5780",
        "stale-nonce=600",
        "log-file=stdout",
    ],
)
def test_hardening_line_is_present(line: str) -> None:
    assert line in config_lines()


@pytest.mark.parametrize(
    "forbidden",
    [
        "allow-loopback-peers",
        "allowed-peer-ip",  # exceptions are the operator's (TURN_ALLOWED_PEER_IPS), none here
        "static-auth-secret",  # the secret is rendered in memory at start, never in the repo
        "user=",
        "lt-cred-mech",
        "web-admin",
        "log-binding",
        "verbose",
        "cli-password",
    ],
)
def test_static_config_has_no(forbidden: str) -> None:
    assert not [line for line in config_lines() if line.startswith(forbidden)]


def test_quotas_bound_allocations() -> None:
    values = dict(line.split("=", 1) for line in config_lines() if "=" in line)
    assert 0 < int(values["user-quota"]) <= 20
    assert 0 < int(values["total-quota"]) <= 500
    assert int(values["max-bps"]) > 0


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.1", "10.1.2.3", "100.64.0.1", "127.0.0.1", "127.255.255.254", "169.254.169.254",
        "172.16.0.1", "172.31.255.254", "192.168.1.1", "192.0.0.8", "198.18.0.1", "224.0.0.251",
        "239.255.255.250", "240.0.0.1", "255.255.255.255",
        "::", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "fc00::1",
        "fd12:3456::1", "fe80::1", "ff02::1", "2002:7f00:1::1", "2001:db8::1",
    ],
)  # fmt: skip
def test_relays_to_non_public_addresses_are_denied(address: str) -> None:
    assert is_denied(address), address


@pytest.mark.parametrize("address", ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "2001:4860::8888"])
def test_public_addresses_stay_relayable(address: str) -> None:
    assert not is_denied(address)


def test_every_compose_network_is_denied_as_a_peer() -> None:
    for name, config in COMPOSE["networks"].items():
        for subnet in ((config or {}).get("ipam") or {}).get("config", []):
            net = ipaddress.ip_network(subnet["subnet"])
            assert is_denied(str(net[0])), name
            assert is_denied(str(net[-1])), name


# -- the compose service ------------------------------------------------------------------------


def coturn_service() -> dict[str, Any]:
    service = COMPOSE["services"]["coturn"]
    assert isinstance(service, dict)
    return service


def test_compose_service_is_optional_and_confined() -> None:
    service = coturn_service()
    assert service["profiles"] == ["turn"]
    # Certificates: nginx's and certbot's uid (the key is theirs, 0600); never root.
    assert service["user"] == "101:101"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "cap_add" not in service
    assert "no-new-privileges:true" in service["security_opt"]
    # Its own network, shared with no other service, isolating containers.
    assert set(service["networks"]) == {"turn"}
    others = [
        n
        for n, s in COMPOSE["services"].items()
        if n != "coturn" and "turn" in (s.get("networks") or {})
    ]
    assert not others
    assert (
        COMPOSE["networks"]["turn"]["driver_opts"]["com.docker.network.bridge.enable_icc"]
        == "false"
    )
    # The secret is Synapse's, as coturn's own copy, where deploy/coturn/start reads it.
    assert service["secrets"] == [
        {"source": "coturn_shared_secret", "target": "turn_shared_secret"}
    ]
    assert "SECRET" not in " ".join(service["environment"]), "a secret in the environment"
    # The rendered config (it holds the secret) lives on a tmpfs, never on disk.
    assert any(t.startswith("/run/coturn:") and "mode=0700" in t for t in service["tmpfs"])


def test_relay_range_is_bounded_and_matches_the_start_script() -> None:
    service = coturn_service()
    low, high = (
        int(service["environment"]["TURN_MIN_PORT"]),
        int(service["environment"]["TURN_MAX_PORT"]),
    )
    assert 1024 < low <= high
    assert high - low < 1000
    assert f"{low}-{high}:{low}-{high}/udp" in " ".join(service["ports"])
    text = START.read_text(encoding="utf-8")
    assert f"TURN_MIN_PORT:-{low}" in text
    assert f"TURN_MAX_PORT:-{high}" in text


def test_dockerfile_installs_debians_coturn_and_drops_root() -> None:
    text = (COTURN / "Dockerfile").read_text(encoding="utf-8")
    assert "apt-get install -y --no-install-recommends coturn" in text
    assert re.search(r"^USER 101:101$", text, re.M)
    assert "COPY turnserver.conf /etc/coturn/turnserver.conf" in text


def test_synapse_issues_short_lived_credentials_for_users_only() -> None:
    config = yaml.safe_load(ZZ_DEPLOY.read_text(encoding="utf-8"))
    assert config["turn_shared_secret_path"] == "/run/secrets/turn_shared_secret"
    assert "turn_shared_secret" not in config
    assert config["turn_allow_guests"] is False
    lifetime = re.fullmatch(r"(\d+)([smh])", str(config["turn_user_lifetime"]))
    assert lifetime
    assert int(lifetime[1]) * {"s": 1, "m": 60, "h": 3600}[lifetime[2]] <= 3600
    assert "turn_shared_secret" in COMPOSE["services"]["synapse"]["secrets"]


def test_init_writes_turn_uris_and_coturns_copy_of_the_secret(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "ENV_FILE": str(tmp_path / "none"),
        "DATA_ROOT": str(tmp_path), "SERVER_NAME": "example.org",
        "MATRIX_DOMAIN": "matrix.example.org", "CHOWN_SECRETS": "0",
    }  # fmt: skip
    for _ in range(2):  # idempotent: the second run keeps everything
        subprocess.run(
            ["bash", str(INIT), "secrets", "homeserver-config", "turn"],
            env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    secrets = tmp_path / "secrets"
    secret = (secrets / "turn_shared_secret").read_bytes()
    assert len(secret) >= 32
    assert (secrets / "coturn_shared_secret").read_bytes() == secret
    assert (secrets / "coturn_shared_secret").stat().st_mode & 0o777 == 0o400
    homeserver = (tmp_path / "synapse" / "homeserver.yaml").read_text(encoding="utf-8")
    assert homeserver.count("turn_uris:") == 1
    assert yaml.safe_load(homeserver)["turn_uris"] == [
        "turns:matrix.example.org:5349?transport=tcp",
        "turn:matrix.example.org:3478?transport=udp",
        "turn:matrix.example.org:3478?transport=tcp",
    ]


# -- the start script ---------------------------------------------------------------------------


def have_coturn() -> None:
    for tool in ("turnserver", "turnutils_uclient", "turnutils_peer", "openssl"):
        if shutil.which(tool) is None:
            require(f"{tool} is not installed (scripts/install-system-deps: coturn)")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    have_coturn()
    directory = tmp_path_factory.mktemp("coturn")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={REALM}", "-addext", f"subjectAltName=DNS:{REALM}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    secret = directory / "secret"
    secret.write_text(os.urandom(32).hex(), encoding="utf-8")
    # The deploy's file plus the one line loopback-only testing needs (module docstring).
    config = directory / "turnserver.conf"
    config.write_text(
        CONFIG.read_text(encoding="utf-8") + "allow-loopback-peers\n", encoding="utf-8"
    )
    return {"dir": directory, "cert": cert, "key": key, "secret": secret, "config": config}


def start_env(material: dict[str, Path], **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "TURN_REALM": REALM,
        "TURN_CONFIG": str(material["config"]),
        "TURN_RUN_DIR": str(material["dir"] / "run"),
        "TURN_SECRET_FILE": str(material["secret"]),
        "TURN_CERT": str(material["cert"]),
        "TURN_PKEY": str(material["key"]),
        "TURN_EXTERNAL_IP": "127.0.0.1",
        "TURN_LISTEN_IP": "127.0.0.1",
    }
    return {**env, **overrides}


def render(material: dict[str, Path], **overrides: str) -> subprocess.CompletedProcess[str]:
    env = start_env(material, TURN_RENDER_ONLY="1", TURN_RUN_DIR=str(material["dir"] / "render"))
    return subprocess.run(
        ["bash", str(START)], env={**env, **overrides}, capture_output=True, text=True, timeout=30
    )


def test_rendered_config_keeps_every_hardening_line(material: dict[str, Path]) -> None:
    done = render(material, TURN_ALLOWED_PEER_IPS="10.8.0.0-10.8.0.255, 192.0.2.7")
    assert done.returncode == 0, done.stderr
    rendered = Path(done.stdout.strip()).read_text(encoding="utf-8")
    assert rendered.startswith(material["config"].read_text(encoding="utf-8"))
    assert (
        material["config"].read_text(encoding="utf-8")
        == CONFIG.read_text(encoding="utf-8") + "allow-loopback-peers\n"
    )
    site = rendered.split("# ---- site (deploy/coturn/start) ----", 1)[1].splitlines()
    assert "allowed-peer-ip=10.8.0.0-10.8.0.255" in site
    assert "allowed-peer-ip=192.0.2.7" in site
    # The host's own public address is denied, after the static list.
    assert "denied-peer-ip=127.0.0.1" in site
    assert "external-ip=127.0.0.1" in site
    assert f"static-auth-secret={material['secret'].read_text(encoding='utf-8')}" in site
    assert Path(done.stdout.strip()).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # A value cannot smuggle a line into the config.
        ("TURN_ALLOWED_PEER_IPS", "1.2.3.4\nallow-loopback-peers"),
        ("TURN_DENIED_PEER_IPS", "1.2.3.4;no-cli"),
        ("TURN_REALM", "x\nno-auth"),
        ("TURN_EXTERNAL_IP", ""),
        ("TURN_MIN_PORT", "80"),
        ("TURN_MAX_PORT", "1000000"),
    ],
)
def test_start_refuses_a_bad_value(material: dict[str, Path], variable: str, value: str) -> None:
    done = render(material, **{variable: value})
    assert done.returncode != 0
    assert "coturn start:" in done.stderr


def test_start_refuses_a_missing_or_empty_secret(material: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("", encoding="utf-8")
    for path in (tmp_path / "absent", tmp_path / "empty"):
        done = render(material, TURN_SECRET_FILE=str(path))
        assert done.returncode != 0
        assert "secret" in done.stderr


# -- live: Synapse's credentials on a real coturn ------------------------------------------------


@dataclass
class Turn:
    port: int
    tls_port: int
    peer_port: int
    secret: str
    log: Path


def wait_for_tcp(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the process exited while starting"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    # The start script's certificate-reload loop shares coturn's process group.
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def turn(material: dict[str, Path]) -> Iterator[Turn]:
    port, tls_port, peer_port = free_port(), free_port(), free_port()
    relay = free_port()
    log = material["dir"] / "coturn.log"
    env = start_env(
        material,
        TURN_PORT=str(port),
        TURN_TLS_PORT=str(tls_port),
        TURN_ALLOWED_PEER_IPS=ALLOWED_PEER,
        TURN_MIN_PORT=str(relay),
        TURN_MAX_PORT=str(min(relay + 40, 65535)),
    )
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["bash", str(START)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        # turnutils_peer: an echo server, the far end of the relay.
        peer = subprocess.Popen(
            ["turnutils_peer", "-L", ALLOWED_PEER, "-p", str(peer_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_tcp(port, server)
        wait_for_tcp(tls_port, server)
        yield Turn(port, tls_port, peer_port, material["secret"].read_text(encoding="utf-8"), log)
    finally:
        stop(peer)
        stop(server)


@pytest.fixture(scope="module")
def synapse(
    synapse_factory: SynapseFactory, turn: Turn, material: dict[str, Path]
) -> SynapseServer:
    deploy = yaml.safe_load(ZZ_DEPLOY.read_text(encoding="utf-8"))
    extra: dict[str, Any] = {
        "turn_uris": [
            f"turns:127.0.0.1:{turn.tls_port}?transport=tcp",
            f"turn:127.0.0.1:{turn.port}?transport=udp",
            f"turn:127.0.0.1:{turn.port}?transport=tcp",
        ],
        # The deploy's own lifetime and guest settings.
        "turn_user_lifetime": deploy["turn_user_lifetime"],
        "turn_allow_guests": deploy["turn_allow_guests"],
    }
    if synapse_version() >= (1, 116, 0):
        extra["turn_shared_secret_path"] = str(material["secret"])
    else:  # turn_shared_secret_path exists from Synapse 1.116 (the deploy's image is newer)
        extra["turn_shared_secret"] = turn.secret
    return synapse_factory(extra=extra).start()


def credentials(synapse: SynapseServer, prefix: str) -> dict[str, Any]:
    _, client = synapse.new_user(prefix)
    status, body = client.request("GET", "/_matrix/client/v3/voip/turnServer")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def sign(username: str, secret: str) -> str:
    return base64.b64encode(
        hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    ).decode()


def uclient(
    turn: Turn, username: str, password: str, peer: str, *flags: str, tls: bool = False
) -> tuple[int, str]:
    """Allocate a relay and send 5 messages through it to `peer` (-c: one allocation, no RTCP)."""
    port = turn.tls_port if tls else turn.port
    args = ["turnutils_uclient", "-c", "-n", "5", "-u", username, "-w", password, "-p", str(port)]
    args += [
        *(["-t", "-S"] if tls else []),
        *flags,
        "-e",
        peer,
        "-r",
        str(turn.peer_port),
        "127.0.0.1",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


def relayed(output: str) -> int:
    """Messages that came back through the relay (uclient's closing count)."""
    counts = re.findall(r"tot_recv_msgs=(\d+)", output)
    return int(counts[-1]) if counts else 0


def test_synapse_hands_credentials_only_to_a_logged_in_user(synapse: SynapseServer) -> None:
    status, body = synapse.client().request("GET", "/_matrix/client/v3/voip/turnServer")
    assert status == 401, body


def test_synapses_credentials_relay_to_an_allowed_peer(synapse: SynapseServer, turn: Turn) -> None:
    creds = credentials(synapse, "caller")
    expiry, _, user = creds["username"].partition(":")
    assert user.startswith("@caller")
    assert 0 < int(expiry) - time.time() <= 3600
    assert creds["ttl"] <= 3600
    code, output = uclient(turn, creds["username"], creds["password"], ALLOWED_PEER)
    assert code == 0, output[-2000:]
    assert relayed(output) == 5, output[-2000:]


def test_relay_over_tcp_works_too(synapse: SynapseServer, turn: Turn) -> None:
    creds = credentials(synapse, "tcpcaller")
    code, output = uclient(turn, creds["username"], creds["password"], ALLOWED_PEER, "-t")
    assert code == 0, output[-2000:]
    assert relayed(output) == 5, output[-2000:]


def stun_binding_over_tls(turn: Turn, context: ssl.SSLContext) -> tuple[str | None, bytes, bytes]:
    """A STUN Binding request on the TLS port: (TLS version, response, transaction ID)."""
    transaction = os.urandom(12)
    with (
        socket.create_connection(("127.0.0.1", turn.tls_port), timeout=3) as raw,
        context.wrap_socket(raw, server_hostname=REALM) as tls,
    ):
        tls.sendall(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction)
        return tls.version(), tls.recv(2048), transaction


def test_tls_listener_serves_turn_with_the_certificate(
    turn: Turn, material: dict[str, Path]
) -> None:
    # (turnutils_uclient's TLS mode hangs after the handshake with coturn 4.6.1 on Debian 12,
    # on the client side; relaying itself is proven over UDP and TCP above, by the same engine.)
    context = ssl.create_default_context(cafile=str(material["cert"]))
    version, response, transaction = stun_binding_over_tls(turn, context)
    assert version in ("TLSv1.2", "TLSv1.3")
    assert struct.unpack("!H", response[:2])[0] == 0x0101  # Binding success
    assert response[8:20] == transaction


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_old_tls_is_refused(turn: Turn, version: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # This client would speak it (lowest security level); the server must not.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, version)
    with pytest.raises((ssl.SSLError, TimeoutError, ConnectionResetError)):
        stun_binding_over_tls(turn, context)


def test_relay_towards_a_denied_peer_is_refused(synapse: SynapseServer, turn: Turn) -> None:
    creds = credentials(synapse, "scanner")
    code, output = uclient(turn, creds["username"], creds["password"], DENIED_PEER)
    assert code != 0
    assert "403 (Forbidden IP)" in output, output[-2000:]
    assert relayed(output) == 0


def test_expired_credentials_are_refused(turn: Turn) -> None:
    # Rightly signed, but expired a minute ago (a credential kept after its hour).
    username = f"{int(time.time()) - 60}:@former:guard.test"
    code, output = uclient(turn, username, sign(username, turn.secret), ALLOWED_PEER)
    assert code != 0
    assert "Cannot complete Allocation" in output, output[-2000:]
    assert relayed(output) == 0


def test_forged_credentials_are_refused(turn: Turn) -> None:
    username = f"{int(time.time()) + 600}:@forger:guard.test"
    code, output = uclient(turn, username, sign(username, "not-the-secret" * 4), ALLOWED_PEER)
    assert code != 0
    assert "Cannot complete Allocation" in output, output[-2000:]
    assert relayed(output) == 0


def test_no_cli_port_is_open(turn: Turn) -> None:
    # coturn's telnet CLI listens on 5766 by default; no-cli removes it.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 5766), timeout=1).close()


def test_the_compose_healthcheck_command_works(turn: Turn) -> None:
    check = coturn_service()["healthcheck"]["test"]
    assert check[:2] == ["CMD", "turnutils_stunclient"]
    args = [a if a != "3478" else str(turn.port) for a in check[1:]]
    assert subprocess.run(args, capture_output=True, timeout=30, check=False).returncode == 0


def test_coturns_log_names_no_address_and_no_user(synapse: SynapseServer, turn: Turn) -> None:
    # A refusal of each kind that coturn logs with the peer's address or the username.
    creds = credentials(synapse, "logged")
    uclient(turn, creds["username"], creds["password"], DENIED_PEER)
    username = f"{int(time.time()) + 600}:@logged:guard.test"
    uclient(turn, username, sign(username, "not-the-secret" * 4), ALLOWED_PEER)
    log = turn.log.read_text(encoding="utf-8", errors="replace")
    assert "denied" in log
    assert "Cannot find credentials" in log
    assert "127.0.0." not in log
    assert "@" not in log
    assert "guard.test" not in log.replace(REALM, "")


def test_log_filter_masks_what_coturn_logs_of_a_session(
    material: dict[str, Path], tmp_path: Path
) -> None:
    # Lines in coturn's formats for a session's life; a stand-in prints them instead of coturn.
    session, user = "session 001000000000000001:", "<1796130614:@alice:guard.test>"
    lines = [
        f"{session} realm <{REALM}> user {user}: incoming packet ALLOCATE processed, success",
        f"{session} peer 203.0.113.9 lifetime updated: 300",
        f"{session} peer 2001:db8::5 lifetime updated: 300",
        "IPv6. tcp or tls connected to: [2001:db8::7]:40000",
        f"{session} closed (2nd stage), user {user} realm <{REALM}> origin <>, "
        "local 172.31.245.2:3478, remote 198.51.100.4:51234, reason: allocation timeout",
        "check_stun_auth: Cannot find credentials of user 1796130614:@bob:guard.test",
    ]
    fake = tmp_path / "turnserver"
    fake.write_text("#!/bin/sh\ncat <<'LINES'\n" + "\n".join(lines) + "\nLINES\n", encoding="utf-8")
    fake.chmod(0o755)
    env = start_env(material, TURNSERVER=str(fake), TURN_RUN_DIR=str(tmp_path / "run"))
    process = subprocess.Popen(
        ["bash", str(START)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        output = [process.stdout.readline().decode() for _ in lines]
    finally:
        stop(process)
    text = "".join(output)
    assert "@" not in text
    assert "alice" not in text
    assert "bob" not in text
    for address in (
        "203.0.113.9",
        "2001:db8::5",
        "2001:db8::7",
        "172.31.245.2",
        "198.51.100.4",
        "40000",
        "51234",
    ):
        assert address not in text, address
    # What stays: the session's number, the event, the reason.
    assert "incoming packet ALLOCATE processed, success" in text
    assert "reason: allocation timeout" in text
