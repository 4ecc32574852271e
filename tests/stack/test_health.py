"""The stack came up the way an operator starts it, and every service is healthy."""

from __future__ import annotations

import json

from tests.stack.conftest import Stack

SERVICES = {
    "synapse",
    "postgres",
    "nginx",
    "push-proxy",
    "certbot",
    "element",
    "prometheus",
    "node-exporter",
    "backup",
    "alertmanager",
    # The optional profiles scripts/stack-test turns on (COMPOSE_PROFILES in deploy/.env).
    "coturn",
    "tor",
}


def test_every_service_runs_and_is_healthy(stack: Stack) -> None:
    rows = [
        json.loads(line) for line in stack.compose("ps", "--format", "json").splitlines() if line
    ]
    state = {row["Service"]: (row["State"], row.get("Health", "")) for row in rows}
    assert set(state) == SERVICES
    for service, (running, health) in state.items():
        assert running == "running", f"{service}: {running}"
        assert health == "healthy", f"{service}: {health or 'no healthcheck'}"
