"""deploy/bin: init, create-user, backup and restore, run for real.

A real PostgreSQL (the `postgres` fixture) and a real Synapse on it (the harness), set up by
`deploy/bin/init` (its secrets, signing key and base homeserver.yaml), accounts made by
`deploy/bin/create-user`. Then a backup is taken, checked for leaks, the database and the files
are wiped, and the restore must bring back the very same users, rooms, events and media.
The tests of this file run in order: they share one deployment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import synapse
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require
from tests.integration.harness import REPO, SERVER_NAME, PostgresCluster, SynapseServer

# deploy/bin/create-user hands the password over with `register_new_matrix_user
# --password-file` (never on a command line), which Synapse has since 1.120; the deployment
# pins 1.163.2. On older Synapse in the tox matrix these scripts do not apply.
pytestmark = pytest.mark.skipif(
    tuple(int(part) for part in synapse.__version__.split(".")[:2]) < (1, 120),
    reason="the deploy scripts need register_new_matrix_user --password-file (Synapse >= 1.120)",
)

BIN = REPO / "deploy" / "bin"
SCRIPTS = sorted(p for p in BIN.iterdir() if p.is_file())
TOOLS = ("age", "age-keygen", "openssl", "tar", "sha256sum")
AGE_HEADER = b"age-encryption.org/v1\n"


def run(
    script: str, *args: str, env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / script), *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode != 0, result.stderr
    assert "REFUSED" in result.stderr, result.stderr
    assert reason in result.stderr, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_parses_and_is_strict(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, capture_output=True)
    text = script.read_text()
    assert "set -euo pipefail" in text or "_common.sh" in text
    if not script.name.startswith("_"):
        assert os.access(script, os.X_OK), f"{script} is not executable"


# --------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    root: Path
    env: dict[str, str]
    postgres: PostgresCluster
    database: str
    server: SynapseServer
    tokens: dict[str, str]
    room_id: str
    media_path: str
    media_bytes: bytes
    canaries: list[str]
    before: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "synapse"

    @property
    def media(self) -> Path:
        return self.data / "media_store"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def identity(self) -> Path:
        return self.root / "age-identity.txt"

    def backup_files(self, directory: Path | None = None) -> list[Path]:
        return sorted((directory or self.backups).glob("synapse-guard-backup-*.tar.age"))

    def sql(self, query: str) -> str:
        return self.postgres.psql(self.database, query).strip()

    def get(self, path: str, user: str = "alice", **params: str) -> Any:
        response = requests.get(
            self.server.url + path,
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            params=params,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json() if "json" in response.headers["content-type"] else response.content

    def state(self) -> dict[str, Any]:
        """What users see: accounts, the room's timeline and state, the uploaded file."""
        room = "/_matrix/client/v3/rooms/" + urllib.parse.quote(self.room_id, safe="")
        timeline = self.get(f"{room}/messages", dir="b", limit="100")["chunk"]
        state = self.get(f"{room}/state")
        for event in timeline + state:
            # Milliseconds since the event: the only field that changes between two calls.
            event.pop("age", None)
            event.get("unsigned", {}).pop("age", None)
        users = self.get("/_synapse/admin/v2/users", user="admin", guests="false")["users"]
        return {
            "users": sorted((u["name"], u["admin"], u["creation_ts"]) for u in users),
            "joined": {u: self.get("/_matrix/client/v3/joined_rooms", user=u) for u in self.tokens},
            "timeline": timeline,
            "state": sorted(state, key=lambda e: (e["type"], e["state_key"])),
            "media": self.get(f"/_matrix/client/v1/media/download/{self.media_path}"),
        }


def tools_or_skip() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        require(f"backup tools missing: {', '.join(missing)}")


def script_env(root: Path, postgres: PostgresCluster, database: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{postgres.bindir}{os.pathsep}{env.get('PATH', '')}",
        ENV_FILE=str(root / "no.env"),
        DATA_ROOT=str(root),
        SYNAPSE_DATA=str(root / "synapse"),
        SYNAPSE_DATA_IN=str(root / "synapse"),
        KEYS_DIR=str(root / "secrets"),
        SECRETS_IN=str(root / "secrets"),
        BACKUP_DIR=str(root / "backups"),
        TEXTFILE_DIR=str(root / "textfile"),
        AGE_RECIPIENTS_FILE=str(root / "backup-recipients.txt"),
        SERVER_NAME=SERVER_NAME,
        SYNAPSE_PYTHON=sys.executable,
        SYNAPSE_LOG_CONFIG="",
        POSTGRES_TLS_NAMES="DNS:postgres,DNS:localhost,IP:127.0.0.1",
        PGHOST="127.0.0.1",
        PGPORT=str(postgres.port),
        PGUSER="postgres",
        PGDATABASE=database,
    )
    return env


@pytest.fixture(scope="module")
def deployment(
    postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tools_or_skip()
    root = tmp_path_factory.mktemp("deployment")
    database = postgres.create_database()
    name = database["args"]["database"]
    env = script_env(root, postgres, name)
    for directory in ("backups", "textfile"):
        (root / directory).mkdir(mode=0o700)

    ok(run("init", env=env))
    identity = root / "age-identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout
    (root / "backup-recipients.txt").write_text(public)

    # Synapse from init's homeserver.yaml, homeserver.d/ and the harness's per-test override
    # (ports, this database). The shared secret comes from init's file, not the harness's.
    data = root / "synapse"
    server = SynapseServer(
        data,
        data / "homeserver.yaml",
        database=database,
        extra={"registration_shared_secret": None, "media_store_path": str(data / "media_store")},
    )
    server.start()
    try:
        env["SYNAPSE_URL"] = server.url
        tokens: dict[str, str] = {}
        for localpart, flags in (("admin", ["--admin"]), ("alice", []), ("bob", [])):
            created = ok(run("create-user", *flags, "--generate-password", localpart, env=env))
            password = created.stdout.strip()
            assert password not in created.stderr
            tokens[localpart] = str(server.login(localpart, password).token)

        alice = server.client(tokens["alice"])
        bob = server.client(tokens["bob"])
        room_id = alice.room_id(name="campaign", invite=[server.user_id("bob")])
        assert bob.join(room_id)[0] == 200
        # Members send megolm; each canary stands in for a ciphertext (base64, as the guard
        # requires): readable in the database, never in the encrypted backup.
        canaries = [f"ciphertextcanary{uuid.uuid4().hex}" for _ in range(3)]
        for i, text in enumerate(canaries):
            assert (alice if i % 2 == 0 else bob).send_megolm(room_id, text)[0] == 200

        media_bytes = b"media-canary-" + uuid.uuid4().hex.encode() + os.urandom(2048)
        upload = requests.post(
            f"{server.url}/_matrix/media/v3/upload",
            headers={"Authorization": f"Bearer {tokens['alice']}"},
            data=media_bytes,
            params={"filename": "leaflet.bin"},
            timeout=30,
        )
        assert upload.status_code == 200, upload.text
        media_path = upload.json()["content_uri"].removeprefix("mxc://")

        # One-time keys: in the database now, never in a backup.
        status, body = alice.request(
            "POST",
            "/_matrix/client/v3/keys/upload",
            {"one_time_keys": {"curve25519:AAAAAQ": "Mzg1YmI5M2Y2YjZkNDM3MmE1ZjRiNmQ4YWIzOWE0"}},
        )
        assert status == 200, body

        deployment = Deployment(
            root, env, postgres, name, server, tokens, room_id, media_path, media_bytes, canaries
        )
        assert deployment.sql("SELECT count(*) FROM e2e_one_time_keys_json") == "1"
        deployment.before = deployment.state()
        newest = deployment.before["timeline"][:3]
        assert [e["content"].get("ciphertext") for e in newest] == list(reversed(canaries))
        # What must stay out of a backup: other servers' media and URL previews.
        for excluded in ("remote_content/other.example/aa", "url_cache/2024-01-01"):
            (deployment.media / excluded).mkdir(parents=True)
            (deployment.media / excluded / "remote-file").write_bytes(b"remote")

        backup = ok(run("backup", env=env))
        assert "done" in backup.stderr
        yield deployment
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# Backup


def test_init_is_idempotent_and_keeps_secrets_private(deployment: Deployment) -> None:
    before = {p.name: p.read_bytes() for p in deployment.secrets.iterdir() if p.is_file()}
    key = deployment.data / f"{SERVER_NAME}.signing.key"
    key_bytes = key.read_bytes()
    again = ok(run("init", env=deployment.env))
    assert "created" not in again.stderr
    assert {p.name: p.read_bytes() for p in deployment.secrets.iterdir() if p.is_file()} == before
    assert key.read_bytes() == key_bytes
    for name in ("macaroon_secret_key", "form_secret", "registration_shared_secret"):
        assert (deployment.secrets / name).stat().st_mode & 0o777 == 0o400
        assert before[name].decode() not in again.stderr + again.stdout
    assert len(before["audit_pseudonym_key"]) == 32
    ca, cert = deployment.secrets / "postgres_ca.crt", deployment.secrets / "postgres_server.crt"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr


def test_backup_refuses_without_a_recipients_file(deployment: Deployment) -> None:
    before = deployment.backup_files()
    env = {**deployment.env, "AGE_RECIPIENTS_FILE": str(deployment.root / "missing.txt")}
    refused(run("backup", env=env), "no recipients file")
    private = deployment.root / "private-as-recipient.txt"
    private.write_text(deployment.identity.read_text())
    refused(run("backup", env={**env, "AGE_RECIPIENTS_FILE": str(private)}), "PRIVATE age key")
    assert deployment.backup_files() == before


def test_backup_is_age_encrypted_and_leaks_no_plaintext(deployment: Deployment) -> None:
    (backup,) = deployment.backup_files()
    encrypted = backup.read_bytes()
    assert encrypted.startswith(AGE_HEADER)
    for canary in deployment.canaries:
        assert canary.encode() not in encrypted
    assert deployment.media_bytes[:40] not in encrypted
    for secret in ("macaroon_secret_key", "registration_shared_secret", "postgres_password"):
        assert (deployment.secrets / secret).read_bytes() not in encrypted
    check = subprocess.run(
        ["sha256sum", "--check", backup.name + ".sha256"], cwd=backup.parent, capture_output=True
    )
    assert check.returncode == 0, check.stdout

    # With the private key (kept off the server), it holds what a restore needs, and the
    # canaries are really in it: the checks above would catch a plaintext backup.
    listing = subprocess.run(
        f"age -d -i {deployment.identity} {backup} | tar -t",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert {"FORMAT", "MANIFEST.sha256", "database.pgdump"} <= set(listing)
    for needed in (
        "config/homeserver.yaml",
        f"config/{SERVER_NAME}.signing.key",
        "secrets/macaroon_secret_key",
        "secrets/postgres_ca.crt",
        "secrets/audit_pseudonym_key",
    ):
        assert needed in listing
    assert any(m.startswith("media/local_content/") and not m.endswith("/") for m in listing)
    for member in listing:
        assert not any(x in member for x in ("remote_content", "remote_thumbnail", "url_cache"))
        assert not member.endswith((".pid", ".log"))
    dump_sql = subprocess.run(
        f"age -d -i {deployment.identity} {backup} | tar -xO database.pgdump | pg_restore -f -",
        shell=True, capture_output=True, text=True, check=True, env=deployment.env,
    ).stdout  # fmt: skip
    assert all(canary in dump_sql for canary in deployment.canaries)
    assert "Mzg1YmI5M2Y2YjZkNDM3MmE1ZjRiNmQ4YWIzOWE0" not in dump_sql  # one-time keys left out


def test_backup_writes_its_metrics_atomically(deployment: Deployment) -> None:
    (backup,) = deployment.backup_files()
    textfile = deployment.root / "textfile"
    assert [p.name for p in textfile.iterdir()] == ["synapse_guard_backup.prom"]
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(
            (textfile / "synapse_guard_backup.prom").read_text()
        )
        for s in family.samples
    }
    assert samples["synapse_guard_backup_last_size_bytes"] == backup.stat().st_size
    assert abs(samples["synapse_guard_backup_last_success_timestamp_seconds"] - time.time()) < 300


def test_backups_older_than_the_retention_are_pruned(deployment: Deployment) -> None:
    day = 86400
    old = deployment.backups / "synapse-guard-backup-20000101T000000Z.tar.age"
    recent = deployment.backups / "synapse-guard-backup-20000102T000000Z.tar.age"
    for path, age_days in ((old, 16), (recent, 14)):
        for p in (path, Path(f"{path}.sha256")):
            p.write_bytes(b"dummy")
            os.utime(p, (time.time() - age_days * day,) * 2)
    time.sleep(1)  # backup names have a one-second resolution
    result = ok(run("backup", env=deployment.env))  # MAX_AGE_DAYS: 15 by default
    assert "deleted  synapse-guard-backup-20000101T000000Z.tar.age" in result.stderr
    assert not old.exists()
    assert not Path(f"{old}.sha256").exists()
    assert recent.exists()
    assert len(deployment.backup_files()) == 3  # the fixture's, the recent dummy, this one
    # Keep exactly one real backup (the fixture's) for the restore tests.
    newest = deployment.backup_files()[-1]
    for path in (recent, newest):
        path.unlink()
        Path(f"{path}.sha256").unlink()


# --------------------------------------------------------------------------------------------
# Restore


def database_fingerprint(deployment: Deployment) -> tuple[str, str, str]:
    return (
        deployment.sql("SELECT count(*) FROM events"),
        deployment.sql("SELECT count(*) FROM users"),
        deployment.sql("SELECT count(*) FROM e2e_one_time_keys_json"),
    )


def test_restore_refuses_bad_files_and_existing_databases(deployment: Deployment) -> None:
    deployment.server.stop()
    backup = deployment.backup_files()[0]
    fingerprint = database_fingerprint(deployment)
    media_files = sorted(p for p in deployment.media.rglob("*") if p.is_file())
    env = {**deployment.env, "AGE_IDENTITY_FILE": str(deployment.identity)}

    # No private key, no restore.
    refused(run("restore", str(backup), env=deployment.env), "no age identity")

    # A database that holds tables is never restored over.
    refused(run("restore", str(backup), env=env), "exists and holds")

    # A flipped byte: the checksum catches it, before anything else.
    tampered_dir = deployment.root / "tampered"
    tampered_dir.mkdir()
    tampered = tampered_dir / backup.name
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    shutil.copy(f"{backup}.sha256", f"{tampered}.sha256")
    refused(run("restore", "--force-recreate", str(tampered), env=env), "checksum mismatch")

    # The same, with a checksum recomputed by the tamperer: age's authentication refuses it.
    digest = subprocess.run(
        ["sha256sum", tampered.name], cwd=tampered_dir, capture_output=True, text=True, check=True
    ).stdout
    Path(f"{tampered}.sha256").write_text(digest)
    refused(run("restore", "--force-recreate", str(tampered), env=env), "age could not decrypt")

    # A backup encrypted to someone else's key.
    other_identity = deployment.root / "other-identity.txt"
    subprocess.run(["age-keygen", "-o", str(other_identity)], check=True, capture_output=True)
    other_public = subprocess.run(
        ["age-keygen", "-y", str(other_identity)], check=True, capture_output=True, text=True
    ).stdout
    (deployment.root / "other-recipients.txt").write_text(other_public)
    other_dir = deployment.root / "other-backups"
    other_dir.mkdir()
    ok(
        run(
            "backup",
            env={
                **deployment.env,
                "AGE_RECIPIENTS_FILE": str(deployment.root / "other-recipients.txt"),
                "BACKUP_DIR": str(other_dir),
                "TEXTFILE_DIR": "",
            },
        )
    )
    (foreign,) = deployment.backup_files(other_dir)
    refused(run("restore", "--force-recreate", str(foreign), env=env), "age could not decrypt")

    # Nothing was touched.
    assert database_fingerprint(deployment) == fingerprint
    assert sorted(p for p in deployment.media.rglob("*") if p.is_file()) == media_files


def test_wiped_server_comes_back_byte_for_byte(deployment: Deployment) -> None:
    deployment.server.stop()
    (backup,) = deployment.backup_files()
    key = deployment.data / f"{SERVER_NAME}.signing.key"
    kept = {
        "signing key": key.read_bytes(),
        "macaroon": (deployment.secrets / "macaroon_secret_key").read_bytes(),
        "homeserver.yaml": (deployment.data / "homeserver.yaml").read_bytes(),
    }

    # Wipe: the database, the media, the signing key, every secret.
    deployment.postgres.psql("postgres", f"DROP DATABASE {deployment.database}")
    shutil.rmtree(deployment.media)
    key.unlink()
    shutil.rmtree(deployment.secrets)

    env = {**deployment.env, "AGE_IDENTITY_FILE": str(deployment.identity)}
    result = ok(run("restore", str(backup), env=env))
    assert "TRUNCATE e2e_one_time_keys_json" in result.stderr
    assert deployment.sql("SELECT count(*) FROM e2e_one_time_keys_json") == "0"
    assert deployment.sql(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
        f"WHERE datname = '{deployment.database}'"
    ) == "UTF8|C|C"  # fmt: skip
    assert key.read_bytes() == kept["signing key"]
    assert (deployment.secrets / "macaroon_secret_key").read_bytes() == kept["macaroon"]
    assert (deployment.secrets / "macaroon_secret_key").stat().st_mode & 0o777 == 0o400
    assert (deployment.data / "homeserver.yaml").read_bytes() == kept["homeserver.yaml"]
    assert not (deployment.media / "remote_content").exists()
    assert not (deployment.media / "url_cache").exists()

    # The same server again: same accounts, sessions (access tokens), rooms, events, file.
    deployment.server.start()
    after = deployment.state()
    assert after["media"] == deployment.media_bytes
    assert [e["event_id"] for e in after["timeline"]] == [
        e["event_id"] for e in deployment.before["timeline"]
    ]
    assert after == deployment.before


def test_migrate_prints_its_steps_and_refuses_without_a_stack(tmp_path: Path) -> None:
    env = {**os.environ, "ENV_FILE": str(tmp_path / "no.env"), "SERVER_NAME": "chat.example.org"}
    plan = ok(run("migrate", "plan", env=env)).stdout
    for step in ("migrate check", "copy-stack", "migrate restore", "migrate start", "smoke-test"):
        assert step in plan
    dns = ok(run("migrate", "dns", env=env)).stdout
    assert "300 seconds" in dns
    assert "A and AAAA" in dns
    assert "raise the TTL back" in dns
    env["COMPOSE_FILE"] = str(tmp_path / "docker-compose.yml")
    refused(run("migrate", "restore", "backup.tar.age", env=env), "")
    refused(run("migrate", "smoke-test", "not-a-url", env=env), "public URL")
