"""Fixtures for the tests against the running compose stack (scripts/stack-test starts it).

Outside scripts/stack-test (no STACK_TEST_RUN) every test here is skipped, saying so: the
stack needs root, dockerd and minutes to build, and the script is what provides them. The
script itself fails under CI=true when the engine is missing, so CI never passes silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
import requests

RUN = os.environ.get("STACK_TEST_RUN")
MATRIX = "https://matrix.stack.test"
ELEMENT = "https://chat.stack.test"
SERVER_NAME = "stack.test"
# Where VPN clients appear to nginx (.env.example): scripts/stack-test makes it the admin range.
VPN_CLIENT = "172.31.243.2"
NGINX_ON_VPN = "172.31.243.10"


# Outside the script only test_health.py is collected, and skipped with the reason: one line
# in the ordinary suite's summary instead of one per stack test.
collect_ignore = (
    []
    if RUN
    else [p.name for p in Path(__file__).parent.glob("test_*.py") if p.name != "test_health.py"]
)


# The tests that break things, last and in this order: the faults (the stack comes back), the
# restore drill (replaces the database), the migration (the stack moves for good), then a
# third stack in IP-only mode.
DESTRUCTIVE = ("test_faults.py", "test_restore.py", "test_migrate.py", "test_ip_only.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if RUN:
        items.sort(
            key=lambda item: (
                DESTRUCTIVE.index(item.path.name) + 1 if item.path.name in DESTRUCTIVE else 0
            )
        )
        return
    # This hook sees every collected test, not only this folder's: mark only the stack tests.
    skip = pytest.mark.skip(reason="needs the running compose stack: run scripts/stack-test")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@dataclass(frozen=True)
class Stack:
    project: str
    deploy: Path
    data: Path
    ca: str
    age_identity: Path

    def compose(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """docker compose in the operator's deploy/ directory, with the test override."""
        cmd = [
            "docker",
            "compose",
            "-f",
            "docker-compose.yml",
            "-f",
            "docker-compose.stack-test.yml",
            *args,
        ]
        done = subprocess.run(
            cmd, cwd=self.deploy, input=input, capture_output=True, text=True, timeout=300
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        return done.stdout

    def docker(
        self, *args: str, check: bool = True, timeout: int = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, input=input
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        return done

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).strip()
        assert cid, f"no running container for {service}"
        return cid

    def inspect(self, service: str) -> dict[str, Any]:
        out = self.docker("inspect", self.container(service)).stdout
        data: list[dict[str, Any]] = json.loads(out)
        return data[0]

    def exec(
        self, service: str, *cmd: str, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        args = ["exec"]
        if user is not None:
            args += ["-u", user]
        return self.docker(*args, self.container(service), *cmd, check=False)

    def admin_laptop(
        self, *args: str, token: str, input: str | None = None, out_dir: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`synapse-guard ARGS --url ... --token-file ...` from the admin's laptop on the VPN.

        The laptop is a container of the guard's image on the `vpn` network, at the address VPN
        clients have (the admin range), reaching nginx only, as the operator's pip-installed
        command would; the admin's token is a file, as the docs say. `out_dir` is its /out
        (where it may write, e.g. an onboarding sheet)."""
        with tempfile.TemporaryDirectory() as folder:
            os.chmod(folder, 0o755)
            token_file = Path(folder) / "admin.token"
            token_file.write_text(token)
            token_file.chmod(0o444)
            return self.docker(
                "run", "--rm", "-i", "--network", f"{self.project}_vpn", "--ip", VPN_CLIENT,
                "--add-host", f"matrix.stack.test:{NGINX_ON_VPN}",
                "-v", f"{self.ca}:/etc/ssl/stack-ca.pem:ro",
                "-e", "SSL_CERT_FILE=/etc/ssl/stack-ca.pem",
                "-v", f"{folder}:/in:ro", *(["-v", f"{out_dir}:/out"] if out_dir else []),
                "--entrypoint", "synapse-guard",
                self.inspect("synapse")["Config"]["Image"],
                *args, "--url", MATRIX, "--token-file", "/in/admin.token",
                check=False, input=input,
            )  # fmt: skip

    def client_on_vpn(
        self, address: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One HTTPS request to nginx from another address on the `vpn` network (a member's
        phone on the VPN): its own address, so its own login rate-limit bucket."""
        args = ["-sS", "-X", method, "-w", "\n%{http_code}", "--max-time", "30"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        done = self.docker(
            "run", "--rm", "-i", "--network", f"{self.project}_vpn", "--ip", address,
            "--add-host", f"matrix.stack.test:{NGINX_ON_VPN}",
            "-v", f"{self.ca}:/etc/ssl/stack-ca.pem:ro", "--entrypoint", "curl",
            self.inspect("synapse")["Config"]["Image"],
            "--cacert", "/etc/ssl/stack-ca.pem", *args, f"{MATRIX}{path}",
            input=None if body is None else json.dumps(body),
        )  # fmt: skip
        text, _, status = done.stdout.rpartition("\n")
        return int(status), json.loads(text) if text.strip() else {}

    def bin(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        """An operator script of deploy/bin/, run from deploy/ as the docs say."""
        return subprocess.run(
            [f"bin/{script}", *args],
            cwd=self.deploy,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture(scope="session")
def stack() -> Stack:
    assert RUN
    return Stack(
        project=os.environ["STACK_TEST_PROJECT"],
        deploy=Path(os.environ["STACK_TEST_DEPLOY"]),
        data=Path(os.environ["STACK_TEST_DATA"]),
        ca=os.environ["STACK_TEST_CA"],
        age_identity=Path(os.environ["STACK_TEST_AGE_IDENTITY"]),
    )


@pytest.fixture(scope="session")
def https(stack: Stack) -> Iterator[requests.Session]:
    """A client of the published port only, trusting the stack's self-signed certificate."""
    with requests.Session() as session:
        # No proxy or CA bundle from the environment (REQUESTS_CA_BUNDLE would win over verify).
        session.trust_env = False
        session.verify = stack.ca
        yield session


@dataclass(frozen=True)
class Member:
    localpart: str
    password: str

    @property
    def user_id(self) -> str:
        return f"@{self.localpart}:{SERVER_NAME}"


def login(https: requests.Session, member: Member) -> requests.Response:
    return https.post(
        f"{MATRIX}/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": member.localpart},
            "password": member.password,
        },
        timeout=30,
    )


@pytest.fixture(scope="session")
def members(stack: Stack) -> tuple[Member, Member]:
    """Two members made by the operator's own `bin/create-user --generate-password`."""
    made = []
    for localpart in ("alice", "bob"):
        done = stack.bin("create-user", "--generate-password", localpart)
        assert done.returncode == 0, done.stderr
        # Not a terminal: the generated password is the one line on stdout.
        password = done.stdout.strip()
        assert len(password) >= 12, "create-user printed no password"
        made.append(Member(localpart, password))
    return made[0], made[1]


@dataclass(frozen=True)
class Session:
    member: Member
    access_token: str
    device_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@pytest.fixture(scope="session")
def sessions(https: requests.Session, members: tuple[Member, Member]) -> tuple[Session, Session]:
    """One login each, through nginx (Synapse's rc_login allows few per address: reuse them)."""
    made = []
    for member in members:
        response = login(https, member)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user_id"] == member.user_id
        made.append(Session(member, body["access_token"], body["device_id"]))
    return made[0], made[1]


@pytest.fixture(scope="session")
def admin_token(stack: Stack, https: requests.Session) -> str:
    """A server admin made by `bin/create-user --admin`, logged in through nginx."""
    made = stack.bin("create-user", "--admin", "--generate-password", "opsadmin")
    assert made.returncode == 0, made.stderr
    response = login(https, Member("opsadmin", made.stdout.strip()))
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def psql(stack: Stack, sql: str) -> str:
    """One query on Synapse's database, inside the postgres container (unaligned rows)."""
    done = stack.exec(
        "postgres", "sh", "-c",
        'PGPASSWORD="$(cat /run/secrets/postgres_password)" exec psql -X -At '
        '-h /var/run/postgresql -U synapse -d synapse -v ON_ERROR_STOP=1 -c "$0"', sql,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass(frozen=True)
class Enrolled:
    member: Member
    totp: pyotp.TOTP

    def code(self, step_offset: int = 0) -> str:
        """The code of the current 30 s step (or one next to it, within the guard's skew)."""
        return self.totp.at(time.time() + 30 * step_offset)


@pytest.fixture(scope="session")
def enrolled(stack: Stack, admin_token: str) -> Enrolled:
    """carol: made by `bin/create-user`, her second factor enrolled by the admin from the VPN
    with `synapse-guard totp enroll` (deploy/README.md, "Second factor")."""
    made = stack.bin("create-user", "--generate-password", "carol")
    assert made.returncode == 0, made.stderr
    done = stack.admin_laptop(
        "totp", "enroll", "--user", f"@carol:{SERVER_NAME}", token=admin_token
    )
    assert done.returncode == 0, done.stdout + done.stderr
    uri = next(line for line in done.stdout.splitlines() if line.startswith("otpauth://"))
    return Enrolled(Member("carol", made.stdout.strip()), pyotp.parse_uri(uri))
