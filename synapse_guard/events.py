"""The decision for one event about to enter a room, whoever sends it (admins included).

Synapse calls `check_event_allowed` for every locally created event, room creation and
upgrades included, and for events received over federation; server admins cannot skip it.
"""

from __future__ import annotations

from collections.abc import Mapping
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
