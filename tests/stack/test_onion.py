"""The onion service on the live stack (profile `onion`, kept off the Tor network): tor made
its v3 address and keys on the data volume, and nginx's onion listener serves that host name
with the same policy as the HTTPS server, to a client on the `onion` network (where tor
forwards the service's connections); other host names get nothing."""

from __future__ import annotations

import json
import re

import pytest

from tests.stack.conftest import Stack

NGINX_ON_ONION = "172.31.245.10"
CLIENT = "172.31.245.50"


@pytest.fixture(scope="module")
def onion(stack: Stack) -> str:
    hostname = (stack.data / "tor" / "onion" / "hostname").read_text().strip()
    assert re.fullmatch(r"[a-z2-7]{56}\.onion", hostname), hostname
    return hostname


def over_onion(stack: Stack, host: str, path: str) -> tuple[int, str]:
    done = stack.docker(
        "run", "--rm", "--network", f"{stack.project}_onion", "--ip", CLIENT,
        "--entrypoint", "curl", stack.inspect("synapse")["Config"]["Image"],
        "-sS", "--max-time", "20", "-H", f"Host: {host}", "-w", "\n%{http_code}",
        f"http://{NGINX_ON_ONION}{path}",
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return 0, done.stderr
    text, _, status = done.stdout.rpartition("\n")
    return int(status), text


def test_tor_keeps_its_keys_private_on_the_data_volume(stack: Stack, onion: str) -> None:
    keys = stack.data / "tor" / "onion"
    secret = keys / "hs_ed25519_secret_key"
    assert secret.is_file()
    assert (secret.stat().st_uid, secret.stat().st_mode & 0o777) == (9050, 0o600)
    assert (keys.stat().st_mode & 0o777) == 0o700


def test_the_client_api_and_element_answer_for_the_onion_host(stack: Stack, onion: str) -> None:
    status, body = over_onion(stack, onion, "/_matrix/client/versions")
    assert status == 200, body
    assert "versions" in json.loads(body)
    status, body = over_onion(stack, onion, "/config.json")
    assert status == 200, body
    assert (
        json.loads(body)["default_server_config"]["m.homeserver"]["base_url"] == f"http://{onion}"
    )


def test_the_onion_host_keeps_the_policy(stack: Stack, onion: str) -> None:
    # The tor container's address is not the admin range: no admin API over the onion.
    assert over_onion(stack, onion, "/_synapse/admin/v1/server_version")[0] == 403
    assert over_onion(stack, onion, "/_matrix/federation/v1/version")[0] == 404


def test_another_host_name_gets_no_answer(stack: Stack, onion: str) -> None:
    status, _ = over_onion(stack, "matrix.stack.test", "/_matrix/client/versions")
    assert status == 0
