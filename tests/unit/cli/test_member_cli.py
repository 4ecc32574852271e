"""`synapse-guard member`: parsing, what is sent, and what is printed, over a mocked HTTP call
(the real server: tests/integration/test_members.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from synapse_guard.cli import main as cli
from synapse_guard.cli import member as member_cli
from synapse_guard.cli.lockdown import ClientError

URL = "https://chat.example.org"
TOKEN = "syt_admin_secret"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(f"{TOKEN}\n")
    return path


class FakeServer:
    """Stands in for `cli.lockdown.call`: records each call, answers like the guard."""

    def __init__(self, failed: int = 0, refuse: str | None = None) -> None:
        self.calls: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self.failed = failed
        self.refuse = refuse

    def __call__(
        self,
        url: str,
        path: str,
        token: str,
        body: dict[str, Any] | None = None,
        *,
        tls_pin: bytes | None = None,
    ) -> dict[str, Any]:
        self.calls.append((url, path, token, body))
        if self.refuse:
            raise ClientError(self.refuse)
        if path == member_cli.WHOAMI_PATH:
            return {"user_id": "@admin:example.org"}
        assert body is not None
        answer: dict[str, Any] = {"user_id": body["user_id"], "changed": True}
        if not path.endswith("/unlock"):
            answer.update(revoked_sessions=2, removed_pushers=1)
        if self.failed:
            answer["failed"] = self.failed
        return answer


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(member_cli, "call", fake)
    return fake


def run(token_file: Path, *argv: str) -> int:
    return cli.main(["member", *argv, "--url", URL, "--token-file", str(token_file)])


def test_the_parser_has_lock_unlock_and_remove_each_one_function() -> None:
    parser = argparse.ArgumentParser()
    member_cli.add_arguments(parser)
    for action, handler in (
        ("lock", member_cli.lock),
        ("unlock", member_cli.unlock),
        ("remove", member_cli.remove),
    ):
        args = parser.parse_args([action, "@alice:example.org", "--url", URL, "--token-file", "f"])
        assert (args.handler, args.user, args.url, args.token_file) == (
            handler,
            "@alice:example.org",
            URL,
            "f",
        )


def test_every_action_needs_a_user_url_and_token_file(token_file: Path) -> None:
    for action in ("lock", "unlock", "remove"):
        assert cli.main(["member", action]) == 2
        assert cli.main(["member", action, "@alice:example.org"]) == 2
    assert cli.main(["member"]) == 2


def test_lock_posts_the_member_and_says_what_was_logged_out(
    server: FakeServer, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(token_file, "lock", "@alice:example.org") == 0
    assert server.calls == [
        (URL, f"{member_cli.RESOURCE_PREFIX}/lock", TOKEN, {"user_id": "@alice:example.org"})
    ]
    out, err = capsys.readouterr()
    assert "@alice:example.org: locked" in out
    assert "logged out 2 sessions, removed 1 pushers" in out
    assert TOKEN not in out + err


def test_a_short_user_id_takes_the_admins_server(server: FakeServer, token_file: Path) -> None:
    assert run(token_file, "unlock", "@alice") == 0
    assert [call[1] for call in server.calls] == [
        member_cli.WHOAMI_PATH,
        f"{member_cli.RESOURCE_PREFIX}/unlock",
    ]
    assert server.calls[-1][3] == {"user_id": "@alice:example.org"}


def test_remove_needs_yes(server: FakeServer, token_file: Path) -> None:
    assert run(token_file, "remove", "@alice:example.org") == 2
    assert server.calls == []
    assert run(token_file, "remove", "@alice:example.org", "--yes") == 0
    assert server.calls[-1][1] == f"{member_cli.RESOURCE_PREFIX}/remove"


def test_sessions_that_could_not_be_logged_out_fail_the_command(
    monkeypatch: pytest.MonkeyPatch, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(member_cli, "call", FakeServer(failed=1))
    assert run(token_file, "lock", "@alice:example.org") == 1
    assert "run the command again" in capsys.readouterr().err


def test_a_refusal_exits_1_and_bad_input_exits_2(
    monkeypatch: pytest.MonkeyPatch, token_file: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr(member_cli, "call", FakeServer(refuse="HTTP 403: M_FORBIDDEN: no"))
    assert run(token_file, "lock", "@alice:example.org") == 1
    assert run(token_file, "lock", "alice") == 2  # not a user ID
    assert run(tmp_path / "absent", "lock", "@alice:example.org") == 2
    assert cli.main(["member", "lock", "@a:b", "--url", "file:///x", "--token-file", "t"]) == 2
