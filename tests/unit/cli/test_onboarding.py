"""The onboarding sheet as a member gets it: rendered by poppler, its QR codes read by zbar.

What a phone's camera reads from the printed page must be exactly what the apps need; the
text must hold the password and both languages. (A member signing in with a real sheet
against a real Synapse: tests/integration/test_member_add.py.)
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import attrs
import pytest

from synapse_guard.cli import main as cli
from synapse_guard.cli import member_add
from synapse_guard.cli.onboarding import Credentials, render_sheet
from tests.conftest import require

URI = (
    "otpauth://totp/Example%20Chat:%40alice%3Aexample.org"
    "?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=Example%20Chat"
)
ALICE = Credentials(
    homeserver="https://matrix.example.org",
    user_id="@alice:example.org",
    password="Xk7m-p4Rt-9wHe-b3Nz",
    otpauth_uri=URI,
)
TOOLS = ("pdftoppm", "pdftotext", "zbarimg")


@attrs.frozen
class Sheet:
    """What a reader gets from a sheet: per page, the text and the QR codes' data (sorted)."""

    pages: list[str]
    codes: list[list[str]]


def read_sheet(pdf: Path) -> Sheet:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        require(f"{', '.join(missing)} missing: run scripts/install-system-deps")
    out = pdf.parent / f"{pdf.stem}-page"
    # 150 dpi: what a phone photographing a printed A4 page roughly resolves.
    subprocess.run(["pdftoppm", "-r", "150", "-png", str(pdf), str(out)], check=True)
    images = sorted(pdf.parent.glob(f"{out.name}-*.png"))
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    pages = text.split("\f")[: len(images)]
    codes = []
    for image in images:
        result = subprocess.run(
            ["zbarimg", "--quiet", "--xml", "-Sdisable", "-Sqrcode.enable", str(image)],
            capture_output=True,
            text=True,
            check=False,
        )
        codes.append(_symbols(result.stdout))
    return Sheet(pages, codes)


def _symbols(xml: str) -> list[str]:
    """The data of every QR code zbar found, sorted (its XML lists them in no set order)."""
    return sorted(re.findall(r"<data><!\[CDATA\[(.*?)\]\]></data>", xml, re.S))


def write(tmp_path: Path, credentials: Credentials, *languages: str) -> Path:
    path = tmp_path / "sheet.pdf"
    path.write_bytes(render_sheet(credentials, languages or ("fr", "en")))
    return path


def test_each_page_holds_qr_codes_of_exactly_the_server_the_user_and_the_totp_uri(
    tmp_path: Path,
) -> None:
    sheet = read_sheet(write(tmp_path, ALICE))
    assert len(sheet.pages) == 2
    expected = sorted([ALICE.homeserver, ALICE.user_id, URI])
    assert sheet.codes == [expected, expected]


def test_the_pages_are_french_then_english_with_the_password_in_print(tmp_path: Path) -> None:
    french, english = read_sheet(write(tmp_path, ALICE)).pages
    for page in (french, english):
        assert ALICE.password in page
        assert ALICE.user_id in page
        assert "JBSW Y3DP EHPK 3PXP" in page  # the secret, for typing it in by hand
    for heading in ("Votre compte sur example.org", "Premiers pas", "Mot de passe initial"):
        assert heading in french
    assert "clé de récupération" in french  # accents survive (Windows-1252 core fonts)
    for heading in ("Your account on example.org", "First steps", "Initial password"):
        assert heading in english
    assert "recovery key" in english
    assert "Element X" in french
    assert "Element X" in english
    assert "F-Droid" in english


def test_without_the_second_factor_the_sheet_has_no_totp_code_or_key(tmp_path: Path) -> None:
    plain = attrs.evolve(ALICE, otpauth_uri=None)
    sheet = read_sheet(write(tmp_path, plain, "en"))
    assert len(sheet.pages) == 1
    assert sheet.codes == [sorted([plain.homeserver, plain.user_id])]
    assert "Key:" not in sheet.pages[0]
    assert "authenticator" not in sheet.pages[0]
    assert plain.password in sheet.pages[0]


def test_one_language_gives_one_page(tmp_path: Path) -> None:
    sheet = read_sheet(write(tmp_path, ALICE, "fr"))
    assert len(sheet.pages) == 1
    assert "Premiers pas" in sheet.pages[0]


FINGERPRINT = "3F:A9:0B:7C:" * 8  # as `openssl x509 -fingerprint -sha256` prints it
FINGERPRINT = FINGERPRINT.rstrip(":")
FINGERPRINT_LINES = [
    "3F:A9:0B:7C:3F:A9:0B:7C",
    "3F:A9:0B:7C:3F:A9:0B:7C",
    "3F:A9:0B:7C:3F:A9:0B:7C",
    "3F:A9:0B:7C:3F:A9:0B:7C",
]


def test_in_ip_only_mode_each_page_carries_the_certificate_fingerprint_and_what_to_do(
    tmp_path: Path,
) -> None:
    pinned = attrs.evolve(
        ALICE, homeserver="https://203.0.113.7", tls_fingerprint=FINGERPRINT.lower()
    )
    sheet = read_sheet(write(tmp_path, pinned))
    assert len(sheet.pages) == 2  # still one page per language
    expected = sorted([pinned.homeserver, pinned.user_id, URI])
    assert sheet.codes == [expected, expected]  # the smaller QR codes still read at 150 dpi
    french, english = sheet.pages
    for page in (french, english):
        for line in FINGERPRINT_LINES:  # 8 pairs a line, upper case, as phones show it
            assert line in page
        assert pinned.password in page
    assert "Empreinte du certificat (SHA-256)" in french
    assert "Certificate fingerprint (SHA-256)" in english
    # The first step that says when to accept the certificate (the text wraps: join lines).
    assert "acceptez-le seulement si son empreinte SHA-256 est identique" in " ".join(
        french.split()
    )
    assert "accept it only if its SHA-256 fingerprint is the same" in " ".join(english.split())
    for page, last in ((french, "Téléphone perdu"), (english, "Lost or stolen phone")):
        assert last in page  # the whole text fits the page


def test_without_a_fingerprint_the_sheet_says_nothing_of_certificates(tmp_path: Path) -> None:
    english = read_sheet(write(tmp_path, ALICE, "en")).pages[0]
    assert "fingerprint" not in english
    assert "certificate" not in english


def test_a_malformed_fingerprint_is_refused() -> None:
    for bad in ("3F:A9", "zz" * 32, FINGERPRINT + ":00"):
        with pytest.raises(ValueError, match="64 hex digits"):
            render_sheet(attrs.evolve(ALICE, tls_fingerprint=bad))


def test_values_that_are_not_printable_ascii_are_refused() -> None:
    for bad in (
        attrs.evolve(ALICE, user_id="@\u0430lice:example.org"),  # a Cyrillic a: a look-alike
        attrs.evolve(ALICE, password="line\nbreak"),
        attrs.evolve(ALICE, homeserver="https://exämple.org"),
    ):
        with pytest.raises(ValueError, match="printable ASCII"):
            render_sheet(bad)
    with pytest.raises(ValueError, match="languages"):
        render_sheet(ALICE, ("de",))


# `member add` before any request: what it refuses without touching a server -----------------


def test_initial_passwords_meet_the_homeserver_policy_and_never_repeat() -> None:
    passwords = {member_add.new_password() for _ in range(200)}
    assert len(passwords) == 200
    for password in passwords:
        assert len(password) >= 12
        assert re.search(r"\d", password)
        assert re.search(r"[a-z]", password)
        assert re.search(r"[A-Z]", password)
        assert not set(password) & set("0Oo1lI")  # nothing to misread on paper


def run_add(*argv: str) -> int:
    return cli.main(["member", "add", *argv])


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin.token"
    path.write_text("syt_secret_token\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_malformed_user_id_or_url_is_refused_before_any_request(
    tmp_path: Path, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = tmp_path / "alice.pdf"
    common = ["--token-file", str(token_file), "--sheet", str(sheet)]
    assert run_add("alice", "--url", "http://127.0.0.1:1", *common) == 2
    assert "not a full user ID" in capsys.readouterr().err
    assert run_add("@alice:example.org", "--url", "file:///etc/passwd", *common) == 2
    assert "not an http(s) URL" in capsys.readouterr().err
    assert not sheet.exists()


def test_an_existing_sheet_is_never_overwritten(
    tmp_path: Path, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = tmp_path / "alice.pdf"
    sheet.write_bytes(b"someone else's sheet")
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["@alice:example.org", "--url", url, "--token-file", str(token_file)]
    assert run_add(*argv, "--sheet", str(sheet)) == 2
    assert "cannot create" in capsys.readouterr().err
    assert sheet.read_bytes() == b"someone else's sheet"


def test_an_unreachable_server_leaves_no_sheet_and_no_token_in_the_message(
    tmp_path: Path, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = tmp_path / "alice.pdf"
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["@alice:example.org", "--url", url, "--token-file", str(token_file)]
    assert run_add(*argv, "--sheet", str(sheet)) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err
    assert "syt_secret_token" not in err
    assert not sheet.exists()
