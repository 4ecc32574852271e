"""IP-only mode (deploy/README.md 1.7; runs last, after the migration): a third stack brought up
on an address alone, with `bin/init tls-self-signed`'s certificate, and spoken to as the
members' phones would once they trust that certificate by its fingerprint. nginx, Synapse's
public_baseurl and the client discovery agree on the address; a client pinning the
fingerprint logs in, and the same client facing another certificate refuses before sending."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stack.conftest import Stack
from tests.stack.test_migrate import make_data_dirs, new_host_env, run, set_env

ADDRESS = "127.0.0.1"  # the namespace's loopback, where nginx is published
OTHER_PORT = 8443  # an impostor's TLS server, same address


class PinMismatch(Exception):
    pass


def pinned_request(
    port: int,
    pin: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    host: str = ADDRESS,
) -> tuple[int, dict[str, Any]]:
    """HTTPS to ADDRESS trusting exactly the certificate with this SHA-256 fingerprint: checked
    after the handshake, before a byte of the request is sent (what --tls-pin does)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(ADDRESS, port, context=context, timeout=30)
    try:
        connection.connect()
        assert connection.sock is not None
        der = connection.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        seen = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        if seen != pin:
            raise PinMismatch(seen)
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, body=payload, headers={"Host": host})
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        connection.close()


@pytest.fixture(scope="module")
def ip_stack(stack: Stack) -> Iterator[tuple[Path, str]]:
    run_dir = Path(os.environ["STACK_TEST_RUN"])
    # The stacks before this one hold the published port: down (the migrated one too).
    stack.compose("down")
    migrated = run_dir / "new-host" / "deploy"
    if migrated.is_dir():
        run(migrated, "docker", "compose", "down")
    checkout, data = run_dir / "ip-host", run_dir / "ip-data"
    run(stack.deploy, "bin/migrate", "copy-stack", str(checkout))
    deploy = checkout / "deploy"
    env_file = deploy / ".env"
    shutil.copy(stack.deploy / ".env", env_file)
    shutil.copy(stack.deploy / "backup-recipients.txt", deploy / "backup-recipients.txt")
    for key, value in {
        "DATA_ROOT": str(data),
        "COMPOSE_PROJECT_NAME": f"{stack.project}ip",
        "SERVER_NAME": ADDRESS,
        "MATRIX_DOMAIN": ADDRESS,
        "MATRIX_ELEMENT_DOMAIN": "web.invalid",
        "COMPOSE_PROFILES": "",
        "MATRIX_REJECT_NO_SNI": "off",
    }.items():
        set_env(env_file, key, value)
    data.mkdir()
    make_data_dirs(deploy, data)
    run(deploy, "bin/init")
    printed = run(deploy, "bin/init", "tls-self-signed").strip()
    assert printed.startswith("certificate SHA-256 fingerprint: "), printed
    fingerprint = printed.rsplit(" ", 1)[1]
    # Placeholders for the profiles' secrets (as scripts/stack-test does).
    for placeholder in ("geoip_license_key", "wireguard.conf"):
        (data / "secrets" / placeholder).touch(mode=0o400)
    include = run(
        deploy, "docker", "compose", "run", "--rm", "-T", "guard-cli", "render", "nginx",
        "--no-geoip2", "-c", "/data/homeserver.yaml", "-c", "/config/homeserver.d/",
        "-c", "/config/zz-deploy.yaml",
    )  # fmt: skip
    (data / "nginx" / "synapse-guard.conf").write_text(include)
    # deploy/README.md 1.7's command.
    run(deploy, "docker", "compose", "up", "-d", "--wait", "--scale", "certbot=0")
    yield deploy, fingerprint
    subprocess.run(
        ["docker", "compose", "down", "-v"], cwd=deploy, env=new_host_env(),
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip


def test_nginx_synapse_and_discovery_agree_on_the_address(ip_stack: tuple[Path, str]) -> None:
    deploy, pin = ip_stack
    status, versions = pinned_request(443, pin, "GET", "/_matrix/client/versions")
    assert status == 200, versions
    status, discovery = pinned_request(443, pin, "GET", "/.well-known/matrix/client")
    assert status == 200
    assert discovery == {"m.homeserver": {"base_url": f"https://{ADDRESS}"}}
    homeserver = (deploy.parent.parent / "ip-data" / "synapse" / "homeserver.yaml").read_text()
    assert f'server_name: "{ADDRESS}"' in homeserver
    assert f'public_baseurl: "https://{ADDRESS}/"' in homeserver
    # Element's config (served for MATRIX_ELEMENT_DOMAIN, unused here) names the same URL.
    status, config = pinned_request(443, pin, "GET", "/config.json", host="web.invalid")
    assert status == 200, config
    assert config["default_server_config"]["m.homeserver"]["base_url"] == f"https://{ADDRESS}"


def test_a_member_logs_in_through_the_pinned_certificate(ip_stack: tuple[Path, str]) -> None:
    deploy, pin = ip_stack
    made = subprocess.run(
        ["bin/create-user", "--generate-password", "zoe"], cwd=deploy, env=new_host_env(),
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    status, body = pinned_request(
        443, pin, "POST", "/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "zoe"},
         "password": made.stdout.strip()},
    )  # fmt: skip
    assert status == 200, body
    assert body["user_id"] == f"@zoe:{ADDRESS}"


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[list[bytes]]:
    """A TLS server on the same address with another self-signed certificate for it; records
    whatever a client sends after the handshake."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", f"/CN={ADDRESS}", "-addext",
         f"subjectAltName=IP:{ADDRESS}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    received: list[bytes] = []
    listener = socket.create_server((ADDRESS, OTHER_PORT))
    listener.settimeout(30)

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(5)
                with contextlib.suppress(TimeoutError, ssl.SSLError, OSError):
                    received.append(tls.recv(65536))
        except (TimeoutError, ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield received
    thread.join(timeout=10)
    listener.close()


def test_another_certificate_is_refused_before_anything_is_sent(
    ip_stack: tuple[Path, str], impostor: list[bytes]
) -> None:
    _, pin = ip_stack
    with pytest.raises(PinMismatch):
        pinned_request(OTHER_PORT, pin, "POST", "/_matrix/client/v3/login", {"password": "x"})
    assert not any(impostor), impostor
