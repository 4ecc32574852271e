"""`deploy/bin/init tls-self-signed`: the certificate of IP-only mode, where nginx and coturn
expect certbot's, for an address or a host name, with the fingerprint the team checks."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
from pathlib import Path

import pytest

INIT = Path(__file__).resolve().parents[2] / "deploy" / "bin" / "init"


def init_tls(tmp_path: Path, domain: str, element: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "DATA_ROOT": str(tmp_path),
        "MATRIX_DOMAIN": domain,
        "MATRIX_ELEMENT_DOMAIN": element,
        "CHOWN_SECRETS": "0",
        "ENV_FILE": str(tmp_path / "no.env"),
    }
    return subprocess.run(
        [str(INIT), "tls-self-signed"], env=env, capture_output=True, text=True, check=False
    )


def san_of(cert: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_an_address_gets_an_ip_certificate_and_its_fingerprint_printed(tmp_path: Path) -> None:
    done = init_tls(tmp_path, "203.0.113.10", "web.invalid")
    assert done.returncode == 0, done.stderr
    live = tmp_path / "letsencrypt" / "live" / "203.0.113.10"
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    assert "IP Address:203.0.113.10" in san_of(cert)
    assert "DNS:web.invalid" in san_of(cert)
    assert key.stat().st_mode & 0o777 == 0o600
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    expected = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert done.stdout == f"certificate SHA-256 fingerprint: {expected}\n"
    # The private key is never printed.
    assert "PRIVATE" not in done.stdout + done.stderr


def test_a_second_run_keeps_the_certificate_and_prints_the_same_fingerprint(
    tmp_path: Path,
) -> None:
    first = init_tls(tmp_path, "matrix.example.org")
    assert first.returncode == 0, first.stderr
    assert "DNS:matrix.example.org" in san_of(
        tmp_path / "letsencrypt" / "live" / "matrix.example.org" / "fullchain.pem"
    )
    again = init_tls(tmp_path, "matrix.example.org")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert "kept" in again.stderr


@pytest.mark.parametrize("domain", ["", "bad domain", "x;rm -rf /", "2001:db8::1"])
def test_a_bad_domain_is_refused(tmp_path: Path, domain: str) -> None:
    done = init_tls(tmp_path, domain)
    assert done.returncode == 1
    assert "MATRIX_DOMAIN" in done.stderr
    assert not (tmp_path / "letsencrypt").exists()
