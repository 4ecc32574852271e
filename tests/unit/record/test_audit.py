"""The audit trail's pseudonyms and records, and the CLI an operator uses to test a suspect."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from synapse_guard.cli.main import main
from synapse_guard.config import GuardConfigError, parse_guard_config
from synapse_guard.record.audit import AuditTrail, Pseudonymizer, load_key
from synapse_guard.verdict import Check, Reason, deny

KEY = b"k" * 32


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.key"
    path.write_bytes(KEY)
    return path


def test_pseudonyms_are_stable_keyed_and_distinct() -> None:
    one, other = Pseudonymizer(KEY), Pseudonymizer(b"x" * 32)
    assert one.user("@alice:example.org") == one.user("@Alice:example.org")
    assert one.user("@alice:example.org") != other.user("@alice:example.org")
    assert one.user("@alice:example.org") != one.user("@bob:example.org")
    assert one.address("192.0.2.1") == one.address("::ffff:192.0.2.1")
    assert one.address("192.0.2.1").startswith("a:")
    assert "alice" not in one.user("@alice:example.org")


def test_records_hold_pseudonyms_only(caplog: pytest.LogCaptureFixture) -> None:
    trail = AuditTrail(Pseudonymizer(KEY))
    with caplog.at_level(logging.INFO, logger="synapse_guard.audit"):
        trail.record(
            Check.LOGIN, deny(Reason.COUNTRY_NOT_ALLOWED), user="@alice:ex.org", address="192.0.2.1"
        )
    (line,) = [r.getMessage() for r in caplog.records if r.name == "synapse_guard.audit"]
    record = json.loads(line)
    assert record["check"] == "login"
    assert record["outcome"] == "deny"
    assert record["reason"] == "country_not_allowed"
    assert record["user"] == Pseudonymizer(KEY).user("@alice:ex.org")
    assert record["address"] == Pseudonymizer(KEY).address("192.0.2.1")
    assert "alice" not in line
    assert "192.0.2.1" not in line


def test_without_a_key_nothing_is_written(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="synapse_guard.audit"):
        AuditTrail(None).record(Check.LOGIN, deny(Reason.IP_DENIED), user="@a:b")
    assert not [r for r in caplog.records if r.name == "synapse_guard.audit"]


@pytest.mark.parametrize("content", [b"", b"short", b"x" * 31])
def test_a_short_key_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "audit.key"
    path.write_bytes(content)
    with pytest.raises(GuardConfigError) as caught:
        load_key(str(path))
    assert caught.value.path == "audit.pseudonym_key_path"


def test_a_missing_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GuardConfigError, match="cannot read"):
        load_key(str(tmp_path / "absent"))


def test_enabling_audit_needs_a_key_path() -> None:
    with pytest.raises(GuardConfigError) as caught:
        parse_guard_config({"audit": {"enabled": True}})
    assert caught.value.path == "audit.pseudonym_key_path"


def test_the_cli_computes_and_matches_pseudonyms(
    key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pseudonym", "--key-file", str(key_file), "--user", "@alice:ex.org"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == Pseudonymizer(KEY).user("@alice:ex.org")

    args = ["pseudonym", "--key-file", str(key_file), "--user", "@alice:ex.org"]
    assert main([*args, "--match", printed]) == 0
    assert (
        main(
            ["pseudonym", "--key-file", str(key_file), "--user", "@bob:ex.org", "--match", printed]
        )
        == 1
    )
    address = Pseudonymizer(KEY).address("192.0.2.1")
    assert (
        main(
            [
                "pseudonym",
                "--key-file",
                str(key_file),
                "--address",
                "::ffff:192.0.2.1",
                "--match",
                address,
            ]
        )
        == 0
    )


def test_the_cli_refuses_a_bad_key_file(tmp_path: Path) -> None:
    assert main(["pseudonym", "--key-file", str(tmp_path / "absent"), "--user", "@a:b"]) == 2


def test_a_key_is_used_whitespace_and_all(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    path.write_bytes(b"\n" + b"k" * 31)  # random bytes can begin or end with whitespace
    assert load_key(str(path)) == b"\n" + b"k" * 31


def test_the_audit_logger_keeps_its_public_name() -> None:
    # Operators' log configs route this logger to its own file (deploy/synapse/log.yaml).
    from synapse_guard.record.audit import audit_logger

    log_config = (Path(__file__).resolve().parents[3] / "deploy/synapse/log.yaml").read_text()
    assert audit_logger.name == "synapse_guard.audit"
    assert f"  {audit_logger.name}:" in log_config
