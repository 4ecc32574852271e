"""Every hardening property the compose file declares holds on the running containers.

Declared: `docker compose config` (the real file as the engine gets it). Held: `docker inspect`
and the container's own view (/proc/1/status, /proc/1/mounts), so a property an image or the
engine silently drops is caught, not only one missing from the file.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest

from tests.stack.conftest import Stack

SERVICES = [
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
    # The optional profiles scripts/stack-test runs (COMPOSE_PROFILES in deploy/.env).
    "coturn",
    "tor",
]

# Linux capability numbers (capability.h) of what the file may add.
CAPABILITY_BITS = {"DAC_READ_SEARCH": 2, "NET_ADMIN": 12}


@cache
def declared(stack: Stack) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(stack.compose("config", "--format", "json"))
    services: dict[str, Any] = config["services"]
    return services


def proc_status(stack: Stack, service: str) -> dict[str, str]:
    done = stack.exec(service, "cat", "/proc/1/status")
    assert done.returncode == 0, done.stderr
    return dict(line.split(":\t", 1) for line in done.stdout.splitlines() if ":\t" in line)


@pytest.fixture(scope="module")
def spec(stack: Stack) -> dict[str, Any]:
    return declared(stack)


@pytest.mark.parametrize("service", SERVICES)
def test_process_runs_as_the_declared_user_without_capabilities(
    stack: Stack, spec: dict[str, Any], service: str
) -> None:
    want = spec[service]
    uid, gid = want["user"].split(":")
    status = proc_status(stack, service)
    # Real, effective, saved and filesystem ids: all the declared ones.
    assert status["Uid"].split() == [uid] * 4
    assert status["Gid"].split() == [gid] * 4
    assert set(want["cap_drop"]) == {"ALL"}
    effective = sum(1 << CAPABILITY_BITS[c] for c in want.get("cap_add", []))
    assert int(status["CapEff"], 16) == effective, status["CapEff"]
    assert int(status["CapBnd"], 16) == effective, status["CapBnd"]
    assert status["NoNewPrivs"].strip() == "1"


@pytest.mark.parametrize("service", SERVICES)
def test_engine_applies_the_declared_limits_and_options(
    stack: Stack, spec: dict[str, Any], service: str
) -> None:
    want = spec[service]
    host = stack.inspect(service)["HostConfig"]
    assert host["ReadonlyRootfs"] is want["read_only"] is True
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Memory"] == int(want["mem_limit"])
    assert host["NanoCpus"] == round(float(want["cpus"]) * 1e9)
    assert host["PidsLimit"] == want["pids_limit"]
    assert host["CapDrop"] == ["ALL"]
    added = sorted(c.removeprefix("CAP_") for c in host["CapAdd"] or [])
    assert added == sorted(want.get("cap_add", []))
    assert host["LogConfig"]["Type"] == want["logging"]["driver"] == "local"
    assert host["RestartPolicy"]["Name"] == want["restart"] == "unless-stopped"
    assert not host["Privileged"]
    # Which ports, exactly: test_only_nginx_and_turn_publish_ports_and_only_theirs.
    assert not host.get("PortBindings") or service in ("nginx", "coturn")


@pytest.mark.parametrize("service", SERVICES)
def test_root_filesystem_is_read_only_inside(stack: Stack, service: str) -> None:
    done = stack.exec(service, "cat", "/proc/1/mounts")
    assert done.returncode == 0, done.stderr
    root = [line.split() for line in done.stdout.splitlines() if line.split()[1] == "/"]
    assert root, "no root mount"
    assert "ro" in root[-1][3].split(","), root[-1]


@pytest.mark.parametrize("service", SERVICES)
def test_tmpfs_mounts_are_noexec_with_the_declared_owner(
    stack: Stack, spec: dict[str, Any], service: str
) -> None:
    mounts = stack.exec(service, "cat", "/proc/1/mounts").stdout.splitlines()
    tmpfs = {
        line.split()[1]: line.split()[3].split(",") for line in mounts if line.split()[2] == "tmpfs"
    }
    for entry in spec[service].get("tmpfs", []):
        path, _, options = entry.partition(":")
        # Debian's /var/run is a symlink to /run: the engine mounts at the target.
        seen = path if path in tmpfs else path.replace("/var/run", "/run", 1)
        assert seen in tmpfs, (path, sorted(tmpfs))
        opts = tmpfs[seen]
        for flag in ("noexec", "nosuid", "nodev"):
            assert flag in opts, (path, opts)
        for option in options.split(","):
            if option.startswith(("uid=", "gid=")):
                assert option in opts, (path, option, opts)


@pytest.mark.parametrize("service", SERVICES)
def test_container_is_on_exactly_the_declared_networks(
    stack: Stack, spec: dict[str, Any], service: str
) -> None:
    want = spec[service]
    networks = stack.inspect(service)["NetworkSettings"]["Networks"]
    if want.get("network_mode") == "none":
        assert set(networks) == {"none"}
        return
    assert set(networks) == {f"{stack.project}_{name}" for name in want["networks"]}
    for name, options in want["networks"].items():
        if options and options.get("ipv4_address"):
            assert networks[f"{stack.project}_{name}"]["IPAddress"] == options["ipv4_address"]


def test_internal_networks_are_internal_and_icc_is_off_where_declared(stack: Stack) -> None:
    config = json.loads(stack.compose("config", "--format", "json"))
    for name, want in config["networks"].items():
        if name.startswith("vpn"):
            continue  # profile vpn: not created here
        got = json.loads(stack.docker("network", "inspect", f"{stack.project}_{name}").stdout)[0]
        assert got["Internal"] is bool(want.get("internal")), name
        icc = (want.get("driver_opts") or {}).get("com.docker.network.bridge.enable_icc")
        if icc is not None:
            assert got["Options"]["com.docker.network.bridge.enable_icc"] == icc, name


def test_only_nginx_and_turn_publish_ports_and_only_theirs(stack: Stack) -> None:
    published = {}
    for service in SERVICES:
        bindings = stack.inspect(service)["HostConfig"].get("PortBindings") or {}
        if bindings:
            published[service] = set(bindings)
    # TURN: its listeners and the bounded relay range (TURN_MIN_PORT..TURN_MAX_PORT in .env).
    relays = {f"{port}/udp" for port in range(49152, 49172)}
    assert published == {
        "nginx": {"443/tcp", "80/tcp"},
        "coturn": {"3478/udp", "3478/tcp", "5349/tcp"} | relays,
    }


def test_secrets_keep_their_owner_and_mode_inside(stack: Stack) -> None:
    done = stack.exec(
        "synapse",
        "stat",
        "-L",
        "-c",
        "%n %u %a",
        *(
            f"/run/secrets/{s}"
            for s in ("macaroon_secret_key", "synapse_pgpass", "synapse_signing_key")
        ),
    )
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        _, uid, mode = line.split()
        assert (uid, mode) == ("991", "400"), line
    # Postgres' key: its own uid, unreadable to Synapse.
    assert stack.exec("synapse", "cat", "/run/secrets/postgres_password").returncode != 0
