"""decide_event: one decision for every event about to enter a room, admins' included."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard import events
from synapse_guard.config import (
    FederationPolicy,
    GuardConfig,
    RegistrationPolicy,
    RoomPolicy,
)
from synapse_guard.events import EventFacts, decide_cleartext, decide_event
from synapse_guard.rooms import StateEntry
from synapse_guard.verdict import Check, Reason, Verdict

from .conftest import ALICE, BOB, MALLORY, SERVER_NAME, create_module, decisions, make_event

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
UNENCRYPTED_STATE = {key: entry for key, entry in STATE.items() if key[0] != "m.room.encryption"}


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


def test_a_local_message_is_allowed_in_a_room_without_encryption() -> None:
    facts = event("m.room.message", {"msgtype": "m.text", "body": "hi"})

    assert decide_event(DEFAULTS, SERVER_NAME, facts, UNENCRYPTED_STATE) == (Check.EVENT, ALLOWED)


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

    assert decide_event(FEDERATED, SERVER_NAME, facts, UNENCRYPTED_STATE) == (Check.EVENT, ALLOWED)


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

    assert decide_event(DEFAULTS, SERVER_NAME, facts, UNENCRYPTED_STATE) == (Check.EVENT, ALLOWED)


# Encrypted rooms: nothing in clear but what Element's SDKs send in clear by design ----------

REFUSED = (Check.EVENT, Verdict(allowed=False, reason=Reason.UNENCRYPTED))
CIPHERTEXT = "AwgAEpAB6y0Tlvu4CmuvlyqH3zKfxEDaPwNlHAtXvEmu6JRGfBomLTSNjhsqBYAwg2C3+f1M0H3ijUR"
MEGOLM_EVENT = {
    "algorithm": MEGOLM,
    "ciphertext": CIPHERTEXT,
    "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ",
    "sender_key": "SGVsbG8gd29ybGQgY3VydmUyNTUxOSBrZXkgaGVyZQ",
    "device_id": "RJYKSTBOIE",
}
REFERENCE = {"m.relates_to": {"rel_type": "m.reference", "event_id": "$request"}}
SECRET = "the merger closes on friday"


def encrypted(**fields: Any) -> EventFacts:
    return event("m.room.encrypted", {**MEGOLM_EVENT, **fields})


def reaction(key: str = "\N{THUMBS UP SIGN}", **relation: Any) -> EventFacts:
    relates_to = {"rel_type": "m.annotation", "event_id": "$message", "key": key, **relation}
    return event("m.reaction", {"m.relates_to": relates_to})


def verification_request(sender: str = ALICE, **fields: Any) -> EventFacts:
    """What Element Web (matrix-js-sdk) sends, in clear, to verify a user in their DM."""
    content = {
        "msgtype": "m.key.verification.request",
        "body": f"{sender} is requesting to verify your key, but your client does not support "
        "in-chat key verification. You will need to use legacy key verification to verify keys.",
        "from_device": "ALICEDEVICE",
        "methods": ["m.sas.v1", "m.qr_code.show.v1", "m.reciprocate.v1"],
        "to": BOB,
        **fields,
    }
    return event("m.room.message", content, sender=sender)


VERIFICATION_STEPS = {
    "ready": ("m.key.verification.ready", {"from_device": "BOBDEVICE", "methods": ["m.sas.v1"]}),
    "start-sas": (
        "m.key.verification.start",
        {
            "from_device": "ALICEDEVICE",
            "method": "m.sas.v1",
            "key_agreement_protocols": ["curve25519-hkdf-sha256"],
            "hashes": ["sha256"],
            "message_authentication_codes": ["hkdf-hmac-sha256.v2", "hkdf-hmac-sha256"],
            "short_authentication_string": ["decimal", "emoji"],
        },
    ),
    "start-qr": (
        "m.key.verification.start",
        {"from_device": "BOBDEVICE", "method": "m.reciprocate.v1", "secret": "c2VjcmV0IQ"},
    ),
    "accept": (
        "m.key.verification.accept",
        {
            "method": "m.sas.v1",
            "key_agreement_protocol": "curve25519-hkdf-sha256",
            "hash": "sha256",
            "message_authentication_code": "hkdf-hmac-sha256.v2",
            "short_authentication_string": ["decimal", "emoji"],
            "commitment": "fQpGIW1Snz+pwLZu6sTy2aHy/DYWWTspTJRPyNp0PKk",
        },
    ),
    "key": ("m.key.verification.key", {"key": "fQpGIW1Snz+pwLZu6sTy2aHy/DYWWTspTJRPyNp0PKk"}),
    "mac": (
        "m.key.verification.mac",
        {
            "keys": "2Wptgo4CwmLo/Y8B8qinxApKaCkBG2fjTWB7AbP5Uy+aIbygsSdLOFzvdDjww8zUVKCmI02eP9x",
            "mac": {"ed25519:ALICEDEVICE": "fQpGIW1Snz+pwLZu6sTy2aHy/DYWWTspTJRPyNp0PKk"},
        },
    ),
    "done": ("m.key.verification.done", {}),
    "cancel": (
        "m.key.verification.cancel",
        {"code": "m.user", "reason": "The user cancelled the verification."},
    ),
}


@pytest.mark.parametrize(
    ("event_type", "content"),
    [
        ("m.room.message", {"msgtype": "m.text", "body": SECRET}),
        ("m.room.message", {"msgtype": "m.notice", "body": SECRET}),
        ("m.room.message", {"msgtype": "m.file", "body": "q3.pdf", "url": "mxc://x/y"}),
        ("m.room.message", {"msgtype": "m.location", "body": SECRET, "geo_uri": "geo:1,2"}),
        (
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": f"* {SECRET}",
                "m.new_content": {"msgtype": "m.text", "body": SECRET},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$message"},
            },
        ),
        ("m.room.message", {}),
        ("m.sticker", {"body": SECRET, "url": "mxc://x/y", "info": {}}),
        ("org.matrix.msc3381.poll.start", {"org.matrix.msc3381.poll.start": {"question": {}}}),
        ("m.call.invite", {"call_id": "1", "offer": {"sdp": SECRET}}),
        ("com.example.note", {"body": SECRET}),
        ("m.room.topic", {"topic": SECRET}),  # a state type, sent as a timeline event
    ],
    ids=[
        "text", "notice", "file", "location", "edit", "empty-message", "sticker", "poll",
        "call", "custom-type", "state-type-as-timeline",
    ],
)  # fmt: skip
def test_a_timeline_event_in_clear_into_an_encrypted_room_is_refused(
    event_type: str, content: dict[str, Any]
) -> None:
    assert decide(event(event_type, content)) == REFUSED


@pytest.mark.parametrize(
    "facts",
    [
        encrypted(),
        event("m.room.encrypted", {k: MEGOLM_EVENT[k] for k in ("algorithm", "ciphertext", "session_id")}),  # noqa: E501
        encrypted(ciphertext=CIPHERTEXT + "=="),
        encrypted(**{"m.relates_to": {"rel_type": "m.replace", "event_id": "$message"}}),
        encrypted(**{"m.relates_to": {"m.in_reply_to": {"event_id": "$message"}}}),
        encrypted(
            **{
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": "$root",
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": "$last"},
                }
            }
        ),
        encrypted(**{"m.relates_to": {"rel_type": "m.reference", "event_id": "$poll"}}),
        encrypted(**{"m.relates_to": {"rel_type": "m.annotation", "event_id": "$m", "key": "+1"}}),
    ],
    ids=[
        "nio", "rust-sdk-minimal", "padded", "edit", "reply", "thread", "poll-response",
        "encrypted-reaction",
    ],
)  # fmt: skip
def test_a_megolm_event_is_allowed(facts: EventFacts) -> None:
    assert decide(facts) == (Check.EVENT, ALLOWED)


@pytest.mark.parametrize(
    "facts",
    [
        encrypted(body=SECRET),
        encrypted(ciphertext=SECRET),
        encrypted(ciphertext=""),
        encrypted(ciphertext={"body": SECRET}),
        encrypted(algorithm="m.olm.v1.curve25519-aes-sha2"),
        encrypted(algorithm=None),
        event("m.room.encrypted", {"algorithm": MEGOLM, "ciphertext": CIPHERTEXT}),
        encrypted(session_id=SECRET),
        encrypted(device_id=["RJYKSTBOIE"]),
        encrypted(**{"m.relates_to": {"rel_type": "m.replace", "event_id": "$m", "body": SECRET}}),
        encrypted(**{"m.relates_to": {"m.in_reply_to": {"event_id": "$m", "body": SECRET}}}),
        encrypted(**{"m.relates_to": {"rel_type": "m.annotation", "key": SECRET * 3}}),
        encrypted(**{"m.relates_to": {"rel_type": "m.thread", "is_falling_back": "yes"}}),
        encrypted(**{"m.relates_to": SECRET}),
        encrypted(**{"m.new_content": {"body": SECRET}}),
    ],
    ids=[
        "body-beside-ciphertext", "ciphertext-is-text", "empty-ciphertext", "ciphertext-object",
        "olm-algorithm", "no-algorithm", "no-session", "session-is-text", "device-list",
        "relation-with-body", "reply-with-body", "relation-long-key", "falling-back-text",
        "relation-is-text", "new-content-in-clear",
    ],
)  # fmt: skip
def test_a_fake_encrypted_event_carrying_cleartext_is_refused(facts: EventFacts) -> None:
    assert decide(facts) == REFUSED


@pytest.mark.parametrize(
    "key",
    [
        "\N{THUMBS UP SIGN}",
        "\N{SMILING FACE WITH SMILING EYES}",
        # A kiss with two skin tones: ten code points, one emoji.
        "\U0001f469\U0001f3fb\u200d\u2764\ufe0f\u200d\U0001f48b\u200d\U0001f468\U0001f3fc",
        "mxc://guard.test/AbCdEfGhIjKlMnOpQrStUvWx",
        "x" * events.REACTION_KEY_MAX,
    ],
    ids=["thumbs-up", "smile", "zwj-sequence", "custom-emoji", "longest-key"],
)
def test_a_reaction_is_allowed_in_clear(key: str) -> None:
    assert decide(reaction(key)) == (Check.EVENT, ALLOWED)


@pytest.mark.parametrize(
    "facts",
    [
        reaction("x" * (events.REACTION_KEY_MAX + 1)),
        reaction(SECRET * 10),
        reaction(""),
        reaction(body=SECRET),
        reaction(rel_type="m.reference"),
        event("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$m"}}),
        event("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "key": "+1"}}),
        reaction(key=1),  # type: ignore[arg-type]
        event(
            "m.reaction",
            {
                "body": SECRET,
                "m.relates_to": {"rel_type": "m.annotation", "event_id": "$m", "key": "+1"},
            },
        ),
        event(
            "m.reaction",
            {
                "m.new_content": {"body": SECRET},
                "m.relates_to": {"rel_type": "m.annotation", "event_id": "$m", "key": "+1"},
            },
        ),
        event("m.reaction", {"body": SECRET}),
        event("m.reaction", {}),
        event("m.reaction", {"m.relates_to": SECRET}),
    ],
    ids=[
        "key-too-long", "key-is-a-message", "empty-key", "relation-with-body", "not-annotation",
        "no-key", "no-target", "key-not-text", "body-beside-relation", "new-content",
        "body-only", "empty", "relation-is-text",
    ],
)  # fmt: skip
def test_a_reaction_carrying_more_than_a_reaction_is_refused(facts: EventFacts) -> None:
    assert decide(facts) == REFUSED


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"redacts": "$message"},
        {"reason": "spam"},
        {"redacts": "$message", "reason": "x" * events.REASON_MAX},
        {"org.matrix.msc3912.with_relations": ["m.replace", "m.annotation"]},
        {"with_rel_types": ["*"]},
    ],
    ids=["empty", "v11-redacts", "reason", "longest-reason", "msc3912-unstable", "msc3912"],
)
def test_a_redaction_is_allowed_in_clear(content: dict[str, Any]) -> None:
    facts = event("m.room.redaction", content, redacts="$message")

    assert decide(facts) == (Check.EVENT, ALLOWED)


@pytest.mark.parametrize(
    "content",
    [
        {"reason": "spam", "body": SECRET},
        {"m.new_content": {"body": SECRET}},
        {"reason": "x" * (events.REASON_MAX + 1)},
        {"reason": {"body": SECRET}},
        {"redacts": SECRET},
        {"with_rel_types": SECRET},
        {"with_rel_types": []},
    ],
    ids=[
        "body-beside-reason", "new-content", "reason-too-long", "reason-object",
        "redacts-is-text", "relation-types-text", "relation-types-empty",
    ],
)  # fmt: skip
def test_a_redaction_carrying_extra_content_is_refused(content: dict[str, Any]) -> None:
    facts = event("m.room.redaction", content, redacts="$message")

    assert decide(facts) == REFUSED


def test_redacting_protected_state_is_still_refused_for_that_reason() -> None:
    facts = event("m.room.redaction", {"reason": "cleanup"}, redacts="$encryption")

    assert decide(facts) == (Check.EVENT, Verdict(allowed=False, reason=Reason.PROTECTED_STATE))


def test_element_webs_verification_request_is_allowed_in_clear() -> None:
    assert decide(verification_request()) == (Check.EVENT, ALLOWED)


@pytest.mark.parametrize(
    "facts",
    [
        verification_request(body=SECRET),
        verification_request(formatted_body=SECRET, format="org.matrix.custom.html"),
        verification_request(note=SECRET),
        verification_request(methods=[SECRET]),
        verification_request(methods=[]),
        verification_request(to=None),
        # Bob's fixed text, sent by Alice: the body must name its own sender.
        event("m.room.message", verification_request(sender=BOB).content, sender=ALICE),
    ],
    ids=[
        "other-body", "formatted-body", "extra-field", "method-with-spaces", "no-methods",
        "no-target", "someone-elses-text",
    ],
)  # fmt: skip
def test_a_verification_request_carrying_text_is_refused(facts: EventFacts) -> None:
    assert decide(facts) == REFUSED


@pytest.mark.parametrize("step", sorted(VERIFICATION_STEPS))
def test_element_webs_verification_steps_are_allowed_in_clear(step: str) -> None:
    event_type, content = VERIFICATION_STEPS[step]

    assert decide(event(event_type, {**content, **REFERENCE})) == (Check.EVENT, ALLOWED)


@pytest.mark.parametrize(
    ("step", "change"),
    [
        ("ready", {"body": SECRET}),
        ("ready", {"m.relates_to": {"rel_type": "m.reference"}}),
        ("ready", {"m.relates_to": {"rel_type": "m.thread", "event_id": "$request"}}),
        ("key", {"key": SECRET}),
        ("mac", {"mac": {"ed25519:ALICEDEVICE": SECRET}}),
        ("mac", {"mac": SECRET}),
        ("mac", {"mac": {}}),
        ("cancel", {"reason": SECRET * 20}),
        ("start-sas", {"hashes": [SECRET]}),
        ("start-sas", {"hashes": ["sha256"] * 17}),
        ("done", {"reason": "finished"}),
    ],
    ids=[
        "body", "no-target", "not-a-reference", "key-is-text", "mac-is-text", "mac-not-a-map",
        "mac-empty", "long-reason", "list-with-text", "list-too-long", "field-of-another-step",
    ],
)  # fmt: skip
def test_a_verification_step_carrying_text_is_refused(step: str, change: dict[str, Any]) -> None:
    event_type, content = VERIFICATION_STEPS[step]

    assert decide(event(event_type, {**content, **REFERENCE, **change})) == REFUSED


def test_a_verification_step_without_its_reference_is_refused() -> None:
    event_type, content = VERIFICATION_STEPS["done"]

    assert decide(event(event_type, content)) == REFUSED


@pytest.mark.parametrize(
    ("event_type", "content", "state_key"),
    [
        ("m.room.topic", {"topic": "Q3 planning"}, ""),
        ("m.room.name", {"name": "Board"}, ""),
        ("m.room.member", {"membership": "join", "displayname": "Alice"}, ALICE),
        ("m.room.pinned_events", {"pinned": ["$message"]}, ""),
        ("org.matrix.msc3401.call.member", {}, f"_{ALICE}_ALICEDEVICE"),
    ],
    ids=["topic", "name", "join", "pins", "call-membership"],
)
def test_state_events_are_not_judged_by_the_cleartext_rule(
    event_type: str, content: dict[str, Any], state_key: str
) -> None:
    assert decide(event(event_type, content, state_key=state_key)) == (Check.EVENT, ALLOWED)


def test_a_room_without_encryption_in_its_state_is_not_judged() -> None:
    # A room older than the guard, created before encryption was forced.
    facts = event("m.room.message", {"msgtype": "m.text", "body": SECRET})

    assert decide_event(DEFAULTS, SERVER_NAME, facts, UNENCRYPTED_STATE) == (Check.EVENT, ALLOWED)


def test_with_encryption_off_cleartext_is_allowed() -> None:
    config = GuardConfig(rooms=RoomPolicy(encryption="off"))
    facts = event("m.room.message", {"msgtype": "m.text", "body": SECRET})

    assert decide(facts, config) == (Check.EVENT, ALLOWED)


def test_a_remote_sender_is_refused_as_federation_first() -> None:
    facts = event("m.room.message", {"body": SECRET}, sender=MALLORY)

    assert decide(facts) == (Check.EVENT, Verdict(allowed=False, reason=Reason.FEDERATION))


# Properties: whatever shape a client invents, nothing it sends in clear carries a message.

# One valid example of every event an encrypted room takes in clear (or as ciphertext).
VALID = {
    "megolm": encrypted(**{"m.relates_to": {"rel_type": "m.replace", "event_id": "$m"}}),
    "reaction": reaction(),
    "redaction": event("m.room.redaction", {"redacts": "$m", "reason": "spam"}),
    "verification-request": verification_request(),
    **{
        f"verification-{step}": event(event_type, {**content, **REFERENCE})
        for step, (event_type, content) in VERIFICATION_STEPS.items()
    },
}
KNOWN_FIELDS = {key for facts in VALID.values() for key in facts.content} | {
    *events._ENCRYPTED_FIELDS,
    *events._REDACTION_FIELDS,
    *(field for fields in events._VERIFICATION_STEPS.values() for field in fields),
}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


def string_paths(value: object, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in string_paths(v, (*path, i))]
    return []


def replaced(value: Any, path: tuple[Any, ...], new: str) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def test_every_valid_example_is_allowed() -> None:
    assert all(decide(facts) == (Check.EVENT, ALLOWED) for facts in VALID.values())


@given(
    name=st.sampled_from(sorted(VALID)),
    field=st.text(min_size=1).filter(lambda f: f not in KNOWN_FIELDS),
    value=JSON,
)
def test_no_unknown_field_passes_beside_an_allowed_shape(name: str, field: str, value: Any) -> None:
    facts = VALID[name]

    assert decide(event(facts.type, {**facts.content, field: value})) == REFUSED


@given(name=st.sampled_from(sorted(VALID)), data=st.data())
def test_no_string_of_an_allowed_shape_may_grow_into_text(name: str, data: st.DataObject) -> None:
    facts = VALID[name]
    path = data.draw(st.sampled_from(string_paths(dict(facts.content))))
    # Readable text (ciphertext may be long, but it is base64: no spaces).
    text = SECRET + " " + data.draw(st.text(min_size=events.REASON_MAX, max_size=2000))

    grown = replaced(dict(facts.content), path, text)

    assert decide(event(facts.type, grown)) == REFUSED


@given(
    event_type=st.sampled_from(sorted({f.type for f in VALID.values()})) | st.text(max_size=30),
    content=st.dictionaries(st.sampled_from(sorted(KNOWN_FIELDS)) | st.text(), JSON, max_size=5),
)
def test_any_content_gets_a_verdict_never_an_error(
    event_type: str, content: dict[str, Any]
) -> None:
    verdict = decide_cleartext(event(event_type, content))

    assert verdict.allowed or verdict.reason is Reason.UNENCRYPTED


@given(st.text(min_size=events.REACTION_KEY_MAX + 1))
def test_no_reaction_key_longer_than_the_bound_passes(key: str) -> None:
    assert decide(reaction(key)) == REFUSED


# Through the module: a real (frozen) Synapse event and the room's state as Synapse passes it.


def run_check(event: Any, state: dict[tuple[str, str], Any]) -> Any:
    module = create_module()
    return asyncio.run(module.callbacks["check_event_allowed"](event, state))


def frozen(synapse_event: Any) -> Any:
    """As Synapse hands it over: before 1.163 frozen (lists become tuples); from 1.163 a
    Rust event whose content is a read-only mapping already."""
    if hasattr(synapse_event, "freeze"):
        synapse_event.freeze()
    return synapse_event


def encrypted_room_state() -> dict[tuple[str, str], Any]:
    encryption = make_event("m.room.encryption", ALICE, {"algorithm": MEGOLM}, state_key="")
    return {("m.room.encryption", ""): encryption}


def test_the_module_refuses_cleartext_in_an_encrypted_room_and_counts_it() -> None:
    message = frozen(make_event("m.room.message", ALICE, {"msgtype": "m.text", "body": SECRET}))
    before = decisions(Check.EVENT, "deny", Reason.UNENCRYPTED)

    assert run_check(message, encrypted_room_state()) == (False, None)
    assert decisions(Check.EVENT, "deny", Reason.UNENCRYPTED) == before + 1


@pytest.mark.parametrize("step", ["ready", "mac"])
def test_the_module_allows_a_frozen_verification_step(step: str) -> None:
    event_type, content = VERIFICATION_STEPS[step]
    step_event = frozen(make_event(event_type, ALICE, {**content, **REFERENCE}))

    allowed, _ = run_check(step_event, encrypted_room_state())

    assert allowed is True


def test_the_module_allows_a_frozen_reaction() -> None:
    reacted = frozen(make_event("m.reaction", ALICE, reaction().content))

    allowed, _ = run_check(reacted, encrypted_room_state())

    assert allowed is True
