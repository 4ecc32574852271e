"""decide_event: one decision for every event about to enter a room, admins' included."""

from __future__ import annotations

from typing import Any

import pytest

from synapse_guard.config import (
    FederationPolicy,
    GuardConfig,
    RegistrationPolicy,
    RoomPolicy,
)
from synapse_guard.events import EventFacts, decide_event
from synapse_guard.rooms import StateEntry
from synapse_guard.verdict import Check, Reason, Verdict

from .conftest import ALICE, BOB, MALLORY, SERVER_NAME

MEGOLM = "m.megolm.v1.aes-sha2"
DEFAULTS = GuardConfig()
FEDERATED = GuardConfig(federation=FederationPolicy(enabled=True))
ALLOWED = Verdict(allowed=True, reason=Reason.OK)
STATE = {
    ("m.room.create", ""): StateEntry("$create", {"m.federate": False}),
    ("m.room.join_rules", ""): StateEntry("$join_rules", {"join_rule": "invite"}),
    ("m.room.encryption", ""): StateEntry("$encryption", {"algorithm": MEGOLM}),
    ("m.room.retention", ""): StateEntry("$retention", {"max_lifetime": 604_800_000}),
}


def event(
    event_type: str,
    content: dict[str, Any] | None = None,
    sender: str = ALICE,
    state_key: str | None = None,
    redacts: str | None = None,
) -> EventFacts:
    return EventFacts(
        type=event_type,
        sender=sender,
        state_key=state_key,
        content=content or {},
        redacts=redacts,
    )


def decide(facts: EventFacts, config: GuardConfig = DEFAULTS) -> tuple[Check, Verdict]:
    return decide_event(config, SERVER_NAME, facts, STATE)


def test_a_local_message_is_allowed() -> None:
    assert decide(event("m.room.message", {"msgtype": "m.text", "body": "hi"})) == (
        Check.EVENT,
        ALLOWED,
    )


@pytest.mark.parametrize(
    "facts",
    [
        event("m.room.message", {"body": "hi"}, sender=MALLORY),
        event("m.room.member", {"membership": "join"}, sender=MALLORY, state_key=MALLORY),
        event("m.room.name", {"name": "x"}, sender=MALLORY, state_key=""),
        event("m.room.create", {"m.federate": False}, sender=MALLORY, state_key=""),
        event("m.room.message", {"body": "hi"}, sender="@alice:test.local.evil.example"),
        event("m.room.message", {"body": "hi"}, sender="not-a-user-id"),
    ],
    ids=["message", "join", "state", "create", "look-alike-domain", "malformed-sender"],
)
def test_anything_from_a_remote_sender_is_refused(facts: EventFacts) -> None:
    assert decide(facts) == (Check.EVENT, Verdict(allowed=False, reason=Reason.FEDERATION))


def test_a_remote_message_is_allowed_with_federation_enabled() -> None:
    facts = event("m.room.message", {"body": "hi"}, sender=MALLORY)

    assert decide(facts, FEDERATED) == (Check.EVENT, ALLOWED)


def test_a_room_created_with_m_federate_false_is_allowed() -> None:
    facts = event("m.room.create", {"room_version": "12", "m.federate": False}, state_key="")

    assert decide(facts) == (Check.CREATE_ROOM, ALLOWED)


@pytest.mark.parametrize(
    "content",
    [{"room_version": "12"}, {"room_version": "12", "m.federate": True}],
    ids=["without-m.federate", "m.federate-true"],
)
def test_a_room_created_without_m_federate_false_is_refused(content: dict[str, Any]) -> None:
    facts = event("m.room.create", content, state_key="")

    assert decide(facts) == (Check.CREATE_ROOM, Verdict(allowed=False, reason=Reason.FEDERATION))


def test_a_federated_room_may_be_created_with_federation_enabled() -> None:
    facts = event("m.room.create", {"room_version": "12"}, state_key="")

    assert decide(facts, FEDERATED) == (Check.CREATE_ROOM, ALLOWED)


def test_inviting_a_local_user_is_allowed() -> None:
    facts = event("m.room.member", {"membership": "invite"}, state_key=BOB)

    assert decide(facts) == (Check.INVITE, ALLOWED)


def test_inviting_a_remote_user_is_refused() -> None:
    facts = event("m.room.member", {"membership": "invite"}, state_key=MALLORY)

    assert decide(facts) == (Check.INVITE, Verdict(allowed=False, reason=Reason.FEDERATION))


def test_inviting_a_remote_user_is_allowed_with_federation_enabled() -> None:
    facts = event("m.room.member", {"membership": "invite"}, state_key=MALLORY)

    assert decide(facts, FEDERATED) == (Check.INVITE, ALLOWED)


@pytest.mark.parametrize("membership", ["join", "leave", "ban", "knock"])
def test_other_local_membership_changes_are_allowed(membership: str) -> None:
    facts = event("m.room.member", {"membership": membership}, state_key=BOB)

    assert decide(facts) == (Check.EVENT, ALLOWED)


@pytest.mark.parametrize("redacts", ["$create", "$join_rules", "$encryption", "$retention"])
def test_redacting_protected_state_is_refused(redacts: str) -> None:
    facts = event("m.room.redaction", {"redacts": redacts}, redacts=redacts)

    assert decide(facts) == (Check.EVENT, Verdict(allowed=False, reason=Reason.PROTECTED_STATE))


def test_redacting_a_message_is_allowed() -> None:
    facts = event("m.room.redaction", {"redacts": "$message"}, redacts="$message")

    assert decide(facts) == (Check.EVENT, ALLOWED)


def test_a_third_party_invite_is_refused() -> None:
    facts = event(
        "m.room.third_party_invite",
        {"display_name": "c***@example.com", "public_keys": []},
        state_key="token",
    )

    assert decide(facts) == (Check.THREEPID, Verdict(allowed=False, reason=Reason.THREEPID))


def test_a_third_party_invite_is_allowed_when_threepids_are() -> None:
    config = GuardConfig(registration=RegistrationPolicy(allow_3pid=True))
    facts = event("m.room.third_party_invite", {"display_name": "c"}, state_key="token")

    assert decide(facts, config) == (Check.EVENT, ALLOWED)


@pytest.mark.parametrize(
    ("event_type", "content", "reason"),
    [
        ("m.room.join_rules", {"join_rule": "public"}, Reason.JOIN_RULE),
        ("m.room.history_visibility", {"history_visibility": "shared"}, Reason.HISTORY_VISIBILITY),
        ("m.room.guest_access", {"guest_access": "can_join"}, Reason.GUEST_ACCESS),
        ("m.room.encryption", {"algorithm": MEGOLM, "rotation_period_ms": 1}, Reason.ENCRYPTION),
        ("m.room.retention", {}, Reason.RETENTION),
    ],
)
def test_a_local_state_event_that_opens_the_room_is_refused(
    event_type: str, content: dict[str, Any], reason: Reason
) -> None:
    facts = event(event_type, content, state_key="")

    assert decide(facts) == (Check.EVENT, Verdict(allowed=False, reason=reason))


def test_a_local_state_event_within_the_policy_is_allowed() -> None:
    config = GuardConfig(rooms=RoomPolicy(join_rule="knock"))
    facts = event("m.room.join_rules", {"join_rule": "knock"}, state_key="")

    assert decide(facts, config) == (Check.EVENT, ALLOWED)


def test_a_non_state_event_with_a_policy_type_is_not_judged_as_state() -> None:
    facts = event("m.room.join_rules", {"join_rule": "public"})

    assert decide(facts) == (Check.EVENT, ALLOWED)
