"""Monitoring: the Prometheus config, the alert rules and their unit tests, the Grafana dashboard.

promtool (Debian/Ubuntu package `prometheus`) checks the config and the rules and runs
`deploy/prometheus/tests/*.yml`, where every alert has a firing and a quiet case. The other
tests read the files: every alert is tested, and every metric name and label value an alert or
a panel uses exists (a typo would make an alert that can never fire, silently).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARD = REPO / "deploy" / "grafana" / "synapse-guard.json"
BACKUP_SCRIPT = REPO / "deploy" / "bin" / "backup"

# The guard's metrics (README "Metrics", synapse_guard/metrics.py).
GUARD_METRICS = {
    "synapse_guard_decisions_total",
    "synapse_guard_sessions_revoked_total",
    "synapse_guard_geoip_database_build_timestamp_seconds",
    "synapse_guard_info",
    "synapse_guard_admin_logins_total",
    # lockdown and the dead man's switch (docs/lockdown.md)
    "synapse_guard_lockdown_active",
    "synapse_guard_lockdowns_total",
    "synapse_guard_deadman_last_checkin_timestamp_seconds",
    "synapse_guard_lockdown_sessions_revoked_total",
    # synapse-guard member lock|unlock|remove (docs/lost-phone.md)
    "synapse_guard_member_actions_total",
    # Alertmanager deliveries to the guard's alerts endpoint (synapse_guard/alerts/)
    "synapse_guard_alerts_delivered_total",
    "synapse_guard_metadata_purged_rows_total",
    "synapse_guard_metadata_purge_failures_total",
}
# Written by deploy/bin/backup into node-exporter's textfile directory.
BACKUP_METRICS = {
    "synapse_guard_backup_last_success_timestamp_seconds",
    "synapse_guard_backup_last_size_bytes",
}
# Synapse's own metrics and Prometheus' `up`.
OTHER_METRICS = {
    "up",
    "synapse_federation_client_sent_transactions_total",
    "synapse_util_metrics_block_time_seconds_total",
    "synapse_util_metrics_block_count_total",
}
KNOWN_METRICS = GUARD_METRICS | BACKUP_METRICS | OTHER_METRICS

# Label values of synapse_guard_decisions_total (README "Metrics", synapse_guard/verdict.py).
KNOWN_LABEL_VALUES = {
    "check": {
        "registration",
        "login",
        "session",
        "invite",
        "join",
        "create_room",
        "event",
        "publish",
        "threepid",
        "request",  # an authenticated request refused by the per-request gate or a lockdown
        "push",  # a pusher refused or removed (push.allowed_gateways)
    },
    "outcome": {"allow", "deny"},
    "reason": {
        "ok",
        "admin_provisioning",
        "registration_closed",
        "threepid",
        "federation",
        "encryption",
        "join_rule",
        "history_visibility",
        "guest_access",
        "retention",
        "directory",
        "protected_state",
        "ip_denied",
        "ip_not_allowed",
        "country_not_allowed",
        "country_unknown",
        "invalid_address",
        "geoip_unavailable",
        "internal_error",
        "lockdown",
        "puppet_token",
        "unencrypted",
        "push_gateway",
        "push_format",
        # auth.totp: the second factor on password logins
        "password_invalid",
        "totp_invalid",
        "totp_replayed",
        "totp_rate_limited",
        "totp_not_enrolled",
        "totp_required",
        # sessions.idle_timeout, synapse-guard member lock (docs/lost-phone.md)
        "idle",
        "member_locked",
    },
}

# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
}

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_OPERATORS = {"and", "or", "unless", "offset", "bool", "atan2"}


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        require("promtool is not installed (Debian/Ubuntu package `prometheus`)")
    assert path is not None
    return path


def run_promtool(promtool: str, *args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [promtool, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule
    ]


def rule_tests() -> list[dict[str, Any]]:
    return [
        case
        for path in ALERT_TESTS
        for group in load_yaml(path)["tests"]
        for case in group.get("alert_rule_test", [])
    ]


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables substituted), for every query."""
    queries = []
    for panel in dashboard_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    # label lists: by (...), on (...), group_left (...)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+\w+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        name, call = match.groups()
        if call or name in PROMQL_KEYWORDS | PROMQL_OPERATORS:
            continue
        names.add(name)
    return names


def label_values(expr: str) -> Iterator[tuple[str, str]]:
    """(label, value) for every literal value a matcher on a decisions label names."""
    for label, op, value in re.findall(r'\b(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
        if label not in KNOWN_LABEL_VALUES:
            continue
        alternatives = value.split("|") if "~" in op else [value]
        for alternative in alternatives:
            if not re.fullmatch(r"\w+", alternative):
                continue  # a real pattern such as .*: nothing to compare
            yield label, alternative


# --- Prometheus configuration and rules ---------------------------------------------------------


def test_prometheus_config_is_valid(promtool: str, tmp_path: Path) -> None:
    # Exactly what compose mounts in /etc/prometheus: rule_files resolve next to the config.
    shutil.copy(CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    output = run_promtool(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output


def test_scrape_config_covers_synapse_node_and_prometheus() -> None:
    config = load_yaml(CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"synapse", "node", "prometheus"}
    assert jobs["synapse"]["metrics_path"] == "/_synapse/metrics"
    targets = {
        job: [t for sc in jobs[job]["static_configs"] for t in sc["targets"]] for job in jobs
    }
    assert targets["synapse"] == ["synapse:9000"]
    assert targets["node"] == ["node-exporter:9100"]
    # Synapse's metrics are per process: each target is named by `instance`.
    assert all("instance" in sc["labels"] for sc in jobs["synapse"]["static_configs"])
    # Alerts go to the stack's Alertmanager (deploy/alertmanager/), and to nothing else.
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert [t for sc in alertmanagers["static_configs"] for t in sc["targets"]] == [
        "alertmanager:9093"
    ]


def test_alert_rules_are_valid(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", ALERTS)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_alert_unit_tests_pass(promtool: str) -> None:
    assert ALERT_TESTS, "no promtool unit tests in deploy/prometheus/tests/"
    output = run_promtool(promtool, "test", "rules", *ALERT_TESTS)
    assert output.count("SUCCESS") == len(ALERT_TESTS)


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each rule (alert name plus its own labels) fires in some case and stays quiet in one."""
    cases = rule_tests()
    missing = []
    for rule in alert_rules():
        name, labels = rule["alert"], rule.get("labels", {})
        for_name = [case for case in cases if case["alertname"] == name]
        fires = any(
            labels.items() <= {k: str(v) for k, v in alert["exp_labels"].items()}.items()
            for case in for_name
            for alert in case.get("exp_alerts") or []
        )
        quiet = any(not case.get("exp_alerts") for case in for_name)
        if not fires:
            missing.append(f"{name} {labels}: no case where it fires")
        if not quiet:
            missing.append(f"{name}: no case where it stays quiet")
    assert not missing, "\n".join(missing)


def test_expected_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names == {
        "SynapseDown",
        "GuardNotLoaded",
        "GuardInternalErrors",
        "FederationTraffic",
        "GuardRefusalsSpike",
        "SessionsRevoked",
        "LockdownActive",
        "DeadmanCheckinDue",
        "AdminLogin",
        "GeoIPDatabaseStale",
        "GeoIPDatabaseUnusable",
        "BackupTooOld",
    }
    # Unit tests name only alerts that exist (a renamed alert leaves no orphan test).
    assert {case["alertname"] for case in rule_tests()} <= names


def test_alerts_are_documented_and_graded() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alerts_use_known_metrics_and_label_values(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, f"no metric found in {rule['expr']!r}"
    assert names <= KNOWN_METRICS, f"unknown metric(s): {sorted(names - KNOWN_METRICS)}"
    for label, value in label_values(rule["expr"]):
        assert value in KNOWN_LABEL_VALUES[label], f"{label}={value!r} is never exported"


def test_alert_jobs_are_scraped() -> None:
    jobs = {job["job_name"] for job in load_yaml(CONFIG)["scrape_configs"]}
    used = {job for rule in alert_rules() for job in re.findall(r'job="(\w+)"', rule["expr"])}
    assert used
    assert used <= jobs


# --- the known names match their sources -------------------------------------------------------


def test_known_guard_metrics_match_the_module() -> None:
    from prometheus_client import REGISTRY

    from synapse_guard.record import metrics  # registers the guard's metrics
    from synapse_guard.verdict import Check, Reason

    # Exported only once a GeoIP database is loaded / a check-in is known, so name them here.
    exported = {metrics.GEOIP_BUILD_TIMESTAMP.name, metrics.DEADMAN_LAST_CHECKIN.name}
    for family in REGISTRY.collect():
        suffix = "_total" if family.type == "counter" else ""
        exported.add(family.name + suffix)
    assert exported >= GUARD_METRICS
    assert {m for m in exported if m.startswith("synapse_guard_")} <= GUARD_METRICS
    assert KNOWN_LABEL_VALUES["check"] == {c.value for c in Check}
    assert KNOWN_LABEL_VALUES["reason"] == {r.value for r in Reason}


def test_known_backup_metrics_match_the_backup_job() -> None:
    written = set(re.findall(r"^(synapse_guard_backup_\w+) ", BACKUP_SCRIPT.read_text(), re.M))
    assert written == BACKUP_METRICS


# --- Grafana dashboard --------------------------------------------------------------------------


def test_dashboard_is_valid_json_with_a_datasource_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = list(dashboard_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        uids = [panel["datasource"]["uid"]] + [t["datasource"]["uid"] for t in panel["targets"]]
        assert set(uids) == {"${DS_PROMETHEUS}"}, panel["title"]


def test_dashboard_queries_use_known_metrics_and_label_values() -> None:
    used: set[str] = set()
    for title, expr in dashboard_queries():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= KNOWN_METRICS, f"{title}: unknown {sorted(names - KNOWN_METRICS)}"
        for label, value in label_values(expr):
            assert value in KNOWN_LABEL_VALUES[label], f"{title}: {label}={value!r}"
        used |= names
    # The panels the brief asks for: decisions, revoked sessions, GeoIP, backups, federation,
    # callback time.
    assert {
        "synapse_guard_decisions_total",
        "synapse_guard_sessions_revoked_total",
        "synapse_guard_geoip_database_build_timestamp_seconds",
        "synapse_guard_backup_last_success_timestamp_seconds",
        "synapse_federation_client_sent_transactions_total",
        "synapse_util_metrics_block_time_seconds_total",
    } <= used


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every panel query is valid PromQL: promtool parses them as recording rules."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", path)


def test_metric_name_extraction() -> None:
    """The helper the tests above rely on: finds metrics, skips functions, labels, ranges."""
    expr = (
        'sum by (check) (increase(synapse_guard_decisions_total{reason="x"}[10m])) > 0 '
        "or up unless on (job, instance) synapse_guard_info offset 10m "
        "and time() - max(synapse_guard_backup_last_size_bytes) > 26 * 3600"
    )
    assert metric_names(expr) == {
        "synapse_guard_decisions_total",
        "up",
        "synapse_guard_info",
        "synapse_guard_backup_last_size_bytes",
    }
    assert metric_names("synapse_guard_decision_total > 0") == {"synapse_guard_decision_total"}
    assert list(label_values('x{check=~"login|sesion", reason!="ok", job="a"}')) == [
        ("check", "login"),
        ("check", "sesion"),
        ("reason", "ok"),
    ]
