"""Synapse's and Postgres' ports cannot be reached from outside their networks, proven from a
container on another network (a compromised neighbour), with a control that the probe can
connect at all."""

from __future__ import annotations

import pytest

from tests.stack.conftest import Stack

# Connects to every HOST:PORT given, in parallel (a dropped packet costs the full timeout).
PROBE = """
import socket, sys
from concurrent.futures import ThreadPoolExecutor

def one(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as error:
        return f"{target} closed {type(error).__name__}"
    return f"{target} open"

with ThreadPoolExecutor(16) as pool:
    print("\\n".join(pool.map(one, sys.argv[1:])))
"""


def address(stack: Stack, service: str, network: str) -> str:
    networks = stack.inspect(service)["NetworkSettings"]["Networks"]
    ip: str = networks[f"{stack.project}_{network}"]["IPAddress"]
    return ip


def probe(stack: Stack, network: str, *targets: tuple[str, int]) -> dict[tuple[str, int], str]:
    """From a throwaway container on `network` (nobody, no capabilities): open or closed."""
    image = stack.inspect("synapse")["Config"]["Image"]
    args = [f"{host}:{port}" for host, port in targets]
    done = stack.docker(
        "run", "--rm", "--network", network, "--user", "65534:65534", "--cap-drop", "ALL",
        "--entrypoint", "python3", image, "-c", PROBE, *args,
    )  # fmt: skip
    seen = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    return {target: seen[arg].split()[0] for target, arg in zip(targets, args, strict=True)}


@pytest.fixture(scope="module")
def targets(stack: Stack) -> dict[str, tuple[str, int]]:
    return {
        "postgres": (address(stack, "postgres", "backend"), 5432),
        "synapse-client": ("172.31.240.10", 8008),
        "synapse-metrics": ("172.31.242.10", 9000),
        "synapse-on-backend": (address(stack, "synapse", "backend"), 8008),
        "prometheus": (address(stack, "prometheus", "monitoring"), 9090),
    }


@pytest.mark.parametrize("network", ["public", "egress", "bridge"])
def test_internal_services_are_unreachable_from_another_network(
    stack: Stack, targets: dict[str, tuple[str, int]], network: str
) -> None:
    net = network if network == "bridge" else f"{stack.project}_{network}"
    seen = probe(stack, net, *targets.values())
    assert {name: seen[t] for name, t in targets.items()} == dict.fromkeys(targets, "closed")


def test_the_probe_itself_can_connect(stack: Stack) -> None:
    """Control: nginx's own network reaches Synapse's client API, so `closed` above means it."""
    target = ("172.31.240.10", 8008)
    assert probe(stack, f"{stack.project}_frontend", target) == {target: "open"}


def test_a_backend_neighbour_cannot_reach_synapse_client_api(
    stack: Stack, targets: dict[str, tuple[str, int]]
) -> None:
    """Postgres' and the backup's network reaches Postgres, not Synapse's client listener
    (bound to the frontend address only): nothing but nginx chooses the X-Forwarded-For."""
    net = f"{stack.project}_backend"
    frontend = ("172.31.240.10", 8008)
    seen = probe(stack, net, targets["postgres"], targets["synapse-on-backend"], frontend)
    assert seen == {
        targets["postgres"]: "open",
        targets["synapse-on-backend"]: "closed",
        frontend: "closed",
    }


def test_postgres_refuses_plaintext_from_its_own_network(stack: Stack) -> None:
    done = stack.exec(
        "backup",
        "psql",
        "host=postgres sslmode=disable dbname=synapse user=synapse",
        "-c",
        "select 1",
    )
    assert done.returncode != 0
    assert "no encryption" in done.stderr or "reject" in done.stderr, done.stderr
