"""The deploy's nginx in front of a real Synapse with the guard: what a client really meets.

deploy/nginx/ is rendered as in test_nginx_static.py, with its ports moved to free loopback
ports, Synapse's address as the upstream and a certificate for matrix.test and element.test
from a test CA that every client verifies. The guard's policy include is rendered by
`synapse-guard render nginx` from the very config files Synapse was started with:

    network: {allow_cidrs: [127.0.0.2/32, 127.0.0.3/32], deny_cidrs: [127.0.0.3/32]}

so 127.0.0.2 is the one accepted client, 127.0.0.3 is denied (although also allowed), and
every other address (127.0.0.4, 127.0.0.5, 127.0.0.1) is not allowed. Clients bind their
socket to those source addresses; all traffic stays on loopback.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from synapse_guard.compat import synapse_version
from tests.deploy.test_nginx_static import (
    ELEMENT_CONFIG,
    ELEMENT_DOMAIN,
    MATRIX_DOMAIN,
    PKI,
    VARIABLES,
    Site,
    make_pki,
    nginx_binary,
    nginx_test,
    render_guard_include,
    render_site,
)
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import (
    PASSWORD,
    SynapseServer,
    free_port,
    stop_gracefully,
    wait_until_listening,
)
from tests.integration.test_element_x import NATIVE_SLIDING_SYNC_SINCE, ROOM_LIST, SLIDING_SYNC

ACCEPTED = "127.0.0.2"
DENIED = "127.0.0.3"  # in deny_cidrs (and in allow_cidrs: deny wins)
NOT_ALLOWED = "127.0.0.4"
OTHER = "127.0.0.5"
NETWORK = {"allow_cidrs": ["127.0.0.2/32", "127.0.0.3/32"], "deny_cidrs": ["127.0.0.3/32"]}
ADMIN_RANGE = "127.0.0.2/32"  # MATRIX_ADMIN_CIDR: the "VPN" the admin API is open to
LOGIN = "/_matrix/client/v3/login"
PLACEHOLDER_ELEMENT_CONFIG = {
    "default_server_config": {"m.homeserver": {"base_url": f"https://{MATRIX_DOMAIN}"}},
    "disable_guests": True,
}


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def json(self) -> Any:
        return json.loads(self.body)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS for `host` (SNI, Host header, certificate name) at 127.0.0.1, from `source`."""

    def __init__(self, host: str, port: int, source: str, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=30, context=context, source_address=(source, 0))
        self.tls_context = context

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), 30, self.source_address)
        self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)


class Edge:
    """A private nginx running the deploy's configuration."""

    def __init__(self, nginx: str, site: Site, https_port: int, http_port: int, pki: PKI) -> None:
        self.nginx = nginx
        self.site = site
        self.https_port = https_port
        self.http_port = http_port
        self.pki = pki
        self.console = site.directory / "console.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Edge:
        result = nginx_test(self.nginx, self.site)
        assert result.returncode == 0, result.stdout + result.stderr
        with self.console.open("ab") as console:
            self.process = subprocess.Popen(
                self.site.command(self.nginx, "-g", "daemon off;"),
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_listening(self.process, self.https_port, self.log)
        except RuntimeError as e:
            pytest.fail(f"nginx: {e}")
        return self

    def stop(self) -> None:
        stop_gracefully(self.process)  # SIGQUIT: the master stops its workers first

    def log(self) -> str:
        parts = [p.read_text() for p in (self.console, self.site.error_log) if p.exists()]
        return "\n".join(parts) or "(no nginx output)"

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca))

    def request(
        self,
        client: str,
        method: str,
        path: str,
        *,
        host: str = MATRIX_DOMAIN,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> Response:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        connection = PinnedHTTPSConnection(host, self.https_port, client, self.client_context())
        try:
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()

    def http_request(self, client: str, path: str, host: str = MATRIX_DOMAIN) -> Response:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.http_port, timeout=30, source_address=(client, 0)
        )
        try:
            connection.request("GET", path, headers={"Host": host})
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()

    def login(self, client: str, user: str, **headers: str) -> Response:
        return self.request(
            client,
            "POST",
            LOGIN,
            body={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": PASSWORD,
            },
            headers=headers,
        )

    def login_log(self) -> list[str]:
        path = self.site.host_path("/var/log/nginx/login.log")
        return path.read_text().splitlines() if path.exists() else []


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def synapse(synapse_factory: SynapseFactory) -> SynapseServer:
    return synapse_factory(guard={"network": NETWORK}).start()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def element_files() -> dict[str, bytes]:
    """The deployment's Element config (its ${...} placeholders filled in), or a placeholder."""
    if ELEMENT_CONFIG.exists():
        values = {**VARIABLES, "SERVER_NAME": MATRIX_DOMAIN}
        config = re.sub(
            r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), ELEMENT_CONFIG.read_text()
        ).encode()
    else:
        config = json.dumps(PLACEHOLDER_ELEMENT_CONFIG).encode()
    return {"config.json": config, "index.html": b"<!doctype html><title>Element</title>\n"}


def start_edge(
    nginx: str, synapse: SynapseServer, pki: PKI, directory: Path, admin_range: str
) -> Edge:
    # The include comes from exactly the files Synapse was started with.
    config_paths = [
        synapse.base_config,
        synapse.fragments,
        synapse.workdir / "zz-test-override.yaml",
    ]
    include = render_guard_include(directory, config_paths)
    https_port, http_port = free_port(), free_port()
    variables = {
        **VARIABLES,
        "MATRIX_SYNAPSE_UPSTREAM": f"127.0.0.1:{synapse.port}",
        "MATRIX_ADMIN_CIDR": admin_range,
    }
    site = render_site(
        directory,
        pki,
        include,
        variables=variables,
        listen={80: f"127.0.0.1:{http_port}", 443: f"127.0.0.1:{https_port}"},
        element_files=element_files(),
    )
    return Edge(nginx, site, https_port, http_port, pki).start()


@pytest.fixture(scope="module")
def edge(
    synapse: SynapseServer, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    server = start_edge(nginx_binary(), synapse, pki, tmp_path_factory.mktemp("edge"), ADMIN_RANGE)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin_token(edge: Edge, synapse: SynapseServer) -> str:
    admin = synapse.new_account("admin", admin=True)  # admin provisioning, straight to Synapse
    response = edge.login(ACCEPTED, admin)
    assert response.status == 200, response.body
    return str(response.json()["access_token"])


def login_decisions(synapse: SynapseServer) -> dict[tuple[str, str], float]:
    """Every (outcome, reason) the guard counted for logins."""
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(synapse.metrics_text()):
        for sample in family.samples:
            if sample.name == "synapse_guard_decisions_total" and sample.labels["check"] == "login":
                counts[(sample.labels["outcome"], sample.labels["reason"])] = sample.value
    return counts


def is_nginx_page(response: Response) -> bool:
    """nginx's own error page (HTML), not Synapse's JSON error."""
    return response.header("Content-Type").startswith("text/html") and b"<html>" in response.body


# --------------------------------------------------------------------------------------------
# TLS


def _old_tls_context(version: ssl.TLSVersion, ca: Path) -> ssl.SSLContext:
    """A client that offers only `version`; security level 0, so OpenSSL lets it try."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    return context


def _control_server(pki: PKI) -> tuple[socket.socket, threading.Thread]:
    """A TLS server that still accepts TLS 1.0: proves the old-protocol client works here."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.fullchain), str(pki.key))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _handshake(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), 10, (ACCEPTED, 0)) as sock,
        context.wrap_socket(sock, server_hostname=MATRIX_DOMAIN) as tls,
    ):
        return str(tls.version())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # the point
@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1, "TLSv1"), (ssl.TLSVersion.TLSv1_1, "TLSv1.1")],
    ids=["TLSv1.0", "TLSv1.1"],
)
def test_tls_1_0_and_1_1_are_refused_by_the_server(
    edge: Edge, pki: PKI, version: ssl.TLSVersion, name: str
) -> None:
    context = _old_tls_context(version, pki.ca)
    # The same client completes a handshake with a server that allows the old protocol: its
    # own OpenSSL does not stand in the way.
    listener, thread = _control_server(pki)
    with listener:
        assert _handshake(listener.getsockname()[1], context) == name
        thread.join(timeout=10)
    # nginx answers with a protocol_version alert: the refusal comes from the server.
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(edge.https_port, context)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
    ids=["TLSv1.2", "TLSv1.3"],
)
def test_tls_1_2_and_1_3_are_accepted(
    edge: Edge, pki: PKI, version: ssl.TLSVersion, name: str
) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.minimum_version = context.maximum_version = version
    assert _handshake(edge.https_port, context) == name


def test_unknown_names_get_no_handshake(edge: Edge, pki: PKI) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", edge.https_port), 10) as sock,
        pytest.raises(ssl.SSLError) as refused,
    ):
        context.wrap_socket(sock, server_hostname="scanner.example")
    assert refused.value.reason == "TLSV1_UNRECOGNIZED_NAME", refused.value
    # Another name in the Host header over a connection opened for ours: 421, nothing served.
    misdirected = edge.request(ACCEPTED, "GET", "/", headers={"Host": "scanner.example"})
    assert misdirected.status == 421


# --------------------------------------------------------------------------------------------
# Headers, closed endpoints, HTTP


def test_hsts_on_every_response(edge: Edge) -> None:
    responses = {
        "client API": edge.request(ACCEPTED, "GET", "/_matrix/client/versions"),
        "refused": edge.request(DENIED, "GET", "/_matrix/client/versions"),
        "closed": edge.request(ACCEPTED, "GET", "/_matrix/federation/v1/version"),
        "element": edge.request(ACCEPTED, "GET", "/config.json", host=ELEMENT_DOMAIN),
    }
    assert [r.status for r in responses.values()] == [200, 403, 404, 200]
    for what, response in responses.items():
        hsts = response.header("Strict-Transport-Security")
        assert "max-age=63072000" in hsts, what
        assert "includeSubDomains" in hsts, what
        assert response.header("Server") == "nginx", what  # server_tokens off: no version


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/federation/v1/version",
        "/_matrix/federation/v1/query/profile?user_id=@a:matrix.test",
        "/_matrix/key/v2/server",
        "/.well-known/matrix/server",
        "/_synapse/metrics",
        "/health",
        # The guard's alerts endpoint, for Alertmanager on the monitoring network only,
        # however the path is spelled.
        "/_synapse/client/synapse_guard/alerts",
        "/_synapse/client/synapse_guard/alerts/",
        "//_synapse/client//synapse_guard/alerts",
        "/_synapse/client/synapse_guard/%61lerts",
        "/_synapse/client/synapse_guard/./alerts",
    ],
)
def test_federation_and_unpublished_paths_are_404(edge: Edge, path: str) -> None:
    response = edge.request(ACCEPTED, "GET", path)
    assert response.status == 404
    assert is_nginx_page(response), response.body  # nginx answered, Synapse was not asked


def test_http_redirects_to_https_and_serves_acme(edge: Edge) -> None:
    redirect = edge.http_request(OTHER, "/_matrix/client/versions?x=1")
    assert redirect.status == 301
    assert redirect.header("Location") == f"https://{MATRIX_DOMAIN}/_matrix/client/versions?x=1"
    challenge = edge.site.host_path("/var/www/acme/.well-known/acme-challenge/token123")
    challenge.write_text("token123.thumbprint")
    acme = edge.http_request(OTHER, "/.well-known/acme-challenge/token123", host=ELEMENT_DOMAIN)
    assert (acme.status, acme.body) == (200, b"token123.thumbprint")
    # Unknown names on port 80: connection closed without an answer (444).
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        edge.http_request(OTHER, "/", host="scanner.example")


def test_element_config_is_served_with_its_security_headers(edge: Edge) -> None:
    response = edge.request(ACCEPTED, "GET", "/config.json", host=ELEMENT_DOMAIN)
    assert response.status == 200
    config = response.json()
    assert config == json.loads(element_files()["config.json"])
    # The homeserver Element is configured for is one the CSP lets it talk to.
    homeserver = config["default_server_config"]["m.homeserver"]["base_url"].rstrip("/")
    assert response.header("Content-Type") == "application/json"
    assert response.header("Cache-Control") == "no-cache"
    csp = response.header("Content-Security-Policy")
    assert "frame-ancestors 'none'" in csp
    assert f"connect-src 'self' {homeserver};" in csp
    assert homeserver == f"https://{MATRIX_DOMAIN}"
    assert response.header("X-Content-Type-Options") == "nosniff"
    assert response.header("Referrer-Policy") == "no-referrer"
    assert "camera=(self)" in response.header("Permissions-Policy")
    index = edge.request(ACCEPTED, "GET", "/", host=ELEMENT_DOMAIN)
    assert index.status == 200
    assert b"Element" in index.body
    # Static files only; refused addresses get nothing.
    assert edge.request(ACCEPTED, "POST", "/config.json", host=ELEMENT_DOMAIN).status == 403
    assert edge.request(DENIED, "GET", "/config.json", host=ELEMENT_DOMAIN).status == 403


# --------------------------------------------------------------------------------------------
# The address the guard judges


def test_a_spoofed_x_forwarded_for_does_not_change_the_address_synapse_sees(
    edge: Edge, synapse: SynapseServer, admin_token: str
) -> None:
    user = synapse.new_account("spoof")
    spoofed = {"X-Forwarded-For": DENIED, "X-Real-IP": DENIED, "Forwarded": f"for={DENIED}"}

    # Control: straight to Synapse, the same header makes the guard judge 127.0.0.3 (denied).
    before = login_decisions(synapse)
    direct = requests.post(
        f"{synapse.url}{LOGIN}",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": PASSWORD,
        },
        headers={"X-Forwarded-For": DENIED},
        timeout=30,
    )
    assert direct.status_code == 403
    after_direct = login_decisions(synapse)
    assert after_direct.get(("deny", "ip_denied"), 0) == before.get(("deny", "ip_denied"), 0) + 1

    # Through nginx, from 127.0.0.2: the header is overwritten, the guard judges 127.0.0.2.
    response = edge.login(ACCEPTED, user, **spoofed)
    assert response.status == 200, response.body
    after = login_decisions(synapse)
    assert after.get(("allow", "ok"), 0) == after_direct.get(("allow", "ok"), 0) + 1
    assert after.get(("deny", "ip_denied"), 0) == after_direct.get(("deny", "ip_denied"), 0)

    # And Synapse recorded the session from 127.0.0.2 only (the admin API, through nginx).
    token = response.json()["access_token"]
    whoami = edge.request(
        ACCEPTED, "GET", "/_matrix/client/v3/account/whoami", token=token, headers=spoofed
    )
    assert whoami.status == 200, whoami.body
    user_id = synapse.user_id(user)
    seen: set[str] = set()
    deadline = time.monotonic() + 30  # Synapse writes client IPs in batches
    while time.monotonic() < deadline and not seen:
        whois = edge.request(
            ACCEPTED, "GET", f"/_synapse/admin/v1/whois/{user_id}", token=admin_token
        )
        assert whois.status == 200, whois.body
        seen = {
            connection["ip"]
            for device in whois.json()["devices"].values()
            for session in device["sessions"]
            for connection in session["connections"]
        }
        time.sleep(0.5)
    assert seen == {ACCEPTED}


@pytest.mark.parametrize("client", [DENIED, NOT_ALLOWED, OTHER])
def test_a_refused_address_is_stopped_at_nginx(
    edge: Edge, synapse: SynapseServer, client: str
) -> None:
    user = synapse.new_account("refused")
    before = login_decisions(synapse)
    # The client even claims to be the accepted address.
    response = edge.login(client, user, **{"X-Forwarded-For": ACCEPTED})
    assert response.status == 403
    assert is_nginx_page(response), response.body  # not Synapse's M_FORBIDDEN
    # Synapse never saw it: no login decision of any kind was counted.
    assert login_decisions(synapse) == before
    # The other Matrix paths are closed to it too.
    for path in ("/_matrix/client/versions", "/_matrix/media/v3/config", "/_synapse/client/x"):
        assert edge.request(client, "GET", path).status == 403, path
    # fail2ban's log has the refusal: time, address, status, path.
    assert edge.login_log()[-1].split(" ")[1:] == [client, "403", LOGIN]


# --------------------------------------------------------------------------------------------
# The admin API


def test_admin_api_only_from_the_admin_range(
    edge: Edge,
    synapse: SynapseServer,
    pki: PKI,
    admin_token: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    version = "/_synapse/admin/v1/server_version"
    # From the range (127.0.0.2, also accepted by the guard): Synapse answers.
    allowed = edge.request(ACCEPTED, "GET", version, token=admin_token)
    assert allowed.status == 200, allowed.body
    assert "server_version" in allowed.json()
    # From elsewhere, even with the admin's token: 403 at nginx.
    for client in (NOT_ALLOWED, OTHER, DENIED):
        refused = edge.request(client, "GET", version, token=admin_token)
        assert refused.status == 403
        assert is_nginx_page(refused)

    # The range itself: with the admin range moved to 127.0.0.8/32, the accepted client keeps
    # the client API but loses the admin API.
    other = start_edge(
        nginx_binary(), synapse, pki, tmp_path_factory.mktemp("edge-admin"), "127.0.0.8/32"
    )
    try:
        assert other.request(ACCEPTED, "GET", "/_matrix/client/versions").status == 200
        refused = other.request(ACCEPTED, "GET", version, token=admin_token)
        assert refused.status == 403
        assert is_nginx_page(refused)
    finally:
        other.stop()


# --------------------------------------------------------------------------------------------
# Element X: discovery, then its first calls through nginx


def test_element_x_discovers_the_server_and_syncs_through_nginx(
    edge: Edge, synapse: SynapseServer
) -> None:
    discovery = edge.request(ACCEPTED, "GET", "/.well-known/matrix/client")
    assert discovery.status == 200, discovery.body
    assert discovery.header("Content-Type") == "application/json"
    assert discovery.header("Access-Control-Allow-Origin") == "*"
    assert "max-age=63072000" in discovery.header("Strict-Transport-Security")
    assert discovery.header("X-Content-Type-Options") == "nosniff"
    base_url = discovery.json()["m.homeserver"]["base_url"]
    assert base_url == f"https://{MATRIX_DOMAIN}"
    # Refused addresses are not even told where the homeserver is.
    refused = edge.request(DENIED, "GET", "/.well-known/matrix/client")
    assert refused.status == 403
    assert is_nginx_page(refused)

    versions = edge.request(ACCEPTED, "GET", "/_matrix/client/versions")
    assert versions.status == 200
    native = synapse_version() >= NATIVE_SLIDING_SYNC_SINCE
    assert (
        versions.json()["unstable_features"].get("org.matrix.simplified_msc3575", False) is native
    )
    login = edge.login(ACCEPTED, synapse.new_account("elementx"))
    assert login.status == 200, login.body
    token = login.json()["access_token"]
    if not native:
        return  # Element X cannot sync with this Synapse (tests/integration/test_element_x.py)
    path = f"{SLIDING_SYNC}?timeout=0"
    sync = edge.request(ACCEPTED, "POST", path, body=ROOM_LIST, token=token)
    assert sync.status == 200, sync.body
    assert sync.json()["pos"]
    stolen = edge.request(NOT_ALLOWED, "POST", path, body=ROOM_LIST, token=token)
    assert stolen.status == 403
    assert is_nginx_page(stolen)  # refused at the edge, before Synapse


# --------------------------------------------------------------------------------------------
# Rate limit and the login log (last: it uses up 127.0.0.2's login budget)


def test_login_rate_limit_and_the_login_log(edge: Edge) -> None:
    statuses = [
        edge.request(ACCEPTED, "GET", f"{LOGIN}?access_token=secret").status for _ in range(20)
    ]
    assert statuses[0] == 200
    assert 429 in statuses
    assert set(statuses) == {200, 429}

    lines = edge.login_log()
    assert lines
    for line in lines:
        timestamp, _address, status, path = line.split(" ")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", timestamp)
        assert status in ("403", "429")  # failures only: successful logins leave no trace
        assert path.startswith("/_matrix/client/")
        assert "?" not in path
        assert "secret" not in line
    assert f" {ACCEPTED} 429 {LOGIN}" in "\n".join(lines)
    # Nothing else is logged: the only file in the log directory is the login log.
    log_dir = edge.site.host_path("/var/log/nginx")
    assert sorted(p.name for p in log_dir.iterdir()) == ["login.log"]
