"""The deployment's PostgreSQL access rules, run for real: TLS required, scram passwords.

A private cluster is started natively with the TLS material `deploy/bin/init postgres-tls`
makes and the deploy's own `pg_hba.conf` (hostssl + scram-sha-256, everything else
rejected). Synapse then connects exactly as `deploy/synapse/zz-deploy.yaml` says: host name
`postgres` verified against the private CA (`sslmode: verify-full`), password from a passfile.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SynapseFactory, require
from tests.integration.harness import REPO, PostgresCluster, ServerMissing, SynapseServer

PASSWORD = "pg-test-password-0f3c"
PG_HBA = REPO / "deploy" / "postgres" / "pg_hba.conf"
INIT = REPO / "deploy" / "bin" / "init"


class TlsCluster:
    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self.secrets = cluster.root / "secrets"
        self.hba = cluster.root / "pg_hba.conf"

    @property
    def ca(self) -> Path:
        return self.secrets / "postgres_ca.crt"

    def psql(
        self, conninfo: str, sql: str, password: str = PASSWORD
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.cluster.bindir / "psql"), conninfo, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"},
        )

    def tcp(self, sslmode: str, user: str = "synapse") -> str:
        return (
            f"host=postgres hostaddr=127.0.0.1 port={self.cluster.port} dbname=synapse "
            f"user={user} sslmode={sslmode} sslrootcert={self.ca}"
        )

    def local(self) -> str:
        return f"host={self.cluster.sockets} port={self.cluster.port} dbname=synapse user=postgres"


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TlsCluster]:
    if shutil.which("openssl") is None:
        require("openssl is not installed")
    try:
        cluster = PostgresCluster()
    except ServerMissing as e:
        require(str(e))
    cluster.start()
    tls = TlsCluster(cluster)
    try:
        # The deploy's own step makes the CA and the server certificate (SAN DNS:postgres).
        postgres_uid = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
        subprocess.run(
            [str(INIT), "postgres-tls"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "DATA_ROOT": str(cluster.root),
                "KEYS_DIR": str(tls.secrets),
                "POSTGRES_UID": str(postgres_uid),
            },
        )
        # In the stack each file is mounted on its own; here the server reads them in place.
        tls.secrets.chmod(0o711)
        cluster.psql("postgres", f"ALTER ROLE postgres PASSWORD '{PASSWORD}'")
        cluster.psql("postgres", f"CREATE ROLE synapse LOGIN PASSWORD '{PASSWORD}'")
        cluster.psql(
            "postgres",
            "CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' "
            "TEMPLATE=template0",
        )
        shutil.copy(PG_HBA, tls.hba)
        cluster.restart_with(
            "-c ssl=on",
            f"-c ssl_cert_file={tls.secrets / 'postgres_server.crt'}",
            f"-c ssl_key_file={tls.secrets / 'postgres_server.key'}",
            "-c ssl_min_protocol_version=TLSv1.3",
            f"-c hba_file={tls.hba}",
        )
        yield tls
    finally:
        cluster.stop()


def test_plaintext_connections_are_refused(tls_cluster: TlsCluster) -> None:
    result = tls_cluster.psql(tls_cluster.tcp("disable"), "SELECT 1")
    assert result.returncode != 0
    assert "pg_hba.conf rejects connection" in result.stderr, result.stderr


def test_a_wrong_password_is_refused_over_tls(tls_cluster: TlsCluster) -> None:
    result = tls_cluster.psql(tls_cluster.tcp("verify-full"), "SELECT 1", password="wrong")
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr, result.stderr


def test_other_users_and_databases_are_refused(tls_cluster: TlsCluster) -> None:
    result = tls_cluster.psql(tls_cluster.tcp("verify-full", user="postgres"), "SELECT 1")
    assert result.returncode != 0
    assert "rejects connection" in result.stderr, result.stderr


def test_the_server_certificate_is_verified(tls_cluster: TlsCluster) -> None:
    wrong_name = tls_cluster.tcp("verify-full").replace("host=postgres", "host=impostor")
    result = tls_cluster.psql(wrong_name, "SELECT 1")
    assert result.returncode != 0
    assert "does not match host name" in result.stderr, result.stderr


def test_synapse_runs_over_tls_with_the_deploy_settings(
    tls_cluster: TlsCluster, synapse_factory: SynapseFactory, tmp_path: Path
) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"postgres:{tls_cluster.cluster.port}:synapse:synapse:{PASSWORD}\n")
    passfile.chmod(0o600)
    database = {
        "name": "psycopg2",
        "txn_limit": 10000,
        "args": {
            # As deploy/synapse/zz-deploy.yaml, with the test cluster's address and files.
            "user": "synapse",
            "database": "synapse",
            "host": "postgres",
            "hostaddr": "127.0.0.1",
            "port": tls_cluster.cluster.port,
            "passfile": str(passfile),
            "sslmode": "verify-full",
            "sslrootcert": str(tls_cluster.ca),
            "cp_min": 1,
            "cp_max": 5,
        },
    }
    server: SynapseServer = synapse_factory(database=database).start()
    _, member = server.new_user("tls")
    room_id = member.room_id()
    assert member.send_megolm(room_id)[0] == 200

    sessions = tls_cluster.psql(
        tls_cluster.local(),
        "SELECT count(*) FILTER (WHERE s.ssl AND s.version = 'TLSv1.3'), count(*) "
        "FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.datname = 'synapse' AND a.usename = 'synapse'",
    )
    assert sessions.returncode == 0, sessions.stderr
    encrypted, total = (int(n) for n in sessions.stdout.strip().split("|"))
    assert total > 0
    assert encrypted == total
    server.stop()
