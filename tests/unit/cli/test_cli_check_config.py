"""`synapse-guard check-config`: Synapse's retention settings against the guard's, exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synapse_guard.cli.main import main
from tests.unprivileged import run_python

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A generated-like homeserver.yaml and a copy of the repository's homeserver.d/."""
    (tmp_path / "homeserver.yaml").write_text("server_name: guard.test\nreport_stats: false\n")
    shutil.copytree(REPO / "homeserver.d", tmp_path / "homeserver.d")
    return tmp_path


def args(conf: Path) -> list[str]:
    return ["-c", str(conf / "homeserver.yaml"), "-c", str(conf / "homeserver.d")]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_repository_config_passes(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "check-config", *args(conf))
    assert (status, err) == (0, "")
    assert out == (
        "OK: Synapse purges messages, media, redactions, forgotten rooms and client IPs within "
        "retention.max_lifetime (15d); 10 files read\n"
    )


def test_the_repository_config_passes_read_in_place(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "check-config", "-c", str(REPO / "homeserver.d"))
    assert status == 0
    assert out.startswith("OK: ")


def test_problems_are_printed_one_a_line_and_exit_1(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (conf / "homeserver.d" / "60-retention.yaml").write_text(
        "retention:\n  enabled: false\n  default_policy: {max_lifetime: 7d}\n"
        "  allowed_lifetime_max: 30d\n"
        "media_retention: {local_media_lifetime: 15d}\n"
    )
    status, out, err = run(capsys, "check-config", *args(conf))
    assert status == 1
    assert out.splitlines() == [
        "retention.enabled: is false: Synapse's message retention is off, so messages are "
        "never purged; set retention.enabled: true",
        "retention.allowed_lifetime_max: is 30d, longer than the guard's retention.max_lifetime "
        "(15d): rooms may keep their messages that long; set retention.allowed_lifetime_max: "
        "15d or less",
    ]
    assert err == (
        "synapse-guard: 2 problems: Synapse would keep data longer than retention.max_lifetime "
        "(15d)\n"
    )


def test_a_later_file_replacing_retention_is_what_counts(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Synapse merges shallowly: a later `retention:` replaces the whole section."""
    (conf / "homeserver.d" / "95-local.yaml").write_text("retention:\n  enabled: true\n")
    status, out, err = run(capsys, "check-config", *args(conf))
    assert status == 1
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "retention.default_policy.max_lifetime",
        "retention.allowed_lifetime_max",
    ]
    assert err.startswith("synapse-guard: 2 problems: ")


def test_the_guard_max_lifetime_is_the_bound(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    modules = conf / "homeserver.d" / "90-modules.yaml"
    config = yaml.safe_load(modules.read_text())
    config["modules"][0]["config"]["retention"] = {"max_lifetime": "5d", "default_lifetime": "1d"}
    modules.write_text(yaml.safe_dump(config))
    status, out, _ = run(capsys, "check-config", *args(conf))
    assert status == 1
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "retention.default_policy.max_lifetime",  # 7d
        "retention.allowed_lifetime_max",  # 15d
        "media_retention.local_media_lifetime",  # 15d
    ]
    assert "set retention.default_policy.max_lifetime: 1d (at most 5d)" in out


def test_ignored_files_are_warned_about_and_the_check_still_runs(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (conf / "homeserver.d" / "65-retention.yml").write_text("retention: {enabled: false}\n")
    status, out, err = run(capsys, "check-config", *args(conf))
    assert status == 0
    assert out.startswith("OK: ")
    assert err == (
        f"synapse-guard: warning: {conf / 'homeserver.d' / '65-retention.yml'}: does not end "
        "in '.yaml', ignored (as Synapse does)\n"
    )


def test_unreadable_yaml_exits_2_naming_the_file(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = conf / "homeserver.d" / "60-retention.yaml"
    broken.write_text("retention:\n  enabled: true\n bad: [\n")
    status, out, err = run(capsys, "check-config", *args(conf))
    assert (status, out) == (2, "")
    assert err.startswith(f"synapse-guard: error: {broken}: is not valid YAML: ")


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "homeserver.yaml"
    status, out, err = run(capsys, "check-config", "-c", str(missing))
    assert (status, out) == (2, "")
    assert err == f"synapse-guard: error: {missing}: no such file or directory\n"


def test_a_file_that_cannot_be_read_exits_2(conf: Path) -> None:
    # The command runs without root's privilege to read any file (tests/unprivileged.py).
    command = "import sys; from synapse_guard.cli.main import main; sys.exit(main(sys.argv[1:]))"
    secret = conf / "homeserver.d" / "60-retention.yaml"
    assert run_python(command, "check-config", *args(conf)).returncode == 0
    secret.chmod(0)
    try:
        result = run_python(command, "check-config", *args(conf))
    finally:
        secret.chmod(0o644)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"synapse-guard: error: {secret}: cannot be read: ")


def test_no_guard_entry_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "homeserver.yaml").write_text("server_name: guard.test\nretention: {}\n")
    status, out, err = run(capsys, "check-config", "-c", str(tmp_path / "homeserver.yaml"))
    assert (status, out) == (2, "")
    assert err.startswith(
        "synapse-guard: error: no `modules:` entry with `module: synapse_guard.Guard`"
    )


def test_a_bad_guard_config_exits_2(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    modules = conf / "homeserver.d" / "90-modules.yaml"
    config = yaml.safe_load(modules.read_text())
    config["modules"][0]["config"]["retention"] = {"max_lifetime": "forever"}
    modules.write_text(yaml.safe_dump(config))
    status, out, err = run(capsys, "check-config", *args(conf))
    assert (status, out) == (2, "")
    assert err.startswith(
        f"synapse-guard: error: {modules}: modules[0].config.retention.max_lifetime: "
    )


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "check-config")
    assert (status, out) == (2, "")
    assert "the following arguments are required: -c/--config-path" in err
    status, out, _ = run(capsys, "--help")
    assert status == 0
    assert "check-config" in out
    status, out, _ = run(capsys, "check-config", "--help")
    assert status == 0
    assert "<setting>: <problem>; set <fix>" in " ".join(out.split())


def test_render_nginx_still_works(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "render", "nginx", *args(conf))
    assert (status, err) == (0, "")
    assert "$synapse_guard_refused" in out


def test_the_module_runs_as_a_program(conf: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "synapse_guard.cli", "check-config", *args(conf)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("OK: ")
