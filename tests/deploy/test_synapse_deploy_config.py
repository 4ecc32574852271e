"""deploy/synapse/zz-deploy.yaml merged over homeserver.d/, as Synapse reads them in the container.

The container starts Synapse with `-c /data/homeserver.yaml -c /config/homeserver.d/
-c /config/zz-deploy.yaml`; the site file (deploy/bin/init's) is stood in for by a minimal one.
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from synapse_guard.retention_check import check_retention
from synapse_guard.synapse_config import GUARD_MODULE, guard_entry, read_config
from tests.deploy.compose import DEPLOY, REPO, load_compose, mounts

HOMESERVER_D = REPO / "homeserver.d"
ZZ_DEPLOY = DEPLOY / "synapse" / "zz-deploy.yaml"
COMPOSE = load_compose()


@pytest.fixture
def merged(tmp_path: Path) -> Any:
    site = tmp_path / "homeserver.yaml"
    site.write_text("server_name: example.org\nreport_stats: false\n", encoding="utf-8")
    return read_config([site, HOMESERVER_D, ZZ_DEPLOY])


def internal_subnets() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [
        ipaddress.ip_network(c["subnet"])
        for config in COMPOSE["networks"].values()
        if config and config.get("internal")
        for c in (config.get("ipam") or {}).get("config", [])
    ]


def subnet_of(network: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    (config,) = COMPOSE["networks"][network]["ipam"]["config"]
    return ipaddress.ip_network(config["subnet"])


def test_zz_deploy_is_loaded_last_and_wins(merged: Any) -> None:
    assert merged.files[-1] == ZZ_DEPLOY
    for key in ("listeners", "database", "modules", "log_config", "media_store_path"):
        assert merged.origins[key] == ZZ_DEPLOY, key


def test_no_federation_resource(merged: Any) -> None:
    for listener in merged.values["listeners"]:
        assert listener["type"] in ("http", "metrics")
        for resource in listener.get("resources", []):
            assert "federation" not in resource["names"]
            assert set(resource["names"]) <= {"client", "health"}


def test_binds_loopback_or_compose_internal_addresses_only(merged: Any) -> None:
    subnets = internal_subnets()
    for listener in merged.values["listeners"]:
        for bind in listener["bind_addresses"]:
            address = ipaddress.ip_address(bind)
            assert address.is_loopback or any(address in s for s in subnets), bind


def test_client_listener_on_the_frontend_network_for_nginx(merged: Any) -> None:
    (client,) = [x for x in merged.values["listeners"] if x["type"] == "http" and x["port"] == 8008]
    assert client["x_forwarded"] is True
    assert client["tls"] is False
    binds = [ipaddress.ip_address(b) for b in client["bind_addresses"]]
    outside_loopback = [b for b in binds if not b.is_loopback]
    assert outside_loopback
    assert all(b in subnet_of("frontend") for b in outside_loopback)
    synapse_frontend = COMPOSE["services"]["synapse"]["networks"]["frontend"]["ipv4_address"]
    assert [str(b) for b in outside_loopback] == [synapse_frontend]


def test_metrics_listener_only_on_the_monitoring_network(merged: Any) -> None:
    (metrics,) = [x for x in merged.values["listeners"] if x["type"] == "metrics"]
    assert metrics["port"] == 9000
    synapse_monitoring = COMPOSE["services"]["synapse"]["networks"]["monitoring"]["ipv4_address"]
    assert metrics["bind_addresses"] == [synapse_monitoring]
    assert ipaddress.ip_address(synapse_monitoring) in subnet_of("monitoring")
    assert merged.values["enable_metrics"] is True


def test_alerts_listener_only_for_alertmanager_on_the_monitoring_network(merged: Any) -> None:
    (alerts,) = [x for x in merged.values["listeners"] if x["port"] == 8009]
    synapse_monitoring = COMPOSE["services"]["synapse"]["networks"]["monitoring"]["ipv4_address"]
    assert alerts["bind_addresses"] == [synapse_monitoring]
    # The connection's own address (Alertmanager's), never a header's; no client API.
    assert alerts["x_forwarded"] is False
    assert [r["names"] for r in alerts["resources"]] == [["health"]]
    guard = guard_entry(merged).config.alerts
    alertmanager = COMPOSE["services"]["alertmanager"]["networks"]["monitoring"]["ipv4_address"]
    assert [str(n) for n in guard.allow_cidrs] == [f"{alertmanager}/32"]
    assert guard.secret_path == "/run/secrets/alerts_secret"


def test_database_is_postgres_over_verified_tls(merged: Any) -> None:
    database = merged.values["database"]
    assert database["name"] == "psycopg2"
    args = database["args"]
    assert args["host"] == "postgres"
    assert args["sslmode"] == "verify-full"
    assert args["sslrootcert"].startswith("/run/secrets/")
    # The password is in a libpq passfile (a compose secret), never inline.
    assert "password" not in args
    assert args["passfile"].startswith("/run/secrets/")


@pytest.mark.parametrize(
    "key",
    [
        "macaroon_secret_key_path",
        "registration_shared_secret_path",
        "form_secret_path",
        "signing_key_path",
    ],
)
def test_secrets_are_compose_secret_files(merged: Any, key: str) -> None:
    assert merged.values[key].startswith("/run/secrets/")
    assert key.removesuffix("_path") not in merged.values, f"inline {key} alongside the path"


def test_every_secret_path_is_mounted_into_synapse(merged: Any) -> None:
    mounted = {f"/run/secrets/{s}" for s in COMPOSE["services"]["synapse"]["secrets"]}
    text = ZZ_DEPLOY.read_text(encoding="utf-8")
    referenced = {word.strip("\"',") for word in text.split() if word.startswith("/run/secrets/")}
    assert referenced <= mounted, referenced - mounted


def test_config_files_are_mounted_where_the_command_reads_them() -> None:
    synapse = COMPOSE["services"]["synapse"]
    volumes = mounts(synapse)
    assert volumes["/config/zz-deploy.yaml"] == "./synapse/zz-deploy.yaml"
    assert volumes["/config/log.yaml"] == "./synapse/log.yaml"
    assert volumes["/config/homeserver.d"] == "../homeserver.d"
    assert volumes["/data/homeserver.yaml"].endswith("/synapse/homeserver.yaml")
    assert synapse["command"] == [
        "run",
        "--config-path=/data/homeserver.yaml",
        "--config-path=/config/homeserver.d/",
        "--config-path=/config/zz-deploy.yaml",
    ]


def test_log_config_is_the_production_one(merged: Any) -> None:
    assert merged.values["log_config"] == "/config/log.yaml"


def test_one_guard_entry_identical_to_homeserver_d_except_audit(merged: Any) -> None:
    modules = merged.values["modules"]
    assert [m["module"] for m in modules] == [GUARD_MODULE]
    reference = yaml.safe_load((HOMESERVER_D / "90-modules.yaml").read_text(encoding="utf-8"))
    (expected,) = reference["modules"]
    deployed = copy.deepcopy(modules[0])
    expected = copy.deepcopy(expected)
    audit = deployed["config"].pop("audit")
    expected["config"].pop("audit")
    deployed["config"].pop("alerts")  # the compose stack's Alertmanager (deploy/alertmanager/)
    assert deployed == expected
    assert audit["enabled"] is True
    assert audit["pseudonym_key_path"].startswith("/run/secrets/")


def test_guard_config_parses_and_retention_holds(merged: Any) -> None:
    entry = guard_entry(merged)
    assert entry.modules_file == ZZ_DEPLOY
    assert entry.config.audit.enabled
    assert check_retention(merged.values, entry.config) == []
