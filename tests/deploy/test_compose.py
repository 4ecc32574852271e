"""deploy/docker-compose.yml, verified without a Docker engine.

Three layers: the compose-spec schema (check-jsonschema), compose-lint (every finding must be in
the commented allowlist below, and every allowlisted finding must still occur), and one policy
test per service and property, so removing one hardening line fails one named test.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require
from tests.deploy.compose import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    find_tool,
    load_compose,
    mounts,
    read_env_file,
    variables_used,
)

COMPOSE = load_compose()
SERVICES = sorted(COMPOSE["services"])
EXPECTED_SERVICES = {
    "synapse",
    "guard-cli",
    "postgres",
    "nginx",
    "certbot",
    "element",
    "prometheus",
    "node-exporter",
    "backup",
    "geoipupdate",
    "wireguard",
    "push-proxy",
    "coturn",
    "alertmanager",
    "tor",
}

# The services that run as uid 0, each with the ONE capability it holds and why.
ROOT_WITH_CAPABILITY = {
    # Reads the 0400 secrets of three owners (Synapse 991, Postgres 70, root) for the backup;
    # Docker grants capabilities to uid 0 only.
    "backup": "DAC_READ_SEARCH",
    # Creates wg0 and its forwarding rules in its own network namespace.
    "wireguard": "NET_ADMIN",
}

# compose-lint findings accepted, as (rule, service). Anything else fails the test; an entry
# that no longer occurs fails too (remove it).
ACCEPTED_FINDINGS = {
    # CL-0019 image tag without digest: digests cannot be resolved offline here. Images are
    # pinned by version tag; deploy/.env.example says how to append the reviewed digest
    # (then the finding disappears for that image, and the entry must go).
    ("CL-0019", "postgres"),
    ("CL-0019", "nginx"),
    ("CL-0019", "certbot"),
    ("CL-0019", "element"),
    ("CL-0019", "prometheus"),
    ("CL-0019", "node-exporter"),
    ("CL-0019", "geoipupdate"),
    # CL-0005 port on all interfaces: nginx IS the public entry point (443, and 80 for ACME);
    # PUBLISH_ADDRESS narrows it where wanted (VPN-only access).
    ("CL-0005", "nginx"),
    # ... and the WireGuard endpoint's UDP port must be reachable by the members (profile vpn).
    ("CL-0005", "wireguard"),
    # ... and TURN's ports are for the members' phones on any network (profile turn).
    ("CL-0005", "coturn"),
    # CL-0018 explicit root and CL-0027 DAC_READ_SEARCH: the backup must read every secret
    # (0400, three owners); root holds that one capability only, on read-only mounts.
    ("CL-0018", "backup"),
    ("CL-0027", "backup"),
    # CL-0018 explicit root and CL-0011 NET_ADMIN: creating the WireGuard interface and its
    # forwarding rules needs NET_ADMIN, which Docker gives to uid 0 only (profile vpn).
    ("CL-0018", "wireguard"),
    ("CL-0011", "wireguard"),
}

INTERNAL_ONLY = ("postgres", "prometheus", "node-exporter", "alertmanager")


def service(name: str) -> dict[str, Any]:
    config = COMPOSE["services"][name]
    assert isinstance(config, dict)
    return config


def networks_of(name: str) -> dict[str, Any]:
    networks = service(name).get("networks") or {}
    if isinstance(networks, list):
        return {n: {} for n in networks}
    return dict(networks)


def network(name: str) -> dict[str, Any]:
    return COMPOSE["networks"].get(name) or {}


def size_in_bytes(value: str | int) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", str(value).strip().lower())
    assert match, f"not a size: {value!r}"
    factor = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[match[2]]
    return int(float(match[1]) * factor)


def test_every_service_is_there() -> None:
    assert set(SERVICES) == EXPECTED_SERVICES


def test_no_top_level_version_or_name() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    # `version:` is obsolete; `name:` is refused by docker-compose v1.
    assert "version" not in raw
    assert "name" not in raw


def test_optional_services_are_profiles() -> None:
    assert service("geoipupdate").get("profiles") == ["geoip"]
    assert service("wireguard").get("profiles") == ["vpn"]
    assert service("coturn").get("profiles") == ["turn"]
    assert service("tor").get("profiles") == ["onion"]
    assert service("guard-cli").get("profiles") == ["tools"]
    for name in EXPECTED_SERVICES - {"geoipupdate", "wireguard", "coturn", "tor", "guard-cli"}:
        assert "profiles" not in service(name), name


# -- tools -----------------------------------------------------------------------------------


def run_tool(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    path = find_tool(name)
    if path is None:
        require(f"{name} is not installed (pip install {name})")
    return subprocess.run(
        [str(path), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_compose_spec_schema(tmp_path: Path) -> None:
    result = run_tool(
        "check-jsonschema",
        ["--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def compose_lint_findings(tmp_path: Path) -> set[tuple[str, str]]:
    # --no-env: grade the defaults written in the file, not an operator's deploy/.env;
    # --no-merge-overrides: the file itself, not a local override. Suppressed findings (from
    # a .compose-lint.yml someone might add) are counted all the same.
    result = run_tool(
        "compose-lint",
        [
            "check",
            "--format",
            "json",
            "--fail-on",
            "low",
            "--no-env",
            "--no-merge-overrides",
            str(COMPOSE_FILE),
        ],
        tmp_path,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == [], report["errors"]
    return {(f["rule_id"], f["service"]) for f in report["findings"]}


def test_compose_lint_finds_nothing_unexpected(tmp_path: Path) -> None:
    unexpected = compose_lint_findings(tmp_path) - ACCEPTED_FINDINGS
    assert not unexpected, f"compose-lint findings not in the allowlist: {sorted(unexpected)}"


def test_compose_lint_allowlist_is_current(tmp_path: Path) -> None:
    stale = ACCEPTED_FINDINGS - compose_lint_findings(tmp_path)
    assert not stale, f"accepted findings that no longer occur (remove them): {sorted(stale)}"


# -- per service, per property ---------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_user_is_not_root(name: str) -> None:
    user = str(service(name).get("user", ""))
    assert user, f"{name}: no `user:` (the image's default may be root)"
    uid = user.split(":")[0]
    if name in ROOT_WITH_CAPABILITY:
        # The documented exceptions: root holding exactly one capability.
        assert uid == "0"
        assert service(name).get("cap_add") == [ROOT_WITH_CAPABILITY[name]]
        return
    assert uid not in ("0", "root"), f"{name} runs as root"
    assert uid.isdigit(), f"{name}: give a numeric uid (a name may not exist in the image)"


@pytest.mark.parametrize("name", SERVICES)
def test_read_only_root_filesystem(name: str) -> None:
    assert service(name).get("read_only") is True


@pytest.mark.parametrize("name", SERVICES)
def test_drops_every_capability(name: str) -> None:
    assert service(name).get("cap_drop") == ["ALL"]


@pytest.mark.parametrize("name", SERVICES)
def test_adds_no_capability_unless_justified(name: str) -> None:
    added = service(name).get("cap_add") or []
    allowed = [ROOT_WITH_CAPABILITY[name]] if name in ROOT_WITH_CAPABILITY else []
    assert added == allowed


@pytest.mark.parametrize("name", SERVICES)
def test_no_new_privileges(name: str) -> None:
    assert "no-new-privileges:true" in (service(name).get("security_opt") or [])


@pytest.mark.parametrize("name", SERVICES)
def test_memory_limit(name: str) -> None:
    limit = service(name).get("mem_limit")
    assert limit, f"{name}: no mem_limit"
    assert 0 < size_in_bytes(limit) <= 8 * 2**30


@pytest.mark.parametrize("name", SERVICES)
def test_cpu_limit(name: str) -> None:
    assert 0 < float(service(name).get("cpus", 0)) <= 4


@pytest.mark.parametrize("name", SERVICES)
def test_pids_limit(name: str) -> None:
    limit = service(name).get("pids_limit")
    assert isinstance(limit, int)
    assert 0 < limit <= 1024


# Run once and removed (`docker compose run --rm guard-cli ...`): nothing to watch or restart.
ONE_SHOT = ("guard-cli",)
LONG_RUNNING = [name for name in SERVICES if name not in ONE_SHOT]


def test_one_shot_tools_have_no_network_and_do_not_restart() -> None:
    for name in ONE_SHOT:
        assert service(name).get("network_mode") == "none", name
        assert service(name).get("restart") == "no", name
        assert not service(name).get("secrets"), name
        assert not service(name).get("ports"), name
        for volume in service(name)["volumes"]:
            if isinstance(volume, str):
                assert volume.endswith(":ro"), (name, volume)
            else:
                assert volume.get("read_only"), (name, volume)


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_healthcheck(name: str) -> None:
    check = service(name).get("healthcheck") or {}
    assert not check.get("disable"), f"{name}: healthcheck disabled"
    test = check.get("test")
    assert isinstance(test, list), f"{name}: no healthcheck test"
    assert test[0] in ("CMD", "CMD-SHELL")
    assert len(test) > 1
    assert check.get("interval")
    assert check.get("retries")


@pytest.mark.parametrize("name", SERVICES)
def test_logging_is_rotated(name: str) -> None:
    logging = service(name).get("logging") or {}
    assert logging.get("driver") == "local"
    options = logging.get("options") or {}
    assert size_in_bytes(options["max-size"]) <= 50 * 2**20
    assert 1 <= int(options["max-file"]) <= 5


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_restarts_unless_stopped(name: str) -> None:
    assert service(name).get("restart") == "unless-stopped"


SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|_KEY$|PRIVATE|CREDENTIAL|API_?KEY", re.I)
SECRET_VALUE = re.compile(r"^(?:[0-9a-f]{24,}|[A-Za-z0-9+/_-]{32,}={0,2}|-----BEGIN .*)$")


@pytest.mark.parametrize("name", SERVICES)
def test_no_secret_in_environment(name: str) -> None:
    environment = service(name).get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for key, value in environment.items():
        text = "" if value is None else str(value)
        if SECRET_KEY.search(key):
            # Only a pointer to secret files is allowed (POSTGRES_PASSWORD_FILE=/run/secrets/..,
            # a directory of them), never the secret itself.
            assert key.endswith(("_FILE", "_DIR")), f"{name}: {key} looks like a secret"
            assert text.startswith("/"), f"{name}: {key} must be the path of a secret file"
        assert not SECRET_VALUE.match(text), f"{name}: {key} has a secret-looking value"
    assert "env_file" not in service(name), f"{name}: env_file hides what is passed"


@pytest.mark.parametrize("name", SERVICES)
def test_publishes_ports_only_if_nginx_or_vpn(name: str) -> None:
    ports = service(name).get("ports") or []
    if name == "nginx":
        published = sorted(p.rsplit(":", 2)[-2:] for p in ports)
        # 443, and 80 for ACME and the redirect; container port = host port (nginx.conf).
        assert published == [["443", "443/tcp"], ["80", "80/tcp"]]
    elif name == "wireguard":
        assert len(ports) == 1
        assert ports[0].endswith(":51820/udp")
    elif name == "coturn":
        # TURN (UDP, TCP), TURN over TLS, and the bounded relay range (tests/deploy/test_coturn.py).
        assert [p.rsplit(":", 1)[-1] for p in ports] == [
            "3478/udp",
            "3478/tcp",
            "5349/tcp",
            "49152-49251/udp",
        ]
    else:
        assert not ports, f"{name} publishes {ports}"
    assert "expose" not in service(name)
    assert service(name).get("network_mode") in (None, "none"), f"{name}: host networking"


@pytest.mark.parametrize("name", SERVICES)
def test_no_tmpfs_allows_exec_or_suid(name: str) -> None:
    for entry in service(name).get("tmpfs") or []:
        options = entry.partition(":")[2].split(",")
        assert "exec" not in options
        assert "suid" not in options


@pytest.mark.parametrize("name", SERVICES)
def test_no_docker_socket_or_host_namespaces(name: str) -> None:
    config = service(name)
    for key in ("privileged", "pid", "ipc", "userns_mode", "devices"):
        assert not config.get(key), f"{name}: {key}"
    for source in mounts(config).values():
        assert "docker.sock" not in source
        assert source not in ("/", "/proc", "/sys", "/dev", "/etc")


@pytest.mark.parametrize("name", SERVICES)
def test_image_is_pinned(name: str) -> None:
    config = service(name)
    if "build" in config:
        # Built locally: its base image is a build argument with a pinned default.
        args = config["build"].get("args") or {}
        assert args, f"{name}: the base image must be a build argument"
        images = list(args.values())
        assert "image" not in config, f"{name}: a local tag would be pulled from a registry"
    else:
        images = [config["image"]]
    for image in images:
        reference = image.split("@", 1)[0]
        name_part, _, tag = reference.rpartition(":")
        assert name_part, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert tag not in ("latest", "stable", "mainline", "edge", ""), f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image} is not a version tag"


@pytest.mark.parametrize("name", [s for s in SERVICES if "build" in service(s)])
def test_dockerfile_base_matches_compose(name: str) -> None:
    build = service(name)["build"]
    context = (DEPLOY / build["context"]).resolve()
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    text = dockerfile.read_text(encoding="utf-8")
    for arg, value in build["args"].items():
        default = re.search(rf"^ARG {arg}=(\S+)$", text, re.M)
        assert default, f"{dockerfile}: no `ARG {arg}=<pinned image>`"
        assert default[1] == value, f"{dockerfile}: {arg} default differs from the compose file"
        assert re.search(rf"^FROM \$\{{{arg}\}}$", text, re.M)


# -- networks ---------------------------------------------------------------------------------


def test_only_nginx_is_on_the_public_network() -> None:
    on_public = {name for name in SERVICES if "public" in networks_of(name)}
    assert on_public == {"nginx"}
    assert not network("public").get("internal")


@pytest.mark.parametrize("name", INTERNAL_ONLY)
def test_internal_services_are_on_internal_networks_only(name: str) -> None:
    attached = networks_of(name)
    assert attached, f"{name}: on the default network"
    for net in attached:
        assert network(net).get("internal") is True, f"{name} is on non-internal {net}"
    assert not service(name).get("ports")


def test_postgres_is_on_the_backend_network_only() -> None:
    assert set(networks_of("postgres")) == {"backend"}
    assert network("backend").get("internal") is True


@pytest.mark.parametrize("name", SERVICES)
def test_non_internal_networks_isolate_containers(name: str) -> None:
    for net in networks_of(name):
        config = network(net)
        if not config.get("internal"):
            # Containers sharing an internet-facing bridge cannot reach each other.
            options = config.get("driver_opts") or {}
            assert options.get("com.docker.network.bridge.enable_icc") == "false", net


def test_every_service_is_on_a_declared_network() -> None:
    for name in SERVICES:
        if service(name).get("network_mode") == "none":
            continue
        attached = networks_of(name)
        assert attached, f"{name} would join the default network"
        assert set(attached) <= set(COMPOSE["networks"]), name


# -- files, secrets, variables ---------------------------------------------------------------


def test_secrets_are_files() -> None:
    for name, config in COMPOSE["secrets"].items():
        assert set(config) == {"file"}, f"secret {name}: use `file:`, never `environment:`"


@pytest.mark.parametrize("name", SERVICES)
def test_secrets_used_are_declared(name: str) -> None:
    for entry in service(name).get("secrets") or []:
        secret = entry if isinstance(entry, str) else entry["source"]
        assert secret in COMPOSE["secrets"], f"{name}: undeclared secret {secret}"


@pytest.mark.parametrize("name", SERVICES)
def test_repository_files_mounted_exist(name: str) -> None:
    for source in mounts(service(name)).values():
        if source.startswith("."):
            path = (DEPLOY / source).resolve()
            if path.name == "backup-recipients.txt":
                continue  # the operator's file (create_host_path: false makes it required)
            assert path.exists(), f"{name}: {source} is not in the repository"


def test_every_variable_is_documented_in_env_example() -> None:
    used = variables_used(COMPOSE_FILE.read_text(encoding="utf-8"))
    documented = set(read_env_file(ENV_EXAMPLE))
    assert used - documented == set(), f"undocumented in .env.example: {used - documented}"


def test_env_example_holds_no_secret() -> None:
    for key, value in read_env_file(ENV_EXAMPLE).items():
        assert not (SECRET_KEY.search(key) and value), f"{key} in .env.example"
        assert not SECRET_VALUE.match(value), key


def test_synapse_dockerfile_installs_only_the_guard() -> None:
    text = (DEPLOY / "synapse" / "Dockerfile").read_text(encoding="utf-8")
    instructions = [
        line.split()[0] for line in text.splitlines() if line and not line.startswith("#")
    ]
    assert instructions == ["ARG", "FROM", "COPY", "COPY", "RUN"]
    assert re.search(r"^ARG SYNAPSE_IMAGE=matrixdotorg/synapse:v\d+\.\d+\.\d+$", text, re.M)
    assert "pip install --no-cache-dir /tmp/synapse-guard" in text


def test_synapse_static_addresses_are_in_their_networks() -> None:
    for net, config in networks_of("synapse").items():
        address = (config or {}).get("ipv4_address")
        if address is None:
            continue
        subnets = [c["subnet"] for c in network(net)["ipam"]["config"]]
        assert any(ipaddress.ip_address(address) in ipaddress.ip_network(s) for s in subnets)


def test_synapse_has_no_route_off_the_internal_networks() -> None:
    for net in networks_of("synapse"):
        assert network(net).get("internal") is True, f"synapse is on non-internal {net}"


def test_synapse_shares_the_push_egress_network_with_the_proxy_only() -> None:
    on_push_egress = {name for name in SERVICES if "push-egress" in networks_of(name)}
    assert on_push_egress == {"synapse", "push-proxy"}
    assert network("push-egress").get("internal") is True
    # The proxy is the one service bridging it to the internet.
    assert set(networks_of("push-proxy")) == {"push-egress", "egress"}


def test_synapse_pushes_through_the_proxy() -> None:
    environment = service("synapse")["environment"]
    proxy = networks_of("push-proxy")["push-egress"]["ipv4_address"]
    assert environment["HTTPS_PROXY"] == f"http://{proxy}:8888"
    # Plain-HTTP URLs get no proxy (and have no route); nothing bypasses it.
    for key in ("HTTP_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY"):
        assert key not in environment, key


def test_nginx_reaches_synapse_on_the_frontend_network() -> None:
    environment = service("nginx")["environment"]
    assert environment["MATRIX_SYNAPSE_UPSTREAM"] == "synapse:8008"
    assert set(networks_of("nginx")) & set(networks_of("synapse")) == {"frontend"}


# -- agreement with deploy/nginx -----------------------------------------------------------


def test_nginx_mounts_what_its_config_reads() -> None:
    targets = set(mounts(service("nginx")))
    text = "\n".join(
        (DEPLOY / "nginx" / f).read_text(encoding="utf-8")
        for f in ("nginx.conf", "conf.d/matrix.conf")
    )
    config_lines = [line.split("#", 1)[0] for line in text.splitlines()]
    paths = re.findall(
        r"(/(?:etc/letsencrypt|var/www/acme|usr/share/nginx/element|var/log/nginx)"
        r"|/etc/nginx/synapse-guard\.conf)",
        "\n".join(config_lines),
    )
    assert paths
    for path in set(paths):
        assert path in targets, f"nginx reads {path}, which is not mounted"
    assert targets >= {"/etc/nginx/nginx.conf", "/etc/nginx/templates/matrix.conf.template"}


def test_nginx_template_variables_are_set() -> None:
    text = (DEPLOY / "nginx" / "conf.d" / "matrix.conf").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(MATRIX_[A-Z_]+)\}", text))
    environment = service("nginx")["environment"]
    assert used <= set(environment), used - set(environment)
    assert environment["NGINX_ENVSUBST_FILTER"] == "^MATRIX_"


def test_nginx_listens_on_the_published_ports() -> None:
    text = (DEPLOY / "nginx" / "conf.d" / "matrix.conf").read_text(encoding="utf-8")
    listened = {int(p) for p in re.findall(r"^\s*listen\s+(?:\[::\]:)?(\d+)", text, re.M)}
    published = {int(p.rsplit(":", 1)[1].split("/")[0]) for p in service("nginx")["ports"]}
    assert listened == published
