"""Guard, driven through the callbacks it registers, called the way Synapse 1.163 calls them."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest.mock import Mock

import pytest
from synapse.logging.context import ContextRequest, LoggingContext
from synapse.module_api import NOT_SPAM
from synapse.module_api.errors import Codes, ConfigError, SynapseError
from synapse.spam_checker_api import RegistrationBehaviour

from synapse_guard import compat, rooms
from synapse_guard.config import GuardConfig, RoomPolicy
from synapse_guard.module import Guard
from synapse_guard.verdict import Check, Reason

from .conftest import (
    ALICE,
    BOB,
    MALLORY,
    ROOM_ID,
    SERVER_NAME,
    LoadedGuard,
    create_module,
    decisions,
    make_api,
    make_event,
)

MEGOLM = "m.megolm.v1.aes-sha2"
DAY = 24 * 60 * 60 * 1000

# How many positional arguments Synapse 1.163 passes to each callback (its call sites in
# synapse/module_api/callbacks/, synapse/handlers/auth.py and account_validity.py).
SYNAPSE_ARGUMENTS = {
    # spam checker
    "check_event_for_spam": 1,
    "check_login_for_spam": 5,
    "check_registration_for_spam": 4,
    "federated_user_may_invite": 1,
    "should_drop_federated_event": 1,
    "user_may_create_room": 2,
    "user_may_create_room_alias": 2,
    "user_may_invite": 3,
    "user_may_join_room": 3,
    "user_may_publish_room": 2,
    "user_may_send_3pid_invite": 4,
    "user_may_send_state_event": 5,
    # third-party rules
    "check_can_deactivate_user": 2,
    "check_can_shutdown_room": 2,
    "check_event_allowed": 2,
    "check_threepid_can_be_invited": 3,
    "check_visibility_can_be_modified": 3,
    "on_create_room": 3,
    # password auth provider
    "check_3pid_auth": 3,
    "is_3pid_allowed": 3,
    "on_logged_out": 3,
    # account validity
    "is_user_expired": 1,
    "on_user_login": 3,
    "on_user_registration": 1,
}
REQUIRED_CALLBACKS = {
    "register_spam_checker_callbacks": {
        "check_registration_for_spam",
        "user_may_invite",
        "federated_user_may_invite",
        "user_may_join_room",
        "user_may_publish_room",
        "user_may_send_3pid_invite",
        "should_drop_federated_event",
    },
    "register_third_party_rules_callbacks": {
        "on_create_room",
        "check_event_allowed",
        "check_visibility_can_be_modified",
        "check_threepid_can_be_invited",
    },
    "register_password_auth_provider_callbacks": {"is_3pid_allowed"},
}


def run(module: LoadedGuard, name: str, *args: Any) -> Any:
    """Call a registered callback as Synapse does: positionally, and await it."""
    return asyncio.run(module.callbacks[name](*args))


@contextmanager
def serving(url: str) -> Iterator[None]:
    """Pretend Synapse is serving an HTTP request for `url` (its logging context)."""
    request = ContextRequest(
        request_id="POST-42",
        ip_address="10.8.0.12",
        site_tag="client",
        requester=None,
        authenticated_entity=None,
        method="POST",
        url=url,
        protocol="1.1",
        user_agent="curl/8",
    )
    try:
        context = LoggingContext(name="POST-42", server_name=SERVER_NAME, request=request)
    except TypeError:  # older Synapse: no server_name
        context = LoggingContext(name="POST-42", request=request)
    with context:
        yield


# Loading -----------------------------------------------------------------------------------


def test_callbacks_are_registered_once_per_family() -> None:
    module = create_module()

    for method, required in REQUIRED_CALLBACKS.items():
        register = getattr(module.api, method)
        known_here = set(inspect.signature(register).parameters)  # older Synapse knows fewer
        register.assert_called_once()
        assert required & known_here <= register.call_args.kwargs.keys(), method


def test_every_callback_is_a_coroutine_function_taking_synapses_arguments() -> None:
    module = create_module()

    for name, callback in module.callbacks.items():
        assert inspect.iscoroutinefunction(callback), name
        assert name in SYNAPSE_ARGUMENTS, f"add {name} to SYNAPSE_ARGUMENTS"
        inspect.signature(callback).bind(*range(SYNAPSE_ARGUMENTS[name]))


def test_a_callback_unknown_to_this_synapse_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="synapse_guard")
    api = make_api(missing_callbacks=("federated_user_may_invite",))

    module = create_module(api=api)

    assert "federated_user_may_invite" not in module.callbacks
    assert "user_may_invite" in module.callbacks
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'federated_user_may_invite'" in message for message in warnings), warnings


def test_register_callbacks_passes_known_names_and_warns_about_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="synapse_guard")
    registered: dict[str, Callable[..., Any]] = {}

    def register_spam_checker_callbacks(
        *, user_may_invite: Callable[..., Any] | None = None
    ) -> None:
        registered["user_may_invite"] = user_may_invite  # type: ignore[assignment]

    async def callback() -> None:
        return None

    skipped = compat.register_callbacks(
        register_spam_checker_callbacks,
        "spam checker",
        {"user_may_invite": callback, "user_may_teleport": callback},
    )

    assert skipped == ["user_may_teleport"]
    assert registered == {"user_may_invite": callback}
    assert len(caplog.records) == 1
    warning = caplog.records[0]
    assert warning.name == "synapse_guard"
    assert warning.levelno == logging.WARNING
    assert "spam checker callback 'user_may_teleport'" in warning.getMessage()


def test_parse_config_returns_the_guard_config() -> None:
    config = Guard.parse_config({"rooms": {"join_rule": "knock"}})

    assert config == GuardConfig(rooms=RoomPolicy(join_rule="knock"))


@pytest.mark.parametrize(
    ("raw", "path", "message_start"),
    [
        (
            {"network": {"allow_cidrs": ["10.8.0.0/24", "10.9.0.1/24"]}},
            "network.allow_cidrs[1]",
            "'10.9.0.1/24' is not a valid IPv4 or IPv6 network",
        ),
        ({"roms": {}}, "roms", "unknown key; known keys here: registration, federation"),
        (
            {"retention": {"default_lifetime": True}},
            "retention.default_lifetime",
            "must be a duration such as 30s",
        ),
        (
            {"network": {"allow_countries": ["FR"]}},
            "network.geoip_database",
            "is required when network.allow_countries is set",
        ),
        # A flat, dotted key is one unknown key, not the nested key it looks like:
        # Synapse prints it under the module's config as it is.
        ({"rooms.encryption": "off"}, "rooms.encryption", "unknown key"),
    ],
)
def test_parse_config_raises_synapses_config_error_naming_the_key(
    raw: dict[str, Any], path: str, message_start: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Guard.parse_config(raw)

    # Synapse joins the path with dots after `modules.<item N>.config.`.
    assert list(caught.value.path or []) == [path]
    assert caught.value.msg.startswith(message_start)


def test_parse_config_of_a_non_mapping_names_no_key() -> None:
    with pytest.raises(ConfigError) as caught:
        Guard.parse_config(["rooms"])  # type: ignore[arg-type]

    assert not caught.value.path
    assert caught.value.msg == "must be a mapping, got list"


# Registration ------------------------------------------------------------------------------


def test_client_registration_is_denied_and_counted() -> None:
    module = create_module()
    before = decisions(Check.REGISTRATION, "deny", Reason.REGISTRATION_CLOSED)

    with serving("/_matrix/client/v3/register"):
        result = run(
            module, "check_registration_for_spam", None, "eve", [("curl", "10.8.0.9")], None
        )

    assert result == RegistrationBehaviour.DENY
    assert decisions(Check.REGISTRATION, "deny", Reason.REGISTRATION_CLOSED) == before + 1


def test_sso_registration_is_denied() -> None:
    module = create_module()

    with serving("/_synapse/client/oidc/callback"):
        result = run(
            module, "check_registration_for_spam", None, "eve", [("Firefox", "10.8.0.9")], "oidc"
        )

    assert result == RegistrationBehaviour.DENY


@pytest.mark.parametrize(
    "url", ["/_matrix/client/v3/register?kind=guest", "/_matrix/client/v3/login"]
)
def test_guest_and_jwt_registration_are_denied(url: str) -> None:
    module = create_module()

    with serving(url):
        result = run(module, "check_registration_for_spam", None, None, [], None)

    assert result == RegistrationBehaviour.DENY


@pytest.mark.parametrize(
    "url", ["/_synapse/admin/v1/register", "/_synapse/admin/v2/users/@carol:test.local"]
)
def test_admin_provisioning_is_allowed(url: str) -> None:
    module = create_module()
    before = decisions(Check.REGISTRATION, "allow", Reason.ADMIN_PROVISIONING)

    with serving(url):
        result = run(module, "check_registration_for_spam", None, "carol", [], None)

    assert result == RegistrationBehaviour.ALLOW
    assert decisions(Check.REGISTRATION, "allow", Reason.ADMIN_PROVISIONING) == before + 1


def test_module_api_registration_outside_any_request_is_allowed() -> None:
    module = create_module()

    result = run(module, "check_registration_for_spam", None, "carol", [], None)

    assert result == RegistrationBehaviour.ALLOW


def test_open_registration_allows_clients() -> None:
    module = create_module({"registration": {"mode": "open"}})

    with serving("/_matrix/client/v3/register"):
        result = run(
            module, "check_registration_for_spam", None, "eve", [("curl", "10.8.0.9")], None
        )

    assert result == RegistrationBehaviour.ALLOW


def test_an_unreadable_request_denies_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    module = create_module()
    before = decisions(Check.REGISTRATION, "deny", Reason.INTERNAL_ERROR)

    def unreadable() -> str:
        raise LookupError("the current request carries no URL")

    monkeypatch.setattr(compat, "current_request_path", unreadable)

    result = run(module, "check_registration_for_spam", None, "carol", [], None)

    assert result == RegistrationBehaviour.DENY
    assert decisions(Check.REGISTRATION, "deny", Reason.INTERNAL_ERROR) == before + 1


# Third-party identifiers -------------------------------------------------------------------


def test_threepids_are_refused_everywhere_by_default() -> None:
    module = create_module()

    assert run(module, "is_3pid_allowed", "email", "carol@example.com", True) is False
    assert run(module, "user_may_send_3pid_invite", ALICE, "email", "c@example.com", ROOM_ID) == (
        Codes.FORBIDDEN
    )
    assert run(module, "check_threepid_can_be_invited", "email", "c@example.com", {}) is False


def test_threepids_are_allowed_when_configured() -> None:
    module = create_module({"registration": {"allow_3pid": True}})

    assert run(module, "is_3pid_allowed", "msisdn", "33612345678", False) is True
    assert (
        run(module, "user_may_send_3pid_invite", ALICE, "email", "c@example.com", ROOM_ID)
        is NOT_SPAM
    )


# Federation --------------------------------------------------------------------------------


def test_inviting_a_local_user_is_not_spam() -> None:
    module = create_module()

    assert run(module, "user_may_invite", ALICE, BOB, ROOM_ID) is NOT_SPAM


def test_inviting_a_remote_user_is_forbidden_and_counted() -> None:
    module = create_module()
    before = decisions(Check.INVITE, "deny", Reason.FEDERATION)

    assert run(module, "user_may_invite", ALICE, MALLORY, ROOM_ID) == Codes.FORBIDDEN
    assert decisions(Check.INVITE, "deny", Reason.FEDERATION) == before + 1


def needs_federated_user_may_invite(module: LoadedGuard) -> None:
    if "federated_user_may_invite" not in module.callbacks:
        pytest.skip("Synapse < 1.134 has no federated_user_may_invite")


def test_remote_invites_are_refused() -> None:
    module = create_module()
    needs_federated_user_may_invite(module)
    invite = make_event("m.room.member", MALLORY, {"membership": "invite"}, state_key=ALICE)

    assert run(module, "federated_user_may_invite", invite) == Codes.FORBIDDEN


def test_remote_events_are_dropped() -> None:
    module = create_module()
    message = make_event("m.room.message", MALLORY, {"msgtype": "m.text", "body": "hi"})

    assert run(module, "should_drop_federated_event", message) is True


def test_federation_enabled_lets_remote_traffic_through() -> None:
    module = create_module({"federation": {"enabled": True}})
    message = make_event("m.room.message", MALLORY, {"msgtype": "m.text", "body": "hi"})

    assert run(module, "user_may_invite", ALICE, MALLORY, ROOM_ID) is NOT_SPAM
    assert run(module, "should_drop_federated_event", message) is False
    assert run(module, "user_may_join_room", ALICE, ROOM_ID, False) is NOT_SPAM
    # The join is not judged by who created the room; only the cleartext rule reads state.
    asked = [call.args[1] for call in module.api.get_room_state.call_args_list]
    assert asked == [[("m.room.encryption", "")]]


def test_federation_enabled_still_keeps_cleartext_out_of_encrypted_rooms() -> None:
    # Synapse asks check_event_allowed about federated knocks only: a remote member's
    # cleartext is judged when it arrives (should_drop_federated_event).
    module = create_module({"federation": {"enabled": True}})
    encryption = make_event("m.room.encryption", ALICE, {"algorithm": MEGOLM}, state_key="")
    module.api.get_room_state.return_value = {("m.room.encryption", ""): encryption}
    cleartext = make_event("m.room.message", MALLORY, {"msgtype": "m.text", "body": "hi"})
    ciphertext = make_event(
        "m.room.encrypted",
        MALLORY,
        {"algorithm": MEGOLM, "ciphertext": "AwgAEnA0aGVsbG8", "session_id": "c2Vzc2lvbg"},
    )
    before = decisions(Check.EVENT, "deny", Reason.UNENCRYPTED)
    assert run(module, "should_drop_federated_event", cleartext) is True
    assert decisions(Check.EVENT, "deny", Reason.UNENCRYPTED) == before + 1
    assert run(module, "should_drop_federated_event", ciphertext) is False


def test_federation_enabled_lets_remote_invites_through() -> None:
    module = create_module({"federation": {"enabled": True}})
    needs_federated_user_may_invite(module)
    invite = make_event("m.room.member", MALLORY, {"membership": "invite"}, state_key=ALICE)

    assert run(module, "federated_user_may_invite", invite) is NOT_SPAM


def test_joining_a_room_created_here_is_not_spam() -> None:
    module = create_module()
    create = make_event("m.room.create", ALICE, {"m.federate": False}, state_key="")
    module.api.get_room_state.return_value = {("m.room.create", ""): create}

    assert run(module, "user_may_join_room", BOB, ROOM_ID, True) is NOT_SPAM
    module.api.get_room_state.assert_called_once_with(ROOM_ID, [("m.room.create", "")])


def test_joining_a_remote_room_is_forbidden() -> None:
    module = create_module()
    create = make_event("m.room.create", MALLORY, {}, state_key="")
    module.api.get_room_state.return_value = {("m.room.create", ""): create}

    assert run(module, "user_may_join_room", BOB, ROOM_ID, True) == Codes.FORBIDDEN


def test_joining_a_room_unknown_here_is_forbidden() -> None:
    module = create_module()
    module.api.get_room_state.return_value = {}

    assert run(module, "user_may_join_room", BOB, "!unknown", False) == Codes.FORBIDDEN


def test_a_failing_state_lookup_forbids_the_join() -> None:
    module = create_module()
    module.api.get_room_state.side_effect = RuntimeError("database is down")
    before = decisions(Check.JOIN, "deny", Reason.INTERNAL_ERROR)

    assert run(module, "user_may_join_room", BOB, ROOM_ID, False) == Codes.FORBIDDEN
    assert decisions(Check.JOIN, "deny", Reason.INTERNAL_ERROR) == before + 1


# Rooms -------------------------------------------------------------------------------------


def test_room_creation_is_rewritten_in_place() -> None:
    module = create_module()
    request = {
        "preset": "public_chat",
        "visibility": "public",
        "initial_state": [
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "none"}}
        ],
    }
    requester = Mock()

    assert run(module, "on_create_room", requester, request, True) is None

    assert request["preset"] == "private_chat"
    assert request["visibility"] == "private"
    assert request["creation_content"] == {"m.federate": False}
    state = {(e["type"], e["state_key"]): e["content"] for e in request["initial_state"]}
    assert state == {
        ("m.room.join_rules", ""): {"join_rule": "invite"},
        ("m.room.history_visibility", ""): {"history_visibility": "joined"},
        ("m.room.guest_access", ""): {"guest_access": "forbidden"},
        ("m.room.encryption", ""): {"algorithm": MEGOLM},
        ("m.room.retention", ""): {"max_lifetime": 7 * DAY},
    }


def test_a_failure_while_rewriting_refuses_the_room_with_a_403(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = create_module()
    before = decisions(Check.CREATE_ROOM, "deny", Reason.INTERNAL_ERROR)

    def broken(*args: Any) -> None:
        raise KeyError("preset")

    monkeypatch.setattr(rooms, "rewrite_create_request", broken)

    with pytest.raises(SynapseError) as caught:
        run(module, "on_create_room", Mock(), {"preset": "public_chat"}, False)

    assert caught.value.code == 403
    assert caught.value.errcode == Codes.FORBIDDEN
    assert decisions(Check.CREATE_ROOM, "deny", Reason.INTERNAL_ERROR) == before + 1


def test_a_local_message_is_allowed_unchanged() -> None:
    module = create_module()
    message = make_event("m.room.message", ALICE, {"msgtype": "m.text", "body": "hi"})

    assert run(module, "check_event_allowed", message, {}) == (True, None)


@pytest.mark.parametrize(
    ("event", "check", "reason"),
    [
        (
            make_event("m.room.message", MALLORY, {"msgtype": "m.text", "body": "hi"}),
            Check.EVENT,
            Reason.FEDERATION,
        ),
        (
            make_event("m.room.create", ALICE, {"room_version": "12"}, state_key=""),
            Check.CREATE_ROOM,
            Reason.FEDERATION,
        ),
        (
            make_event("m.room.member", ALICE, {"membership": "invite"}, state_key=MALLORY),
            Check.INVITE,
            Reason.FEDERATION,
        ),
        (
            make_event("m.room.join_rules", ALICE, {"join_rule": "public"}, state_key=""),
            Check.EVENT,
            Reason.JOIN_RULE,
        ),
        (
            make_event("m.room.encryption", ALICE, {"algorithm": "none"}, state_key=""),
            Check.EVENT,
            Reason.ENCRYPTION,
        ),
        (
            make_event("m.room.third_party_invite", ALICE, {"display_name": "c"}, state_key="t"),
            Check.THREEPID,
            Reason.THREEPID,
        ),
    ],
    ids=["remote-sender", "federated-room", "remote-invite", "public", "no-encryption", "3pid"],
)
def test_events_that_break_the_policy_are_refused_and_counted(
    event: Any, check: Check, reason: Reason
) -> None:
    module = create_module()
    before = decisions(check, "deny", reason)

    assert run(module, "check_event_allowed", event, {}) == (False, None)
    assert decisions(check, "deny", reason) == before + 1


def test_redacting_the_rooms_join_rules_is_refused() -> None:
    module = create_module()
    join_rules = make_event("m.room.join_rules", ALICE, {"join_rule": "invite"}, state_key="")
    name = make_event("m.room.name", ALICE, {"name": "Payroll"}, state_key="")
    state = {("m.room.join_rules", ""): join_rules, ("m.room.name", ""): name}

    def redaction(target: str) -> Any:
        return make_event("m.room.redaction", ALICE, {"redacts": target})

    assert run(module, "check_event_allowed", redaction(join_rules.event_id), state) == (
        False,
        None,
    )
    assert run(module, "check_event_allowed", redaction(name.event_id), state) == (True, None)


def test_changing_the_encryption_of_a_room_is_refused() -> None:
    module = create_module()
    encryption = make_event("m.room.encryption", ALICE, {"algorithm": MEGOLM}, state_key="")
    state = {("m.room.encryption", ""): encryption}
    weaker = make_event(
        "m.room.encryption",
        ALICE,
        {"algorithm": MEGOLM, "rotation_period_msgs": 100_000},
        state_key="",
    )
    same = make_event("m.room.encryption", ALICE, {"algorithm": MEGOLM}, state_key="")

    assert run(module, "check_event_allowed", weaker, state) == (False, None)
    assert run(module, "check_event_allowed", same, state) == (True, None)


def test_a_broken_event_is_refused_not_crashed_on() -> None:
    module = create_module()
    before = decisions(Check.EVENT, "deny", Reason.INTERNAL_ERROR)
    broken = Mock(spec=["type"], type="m.room.message")

    assert run(module, "check_event_allowed", broken, {}) == (False, None)
    assert decisions(Check.EVENT, "deny", Reason.INTERNAL_ERROR) == before + 1


@pytest.mark.parametrize("visibility", ["private", "public"])
def test_room_creation_checks_visibility_with_synapses_arguments(visibility: str) -> None:
    # Synapse calls this during every /createRoom, with the visibility after on_create_room.
    module = create_module()
    before = decisions(Check.PUBLISH, "deny", Reason.INTERNAL_ERROR)

    allowed = run(module, "check_visibility_can_be_modified", ROOM_ID, {}, visibility)

    assert allowed is (visibility == "private")
    assert decisions(Check.PUBLISH, "deny", Reason.INTERNAL_ERROR) == before


def test_publishing_is_refused_and_counted_as_directory() -> None:
    module = create_module()
    before = decisions(Check.PUBLISH, "deny", Reason.DIRECTORY)

    assert run(module, "user_may_publish_room", ALICE, ROOM_ID) == Codes.FORBIDDEN
    assert run(module, "check_visibility_can_be_modified", ROOM_ID, {}, "public") is False
    assert decisions(Check.PUBLISH, "deny", Reason.DIRECTORY) == before + 2


def test_publishing_is_allowed_with_the_directory_enabled() -> None:
    module = create_module({"rooms": {"directory": True}})

    assert run(module, "user_may_publish_room", ALICE, ROOM_ID) is NOT_SPAM
    assert run(module, "check_visibility_can_be_modified", ROOM_ID, {}, "public") is True


# Room upgrades -----------------------------------------------------------------------------


def tombstone(sender: str = ALICE, replacement: object = "!NewRoom") -> Any:
    content = {"body": "This room has been replaced", "replacement_room": replacement}
    return make_event("m.room.tombstone", sender, content, state_key="")


def upgrade(module: LoadedGuard, tombstone_event: Any, new_room_state: dict[Any, Any]) -> None:
    """Let the guard see the tombstone, then run the job it schedules once it is persisted."""
    state = {("m.room.tombstone", ""): tombstone_event}

    async def room_state(room_id: str, event_filter: Any = None) -> dict[Any, Any]:
        return state if room_id == tombstone_event.room_id else new_room_state

    module.api.get_room_state.side_effect = room_state
    assert run(module, "check_event_allowed", tombstone_event, {}) == (True, None)
    (call,) = module.api.delayed_background_call.call_args_list
    delay_ms, job, *args = call.args
    assert delay_ms > 0
    asyncio.run(job(*args))


def test_an_upgraded_room_gets_the_default_retention() -> None:
    module = create_module({"retention": {"default_lifetime": "3d"}})

    upgrade(module, tombstone(), {})

    module.api.create_and_send_event_into_room.assert_called_once_with(
        {
            "type": "m.room.retention",
            "room_id": "!NewRoom",
            "sender": ALICE,
            "state_key": "",
            "content": {"max_lifetime": 3 * DAY},
        }
    )


def test_an_upgraded_room_with_a_compliant_retention_is_left_alone() -> None:
    module = create_module()
    retention = make_event("m.room.retention", ALICE, {"max_lifetime": DAY}, state_key="")

    upgrade(module, tombstone(), {("m.room.retention", ""): retention})

    module.api.create_and_send_event_into_room.assert_not_called()


def test_an_upgraded_room_with_a_too_long_retention_is_corrected() -> None:
    module = create_module()
    retention = make_event("m.room.retention", ALICE, {"max_lifetime": 90 * DAY}, state_key="")

    upgrade(module, tombstone(), {("m.room.retention", ""): retention})

    module.api.create_and_send_event_into_room.assert_called_once()


def test_the_job_waits_until_the_tombstone_is_persisted() -> None:
    module = create_module()
    event = tombstone()

    async def nothing_yet(room_id: str, event_filter: Any = None) -> dict[Any, Any]:
        return {}

    module.api.get_room_state.side_effect = nothing_yet
    run(module, "check_event_allowed", event, {})
    (call,) = module.api.delayed_background_call.call_args_list
    asyncio.run(call.args[1](*call.args[2:]))

    module.api.create_and_send_event_into_room.assert_not_called()
    assert module.api.delayed_background_call.call_count == 2  # rescheduled


def test_other_events_schedule_nothing() -> None:
    module = create_module()

    run(module, "check_event_allowed", make_event("m.room.message", ALICE, {"body": "hi"}), {})

    module.api.delayed_background_call.assert_not_called()


# Metrics and logs --------------------------------------------------------------------------


def test_metrics_disabled_counts_nothing() -> None:
    module = create_module({"metrics": {"enabled": False}})
    before = decisions(Check.INVITE, "deny", Reason.FEDERATION)

    run(module, "user_may_invite", ALICE, MALLORY, ROOM_ID)

    assert decisions(Check.INVITE, "deny", Reason.FEDERATION) == before


def test_refusals_are_logged_without_identifiers_or_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="synapse_guard")
    module = create_module()
    secret = "the merger closes on friday"

    with serving("/_matrix/client/v3/register"):
        run(
            module, "check_registration_for_spam", None, "intruder", [("curl", "203.0.113.9")], None
        )
    run(module, "user_may_invite", ALICE, MALLORY, ROOM_ID)
    run(module, "user_may_join_room", BOB, ROOM_ID, True)
    run(
        module,
        "should_drop_federated_event",
        make_event("m.room.message", MALLORY, {"body": secret}),
    )
    run(
        module,
        "check_event_allowed",
        make_event(
            "m.room.join_rules", ALICE, {"join_rule": "public", "note": secret}, state_key=""
        ),
        {},
    )

    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused:")]
    assert len(refusals) == 5
    for forbidden in [
        "alice",
        "bob",
        "mallory",
        "evil.example",
        "intruder",
        "203.0.113.9",
        ROOM_ID,
        secret,
    ]:
        assert forbidden not in caplog.text
