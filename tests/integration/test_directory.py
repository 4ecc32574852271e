"""A findable team, or compartmented ones: homeserver.d/45-team-directory.yaml on a real Synapse.

The shipped choice (findable): a member finds a teammate they share no room with through the
user directory (what Element's "Start chat" and invite dialogs search) and reads their display
name (what the invite dialog fetches before it stops saying "may or may not exist").
Compartmented (the fragment's two marked values flipped): the same member finds nobody and
gets no profile until they share a room. Both ways, nothing is served without a token.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from typing import Any

import pytest
import requests
import yaml

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import HOMESERVER_D, MatrixClient, SynapseServer

FRAGMENT = HOMESERVER_D / "45-team-directory.yaml"
SEARCH = "/_matrix/client/v3/user_directory/search"


def fragment() -> dict[str, Any]:
    return dict(yaml.safe_load(FRAGMENT.read_text()))


def compartmented() -> dict[str, Any]:
    """The fragment with its documented switch applied: (A) false, (B) true."""
    config = fragment()
    config["user_directory"] = {**config["user_directory"], "search_all_users": False}
    config["limit_profile_requests_to_users_who_share_rooms"] = True
    return config


@pytest.fixture(scope="module")
def findable(synapse_factory: SynapseFactory) -> SynapseServer:
    return synapse_factory().start()  # exactly homeserver.d


@pytest.fixture(scope="module")
def compartments(synapse_factory: SynapseFactory) -> SynapseServer:
    # Read after homeserver.d: replaces its top-level keys, as an operator's site file would.
    return synapse_factory(extra=compartmented()).start()


def profile_path(user_id: str, field: str = "") -> str:
    path = "/_matrix/client/v3/profile/" + urllib.parse.quote(user_id, safe="")
    return f"{path}/{field}" if field else path


def member(server: SynapseServer, first_name: str) -> tuple[str, MatrixClient, str]:
    """A member with a display name carrying a unique word (their searchable surname)."""
    user_id, client = server.new_user(first_name.lower())
    surname = "Z" + uuid.uuid4().hex[:10]
    name = f"{first_name} {surname}"
    status, body = client.request(
        "PUT", profile_path(user_id, "displayname"), {"displayname": name}
    )
    assert status == 200, body
    return user_id, client, surname


def search(client: MatrixClient, term: str) -> list[str]:
    status, body = client.request("POST", SEARCH, {"search_term": term, "limit": 10})
    assert status == 200, body
    return [result["user_id"] for result in body["results"]]


# --- The choice itself ------------------------------------------------------------------------


def test_the_fragment_is_one_coherent_choice() -> None:
    config = fragment()
    # Findable team: the directory lists everyone AND profiles answer without a shared room.
    assert config["user_directory"]["search_all_users"] is True
    assert config["limit_profile_requests_to_users_who_share_rooms"] is False
    # Fixed either way: no profile without a token, no profile copied into invites.
    assert config["require_auth_for_profile_requests"] is True
    assert config["include_profile_data_on_invite"] is False
    assert config["user_directory"]["exclude_remote_users"] is True
    # The comments name the two values of the switch, as compartmented() flips them.
    lines = FRAGMENT.read_text().splitlines()
    for mark, key in (("(A)", "search_all_users:"), ("(B)", "limit_profile_requests")):
        (index,) = [i for i, line in enumerate(lines) if line.strip().startswith(key)]
        assert mark in lines[index - 1] or mark in lines[index - 2], key


# --- Findable team (shipped) ------------------------------------------------------------------


def test_a_member_finds_a_teammate_they_share_no_room_with(findable: SynapseServer) -> None:
    _, alice, _ = member(findable, "Alice")
    bob_id, _, surname = member(findable, "Bob")
    # By the name Element's dialog is typed with, and by user ID.
    assert search(alice, surname) == [bob_id]
    assert bob_id in search(alice, bob_id.split(":")[0].lstrip("@"))
    status, body = alice.request("POST", SEARCH, {"search_term": surname, "limit": 10})
    assert status == 200
    assert body["results"][0]["display_name"] == f"Bob {surname}"


def test_a_member_reads_a_teammates_profile_before_sharing_a_room(
    findable: SynapseServer,
) -> None:
    _, alice, _ = member(findable, "Alice")
    bob_id, _, surname = member(findable, "Bob")
    status, body = alice.request("GET", profile_path(bob_id))
    assert status == 200, body
    assert body["displayname"] == f"Bob {surname}"
    status, body = alice.request("GET", profile_path(bob_id, "displayname"))
    assert (status, body) == (200, {"displayname": f"Bob {surname}"})


def test_a_removed_member_leaves_the_directory(findable: SynapseServer) -> None:
    _, admin = findable.new_user("admin", admin=True)
    _, alice, _ = member(findable, "Alice")
    gone_id, _, surname = member(findable, "Gone")
    assert search(alice, surname) == [gone_id]
    status, body = admin.request(
        "POST", "/_synapse/admin/v1/deactivate/" + urllib.parse.quote(gone_id), {"erase": True}
    )
    assert status == 200, body
    assert search(alice, surname) == []


# --- Compartmented teams ----------------------------------------------------------------------


def test_compartmented_a_member_finds_nobody_they_share_no_room_with(
    compartments: SynapseServer,
) -> None:
    _, alice, _ = member(compartments, "Alice")
    bob_id, _, surname = member(compartments, "Bob")
    assert search(alice, surname) == []
    assert search(alice, bob_id.split(":")[0].lstrip("@")) == []


def test_compartmented_no_profile_without_a_shared_room(compartments: SynapseServer) -> None:
    _, alice, _ = member(compartments, "Alice")
    bob_id, bob, surname = member(compartments, "Bob")
    for path in (profile_path(bob_id), profile_path(bob_id, "displayname")):
        status, body = alice.request("GET", path)
        assert status == 403, (path, status, body)
        assert surname not in str(body)

    # Once they share a room, both answer: the compartment is the room.
    room_id = bob.room_id(preset="private_chat")
    assert bob.invite(room_id, alice.user_id or "")[0] == 200
    assert alice.join(room_id)[0] == 200
    status, body = alice.request("GET", profile_path(bob_id, "displayname"))
    assert (status, body) == (200, {"displayname": f"Bob {surname}"})
    deadline = time.monotonic() + 15  # the directory follows room membership in the background
    while search(alice, surname) != [bob_id] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert search(alice, surname) == [bob_id]


# --- Both ways --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["findable", "compartments"])
def test_nothing_without_a_token(request: pytest.FixtureRequest, which: str) -> None:
    server: SynapseServer = request.getfixturevalue(which)
    bob_id, _, surname = member(server, "Bob")
    for path in (profile_path(bob_id), profile_path(bob_id, "displayname")):
        response = requests.get(server.url + path, timeout=10)
        assert response.status_code == 401, response.text
        assert surname not in response.text
    response = requests.post(server.url + SEARCH, json={"search_term": surname}, timeout=10)
    assert response.status_code == 401, response.text
