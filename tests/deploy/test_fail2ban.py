"""deploy/fail2ban: the filter catches failed logins in nginx's login log and nothing else;
the jail bans in Docker's DOCKER-USER chain. Checked with fail2ban's own tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.harness import REPO

FAIL2BAN = REPO / "deploy" / "fail2ban"
FILTER = FAIL2BAN / "filter.d" / "synapse-guard-nginx.conf"
JAIL = FAIL2BAN / "jail.d" / "synapse-guard.conf"

# nginx: log_format guard_login '$time_iso8601 $remote_addr $status $uri';
FAILURES = {
    "2025-03-01T12:00:00+00:00 203.0.113.7 403 /_matrix/client/v3/login": "203.0.113.7",
    "2025-03-01T12:00:01+00:00 2001:db8::7 429 /_matrix/client/r0/login": "2001:db8::7",
    "2025-03-01T12:00:02+01:00 198.51.100.9 401 /_matrix/client/unstable/login": "198.51.100.9",
    "2025-03-01T12:00:03+00:00 203.0.113.20 401 /_matrix/client/v3/login/": "203.0.113.20",
}
NOT_FAILURES = [
    "2025-03-01T12:00:10+00:00 203.0.113.8 200 /_matrix/client/v3/login",
    "2025-03-01T12:00:11+00:00 2001:db8::8 200 /_matrix/client/r0/login",
    "2025-03-01T12:00:12+00:00 203.0.113.9 403 /_matrix/client/v3/register",
    "2025-03-01T12:00:13+00:00 203.0.113.10 403 /_matrix/client/v3/login/sso/redirect",
    "2025-03-01T12:00:14+00:00 203.0.113.11 404 /_matrix/client/v3/login",
    "2025-03-01T12:00:15+00:00 203.0.113.12 403 /_matrix/client/v3/login/extra",
    "2025-03-01T12:00:16+00:00 203.0.113.13 403 /_matrix/client/v3/sync",
    "2025-03-01T12:00:17+00:00 203.0.113.14 429 /_synapse/admin/v1/login",
    "2025-03-01T12:00:18+00:00 203.0.113.15 500 /_matrix/client/v3/login",
]


@pytest.fixture(scope="module")
def fail2ban_regex() -> str:
    found = shutil.which("fail2ban-regex")
    if found is None:
        require("fail2ban-regex is not installed (apt-get install fail2ban)")
    return str(found)


def out(fail2ban_regex: str, log: Path, token: str) -> list[str]:
    result = subprocess.run(
        [fail2ban_regex, "--raw", "--out", token, str(log), str(FILTER)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_failed_logins_match_with_their_address(fail2ban_regex: str, tmp_path: Path) -> None:
    log = tmp_path / "login.log"
    log.write_text("\n".join([*FAILURES, *NOT_FAILURES]) + "\n")
    assert out(fail2ban_regex, log, "ip") == list(FAILURES.values())


def test_successes_and_other_paths_do_not_match(fail2ban_regex: str, tmp_path: Path) -> None:
    log = tmp_path / "login.log"
    log.write_text("\n".join(NOT_FAILURES) + "\n")
    assert out(fail2ban_regex, log, "row") == []


def test_the_time_is_read_from_the_line(fail2ban_regex: str, tmp_path: Path) -> None:
    log = tmp_path / "login.log"
    log.write_text("\n".join(FAILURES) + "\n")
    result = subprocess.run(
        [fail2ban_regex, "--raw", str(log), str(FILTER)], capture_output=True, text=True, check=True
    )
    assert f"Lines: {len(FAILURES)} lines, 0 ignored, {len(FAILURES)} matched" in result.stdout
    assert f"[{len(FAILURES)}] {{^LN-BEG}}Year-Month-DayT24hour:Minute:Second" in result.stdout


def test_the_jail_bans_in_docker_user(fail2ban_regex: str, tmp_path: Path) -> None:
    """fail2ban-client -d: the jail as fail2ban would load it, with the filter installed."""
    client = shutil.which("fail2ban-client")
    if client is None or not Path("/etc/fail2ban/jail.conf").exists():
        require("fail2ban-client and /etc/fail2ban are not installed")
    config = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", config)
    for jail in (config / "jail.d").iterdir():
        jail.unlink()  # the distribution's own jails (sshd) need logs this machine may lack
    shutil.copy(FILTER, config / "filter.d")
    log = tmp_path / "login.log"
    log.write_text("")
    jail = JAIL.read_text()
    assert "logpath  = /srv/synapse-guard/logs/nginx/login.log" in jail
    (config / "jail.d" / JAIL.name).write_text(
        jail.replace("/srv/synapse-guard/logs/nginx/login.log", str(log))
    )
    result = subprocess.run(
        [client, "-c", str(config), "-d"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "'synapse-guard'" in line]
    assert "['add', 'synapse-guard', 'polling']" in lines
    assert f"['set', 'synapse-guard', 'addlogpath', '{log}', 'head']" in lines
    assert "['set', 'synapse-guard', 'maxretry', 5]" in lines
    (action,) = [line for line in lines if "'action', 'iptables-allports'" in line]
    assert "['chain', 'DOCKER-USER']" in action
    assert "-I DOCKER-USER -p $proto -j f2b-synapse-guard" in action
