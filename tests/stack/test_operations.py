"""The operator's monitoring and backups on the live stack: Prometheus scrapes the guard and
loads the alert rules; the backup job writes an age-encrypted archive and its metric."""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from tests.stack.conftest import Stack

REPO = Path(__file__).resolve().parents[2]


def prometheus(stack: Stack, path: str) -> dict[str, Any]:
    done = stack.exec("prometheus", "wget", "-qO-", f"http://127.0.0.1:9090{path}")
    assert done.returncode == 0, done.stderr
    body: dict[str, Any] = json.loads(done.stdout)
    assert body["status"] == "success", body
    return body


def query(stack: Stack, promql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = prometheus(stack, f"/api/v1/query?query={quote(promql)}")[
        "data"
    ]["result"]
    return result


def wait_for(stack: Stack, promql: str, seconds: int = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while True:
        result = query(stack, promql)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(3)


def test_prometheus_scrapes_synapse_the_guard_and_node_exporter(stack: Stack) -> None:
    up = wait_for(stack, 'min by (job) (up{job=~"synapse|node|prometheus"}) == 1')
    assert {r["metric"]["job"] for r in up} == {"synapse", "node", "prometheus"}, up
    guard = query(stack, 'count({__name__=~"synapse_guard_.+", job="synapse"})')
    assert guard, "no synapse_guard_* series scraped from Synapse"
    assert int(guard[0]["value"][1]) > 0


def test_prometheus_loaded_every_alert_rule(stack: Stack) -> None:
    declared = {
        rule["alert"]
        for group in yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    groups = prometheus(stack, "/api/v1/rules")["data"]["groups"]
    loaded = {
        rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"
    }
    assert loaded == declared
    unhealthy = [
        r["name"] for g in groups for r in g["rules"] if r.get("health") not in ("ok", "unknown")
    ]
    assert not unhealthy, unhealthy


def test_backup_writes_an_age_encrypted_archive_and_its_metric(
    stack: Stack, tmp_path: Path
) -> None:
    started = int(time.time())
    # deploy/README.md's command for a backup before an update.
    stack.compose("run", "--rm", "backup", "/opt/deploy/bin/backup")
    backups = sorted((stack.data / "backups").glob("synapse-guard-backup-*.tar.age"))
    assert backups, "no backup written"
    newest = backups[-1]
    assert newest.stat().st_mtime >= started - 1
    assert (newest.stat().st_mode & 0o777) == 0o600
    # The checksum file verifies (what an off-site box checks without the key).
    check = subprocess.run(
        ["sha256sum", "-c", f"{newest.name}.sha256"],
        cwd=newest.parent,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    # Encrypted: not a tar without the key; with the holder's key, the documented contents.
    assert not tarfile.is_tarfile(newest)
    plain = tmp_path / "backup.tar"
    subprocess.run(
        ["age", "--decrypt", "-i", str(stack.age_identity), "-o", str(plain), str(newest)],
        check=True,
    )
    with tarfile.open(plain) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "x", filter="data")
    for name in (
        "FORMAT",
        "MANIFEST.sha256",
        "database.pgdump",
        "config/homeserver.yaml",
        "secrets/synapse_pgpass",
        # The onion service's keys: a restore brings the same .onion address back.
        "tor/onion/hs_ed25519_secret_key",
    ):
        assert name in names, (name, sorted(names)[:20])
    verified = subprocess.run(
        ["sha256sum", "-c", "MANIFEST.sha256"], cwd=tmp_path / "x", capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # A real pg_dump of Synapse's database, without the one-time keys' data.
    with (tmp_path / "x" / "database.pgdump").open("rb") as dump:
        listing = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "-i",
                "--network",
                "none",
                "--user",
                "65534:65534",
                "--cap-drop",
                "ALL",
                "--entrypoint",
                "pg_restore",
                stack.inspect("backup")["Config"]["Image"],
                "--list",
            ],
            stdin=dump,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert listing.returncode == 0, listing.stderr
    assert "TABLE DATA public users " in listing.stdout
    assert "TABLE DATA public e2e_one_time_keys_json " not in listing.stdout
    metric = (stack.data / "textfile" / "synapse_guard_backup.prom").read_text()
    assert f"synapse_guard_backup_last_size_bytes {newest.stat().st_size}" in metric
    scraped = wait_for(stack, f"synapse_guard_backup_last_success_timestamp_seconds >= {started}")
    assert scraped, "Prometheus did not scrape the backup's metric from node-exporter"


def test_check_config_passes_on_the_deployed_config(stack: Stack) -> None:
    """deploy/README.md's check before every start that changes the config, as written there,
    while the stack runs."""
    out = stack.compose(
        "run", "--rm", "guard-cli", "check-config",
        "-c", "/data/homeserver.yaml", "-c", "/config/homeserver.d/",
        "-c", "/config/zz-deploy.yaml",
    )  # fmt: skip
    assert "files read" in out, out
