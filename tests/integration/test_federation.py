"""Federation denial on a real Synapse, outbound side (inbound: test_federation_inbound.py).

The hardened server serves no federation endpoint at all (homeserver.d). The guard's layer is
proven alone on a server whose whitelist lets one loopback "remote" server through: any request
that slipped past the guard would go to 127.0.0.1:9 (discard port) and fail differently.
"""

from __future__ import annotations

import pytest
import requests

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import SynapseServer

REMOTE = "127.0.0.1:9"


@pytest.fixture(scope="module")
def leaky_synapse(synapse_factory: SynapseFactory) -> SynapseServer:
    """Synapse's own federation layer opened to one loopback peer; the guard must refuse."""
    return synapse_factory(extra={"federation_domain_whitelist": [REMOTE]}).start()


@pytest.mark.parametrize(
    "path",
    ["/_matrix/federation/v1/version", "/_matrix/key/v2/server", "/.well-known/matrix/server"],
)
def test_hardened_server_serves_no_federation_endpoint(synapse: SynapseServer, path: str) -> None:
    response = requests.get(synapse.url + path, timeout=10)
    assert response.status_code == 404


@pytest.mark.parametrize("admin", [False, True], ids=["member", "admin"])
def test_inviting_a_remote_user_is_refused(leaky_synapse: SynapseServer, admin: bool) -> None:
    _, client = leaky_synapse.new_user("inviter", admin=admin)
    room_id = client.room_id()
    before = leaky_synapse.decisions("invite", "deny", "federation")

    status, reply = client.invite(room_id, f"@bob:{REMOTE}")

    assert status == 403, reply
    assert leaky_synapse.decisions("invite", "deny", "federation") == before + 1
    assert ("m.room.member", f"@bob:{REMOTE}") not in client.state(room_id)


def test_joining_a_remote_room_is_refused(leaky_synapse: SynapseServer) -> None:
    _, member = leaky_synapse.new_user("joiner")
    # The per-request gate refuses it first: the URL names another server (the join callback,
    # the next layer, is proven in tests/unit/test_module.py; admins skip it anyway).
    before = leaky_synapse.decisions("request", "deny", "federation")

    status, reply = member.join(f"!somewhere:{REMOTE}", server_name=REMOTE)

    assert status == 403, reply
    assert leaky_synapse.decisions("request", "deny", "federation") == before + 1


def test_new_rooms_never_federate(leaky_synapse: SynapseServer) -> None:
    _, member = leaky_synapse.new_user("creator")
    room_id = member.room_id(creation_content={"m.federate": True})
    assert member.state_content(room_id, "m.room.create")["m.federate"] is False  # type: ignore[index]


def test_nothing_was_sent_to_another_server(leaky_synapse: SynapseServer) -> None:
    """The tripwire an operator alerts on: Synapse's own federation transaction counter."""
    assert "synapse_federation_client_sent_transactions_total" in leaky_synapse.metrics_text()
    assert leaky_synapse.metric("synapse_federation_client_sent_transactions_total") == 0
