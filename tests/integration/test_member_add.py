"""`synapse-guard member add` on a real Synapse: a new member signs in with only the sheet.

The test reads the sheet as a member would (poppler renders it, zbar reads its QR codes,
the password is read off the page), computes the code as an authenticator app would from the
decoded otpauth:// URI, and signs in at the server address the QR code gave.
"""

from __future__ import annotations

import re
import stat
import uuid
from pathlib import Path

import pyotp
import pytest

from synapse_guard.cli import main as cli
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import MatrixClient, SynapseServer
from tests.integration.test_totp import LOCALDB_OFF, auth_config, provision
from tests.unit.cli.test_onboarding import Sheet, read_sheet


def run_add(*argv: str) -> int:
    return cli.main(["member", "add", *argv])


@pytest.fixture(scope="module")
def totp_server(
    synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory
) -> SynapseServer:
    key = tmp_path_factory.mktemp("totp") / "totp.key"
    key.write_bytes(uuid.uuid4().bytes * 2)
    return synapse_factory(extra=LOCALDB_OFF, guard=auth_config(key, "required")).start()


@pytest.fixture(scope="module")
def plain_server(synapse_factory: SynapseFactory) -> SynapseServer:
    """homeserver.d as shipped: auth.totp off."""
    return synapse_factory().start()


def admin_token_file(server: SynapseServer, directory: Path) -> Path:
    path = directory / "admin.token"
    path.write_text(provision(server, "admin", admin=True)[1] + "\n")
    return path


def add(server: SynapseServer, tmp_path: Path, *extra: str) -> tuple[int, str, Path]:
    user_id = server.user_id(f"new-{uuid.uuid4().hex[:8]}")
    sheet = tmp_path / "sheet.pdf"
    status = run_add(
        user_id,
        "--url",
        server.url,
        "--token-file",
        str(admin_token_file(server, tmp_path)),
        "--sheet",
        str(sheet),
        *extra,
    )
    return status, user_id, sheet


def password_on(page: str) -> str:
    """The password as a member reads it: the line under "Initial password" (or French)."""
    lines = [line.strip() for line in page.splitlines() if line.strip()]
    heading = next(
        i for i, line in enumerate(lines) if line in ("Initial password", "Mot de passe initial")
    )
    return lines[heading + 1]


def sign_in(sheet: Sheet, page: int = 0, with_code: bool = True) -> tuple[int, dict[str, object]]:
    codes = sheet.codes[page]
    server_url = next(c for c in codes if c.startswith("http"))
    user_id = next(c for c in codes if c.startswith("@"))
    password = password_on(sheet.pages[page])
    uri = next((c for c in codes if c.startswith("otpauth://")), None)
    if uri is not None and with_code:
        password += pyotp.parse_uri(uri).now()
    status, body = MatrixClient(server_url).login(user_id, password)
    return status, body


def test_a_member_signs_in_with_what_the_sheet_holds_under_the_second_factor(
    totp_server: SynapseServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, user_id, path = add(totp_server, tmp_path, "--name", "Alice Martin")
    out = capsys.readouterr()
    assert status == 0, out.err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sheet = read_sheet(path)
    assert len(sheet.pages) == 2  # French, English
    [uri] = [c for c in sheet.codes[0] if c.startswith("otpauth://")]
    assert (
        sorted(sheet.codes[0]) == sorted([totp_server.url, user_id, uri]) == sorted(sheet.codes[1])
    )
    assert pyotp.parse_uri(uri).name == user_id  # type: ignore[attr-defined]

    # Nothing secret on the terminal: not the password, not the TOTP secret.
    password = password_on(sheet.pages[0])
    secret = re.search(r"secret=([A-Z2-7]+)", uri)[1]  # type: ignore[index]
    logs = totp_server.log_file.read_text() + totp_server.console_file.read_text()
    for secret_text in (password, secret, uri):
        assert secret_text not in out.out + out.err
        assert secret_text not in logs  # nor in Synapse's logs

    assert sign_in(sheet, with_code=False)[0] == 403  # the password alone does not open it
    status, body = sign_in(sheet)
    assert status == 200, body
    assert body["user_id"] == user_id
    profile = MatrixClient(totp_server.url, str(body["access_token"])).request(
        "GET", f"/_matrix/client/v3/profile/{user_id}/displayname"
    )
    assert profile == (200, {"displayname": "Alice Martin"})


def test_without_the_second_factor_the_sheet_has_two_codes_and_the_password_opens_it(
    plain_server: SynapseServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, user_id, path = add(
        plain_server, tmp_path, "--lang", "en", "--show-password", "--admin"
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "auth.totp is off" in out
    sheet = read_sheet(path)
    assert len(sheet.pages) == 1
    assert sheet.codes == [sorted([plain_server.url, user_id])]
    assert f"Initial password: {password_on(sheet.pages[0])}" in out  # asked for
    status, body = sign_in(sheet)
    assert status == 200, body
    whoami = MatrixClient(plain_server.url, str(body["access_token"])).request(
        "GET", f"/_synapse/admin/v2/users/{user_id}"
    )
    assert whoami[0] == 200
    assert whoami[1]["admin"] is True


def test_an_existing_account_is_left_alone_and_no_sheet_is_written(
    totp_server: SynapseServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    localpart, _ = provision(totp_server, "bob")
    sheet = tmp_path / "bob.pdf"
    argv = ["--url", totp_server.url, "--token-file", str(admin_token_file(totp_server, tmp_path))]
    assert run_add(totp_server.user_id(localpart), *argv, "--sheet", str(sheet)) == 1
    assert "already exists" in capsys.readouterr().err
    assert not sheet.exists()


def test_a_member_token_creates_nobody_and_leaves_no_sheet(
    totp_server: SynapseServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, member_token = provision(totp_server, "mallory")
    token = tmp_path / "member.token"
    token.write_text(member_token)
    target = totp_server.user_id(f"ghost-{uuid.uuid4().hex[:8]}")
    sheet = tmp_path / "ghost.pdf"
    argv = ["--url", totp_server.url, "--token-file", str(token), "--sheet", str(sheet)]
    assert run_add(target, *argv) == 1
    assert "HTTP 403" in capsys.readouterr().err
    assert not sheet.exists()
    admin = MatrixClient(totp_server.url, provision(totp_server, "admin", admin=True)[1])
    assert admin.request("GET", f"/_synapse/admin/v2/users/{target}")[0] == 404
