"""Federation denial: nothing crosses the server's boundary while federation is disabled."""

from __future__ import annotations

import pytest

from synapse_guard.config import FederationPolicy
from synapse_guard.federation import (
    decide_create_event,
    decide_invite,
    decide_join,
    decide_remote_traffic,
    domain_of,
    is_local_user,
)
from synapse_guard.verdict import Reason, Verdict

from .conftest import ALICE, BOB, MALLORY, SERVER_NAME

DISABLED = FederationPolicy(enabled=False)
ENABLED = FederationPolicy(enabled=True)
ALLOWED = Verdict(allowed=True, reason=Reason.OK)
REFUSED = Verdict(allowed=False, reason=Reason.FEDERATION)


@pytest.mark.parametrize(
    ("user_id", "domain"),
    [
        ("@alice:test.local", "test.local"),
        ("@alice:test.local:8448", "test.local:8448"),
        ("@alice:[::1]:8448", "[::1]:8448"),
        ("@a:b:c", "b:c"),
        ("alice", None),
        ("@alice", None),
        ("@alice:", None),
        ("alice:test.local", None),
        ("!room:test.local", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_domain_of_a_user_id(user_id: object, domain: str | None) -> None:
    assert domain_of(user_id) == domain


@pytest.mark.parametrize(
    ("user_id", "local"),
    [
        ("@alice:test.local", True),
        ("@alice:evil.example", False),
        ("@alice:test.local.evil.example", False),
        ("@alice:evil.test.local", False),
        ("@alice:test.local:8448", False),
        ("@alice:TEST.LOCAL", False),
        ("test.local", False),
        (None, False),
    ],
)
def test_a_local_user_belongs_to_exactly_this_server(user_id: object, local: bool) -> None:
    assert is_local_user(user_id, SERVER_NAME) is local


def test_an_invite_between_local_users_is_allowed() -> None:
    assert decide_invite(DISABLED, ALICE, BOB, SERVER_NAME) == ALLOWED


@pytest.mark.parametrize("invitee", [MALLORY, "@alice:test.local.evil.example", "mallory", None])
def test_inviting_anyone_else_is_refused(invitee: object) -> None:
    assert decide_invite(DISABLED, ALICE, invitee, SERVER_NAME) == REFUSED


def test_an_invite_from_a_remote_user_is_refused() -> None:
    # Older Synapse asks user_may_invite about invites received over federation too.
    assert decide_invite(DISABLED, MALLORY, ALICE, SERVER_NAME) == REFUSED


def test_remote_invites_are_allowed_with_federation_enabled() -> None:
    assert decide_invite(ENABLED, ALICE, MALLORY, SERVER_NAME) == ALLOWED
    assert decide_invite(ENABLED, MALLORY, ALICE, SERVER_NAME) == ALLOWED


def test_remote_traffic_is_refused_while_federation_is_disabled() -> None:
    assert decide_remote_traffic(DISABLED) == REFUSED
    assert decide_remote_traffic(ENABLED) == ALLOWED


def test_joining_a_room_created_here_is_allowed() -> None:
    assert decide_join(DISABLED, ALICE, SERVER_NAME) == ALLOWED


@pytest.mark.parametrize("creator", [MALLORY, None], ids=["remote-room", "room-unknown-here"])
def test_joining_any_other_room_is_refused(creator: str | None) -> None:
    assert decide_join(DISABLED, creator, SERVER_NAME) == REFUSED


def test_joining_a_remote_room_is_allowed_with_federation_enabled() -> None:
    assert decide_join(ENABLED, MALLORY, SERVER_NAME) == ALLOWED


def test_a_room_created_with_m_federate_false_is_allowed() -> None:
    content = {"room_version": "12", "m.federate": False}

    assert decide_create_event(DISABLED, content) == ALLOWED


@pytest.mark.parametrize(
    "content",
    [
        {"room_version": "12"},
        {"m.federate": True},
        {"m.federate": "false"},
        {"m.federate": 0},
        {"m.federate": None},
    ],
    ids=repr,
)
def test_a_room_created_without_m_federate_false_is_refused(content: dict[str, object]) -> None:
    assert decide_create_event(DISABLED, content) == REFUSED


def test_a_federated_room_is_allowed_with_federation_enabled() -> None:
    assert decide_create_event(ENABLED, {"room_version": "12"}) == ALLOWED
