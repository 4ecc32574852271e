"""`synapse-guard totp`: usage errors and output, without a server (the real one: integration)."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest

from synapse_guard.cli import main as cli
from synapse_guard.cli import totp as totp_cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def args(url: str, token_file: Path) -> list[str]:
    return ["--url", url, "--token-file", str(token_file), "--user", "@alice:test.local"]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin.token"
    path.write_text("syt_secret_token\n")
    return path


def test_every_action_needs_url_token_file_and_user() -> None:
    for action in ("enroll", "reset", "set-password"):
        assert cli.main(["totp", action]) == 2
    assert cli.main(["totp"]) == 2


def test_a_url_that_is_not_http_is_refused(
    token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["totp", "enroll", *args("file:///etc/passwd", token_file)]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err


def test_a_missing_or_empty_token_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["totp", "reset", *args("http://127.0.0.1:1", tmp_path / "absent")]) == 2
    assert "--token-file: cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert cli.main(["totp", "reset", *args("http://127.0.0.1:1", empty)]) == 2
    assert "is empty" in capsys.readouterr().err


def test_an_unreachable_server_is_reported_without_the_token(
    token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["totp", "enroll", *args(url, token_file)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err
    assert "syt_secret_token" not in err


def test_set_password_refuses_an_empty_password(
    token_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli.main(["totp", "set-password", *args("http://127.0.0.1:1", token_file)]) == 2
    assert "empty password" in capsys.readouterr().err


def test_the_qr_code_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_qrcode(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(totp_cli.importlib, "import_module", no_qrcode)
    out = io.StringIO()
    assert not totp_cli.print_qr("otpauth://totp/x?secret=ABC", out)
    assert out.getvalue() == ""
