"""Shared helpers for the unit tests: a Guard built on a mocked ModuleApi, events, metrics."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any
from unittest.mock import Mock

import attrs
from hypothesis import settings
from prometheus_client import REGISTRY
from synapse.api.room_versions import RoomVersions
from synapse.events import EventBase, make_event_from_dict
from synapse.module_api import ModuleApi

from synapse_guard.module import Guard
from synapse_guard.verdict import Check, Reason

# No per-example deadline: a loaded CI machine must not turn a slow example into a failure.
settings.register_profile("unit", deadline=None)
settings.load_profile("unit")

SERVER_NAME = "test.local"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"
MALLORY = "@mallory:evil.example"
# Room version 12 room IDs carry no server name.
ROOM_ID = "!Vx3c9Qm2secretroom"
# The default room version since Synapse 1.162; older Synapse releases lack it.
ROOM_VERSION = getattr(RoomVersions, "V12", RoomVersions.V11)

# Every `register_*_callbacks` method of this Synapse's ModuleApi.
REGISTER_METHODS = tuple(
    name for name in dir(ModuleApi) if name.startswith("register_") and name.endswith("_callbacks")
)


def signature_without_self(function: Callable[..., Any]) -> inspect.Signature:
    signature = inspect.signature(function)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def register_mock(method: str, drop: tuple[str, ...] = ()) -> Mock:
    """A `register_*_callbacks` stand-in accepting exactly what Synapse 1.163 accepts.

    `drop` removes callbacks, to play an older Synapse that does not know them.
    """
    signature = signature_without_self(getattr(ModuleApi, method))
    signature = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name not in drop]
    )

    def register(**callbacks: Any) -> None:
        signature.bind(**callbacks)  # a keyword this Synapse does not know: TypeError

    mock = Mock(side_effect=register)
    mock.__signature__ = signature
    return mock


@attrs.define
class LoadedGuard:
    guard: Guard
    api: Mock
    callbacks: dict[str, Callable[..., Any]]


def make_api(missing_callbacks: tuple[str, ...] = ()) -> Mock:
    api = Mock(spec=ModuleApi)
    api.server_name = SERVER_NAME
    for method in REGISTER_METHODS:
        setattr(api, method, register_mock(method, drop=missing_callbacks))
    api.should_run_background_tasks.return_value = True
    api.get_room_state.return_value = {}
    return api


def create_module(config: Mapping[str, Any] | None = None, api: Mock | None = None) -> LoadedGuard:
    """Load the guard the way Synapse does: the real `parse_config`, then `Guard(config, api)`."""
    api = api if api is not None else make_api()
    guard = Guard(Guard.parse_config(dict(config or {})), api)
    callbacks: dict[str, Callable[..., Any]] = {}
    for method in REGISTER_METHODS:
        for call in getattr(api, method).call_args_list:
            callbacks.update(call.kwargs)
    return LoadedGuard(guard=guard, api=api, callbacks=callbacks)


def make_event(
    event_type: str,
    sender: str = ALICE,
    content: Mapping[str, Any] | None = None,
    state_key: str | None = None,
    room_id: str = ROOM_ID,
) -> EventBase:
    """A real Synapse event, in the newest room version this Synapse knows."""
    event: dict[str, Any] = {
        "type": event_type,
        "sender": sender,
        "room_id": room_id,
        "content": dict(content or {}),
        "auth_events": [],
        "prev_events": [],
        "depth": 5,
        "origin_server_ts": 1_700_000_000_000,
        "hashes": {"sha256": "aGFzaA"},
        "signatures": {},
    }
    if state_key is not None:
        event["state_key"] = state_key
    if event_type == "m.room.create" and getattr(ROOM_VERSION, "msc4291_room_ids_as_hashes", False):
        del event["room_id"]  # room version 12: the room ID is derived from the create event
    return make_event_from_dict(event, ROOM_VERSION)


def decisions(check: Check, outcome: str, reason: Reason) -> float:
    """Current value of `synapse_guard_decisions_total` for these labels (0 if never counted)."""
    value = REGISTRY.get_sample_value(
        "synapse_guard_decisions_total",
        {"check": check.value, "outcome": outcome, "reason": reason.value},
    )
    return value or 0.0
