"""deploy/alertmanager/: Alertmanager delivers every alert to the guard's alerts endpoint, with
the bearer secret from a file, and to nothing else (tests/integration/test_alerts.py runs it
for real, end to end)."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from synapse_guard.alerts.control import ALERTS_PATH
from synapse_guard.synapse_config import guard_entry, read_config
from tests.conftest import require
from tests.deploy.compose import DEPLOY, REPO, load_compose

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DOCKERFILE = DEPLOY / "alertmanager" / "Dockerfile"
COMPOSE = load_compose()


@pytest.fixture(scope="module")
def config() -> Any:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


def test_amtool_accepts_the_config() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        require("amtool not installed (Debian package prometheus-alertmanager)")
    result = subprocess.run(
        [amtool, "check-config", str(CONFIG)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " - 1 receivers" in result.stdout


def test_every_alert_goes_to_the_admins_room_only(config: Any) -> None:
    route = config["route"]
    assert route["receiver"] == "admins-room"
    assert "routes" not in route  # add a third party deliberately (prometheus.yml's trade-off)
    # One notice per alert name, grouped, repeated twice a working day at most.
    assert route["group_by"] == ["alertname"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "30s",
        "5m",
        "4h",
    )
    (receiver,) = config["receivers"]
    (hook,) = receiver["webhook_configs"]
    assert set(receiver) == {"name", "webhook_configs"}
    assert hook["send_resolved"] is True
    assert hook["url"] == f"http://synapse:8009{ALERTS_PATH}"
    http = hook["http_config"]
    assert http["follow_redirects"] is False
    assert http["authorization"]["type"] == "Bearer"
    # The secret is a compose secret file, never in the config.
    assert http["authorization"]["credentials_file"] == "/run/secrets/alerts_secret"
    assert "credentials" not in http["authorization"]


def test_the_url_is_synapse_alerts_listener_and_the_guard_accepts_alertmanager(
    tmp_path: Any,
) -> None:
    site = tmp_path / "homeserver.yaml"
    site.write_text("server_name: example.org\nreport_stats: false\n", encoding="utf-8")
    merged = read_config([site, REPO / "homeserver.d", DEPLOY / "synapse" / "zz-deploy.yaml"])
    (listener,) = [x for x in merged.values["listeners"] if x["port"] == 8009]
    assert listener["type"] == "http"
    alerts = guard_entry(merged).config.alerts
    assert alerts.enabled
    address = COMPOSE["services"]["alertmanager"]["networks"]["monitoring"]["ipv4_address"]
    assert [str(n) for n in alerts.allow_cidrs] == [f"{address}/32"]
    # Both ends read the same secret file name, each its own copy (owner per uid).
    mounted = COMPOSE["services"]["alertmanager"]["secrets"]
    assert mounted == [{"source": "alertmanager_alerts_secret", "target": "alerts_secret"}]
    assert "alerts_secret" in COMPOSE["services"]["synapse"]["secrets"]
    assert alerts.secret_path == "/run/secrets/alerts_secret"


def test_alertmanager_is_on_the_monitoring_network_only_and_unpublished() -> None:
    service = COMPOSE["services"]["alertmanager"]
    assert set(service["networks"]) == {"monitoring"}
    assert "ports" not in service
    assert COMPOSE["networks"]["monitoring"]["internal"] is True


def test_the_image_is_debian_s_package() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM \$\{DEBIAN_IMAGE\}$", text, re.M)
    assert "apt-get install -y --no-install-recommends prometheus-alertmanager" in text
    assert re.search(r"^USER 65534:65534$", text, re.M)
    assert '"--cluster.listen-address="' in text  # no gossip port
