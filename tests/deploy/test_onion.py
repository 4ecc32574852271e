"""The onion fallback (profile `onion`): Debian's tor, nginx's onion server, the backup.

What can be proven without the Tor network:
- tor accepts the deploy's torrc (`tor --verify-config`), and started natively (as an
  unprivileged user, with `DisableNetwork 1` added so that nothing leaves this host) it writes
  the service's keys and a valid v3 address, private to its uid; deploy/tor/add-client's keys
  are ones Tor loads and that match each other;
- nginx with the deploy's onion.conf, in front of a real Synapse with the guard, answers for an
  onion host name on the onion listener with the HTTPS server's policy: the client API works,
  the admin API is closed, the guard's refused address gets 403 everywhere, Element's config
  names the onion URL. The loopback address 127.0.0.2 plays the tor container (the one address
  every Tor user arrives from, in allow_cidrs); 127.0.0.4 plays a tor container the operator
  forgot to add to allow_cidrs;
- deploy/bin/backup takes the onion keys and deploy/bin/restore brings them back byte for byte,
  with their owner and mode: the same address on a new host;
- the compose service has the hardening every service has, on the networks it needs only.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.deploy.compose import COMPOSE_FILE, DEPLOY, load_compose, mounts
from tests.deploy.test_nginx_e2e import Edge, Response, element_files
from tests.deploy.test_nginx_static import (
    ELEMENT_CONFIG,
    MATRIX_DOMAIN,
    NGINX_DIR,
    PKI,
    VARIABLES,
    _move_paths,
    envsubst,
    make_pki,
    nginx_binary,
    render_guard_include,
    render_site,
    tool,
)
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, REPO, SynapseServer, free_port

TORRC = DEPLOY / "tor" / "torrc"
ADD_CLIENT = DEPLOY / "tor" / "add-client"
ONION_TEMPLATE = NGINX_DIR / "conf.d" / "onion.conf"  # /etc/nginx/templates/onion.conf.template
ONION_LISTEN = "172.31.245.10:80"  # nginx's address on the onion network
TOR_ADDRESS = "172.31.245.2"  # the tor container's: every Tor user's address for nginx
ONION_SUBNET = "172.31.245.0/24"
V3_ONION = re.compile(r"^[a-z2-7]{56}\.onion$")
UNPRIVILEGED = 9050  # the container's uid, which has no passwd entry there (nor here)

TOR_ACCEPTED = "127.0.0.2"  # plays the tor container, listed in allow_cidrs
TOR_NOT_ALLOWED = "127.0.0.4"  # plays a tor container missing from allow_cidrs
NETWORK = {"allow_cidrs": ["127.0.0.2/32"]}
ADMIN_RANGE = "127.0.0.9/32"  # the VPN: not the tor container's address


def onion_address(public_key: bytes) -> str:
    """The v3 address of an ed25519 public key (rend-spec-v3: key, checksum, version 3)."""
    version = b"\x03"
    checksum = hashlib.sha3_256(b".onion checksum" + public_key + version).digest()[:2]
    return base64.b32encode(public_key + checksum + version).decode().lower() + ".onion"


def public_key_of(address: str) -> bytes:
    """The ed25519 key an address encodes, after checking its checksum and version."""
    assert V3_ONION.match(address), address
    raw = base64.b32decode(address.removesuffix(".onion").upper())
    key, version = raw[:32], raw[34:]
    assert version == b"\x03"
    assert onion_address(key) == address, "checksum mismatch"
    return key


ONION_HOST = onion_address(hashlib.sha256(b"synapse-guard onion test").digest())


# --------------------------------------------------------------------------------------------
# tor, natively


def tor_binary() -> str:
    found = shutil.which("tor", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin")
    if found is None:
        require("tor is not installed (scripts/install-system-deps installs it)")
    assert found is not None
    return found


class Tor:
    """The deploy's torrc with its paths under `root`, run as an unprivileged uid."""

    def __init__(self, tor: str, root: Path) -> None:
        self.tor = tor
        self.root = root
        self.data = root / "tor"  # DATA_ROOT/tor, the container's /var/lib/tor
        self.onion = self.data / "onion"
        self.torrc = root / "torrc"
        self.log = self.data / "info.log"
        text = TORRC.read_text().replace("/var/lib/tor", str(self.data))
        # Test only: no connection to the Tor network (only loopback may carry test traffic),
        # and an info log, where Tor says which client keys it loaded.
        text += f"\nDisableNetwork 1\nLog info file {self.log}\n"
        self.torrc.write_text(text)
        self.torrc.chmod(0o644)
        self.uid = UNPRIVILEGED if os.geteuid() == 0 else os.geteuid()
        self.data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(self.data, UNPRIVILEGED, UNPRIVILEGED)

    def command(self, *args: str) -> list[str]:
        prefix: list[str] = []
        if os.geteuid() == 0:  # Tor as root is wrong: run it as the container's uid
            uid = str(UNPRIVILEGED)
            prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return [*prefix, self.tor, *args]

    def verify(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command("--verify-config", "-f", str(self.torrc)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def run_until(self, done: Any, timeout: float = 30) -> str:
        """Start tor, wait until `done()` holds, stop it; returns its output."""
        process = subprocess.Popen(
            self.command("-f", str(self.torrc)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while not done():
                assert process.poll() is None, f"tor exited: {process.communicate()[0]}"
                assert time.monotonic() < deadline, "tor did not get there in time"
                time.sleep(0.2)
        finally:
            process.send_signal(signal.SIGINT)  # a clean exit (a second SIGINT is immediate)
            try:
                output = process.communicate(timeout=35)[0]
            except subprocess.TimeoutExpired:
                process.kill()
                output = process.communicate()[0]
        return output

    def hostname(self) -> str:
        return (self.onion / "hostname").read_text().strip()


@pytest.fixture(scope="module")
def tor() -> Iterator[Tor]:
    binary = tor_binary()
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        require("setpriv (util-linux) is needed to run tor unprivileged")
    # Not under pytest's tmp dir: it is 0700, and tor runs as another uid here.
    root = Path(tempfile.mkdtemp(prefix="onion-"))
    root.chmod(0o711)
    try:
        server = Tor(binary, root)
        server.run_until(lambda: (server.onion / "hostname").exists())
        yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_tor_accepts_the_deploy_torrc(tor: Tor) -> None:
    result = tor.verify()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration was valid" in result.stdout
    assert "[warn]" not in result.stdout, result.stdout


def test_torrc_is_a_service_only_and_closes_every_client_port() -> None:
    lines = [line.split("#", 1)[0].split() for line in TORRC.read_text().splitlines()]
    options = {words[0]: words[1:] for words in lines if words}
    for port in ("SocksPort", "ControlPort", "ORPort", "DirPort"):
        assert options[port] == ["0"], port
    assert options["HiddenServiceDir"] == ["/var/lib/tor/onion"]
    assert options["HiddenServiceVersion"] == ["3"]
    # The only port: 80 on the onion, to nginx's onion listener.
    assert options["HiddenServicePort"] == ["80", ONION_LISTEN]
    assert options["HiddenServiceMaxStreamsCloseCircuit"] == ["1"]
    assert 0 < int(options["HiddenServiceMaxStreams"][0]) <= 64
    assert options["HiddenServiceEnableIntroDoSDefense"] == ["1"]
    assert options["SafeLogging"] == ["1"]


def test_tor_writes_a_v3_address_and_keys_private_to_its_uid(tor: Tor) -> None:
    address = tor.hostname()
    key_file = (tor.onion / "hs_ed25519_public_key").read_bytes()
    assert key_file.startswith(b"== ed25519v1-public: type0 ==")
    # The address is the public key: the hostname and the key file agree.
    assert public_key_of(address) == key_file[32:]
    assert (tor.onion / "hs_ed25519_secret_key").stat().st_size == 96
    for path in (tor.data, tor.onion, tor.onion / "authorized_clients"):
        assert path.stat().st_mode & 0o777 == 0o700, path
        assert path.stat().st_uid == tor.uid
    for name in ("hostname", "hs_ed25519_public_key", "hs_ed25519_secret_key"):
        path = tor.onion / name
        assert path.stat().st_mode & 0o777 == 0o600, path
        assert path.stat().st_uid == tor.uid


def test_add_client_keys_are_loaded_and_the_address_survives_a_restart(tor: Tor) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    address = tor.hostname()
    result = subprocess.run(
        [str(ADD_CLIENT), "phone-alice", str(tor.onion)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The device's line: <address>:descriptor:x25519:<private key>, the format Orbot and Tor
    # Browser import; the server keeps the public half only.
    onion, kind, algorithm, private = result.stdout.strip().split(":")
    assert (onion + ".onion", kind, algorithm) == (address, "descriptor", "x25519")
    auth = tor.onion / "authorized_clients" / "phone-alice.auth"
    assert auth.stat().st_mode & 0o777 == 0o600
    assert auth.stat().st_uid == tor.uid
    public = auth.read_text().strip().removeprefix("descriptor:x25519:")
    key = X25519PrivateKey.from_private_bytes(base64.b32decode(private + "===="))
    derived = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b32encode(derived).decode().rstrip("=") == public
    assert private not in auth.read_text()
    # The same name twice would silently replace a device's key: refused.
    again = subprocess.run(
        [str(ADD_CLIENT), "phone-alice", str(tor.onion)], capture_output=True, text=True
    )
    assert again.returncode != 0

    tor.log.unlink(missing_ok=True)
    output = tor.run_until(
        lambda: tor.log.exists() and "Loaded a client authorization key file" in tor.log.read_text()
    )
    assert "[warn] Client authorization" not in output + tor.log.read_text()
    assert tor.hostname() == address, "a restart keeps the keys, hence the address"


# --------------------------------------------------------------------------------------------
# The backup keeps the address


def run_script(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "deploy" / "bin" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def tree_of(directory: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry under `directory`: mode, uid, gid and content (b"" for directories)."""
    entries = {}
    for path in [directory, *sorted(directory.rglob("*"))]:
        info = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        name = str(path.relative_to(directory))
        entries[name] = (info.st_mode, info.st_uid, info.st_gid, content)
    return entries


def host_root(base: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A DATA_ROOT with what backup and restore need, and the scripts' environment."""
    root = base / name
    for directory in ("synapse", "secrets", "backups"):
        (root / directory).mkdir(parents=True, mode=0o700)
    # The database is not the point here: a stand-in for pg_dump (PG_EXEC runs it instead).
    fake_pg = base / "fake-pg"
    fake_pg.write_text("#!/bin/sh\nprintf 'PGDMP stand-in'\n")
    fake_pg.chmod(0o755)
    env = {
        **os.environ,
        "ENV_FILE": str(root / "no.env"),
        "DATA_ROOT": str(root),
        "SYNAPSE_DATA": str(root / "synapse"),
        "KEYS_DIR": str(root / "secrets"),
        "BACKUP_DIR": str(root / "backups"),
        "AGE_RECIPIENTS_FILE": str(base / "recipients.txt"),
        "AGE_IDENTITY_FILE": str(base / "identity.txt"),
        "PG_EXEC": str(fake_pg),
    }
    env.pop("TOR_DIR", None)
    env.pop("TEXTFILE_DIR", None)
    return root, env


def test_restore_brings_the_same_onion_keys_back(tor: Tor, tmp_path: Path) -> None:
    for needed in ("age", "age-keygen"):
        if shutil.which(needed) is None:
            require(f"{needed} is not installed (scripts/install-system-deps installs it)")
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout
    (tmp_path / "recipients.txt").write_text(public)

    old, env = host_root(tmp_path, "old")
    (old / "synapse" / "homeserver.yaml").write_text("server_name: matrix.test\n")
    (old / "secrets" / "form_secret").write_text("x" * 32)
    shutil.copytree(tor.onion, old / "tor" / "onion", symlinks=True)
    (old / "tor").chmod(0o700)
    if os.geteuid() == 0:  # copytree keeps modes, not owners
        for path in [old / "tor", *(old / "tor").rglob("*")]:
            os.chown(path, tor.uid, tor.uid)
    before = tree_of(old / "tor" / "onion")

    result = run_script("backup", env=env)
    assert result.returncode == 0, result.stderr
    assert "onion service keys" in result.stderr
    (backup,) = (old / "backups").glob("synapse-guard-backup-*.tar.age")

    # A new host, before anything ran there: the same address comes back (--keys-only is the
    # migration's first step, deploy/bin/migrate).
    new, new_env = host_root(tmp_path, "new")
    result = run_script("restore", "--keys-only", str(backup), env=new_env)
    assert result.returncode == 0, result.stderr
    assert tree_of(new / "tor" / "onion") == before
    assert (new / "tor").stat().st_mode & 0o777 == 0o700
    assert (new / "tor").stat().st_uid == tor.uid
    assert tor.hostname() in result.stderr

    # A host where tor already started and made ANOTHER address: the backup's keys win, the
    # new ones are kept aside (displaced), never silently lost.
    other, other_env = host_root(tmp_path, "other")
    shutil.copytree(new / "tor", other / "tor", symlinks=True)
    stray = other / "tor" / "onion" / "hs_ed25519_secret_key"
    stray.write_bytes(b"another key" * 8)
    result = run_script("restore", "--keys-only", str(backup), env=other_env)
    assert result.returncode == 0, result.stderr
    restored = tree_of(other / "tor" / "onion")
    assert {k: v[3] for k, v in restored.items()} == {k: v[3] for k, v in before.items()}
    assert {k: v[:1] for k, v in restored.items()} == {k: v[:1] for k, v in before.items()}
    (displaced,) = (other / "backups").glob("displaced-*/tor/hs_ed25519_secret_key")
    assert displaced.read_bytes() == b"another key" * 8


# --------------------------------------------------------------------------------------------
# nginx's onion server in front of a real Synapse


class OnionEdge(Edge):
    onion_port: int

    def onion_request(
        self,
        client: str,
        method: str,
        path: str,
        *,
        host: str = ONION_HOST,
        body: Any = None,
        token: str | None = None,
    ) -> Response:
        headers = {"Host": host}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.onion_port, timeout=30, source_address=(client, 0)
        )
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()


@pytest.fixture(scope="module")
def synapse(synapse_factory: SynapseFactory) -> SynapseServer:
    return synapse_factory(guard={"network": NETWORK}).start()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def edge(
    synapse: SynapseServer, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OnionEdge]:
    nginx = nginx_binary()
    directory = tmp_path_factory.mktemp("onion-edge")
    include = render_guard_include(
        directory,
        [synapse.base_config, synapse.fragments, synapse.workdir / "zz-test-override.yaml"],
    )
    https_port, http_port, onion_port = free_port(), free_port(), free_port()
    variables = {
        **VARIABLES,
        "MATRIX_SYNAPSE_UPSTREAM": f"127.0.0.1:{synapse.port}",
        "MATRIX_ADMIN_CIDR": ADMIN_RANGE,
    }
    site = render_site(
        directory,
        pki,
        include,
        variables=variables,
        listen={80: f"127.0.0.1:{http_port}", 443: f"127.0.0.1:{https_port}"},
        element_files=element_files(),
    )
    # onion.conf as the image renders it (the same placeholders), on a loopback port.
    template = ONION_TEMPLATE.read_text()
    assert template.count(f"listen {ONION_LISTEN}") == 2
    onion = envsubst(template, variables).replace(ONION_LISTEN, f"127.0.0.1:{onion_port}")
    site.host_path("/etc/nginx/conf.d/onion.conf").write_text(_move_paths(onion, site.root))
    server = OnionEdge(nginx, site, https_port, http_port, pki)
    server.onion_port = onion_port
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def token(edge: OnionEdge, synapse: SynapseServer) -> str:
    user = synapse.new_account("onion")
    response = edge.onion_request(
        TOR_ACCEPTED,
        "POST",
        "/_matrix/client/v3/login",
        body={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": PASSWORD,
        },
    )
    assert response.status == 200, response.body
    return str(response.json()["access_token"])


def test_the_client_api_works_over_the_onion(edge: OnionEdge, token: str) -> None:
    versions = edge.onion_request(TOR_ACCEPTED, "GET", "/_matrix/client/versions")
    assert versions.status == 200, versions.body
    assert "versions" in versions.json()
    whoami = edge.onion_request(
        TOR_ACCEPTED, "GET", "/_matrix/client/v3/account/whoami", token=token
    )
    assert whoami.status == 200, whoami.body
    assert whoami.header("X-Content-Type-Options") == "nosniff"
    assert not whoami.header("Strict-Transport-Security"), "no HSTS on an http:// origin"


def test_client_discovery_names_the_onion_url(edge: OnionEdge) -> None:
    response = edge.onion_request(TOR_ACCEPTED, "GET", "/.well-known/matrix/client")
    assert response.status == 200
    assert response.json() == {"m.homeserver": {"base_url": f"http://{ONION_HOST}"}}


def test_the_admin_api_is_closed_over_the_onion(edge: OnionEdge, synapse: SynapseServer) -> None:
    admin = synapse.new_account("onion-admin", admin=True)
    login = edge.onion_request(
        TOR_ACCEPTED,
        "POST",
        "/_matrix/client/v3/login",
        body={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": admin},
            "password": PASSWORD,
        },
    )
    assert login.status == 200, login.body
    admin_token = str(login.json()["access_token"])
    # Even with a valid admin token: the tor container's address is not the VPN.
    for path in (
        "/_synapse/admin/v1/server_version",
        "/_synapse/admin/v2/users?limit=1",
        "/_synapse/client/synapse_guard/",
    ):
        response = edge.onion_request(TOR_ACCEPTED, "GET", path, token=admin_token)
        assert response.status == 403, (path, response.body)
        assert b"<html>" in response.body, "nginx refused it, Synapse never saw it"


def test_federation_and_unknown_paths_are_closed_over_the_onion(edge: OnionEdge) -> None:
    for path in ("/_matrix/federation/v1/version", "/_matrix/key/v2/server", "/_synapse/metrics"):
        response = edge.onion_request(TOR_ACCEPTED, "GET", path)
        assert response.status == 404, path
    alerts = edge.onion_request(TOR_ACCEPTED, "POST", "/_synapse/client/synapse_guard/alerts")
    assert alerts.status == 404


def test_a_tor_address_missing_from_the_allowlist_is_refused_everywhere(edge: OnionEdge) -> None:
    for path in (
        "/_matrix/client/versions",
        "/_matrix/client/v3/login",
        "/.well-known/matrix/client",
        "/config.json",
        "/",
    ):
        response = edge.onion_request(TOR_NOT_ALLOWED, "GET", path)
        assert response.status == 403, path


def test_element_config_for_the_onion_host(edge: OnionEdge) -> None:
    response = edge.onion_request(TOR_ACCEPTED, "GET", "/config.json")
    assert response.status == 200
    assert response.header("Content-Type").startswith("application/json")
    config = response.json()
    assert config["default_server_config"]["m.homeserver"]["base_url"] == f"http://{ONION_HOST}"
    assert config["permalink_prefix"] == f"http://{ONION_HOST}"
    # Everything else is the deploy's config.json: the onion's cannot drift from it.
    values = {**VARIABLES, "SERVER_NAME": MATRIX_DOMAIN}
    deployed = json.loads(
        re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], ELEMENT_CONFIG.read_text())
    )
    deployed["default_server_config"]["m.homeserver"]["base_url"] = f"http://{ONION_HOST}"
    deployed["permalink_prefix"] = f"http://{ONION_HOST}"
    assert config == deployed


def test_element_is_served_for_the_onion_host_with_its_headers(edge: OnionEdge) -> None:
    response = edge.onion_request(TOR_ACCEPTED, "GET", "/")
    assert response.status == 200
    assert b"Element" in response.body
    csp = response.header("Content-Security-Policy")
    assert "connect-src 'self';" in csp, "the API is on the same onion origin"
    assert "frame-ancestors 'none'" in csp
    assert response.header("X-Frame-Options") == "DENY"
    assert response.header("Cache-Control") == "no-cache"
    post = edge.onion_request(TOR_ACCEPTED, "POST", "/index.html", body={})
    assert post.status == 403


def test_other_host_names_on_the_onion_listener_get_no_answer(edge: OnionEdge) -> None:
    # Not a v3 name: too short, or with digits outside base32 (0, 1, 8, 9).
    for host in (MATRIX_DOMAIN, "localhost", "a" * 55 + ".onion", "1" * 56 + ".onion"):
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            edge.onion_request(TOR_ACCEPTED, "GET", "/_matrix/client/versions", host=host)


def test_gixy_reports_no_issue_with_the_onion_server(edge: OnionEdge) -> None:
    gixy = tool("gixy", "pip install gixy-ng, in the test extras")
    result = subprocess.run(
        [gixy, "-f", "json", str(edge.site.conf)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip(), result.stderr
    assert json.loads(result.stdout) == []


def test_the_onion_server_shares_the_https_servers_locations() -> None:
    include = "include /etc/nginx/matrix-api.conf;"
    assert include in (NGINX_DIR / "conf.d" / "matrix.conf").read_text()
    assert include in ONION_TEMPLATE.read_text()
    api = (NGINX_DIR / "matrix-api.conf").read_text()
    assert "${" not in api, "matrix-api.conf is used as is: no placeholder"


# --------------------------------------------------------------------------------------------
# The compose service


COMPOSE = load_compose()


def test_tor_is_an_optional_profile_with_every_hardening() -> None:
    tor = COMPOSE["services"]["tor"]
    assert tor["profiles"] == ["onion"]
    assert tor["user"] == "9050:9050"
    assert tor["read_only"] is True
    assert tor["cap_drop"] == ["ALL"]
    assert "cap_add" not in tor
    assert "no-new-privileges:true" in tor["security_opt"]
    # Limits (their bounds: test_compose.py's per-service tests).
    assert tor["mem_limit"]
    assert tor["cpus"]
    assert tor["pids_limit"]
    assert tor["healthcheck"]["test"][0] == "CMD-SHELL"
    assert tor["logging"]["driver"] == "local"
    assert tor["restart"] == "unless-stopped"
    assert not tor.get("ports"), "an onion service publishes nothing"
    dockerfile = (DEPLOY / "tor" / "Dockerfile").read_text()
    assert "USER 9050:9050" in dockerfile
    assert re.search(r"^FROM \$\{DEBIAN_IMAGE\}$", dockerfile, re.M)


def test_tor_reaches_nginx_on_an_internal_network_of_their_own() -> None:
    services = COMPOSE["services"]
    onion = COMPOSE["networks"]["onion"]
    assert onion["internal"] is True
    assert onion["ipam"]["config"] == [{"subnet": ONION_SUBNET}]
    on_onion = {name for name, s in services.items() if "onion" in (s.get("networks") or {})}
    assert on_onion == {"tor", "nginx"}
    assert services["tor"]["networks"]["onion"]["ipv4_address"] == TOR_ADDRESS
    nginx_address = services["nginx"]["networks"]["onion"]["ipv4_address"]
    assert f"{nginx_address}:80" == ONION_LISTEN
    # Tor's way to the Tor network: egress, where containers cannot reach each other.
    assert set(services["tor"]["networks"]) == {"onion", "egress"}
    assert COMPOSE["networks"]["egress"]["driver_opts"]["com.docker.network.bridge.enable_icc"] == (
        "false"
    )


def test_tor_state_and_keys_are_on_the_data_volume_and_in_the_backup() -> None:
    services = COMPOSE["services"]
    tor_mounts = mounts(services["tor"])
    assert tor_mounts["/var/lib/tor"].endswith("/tor")
    assert tor_mounts["/etc/tor/torrc"].endswith("tor/torrc")
    backup = services["backup"]
    assert mounts(backup)[backup["environment"]["TOR_DIR"]] == tor_mounts["/var/lib/tor"]
    nginx_mounts = mounts(services["nginx"])
    assert nginx_mounts["/etc/nginx/templates/onion.conf.template"].endswith("conf.d/onion.conf")
    assert nginx_mounts["/etc/nginx/matrix-api.conf"].endswith("nginx/matrix-api.conf")
    assert "tor" in COMPOSE_FILE.read_text()
