"""The decision for one event about to enter a room, whoever sends it (admins included).

Synapse calls `check_event_allowed` for every locally created event, room creation and
upgrades included (server admins cannot skip it), and for federated knocks; other federated
events reach `should_drop_federated_event`, which applies `decide_cleartext` too (module.py).

With `rooms.encryption: required`, a timeline event in an encrypted room must be ciphertext
(`decide_cleartext`): nothing else reaches the database, except the few events Element's SDKs
send in clear by design, each only in the shape those SDKs give it, so that none can carry a
message. State events are not judged by that rule (the state rules in `rooms` judge them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

from synapse_guard import federation, rooms
from synapse_guard.config import GuardConfig
from synapse_guard.verdict import ALLOW, Check, Reason, Verdict, deny


@attrs.frozen(slots=True)
class EventFacts:
    """The parts of an event the policy reads."""

    type: str
    sender: str
    state_key: str | None
    content: Mapping[str, Any]
    redacts: str | None = None


def decide_event(
    config: GuardConfig, server_name: str, event: EventFacts, state: rooms.StateView
) -> tuple[Check, Verdict]:
    if not federation.is_local_user(event.sender, server_name):
        remote = federation.decide_remote_traffic(config.federation)
        if not remote.allowed:
            return Check.EVENT, remote

    if (
        event.state_key is None
        and config.rooms.encryption_required
        and (rooms.ENCRYPTION, "") in state
    ):
        cleartext = decide_cleartext(event)
        if not cleartext.allowed:
            return Check.EVENT, cleartext

    if event.type == rooms.REDACTION:
        return Check.EVENT, rooms.decide_redaction(event.redacts, state)

    if event.state_key is None:
        return Check.EVENT, ALLOW

    if event.type == rooms.CREATE:
        return Check.CREATE_ROOM, federation.decide_create_event(config.federation, event.content)

    if event.type == "m.room.member":
        if event.content.get("membership") == "invite":
            return Check.INVITE, federation.decide_invite(
                config.federation, event.sender, event.state_key, server_name
            )
        return Check.EVENT, ALLOW

    if event.type == "m.room.third_party_invite" and not config.registration.allow_3pid:
        return Check.THREEPID, deny(Reason.THREEPID)

    return Check.EVENT, rooms.decide_state_event(
        config.rooms, config.retention, event.type, event.content, state
    )


# What may enter an encrypted room ----------------------------------------------------------

ENCRYPTED = "m.room.encrypted"
REACTION = "m.reaction"
MESSAGE = "m.room.message"

# An emoji is at most ~10 code points (ZWJ sequences with skin tones); an mxc:// custom
# emoji about 50. Anything longer is text, not a reaction.
REACTION_KEY_MAX = 64
# A redaction's or a cancelled verification's reason: a few words, not a message.
REASON_MAX = 256
_LIST_MAX = 16

# Identifiers, key IDs, algorithm names, base64 keys and MACs: visible ASCII, no spaces.
_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")

# What the SDKs' shared crypto crate (matrix-sdk-crypto, also in Element Web as
# matrix-sdk-crypto-wasm) writes as the fallback body of a verification request:
# crates/matrix-sdk-crypto/src/verification/requests.rs, `VerificationRequest::request`.
_VERIFICATION_REQUEST_BODY = (
    "{sender} is requesting to verify your key, but your client does not support in-chat "
    "key verification. You will need to use legacy key verification to verify keys."
)
_RELATION_FIELDS = frozenset({"rel_type", "event_id", "key", "is_falling_back", "m.in_reply_to"})
_ENCRYPTED_FIELDS = frozenset(
    {"algorithm", "ciphertext", "session_id", "sender_key", "device_id", "m.relates_to"}
)
_REDACTION_FIELDS = frozenset(
    {"redacts", "reason", "with_rel_types", "org.matrix.msc3912.with_relations"}
)
_VERIFICATION_REQUEST_FIELDS = frozenset({"msgtype", "body", "from_device", "methods", "to"})
# In-room verification after the request (spec: "Key verification framework"); each step
# also carries `m.relates_to`, a reference to the request.
_VERIFICATION_STEPS = {
    "m.key.verification.ready": frozenset({"from_device", "methods"}),
    "m.key.verification.start": frozenset(
        {
            "from_device",
            "method",
            "key_agreement_protocols",
            "hashes",
            "message_authentication_codes",
            "short_authentication_string",
            "secret",  # m.reciprocate.v1 (QR codes)
        }
    ),
    "m.key.verification.accept": frozenset(
        {
            "method",
            "key_agreement_protocol",
            "hash",
            "message_authentication_code",
            "short_authentication_string",
            "commitment",
        }
    ),
    "m.key.verification.key": frozenset({"key"}),
    "m.key.verification.mac": frozenset({"mac", "keys"}),
    "m.key.verification.done": frozenset(),
    "m.key.verification.cancel": frozenset({"code", "reason"}),
}
_LIST_FIELDS = frozenset(
    {
        "methods",
        "key_agreement_protocols",
        "hashes",
        "message_authentication_codes",
        "short_authentication_string",
    }
)


def decide_cleartext(event: EventFacts) -> Verdict:
    """May this timeline event enter an encrypted room as the server receives it?

    Only ciphertext, and what Element's SDKs send in clear by design: reactions (neither
    matrix-js-sdk nor matrix-rust-sdk encrypts them), redactions (the spec has no encrypted
    form) and, from matrix-js-sdk, in-room key verification (verifying a user in a DM).
    Each in exactly its shape: a field more, a longer key or reason, and it is refused.
    """
    content = event.content
    if event.type == ENCRYPTED:
        allowed = _is_ciphertext(content)
    elif event.type == REACTION:
        allowed = _is_reaction(content)
    elif event.type == rooms.REDACTION:
        allowed = _is_redaction(content)
    elif event.type == MESSAGE:
        allowed = _is_verification_request(content, event.sender)
    elif event.type in _VERIFICATION_STEPS:
        allowed = _is_verification_step(_VERIFICATION_STEPS[event.type], content)
    else:
        allowed = False
    return ALLOW if allowed else deny(Reason.UNENCRYPTED)


def _is_ciphertext(content: Mapping[str, Any]) -> bool:
    """Megolm output: no plaintext field beside it but the relation, which stays outside
    the ciphertext so the server can bundle edits, replies and threads."""
    ciphertext = content.get("ciphertext")
    return (
        _only(content, _ENCRYPTED_FIELDS)
        and content.get("algorithm") == rooms.MEGOLM
        and isinstance(ciphertext, str)
        and _BASE64.fullmatch(ciphertext) is not None
        and _is_token(content.get("session_id"))
        and _optional(content, "sender_key", _is_token)
        and _optional(content, "device_id", _is_token)
        and _optional(content, "m.relates_to", _is_relation)
    )


def _is_relation(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and _only(value, _RELATION_FIELDS)
        and _optional(value, "rel_type", _is_token)
        and _optional(value, "event_id", _is_token)
        and _optional(value, "key", _is_reaction_key)
        and _optional(value, "is_falling_back", lambda v: isinstance(v, bool))
        and _optional(value, "m.in_reply_to", _is_reply_target)
    )


def _is_reply_target(value: object) -> bool:
    return (
        isinstance(value, Mapping) and set(value) == {"event_id"} and _is_token(value["event_id"])
    )


def _is_reaction(content: Mapping[str, Any]) -> bool:
    relation = content.get("m.relates_to")
    return (
        set(content) == {"m.relates_to"}
        and isinstance(relation, Mapping)
        and set(relation) == {"rel_type", "event_id", "key"}
        and relation["rel_type"] == "m.annotation"
        and _is_token(relation["event_id"])
        and _is_reaction_key(relation["key"])
    )


def _is_reaction_key(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= REACTION_KEY_MAX


def _is_redaction(content: Mapping[str, Any]) -> bool:
    # `redacts` sits in the content from room version 11 on; MSC3912 (redacting an event's
    # relations with it) adds the relation types.
    return (
        _only(content, _REDACTION_FIELDS)
        and _optional(content, "redacts", _is_token)
        and _optional(content, "reason", _is_reason)
        and _optional(content, "with_rel_types", _is_token_list)
        and _optional(content, "org.matrix.msc3912.with_relations", _is_token_list)
    )


def _is_reason(value: object) -> bool:
    return isinstance(value, str) and len(value) <= REASON_MAX


def _is_verification_request(content: Mapping[str, Any], sender: str) -> bool:
    """matrix-js-sdk sends a DM verification request unencrypted (rust-crypto.ts,
    `sendVerificationRequestContent`); its body is fixed text naming the sender."""
    return (
        _only(content, _VERIFICATION_REQUEST_FIELDS)
        and content.get("msgtype") == "m.key.verification.request"
        and content.get("body") == _VERIFICATION_REQUEST_BODY.format(sender=sender)
        and _is_token(content.get("from_device"))
        and _is_token_list(content.get("methods"))
        and _is_token(content.get("to"))
    )


def _is_verification_step(fields: frozenset[str], content: Mapping[str, Any]) -> bool:
    relation = content.get("m.relates_to")
    if not (
        _only(content, fields | {"m.relates_to"})
        and isinstance(relation, Mapping)
        and set(relation) == {"rel_type", "event_id"}
        and relation["rel_type"] == "m.reference"
        and _is_token(relation["event_id"])
    ):
        return False
    for field in fields & set(content):
        value = content[field]
        if field in _LIST_FIELDS:
            valid = _is_token_list(value)
        elif field == "mac":  # key ID -> MAC
            valid = (
                isinstance(value, Mapping)
                and 0 < len(value) <= _LIST_MAX
                and all(_is_token(k) and _is_token(v) for k, v in value.items())
            )
        elif field == "reason":
            valid = _is_reason(value)
        else:
            valid = _is_token(value)
        if not valid:
            return False
    return True


def _only(content: Mapping[str, Any], fields: Collection[str]) -> bool:
    return all(key in fields for key in content)


def _optional(content: Mapping[str, Any], field: str, valid: Callable[[object], bool]) -> bool:
    return field not in content or valid(content[field])


def _is_token(value: object) -> bool:
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def _is_token_list(value: object) -> bool:
    # Synapse freezes an event's lists into tuples.
    return (
        isinstance(value, list | tuple)
        and 0 < len(value) <= _LIST_MAX
        and all(_is_token(item) for item in value)
    )
