"""`--tls-pin` (IP-only mode): the admin commands against a real TLS server on 127.0.0.1.

The attack: someone on the path presents another certificate for the same address. The pinned
client must notice right after the handshake and send nothing (no request line, no token);
with the right certificate it works without any CA; without a pin a self-signed certificate
is refused as before.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from synapse_guard.cli import main as cli
from synapse_guard.cli import member_add, pinning

TOKEN = "syt_admin_secret_token"
LOCKDOWN_STATUS = {"locked": False}

Answer = Callable[[str, str], tuple[int, dict[str, object]]]


@attrs.frozen
class Certificate:
    cert: Path
    key: Path
    sha256: bytes


def self_signed(directory: Path, name: str) -> Certificate:
    """A self-signed certificate for 127.0.0.1, as deploy/bin/init makes in IP-only mode."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_path, key_path, cert.fingerprint(hashes.SHA256()))


class TlsServer:
    """HTTPS on 127.0.0.1: records every byte each connection sent (b"" if none)."""

    def __init__(self, certificate: Certificate, answer: Answer) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(certificate.cert, certificate.key)
        self._answer = answer
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._sock.getsockname()[1]}"
        self.received: queue.Queue[bytes] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(5)
                self.received.put(self._one(conn))

    def _one(self, conn: socket.socket) -> bytes:
        data = b""
        try:
            with self._context.wrap_socket(conn, server_side=True) as tls:
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return data
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    field, _, value = line.partition(b":")
                    if field.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                data = head + b"\r\n\r\n" + body
                method, path = head.split(b" ")[:2]
                status, reply = self._answer(method.decode(), path.decode())
                payload = json.dumps(reply).encode()
                tls.sendall(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + payload
                )
        except (OSError, ValueError):
            pass  # the client gave up (a refused handshake, or it hung up after it)
        return data

    def next_connection(self) -> bytes:
        return self.received.get(timeout=10)

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self._sock.close()
        self._thread.join(timeout=5)


def lockdown_answer(method: str, path: str) -> tuple[int, dict[str, object]]:
    return 200, dict(LOCKDOWN_STATUS)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Certificate, Certificate]:
    directory = tmp_path_factory.mktemp("certs")
    return self_signed(directory, "server"), self_signed(directory, "impostor")


@pytest.fixture
def server(certs: tuple[Certificate, Certificate]) -> Iterator[TlsServer]:
    running = TlsServer(certs[0], lockdown_answer)
    yield running
    running.close()


@pytest.fixture
def impostor(certs: tuple[Certificate, Certificate]) -> Iterator[TlsServer]:
    """Another self-signed certificate for the same address: a man in the middle."""
    running = TlsServer(certs[1], lockdown_answer)
    yield running
    running.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(f"{TOKEN}\n")
    return path


def pin_of(certificate: Certificate) -> str:
    return pinning.format_pin(certificate.sha256)


def lockdown_status(url: str, token_file: Path, *pin: str) -> int:
    return cli.main(["lockdown", "status", "--url", url, "--token-file", str(token_file), *pin])


def test_with_the_right_pin_the_command_gets_its_answer_without_any_ca(
    server: TlsServer,
    certs: tuple[Certificate, Certificate],
    token_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert lockdown_status(server.url, token_file, "--tls-pin", pin_of(certs[0])) == 0
    assert capsys.readouterr().out.strip() == "open"
    request = server.next_connection()
    assert request.startswith(b"GET /_synapse/client/synapse_guard/lockdown HTTP/1.1\r\n")
    assert f"Authorization: Bearer {TOKEN}".encode() in request


def test_another_certificate_is_refused_before_the_request_or_token_leaves(
    impostor: TlsServer,
    certs: tuple[Certificate, Certificate],
    token_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert lockdown_status(impostor.url, token_file, "--tls-pin", pin_of(certs[0])) == 1
    assert impostor.next_connection() == b""  # the handshake, then nothing at all
    err = capsys.readouterr().err
    assert "does not match --tls-pin" in err
    assert "nothing was sent" in err
    assert pin_of(certs[1]) in err  # what it presented, for the operator to compare
    assert TOKEN not in err


def test_member_add_with_another_certificate_sends_nothing_and_writes_no_sheet(
    impostor: TlsServer,
    certs: tuple[Certificate, Certificate],
    token_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sheet = tmp_path / "alice.pdf"
    argv = ["@alice:example.org", "--url", impostor.url, "--token-file", str(token_file)]
    argv += ["--sheet", str(sheet), "--tls-pin", pin_of(certs[0])]
    assert cli.main(["member", "add", *argv]) == 1
    assert impostor.next_connection() == b""
    assert impostor.received.empty()  # it stopped at the first request
    assert "does not match --tls-pin" in capsys.readouterr().err
    assert not sheet.exists()


def test_member_add_with_the_right_pin_creates_the_member_over_the_pinned_connection(
    certs: tuple[Certificate, Certificate], token_file: Path, tmp_path: Path
) -> None:
    user = "/_synapse/admin/v2/users/%40alice%3Aexample.org"
    created: list[str] = []

    def synapse(method: str, path: str) -> tuple[int, dict[str, object]]:
        if (method, path) == ("GET", user):
            return 404, {"errcode": "M_NOT_FOUND", "error": "User not found"}
        if (method, path) == ("PUT", user):
            created.append(path)
            return 201, {"name": "@alice:example.org"}
        if (method, path) == ("POST", member_add.ENROLL_PATH) and not created:
            return 404, {"errcode": "M_NOT_FOUND", "error": "no such user"}
        if (method, path) == ("POST", member_add.ENROLL_PATH):
            return 200, {"otpauth_uri": "otpauth://totp/x:%40alice?secret=JBSWY3DPEHPK3PXP"}
        return 500, {}

    running = TlsServer(certs[0], synapse)
    try:
        sheet = tmp_path / "alice.pdf"
        argv = ["@alice:example.org", "--url", running.url, "--token-file", str(token_file)]
        argv += ["--sheet", str(sheet), "--tls-pin", certs[0].sha256.hex()]  # no colons
        assert cli.main(["member", "add", *argv]) == 0
    finally:
        running.close()
    assert created == [user]
    assert sheet.read_bytes().startswith(b"%PDF")


def test_totp_and_member_commands_take_the_pin_too(
    impostor: TlsServer,
    certs: tuple[Certificate, Certificate],
    token_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--url", impostor.url, "--token-file", str(token_file)]
    common += ["--tls-pin", pin_of(certs[0])]
    for argv in (
        ["totp", "enroll", "--user", "@alice:example.org", *common],
        ["member", "lock", "@alice:example.org", *common],
        ["checkin", *common],
    ):
        assert cli.main(argv) == 1, argv
        assert impostor.next_connection() == b"", argv
        assert "does not match --tls-pin" in capsys.readouterr().err


def test_without_a_pin_a_self_signed_certificate_is_still_refused(
    server: TlsServer, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lockdown_status(server.url, token_file) == 1
    assert server.next_connection() == b""
    err = capsys.readouterr().err
    assert "CERTIFICATE_VERIFY_FAILED" in err
    assert TOKEN not in err


def test_the_pinned_opener_follows_no_redirect_and_speaks_no_http(
    certs: tuple[Certificate, Certificate],
) -> None:
    running = TlsServer(certs[0], lambda method, path: (302, {}))
    try:
        request = urllib.request.Request(running.url + "/x")
        with pytest.raises(urllib.error.HTTPError) as error:
            pinning.urlopen(request, 10, certs[0].sha256)
        assert error.value.code == 302  # an error, not a request sent elsewhere
        error.value.close()
    finally:
        running.close()
    plain = urllib.request.Request("http://127.0.0.1:1/x")
    with pytest.raises(urllib.error.URLError, match="unknown url type"):
        pinning.urlopen(plain, 10, certs[0].sha256)


@pytest.mark.parametrize(
    "pin",
    [
        "AB:CD",  # too short
        "ab" * 31 + "a",  # 63 digits
        "zz" * 32,  # not hex
        "AB:" * 32 + "AB",  # 33 pairs
        "",
    ],
)
def test_a_malformed_pin_exits_2_naming_the_option(
    server: TlsServer, token_file: Path, capsys: pytest.CaptureFixture[str], pin: str
) -> None:
    assert lockdown_status(server.url, token_file, "--tls-pin", pin) == 2
    assert "--tls-pin" in capsys.readouterr().err
    assert server.received.empty()


def test_a_pin_with_an_http_url_exits_2(
    certs: tuple[Certificate, Certificate], token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lockdown_status("http://127.0.0.1:1", token_file, "--tls-pin", pin_of(certs[0])) == 2
    assert "--tls-pin needs an https:// --url" in capsys.readouterr().err


def test_the_fingerprint_openssl_prints_is_accepted_in_any_case_with_or_without_colons(
    certs: tuple[Certificate, Certificate],
) -> None:
    expected = certs[0].sha256
    assert pinning.parse_pin(pin_of(certs[0]).lower()) == expected
    assert pinning.parse_pin(expected.hex().upper()) == expected
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing: the format check against it is skipped")
    output = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(certs[0].cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout  # "sha256 Fingerprint=AB:CD:..." (deploy/bin/init prints this)
    assert pinning.parse_pin(output.strip().partition("=")[2]) == expected
    assert pinning.parse_pin(output) == expected  # the whole line, pasted as it is
