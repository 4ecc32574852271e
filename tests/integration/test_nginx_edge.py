"""The nginx edge refuses, before Synapse, exactly the addresses the guard refuses.

Each case writes Synapse config files (the repository's `homeserver.d/` with the guard's
`network:` replaced), renders them with `synapse-guard render nginx`, checks the result with
`nginx -t`, and runs a real nginx on 127.0.0.1 with it. Clients connect from different
loopback source addresses: 127.0.0.2 to 127.0.0.9 stand in for clients inside and outside the
allow-lists, ::1 for an IPv6 client, a dual-stack listener turns 127.0.0.x into
::ffff:127.0.0.x, and a UNIX socket gives a peer that is not an IP address. Every verdict is
checked against the case's expectation and against `decide_address`, the guard's own decision,
fed the same configuration and the same GeoIP database.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from synapse_guard.cli.main import main as synapse_guard_cli
from synapse_guard.geoip import load_geoip_database
from synapse_guard.network import compile_network_rules, decide_address
from synapse_guard.synapse_config import GuardEntry, load_guard_entry
from tests.geoip_factory import write_country_db
from tests.integration.conftest import require
from tests.integration.harness import (
    HOMESERVER_D,
    free_port,
    guard_config_from_fragments,
    stop_gracefully,
    wait_until_listening,
)

GEOIP2_MODULE = Path("/usr/lib/nginx/modules/ngx_http_geoip2_module.so")
SPOOFED = "127.0.0.5"  # sent in X-Forwarded-For / X-Real-IP: the edge must judge the peer only

V4_CLIENTS = [f"127.0.0.{n}" for n in range(2, 10)]
MAPPED_CLIENTS = ["::ffff:127.0.0.2", "::ffff:127.0.0.5", "::ffff:127.0.0.6", "::ffff:127.0.0.9"]
IPV6_CLIENT = "::1"
UNIX_CLIENT = "unix:"  # what nginx calls a UNIX-socket peer; not an IP address


def _ipv6_loopback() -> bool:
    """::1 and IPv4-mapped listening both work (IPv6 may be disabled in a container)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::ffff:127.0.0.1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_loopback()
CLIENTS = [*V4_CLIENTS, *([IPV6_CLIENT, *MAPPED_CLIENTS] if IPV6 else []), UNIX_CLIENT]


def free_port_v6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class EdgeCase:
    """A `network:` section and the clients it must refuse; every other client is accepted."""

    network: dict[str, Any]
    refused: frozenset[str]
    geoip2: bool = True
    countries: dict[str, list[str]] = field(default_factory=dict)  # the GeoIP database


# 127.0.0.5 and .9 are in France, .6 in the US; .7 and ::1 are in no country.
COUNTRIES = {"FR": ["127.0.0.5/32", "127.0.0.9/32"], "US": ["127.0.0.6/32"]}
COUNTRY_NETWORK = {
    "allow_countries": ["FR"],
    "allow_cidrs": ["127.0.0.8/32"],
    "deny_cidrs": ["127.0.0.9/32"],  # in France, but denied: deny comes first
}

CASES = {
    # A team VPN with two addresses carved out: .2/.3 are denied inside the allowed /29, and .3
    # even though a more specific allow entry names it (one geo block would let the /32 win).
    "allow and deny CIDRs": EdgeCase(
        network={
            "allow_cidrs": ["127.0.0.0/29", "127.0.0.3/32", "fd00:8::/64"],
            "deny_cidrs": ["127.0.0.2/31"],
        },
        refused=frozenset(
            {"127.0.0.2", "127.0.0.3", "127.0.0.8", "127.0.0.9", "::1", "::ffff:127.0.0.2"}
            | {"::ffff:127.0.0.9", UNIX_CLIENT}
        ),
    ),
    # Only deny rules: everything else is accepted. ::ffff:127.0.0.8/127 is 127.0.0.8/31.
    "deny only": EdgeCase(
        network={"deny_cidrs": ["127.0.0.6/32", "::1/128", "::ffff:127.0.0.8/127"]},
        refused=frozenset(
            {"127.0.0.6", "127.0.0.8", "127.0.0.9", "::1", "::ffff:127.0.0.6", "::ffff:127.0.0.9"}
            | {UNIX_CLIENT}
        ),
    ),
    # Whole address families: ::/0 covers IPv6 clients only (IPv4-mapped ones count as IPv4),
    # and 0.0.0.0/0 must not let a UNIX-socket peer in (nginx's geo would place it there).
    "whole families": EdgeCase(
        network={"allow_cidrs": ["0.0.0.0/0", "::/0"], "deny_cidrs": ["::/0", "127.0.0.9/32"]},
        refused=frozenset({"127.0.0.9", "::1", "::ffff:127.0.0.9", UNIX_CLIENT}),
    ),
    # IPv6 allow-list, IPv4 given in IPv4-mapped form.
    "IPv6 and mapped CIDRs": EdgeCase(
        network={"allow_cidrs": ["::1/128", "::ffff:127.0.0.4/126"]},
        refused=frozenset(
            {"127.0.0.2", "127.0.0.3", "127.0.0.8", "127.0.0.9", "::ffff:127.0.0.2"}
            | {"::ffff:127.0.0.9", UNIX_CLIENT}
        ),
    ),
    "allowed countries": EdgeCase(
        network=COUNTRY_NETWORK,
        countries=COUNTRIES,
        refused=frozenset(
            {"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.6", "127.0.0.7", "127.0.0.9"}
            | {"::1", "::ffff:127.0.0.2", "::ffff:127.0.0.6", "::ffff:127.0.0.9", UNIX_CLIENT}
        ),
    ),
    # Without the geoip2 module the edge refuses only what is denied; Synapse decides the rest.
    "allowed countries, no geoip2": EdgeCase(
        network=COUNTRY_NETWORK,
        countries=COUNTRIES,
        geoip2=False,
        refused=frozenset({"127.0.0.9", "::ffff:127.0.0.9", UNIX_CLIENT}),
    ),
    "no rules": EdgeCase(network={}, refused=frozenset({UNIX_CLIENT})),
}


def nginx_binary() -> str:
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")
    if found is None:
        require("nginx is not installed (scripts/install-system-deps installs it)")
    assert found is not None
    return found


def needs_geoip2(case: EdgeCase) -> bool:
    return case.geoip2 and bool(case.network.get("allow_countries"))


def write_synapse_config(directory: Path, case: EdgeCase) -> list[str]:
    """homeserver.yaml plus a copy of homeserver.d/ whose guard entry has the case's network."""
    network = dict(case.network)
    if case.countries:
        network["geoip_database"] = str(
            write_country_db(directory / "country.mmdb", case.countries)
        )
    (directory / "homeserver.yaml").write_text(
        yaml.safe_dump({"server_name": "guard.test", "report_stats": False})
    )
    fragments = directory / "homeserver.d"
    shutil.copytree(HOMESERVER_D, fragments)
    guard = {**guard_config_from_fragments(), "network": network}
    (fragments / "90-modules.yaml").write_text(
        yaml.safe_dump({"modules": [{"module": "synapse_guard.Guard", "config": guard}]})
    )
    return [str(directory / "homeserver.yaml"), str(fragments)]


def render(directory: Path, case: EdgeCase) -> tuple[Path, GuardEntry]:
    """Render with the CLI, as an operator would; return the include and the guard's config."""
    config_paths = write_synapse_config(directory, case)
    include = directory / "synapse-guard.conf"
    args = ["render", "nginx", *(a for p in config_paths for a in ("-c", p)), "-o", str(include)]
    if not case.geoip2:
        args.append("--no-geoip2")
    assert synapse_guard_cli(args) == 0
    return include, load_guard_entry(config_paths)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(self.unix_path))


class NginxEdge:
    """A private nginx (prefix, pid, logs and temp files in `directory`) including `include`."""

    def __init__(self, nginx: str, directory: Path, include: Path, geoip2: bool) -> None:
        self.nginx = nginx
        self.directory = directory
        self.port = free_port()
        self.mapped_port = free_port()
        self.port_v6 = free_port_v6() if IPV6 else 0
        self.socket_path = directory / "nginx.sock"
        if len(os.fsencode(self.socket_path)) > 100:  # sun_path holds 108 bytes
            self.socket_path = Path(tempfile.mkdtemp(prefix="sg-nginx-", dir="/tmp")) / "s.sock"
        self.error_log = directory / "error.log"
        self.conf = directory / "nginx.conf"
        self.conf.write_text(self._conf_text(include, geoip2))
        self.process: subprocess.Popen[bytes] | None = None

    def _conf_text(self, include: Path, geoip2: bool) -> str:
        d = self.directory
        v6 = (
            f"listen [::1]:{self.port_v6};\n"
            f"        listen [::ffff:127.0.0.1]:{self.mapped_port} ipv6only=off;"
            if IPV6
            else ""
        )
        return f"""
{f"load_module {GEOIP2_MODULE};" if geoip2 else ""}
{"user root root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log {self.error_log} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    include {include};

    server {{
        listen 127.0.0.1:{self.port};
        {v6}
        listen unix:{self.socket_path};
        add_header X-Peer $remote_addr always;
        if ($synapse_guard_refused) {{ return 403; }}
        location / {{ return 204; }}
    }}
}}
"""

    def _command(self, *extra: str) -> list[str]:
        d = self.directory
        return [self.nginx, "-p", f"{d}/", "-c", str(self.conf), "-e", str(self.error_log), *extra]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command("-t"), capture_output=True, text=True, timeout=30, check=False
        )

    def start(self) -> NginxEdge:
        self.process = subprocess.Popen(self._command("-g", "daemon off;"))
        try:
            wait_until_listening(self.process, self.port, self.log)
        except RuntimeError as e:
            pytest.fail(f"nginx: {e}")
        return self

    def stop(self) -> None:
        stop_gracefully(self.process)  # SIGQUIT: the master stops its workers first
        if self.socket_path.parent != self.directory:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def log(self) -> str:
        return self.error_log.read_text() if self.error_log.exists() else "(no error log)"

    def connection(self, client: str) -> http.client.HTTPConnection:
        if client == UNIX_CLIENT:
            return UnixHTTPConnection(self.socket_path)
        if client == IPV6_CLIENT:
            return http.client.HTTPConnection("::1", self.port_v6, timeout=10)
        address = ipaddress.ip_address(client)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            source = str(address.ipv4_mapped)
            return http.client.HTTPConnection(
                "127.0.0.1", self.mapped_port, timeout=10, source_address=(source, 0)
            )
        return http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=10, source_address=(client, 0)
        )

    def request(self, client: str) -> tuple[int, str]:
        """(status, the address nginx saw) for a request from `client`."""
        connection = self.connection(client)
        try:
            connection.request(
                "GET",
                "/_matrix/client/v3/login",
                headers={"X-Forwarded-For": SPOOFED, "X-Real-IP": SPOOFED},
            )
            response = connection.getresponse()
            response.read()
            return response.status, response.getheader("X-Peer", "")
        finally:
            connection.close()


@pytest.fixture(scope="module")
def nginx() -> str:
    return nginx_binary()


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request: pytest.FixtureRequest) -> EdgeCase:
    case = CASES[request.param]
    if needs_geoip2(case) and not GEOIP2_MODULE.exists():
        require(
            f"{GEOIP2_MODULE} is missing (Debian: apt-get install libnginx-mod-http-geoip2, "
            "which scripts/install-system-deps installs)"
        )
    return case


@pytest.fixture
def edge(
    nginx: str, case: EdgeCase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NginxEdge, GuardEntry]]:
    directory = tmp_path_factory.mktemp("nginx")
    include, entry = render(directory, case)
    server = NginxEdge(nginx, directory, include, geoip2=needs_geoip2(case))
    try:
        yield server, entry
    finally:
        server.stop()


def guard_refuses(entry: GuardEntry, client: str) -> bool:
    """What the guard inside Synapse decides for this address: the one source of truth."""
    policy = entry.config.network
    database = load_geoip_database(policy, metrics_enabled=False)
    country_of = database.country if database is not None else None
    return not decide_address(client, compile_network_rules(policy), country_of).allowed


def test_rendered_include_passes_nginx_t(edge: tuple[NginxEdge, GuardEntry]) -> None:
    server, _ = edge
    result = server.test_config()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "test is successful" in output
    assert "[warn]" not in output, output
    assert "[emerg]" not in output, output


def test_edge_refuses_what_the_policy_refuses(
    edge: tuple[NginxEdge, GuardEntry], case: EdgeCase
) -> None:
    server, entry = edge
    server.start()
    seen = {client: server.request(client) for client in CLIENTS}

    # Each request really came from the address it stands for.
    assert {client: peer for client, (_, peer) in seen.items()} == {c: c for c in CLIENTS}
    refused = {client for client, (status, _) in seen.items() if status == 403}
    assert {status for status, _ in seen.values()} <= {204, 403}
    assert refused == case.refused & set(CLIENTS)

    guard = {client for client in CLIENTS if guard_refuses(entry, client)}
    if case.geoip2 or not case.network.get("allow_countries"):
        # The edge and the guard are one decision.
        assert refused == guard
    else:
        # Without geoip2 the edge refuses less, never more: the rest is left to Synapse.
        assert refused < guard
