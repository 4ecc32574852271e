"""Start-up behaviour, homeserver.d as loaded by a real Synapse, and the metrics it exposes."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from synapse_guard.verdict import Check, Reason
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import HOMESERVER_D, SynapseServer


def fragments() -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(HOMESERVER_D.glob("*.yaml"))}


# --- A bad module config stops Synapse, naming the key ----------------------------------------


@pytest.mark.parametrize(
    ("guard", "key", "accepted"),
    [
        (
            {"network": {"allow_cidrs": ["10.8.0.0/24", "10.9.0.1/24"]}},
            "network.allow_cidrs[1]",
            "10.9.0.0/24",
        ),
        ({"rooms": {"encrypton": "required"}}, "rooms.encrypton", "known keys"),
        ({"registration": {"mode": "invite-only"}}, "registration.mode", "closed | open"),
        ({"retention": {"max_lifetime": "two weeks"}}, "retention.max_lifetime", "7d"),
    ],
    ids=["host-bits", "typo", "bad-choice", "bad-duration"],
)
def test_bad_module_config_refuses_to_start(
    synapse_factory: SynapseFactory, guard: dict[str, Any], key: str, accepted: str
) -> None:
    code, output = synapse_factory(guard=guard).run_to_exit()
    assert code != 0
    assert key in output, output
    assert accepted in output, output


# --- homeserver.d -----------------------------------------------------------------------------


def test_each_top_level_key_is_in_exactly_one_fragment() -> None:
    seen: dict[str, str] = {}
    for name, content in fragments().items():
        assert isinstance(content, dict), f"{name} is not a mapping"
        for key in content:
            assert key not in seen, f"{key} is in both {seen[key]} and {name}"
            seen[key] = name
    assert seen["modules"] == "90-modules.yaml"


def test_listeners_are_loopback_only_and_never_federation() -> None:
    listeners = fragments()["10-listeners.yaml"]["listeners"]
    for listener in listeners:
        assert set(listener["bind_addresses"]) <= {"127.0.0.1", "::1"}
        for resource in listener.get("resources", []):
            assert "federation" not in resource["names"]


def test_synapse_retention_matches_the_guard() -> None:
    config = fragments()
    retention = config["60-retention.yaml"]["retention"]
    (guard,) = config["90-modules.yaml"]["modules"]
    assert retention["enabled"] is True
    assert (
        retention["default_policy"]["max_lifetime"]
        == guard["config"]["retention"]["default_lifetime"]
    )
    assert retention["allowed_lifetime_max"] == guard["config"]["retention"]["max_lifetime"]


def test_the_shipped_module_config_is_the_documented_default() -> None:
    from synapse_guard.config import GuardConfig, parse_guard_config

    (guard,) = fragments()["90-modules.yaml"]["modules"]
    assert parse_guard_config(guard["config"]) == GuardConfig()


@pytest.mark.parametrize(
    ("method", "path", "refused"),
    [
        # require_auth_for_profile_requests
        ("GET", "/_matrix/client/v3/profile/@anyone:guard.test", {401}),
        # url_preview_enabled: false
        ("GET", "/_matrix/media/v3/preview_url?url=http://127.0.0.1/", {401, 403, 404}),
        # allow_public_rooms_without_auth: false
        ("GET", "/_matrix/client/v3/publicRooms", {401}),
        # enable_registration: false
        ("GET", "/_matrix/client/v3/register/available?username=x", {403}),
    ],
)
def test_hardening_is_in_force_on_the_running_server(
    synapse: SynapseServer, method: str, path: str, refused: set[int]
) -> None:
    response = requests.request(method, synapse.url + path, timeout=10)
    assert response.status_code in refused, response.text


def test_presence_is_off(synapse: SynapseServer) -> None:
    user_id, client = synapse.new_user("present")
    status, _ = client.request(
        "PUT", f"/_matrix/client/v3/presence/{user_id}/status", {"presence": "online"}
    )
    assert status == 200
    status, reply = client.request("GET", f"/_matrix/client/v3/presence/{user_id}/status")
    # With presence disabled Synapse never records it as online.
    assert status != 200 or reply.get("presence") != "online", reply


# --- Metrics ----------------------------------------------------------------------------------


def test_metrics_are_exposed_without_identifiers(synapse: SynapseServer) -> None:
    user_id, client = synapse.new_user("metered")
    room_id = client.room_id()
    client.put_state(room_id, "m.room.join_rules", {"join_rule": "public"})

    text = synapse.metrics_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert (
        synapse.metric("synapse_guard_info", version=__import__("synapse_guard").__version__) == 1
    )
    assert "synapse_guard_sessions_revoked" in families
    # No country is allowed here, so no database: no build time rather than a 0 that alerts.
    assert "synapse_guard_geoip_database_build_timestamp_seconds" not in families
    samples = families["synapse_guard_decisions"].samples
    assert samples, "no decision counted"
    checks, reasons = {c.value for c in Check}, {r.value for r in Reason}
    for sample in samples:
        assert sample.labels["check"] in checks
        assert sample.labels["outcome"] in ("allow", "deny")
        assert sample.labels["reason"] in reasons
    guard_lines = [line for line in text.splitlines() if line.startswith("synapse_guard")]
    for identifier in (user_id, room_id, "guard.test", "127.0.0.1"):
        assert not any(identifier in line for line in guard_lines), identifier


# --- Synapse's own retention must purge within the guard's max_lifetime -----------------------


@pytest.mark.parametrize(
    ("extra", "setting"),
    [
        ({"retention": {"enabled": False}}, "retention.enabled"),
        (
            {"retention": {"enabled": True, "default_policy": {"max_lifetime": "30d"},
                           "allowed_lifetime_max": "15d", "purge_jobs": [{"interval": "6h"}]}},
            "retention.default_policy.max_lifetime",
        ),
        (
            {"media_retention": {"local_media_lifetime": "90d"}},
            "media_retention.local_media_lifetime",
        ),
    ],
    ids=["retention-off", "default-policy-too-long", "media-kept-too-long"],
)  # fmt: skip
def test_loose_synapse_retention_refuses_to_start(
    synapse_factory: SynapseFactory, extra: dict[str, Any], setting: str
) -> None:
    code, output = synapse_factory(extra=extra).run_to_exit()
    assert code != 0
    assert "retention.max_lifetime" in output, output
    assert setting in output, output
