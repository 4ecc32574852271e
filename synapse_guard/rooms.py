"""Room policy: how every room is created, and which later state changes are refused.

Two halves, both pure:
- `rewrite_create_request` rewrites a `/createRoom` body in place so the room is born
  compliant whatever preset or `initial_state` the client sent;
- `decide_state_event` refuses any later state event (or redaction) that would weaken it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, TypeGuard

import attrs

from synapse_guard.config import (
    HISTORY_VISIBILITIES,
    FederationPolicy,
    RetentionPolicy,
    RoomPolicy,
)
from synapse_guard.verdict import ALLOW, Reason, Verdict, deny

MEGOLM = "m.megolm.v1.aes-sha2"

CREATE = "m.room.create"
ENCRYPTION = "m.room.encryption"
JOIN_RULES_EVENT = "m.room.join_rules"
HISTORY_VISIBILITY = "m.room.history_visibility"
GUEST_ACCESS = "m.room.guest_access"
RETENTION = "m.room.retention"
REDACTION = "m.room.redaction"

# The state that carries the policy; redacting its current event would strip it.
PROTECTED_STATE = (
    CREATE,
    ENCRYPTION,
    JOIN_RULES_EVENT,
    HISTORY_VISIBILITY,
    GUEST_ACCESS,
    RETENTION,
)

# Join rules that only admit local users who are invited, or who ask (knock) or belong to a
# given room (restricted): allowed from `knock` up. `public` lets anyone on the server in.
_JOIN_RULES_ALLOWED = {
    "invite": frozenset({"invite"}),
    "knock": frozenset({"invite", "knock", "restricted", "knock_restricted"}),
    "public": frozenset({"invite", "knock", "restricted", "knock_restricted", "public"}),
}


@attrs.frozen(slots=True)
class StateEntry:
    event_id: str
    content: Mapping[str, Any]


StateView = Mapping[tuple[str, str], StateEntry]


def join_rule_allowed(policy: RoomPolicy, join_rule: object) -> bool:
    return isinstance(join_rule, str) and join_rule in _JOIN_RULES_ALLOWED[policy.join_rule]


def history_visibility_allowed(policy: RoomPolicy, visibility: object) -> bool:
    allowed = HISTORY_VISIBILITIES[: HISTORY_VISIBILITIES.index(policy.history_visibility) + 1]
    return isinstance(visibility, str) and visibility in allowed


def retention_allowed(policy: RetentionPolicy, content: Mapping[str, Any]) -> bool:
    max_lifetime = content.get("max_lifetime")
    if not _is_int(max_lifetime) or not 0 < max_lifetime <= policy.max_lifetime_ms:
        return False
    min_lifetime = content.get("min_lifetime")
    return min_lifetime is None or (_is_int(min_lifetime) and 0 <= min_lifetime <= max_lifetime)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _clamp_history(policy: RoomPolicy, requested: object) -> str:
    if isinstance(requested, str) and history_visibility_allowed(policy, requested):
        return requested
    if requested in HISTORY_VISIBILITIES:
        return policy.history_visibility  # more open than allowed: the most open allowed
    return "joined"


def rewrite_create_request(
    rooms: RoomPolicy,
    retention: RetentionPolicy,
    federation: FederationPolicy,
    request: MutableMapping[str, Any],
) -> None:
    """Make a `/createRoom` body compliant, in place (Synapse reads the same dict afterwards).

    The policy's state goes into `initial_state`, replacing any client entry of the same type:
    Synapse lets `initial_state` override what the preset would send, so the preset (and
    whatever the client asked of it) cannot reopen the room.
    """
    preset = request.get("preset")
    if preset is None:
        preset = "public_chat" if request.get("visibility") == "public" else "private_chat"
    if preset not in ("private_chat", "trusted_private_chat", "public_chat"):
        preset = "private_chat"

    raw_state = request.get("initial_state")
    # Entries that are not well-formed state (Synapse would refuse them) are dropped.
    client_state: list[Mapping[str, Any]] = [
        entry
        for entry in (raw_state if isinstance(raw_state, list) else [])
        if isinstance(entry, Mapping)
        and isinstance(entry.get("type"), str)
        and isinstance(entry.get("state_key", ""), str)
    ]
    asked = {
        (entry.get("type"), entry.get("state_key", "")): entry.get("content")
        for entry in client_state
    }

    def asked_value(event_type: str, key: str) -> object:
        content = asked.get((event_type, ""))
        return content.get(key) if isinstance(content, Mapping) else None

    asked_join_rules = asked.get((JOIN_RULES_EVENT, ""))
    requested_join_rule = asked_value(JOIN_RULES_EVENT, "join_rule")
    if requested_join_rule is None:
        requested_join_rule = "public" if preset == "public_chat" else "invite"
    if isinstance(requested_join_rule, str) and join_rule_allowed(rooms, requested_join_rule):
        join_rule = requested_join_rule
        # Keep the whole content: a restricted rule's `allow` conditions live beside it.
        join_rules_content = dict(asked_join_rules) if isinstance(asked_join_rules, Mapping) else {}
        join_rules_content["join_rule"] = join_rule
    else:
        join_rule = "invite"
        join_rules_content = {"join_rule": join_rule}
    if preset == "public_chat" and join_rule != "public":
        preset = "private_chat"
    request["preset"] = preset

    if not rooms.directory:
        request["visibility"] = "private"

    if not federation.enabled:
        creation_content = request.get("creation_content")
        creation_content = dict(creation_content) if isinstance(creation_content, Mapping) else {}
        creation_content["m.federate"] = False
        request["creation_content"] = creation_content

    forced: dict[str, dict[str, Any]] = {
        JOIN_RULES_EVENT: join_rules_content,
        HISTORY_VISIBILITY: {
            # Every preset sends "shared" unless the client says otherwise.
            "history_visibility": _clamp_history(
                rooms, asked_value(HISTORY_VISIBILITY, "history_visibility") or "shared"
            )
        },
    }
    if not rooms.guest_access:
        forced[GUEST_ACCESS] = {"guest_access": "forbidden"}
    if rooms.encryption_required:
        forced[ENCRYPTION] = {"algorithm": MEGOLM}
    asked_retention = asked.get((RETENTION, ""))
    if isinstance(asked_retention, Mapping) and retention_allowed(retention, asked_retention):
        forced[RETENTION] = dict(asked_retention)
    else:
        forced[RETENTION] = {"max_lifetime": retention.default_lifetime_ms}

    request["initial_state"] = [
        entry for entry in client_state if entry.get("type") not in forced
    ] + [
        {"type": event_type, "state_key": "", "content": content}
        for event_type, content in forced.items()
    ]


def decide_state_event(
    rooms: RoomPolicy,
    retention: RetentionPolicy,
    event_type: str,
    content: Mapping[str, Any],
    current: StateView,
) -> Verdict:
    """May this state event be sent into a room whose current state is `current`?"""
    if event_type == JOIN_RULES_EVENT:
        return (
            ALLOW if join_rule_allowed(rooms, content.get("join_rule")) else deny(Reason.JOIN_RULE)
        )
    if event_type == HISTORY_VISIBILITY:
        if history_visibility_allowed(rooms, content.get("history_visibility")):
            return ALLOW
        return deny(Reason.HISTORY_VISIBILITY)
    if event_type == GUEST_ACCESS:
        if rooms.guest_access or content.get("guest_access") == "forbidden":
            return ALLOW
        return deny(Reason.GUEST_ACCESS)
    if event_type == ENCRYPTION:
        return _decide_encryption(rooms, content, current)
    if event_type == RETENTION:
        return ALLOW if retention_allowed(retention, content) else deny(Reason.RETENTION)
    return ALLOW


def _decide_encryption(
    rooms: RoomPolicy, content: Mapping[str, Any], current: StateView
) -> Verdict:
    if not rooms.encryption_required:
        return ALLOW
    existing = current.get((ENCRYPTION, ""))
    if existing is not None:
        # Re-sending the same settings is harmless (Synapse < 1.161 does so at creation);
        # any change, rotation periods included, is refused.
        return ALLOW if dict(content) == dict(existing.content) else deny(Reason.ENCRYPTION)
    return ALLOW if content.get("algorithm") == MEGOLM else deny(Reason.ENCRYPTION)


def decide_redaction(redacts: object, current: StateView) -> Verdict:
    """Redacting the current event of a protected state type would strip the policy from it."""
    for event_type in PROTECTED_STATE:
        entry = current.get((event_type, ""))
        if entry is not None and entry.event_id == redacts:
            return deny(Reason.PROTECTED_STATE)
    return ALLOW


def decide_publication(policy: RoomPolicy, visibility: object) -> Verdict:
    """Publishing a room to the directory (which would also expose it over federation)."""
    if policy.directory or visibility != "public":
        return ALLOW
    return deny(Reason.DIRECTORY)
