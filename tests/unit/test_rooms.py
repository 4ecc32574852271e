"""Room policy: every room is born compliant, and no later state event or redaction weakens it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard.config import FederationPolicy, RetentionPolicy, RoomPolicy
from synapse_guard.rooms import (
    StateEntry,
    decide_publication,
    decide_redaction,
    decide_state_event,
    rewrite_create_request,
)
from synapse_guard.verdict import Reason, Verdict

DAY = 24 * 60 * 60 * 1000
MEGOLM = "m.megolm.v1.aes-sha2"
JOIN_RULES = "m.room.join_rules"
HISTORY = "m.room.history_visibility"
GUEST = "m.room.guest_access"
ENCRYPTION = "m.room.encryption"
RETENTION = "m.room.retention"
PRESETS = ("private_chat", "trusted_private_chat", "public_chat")

ALLOWED = Verdict(allowed=True, reason=Reason.OK)

# What each policy level admits, written out rather than derived from the code under test.
JOIN_RULES_ADMITTED = {
    "invite": {"invite"},
    "knock": {"invite", "knock", "restricted", "knock_restricted"},
    "public": {"invite", "knock", "restricted", "knock_restricted", "public"},
}
HISTORY_ADMITTED = {
    "joined": {"joined"},
    "invited": {"joined", "invited"},
    "shared": {"joined", "invited", "shared"},
    "world_readable": {"joined", "invited", "shared", "world_readable"},
}

DEFAULT_STATE = {
    (JOIN_RULES, ""): {"join_rule": "invite"},
    (HISTORY, ""): {"history_visibility": "joined"},
    (GUEST, ""): {"guest_access": "forbidden"},
    (ENCRYPTION, ""): {"algorithm": MEGOLM},
    (RETENTION, ""): {"max_lifetime": 7 * DAY},
}


def rewrite(
    request: dict[str, Any],
    rooms: RoomPolicy | None = None,
    retention: RetentionPolicy | None = None,
    federation: FederationPolicy | None = None,
) -> dict[str, Any]:
    rewrite_create_request(
        rooms or RoomPolicy(),
        retention or RetentionPolicy(),
        federation or FederationPolicy(),
        request,
    )
    return request


def state_of(request: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    """`initial_state` as Synapse reads it, after checking no (type, state_key) repeats."""
    keys = [(entry["type"], entry.get("state_key", "")) for entry in request["initial_state"]]
    assert len(keys) == len(set(keys)), f"duplicate initial_state entries: {keys}"
    return {
        (entry["type"], entry.get("state_key", "")): entry["content"]
        for entry in request["initial_state"]
    }


def state_entry(event_type: str, content: Any, state_key: str = "") -> dict[str, Any]:
    return {"type": event_type, "state_key": state_key, "content": content}


# Creating a room: presets and visibility ---------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "expected_preset"),
    [
        ("private_chat", "private_chat"),
        ("trusted_private_chat", "trusted_private_chat"),
        ("public_chat", "private_chat"),
        (None, "private_chat"),
        ("secret_chat", "private_chat"),
        (["public_chat"], "private_chat"),
    ],
)
def test_every_preset_gives_a_closed_encrypted_unfederated_room(
    preset: object, expected_preset: str
) -> None:
    request = rewrite({} if preset is None else {"preset": preset, "name": "Payroll"})

    assert request["preset"] == expected_preset
    assert request["visibility"] == "private"
    assert request["creation_content"] == {"m.federate": False}
    assert state_of(request) == DEFAULT_STATE


def test_a_public_room_in_the_directory_becomes_private() -> None:
    request = rewrite({"visibility": "public", "room_alias_name": "all-hands"})

    assert request["preset"] == "private_chat"
    assert request["visibility"] == "private"
    assert request["room_alias_name"] == "all-hands"
    assert state_of(request) == DEFAULT_STATE


def test_public_chat_published_in_the_directory_becomes_private() -> None:
    request = rewrite({"preset": "public_chat", "visibility": "public"})

    assert request["preset"] == "private_chat"
    assert request["visibility"] == "private"
    assert state_of(request)[(JOIN_RULES, "")] == {"join_rule": "invite"}


def test_a_direct_chat_keeps_its_preset_and_invitees() -> None:
    request = rewrite(
        {
            "preset": "trusted_private_chat",
            "is_direct": True,
            "invite": ["@bob:test.local"],
        }
    )

    assert request["preset"] == "trusted_private_chat"
    assert request["is_direct"] is True
    assert request["invite"] == ["@bob:test.local"]
    assert state_of(request) == DEFAULT_STATE


def test_creation_content_keeps_its_other_keys_and_gets_m_federate_false() -> None:
    request = rewrite({"creation_content": {"type": "m.space", "m.federate": True}})

    assert request["creation_content"] == {"type": "m.space", "m.federate": False}


@pytest.mark.parametrize("creation_content", [None, "federate", ["m.federate"], 1])
def test_a_malformed_creation_content_is_replaced(creation_content: object) -> None:
    request = rewrite({"creation_content": creation_content})

    assert request["creation_content"] == {"m.federate": False}


# Creating a room: initial_state that tries to open it -------------------------------------


@pytest.mark.parametrize(
    ("entry", "forced_content"),
    [
        pytest.param(
            state_entry(JOIN_RULES, {"join_rule": "public"}),
            {"join_rule": "invite"},
            id="public join rule",
        ),
        pytest.param(
            state_entry(JOIN_RULES, {"join_rule": "knock"}),
            {"join_rule": "invite"},
            id="knock join rule",
        ),
        pytest.param(
            state_entry(JOIN_RULES, {"join_rule": "restricted"}),
            {"join_rule": "invite"},
            id="restricted join rule",
        ),
        pytest.param(
            state_entry(JOIN_RULES, "public"),
            {"join_rule": "invite"},
            id="join rule content not an object",
        ),
        pytest.param(
            state_entry(HISTORY, {"history_visibility": "world_readable"}),
            {"history_visibility": "joined"},
            id="world_readable",
        ),
        pytest.param(
            state_entry(HISTORY, {"history_visibility": "shared"}),
            {"history_visibility": "joined"},
            id="shared history",
        ),
        pytest.param(
            state_entry(GUEST, {"guest_access": "can_join"}),
            {"guest_access": "forbidden"},
            id="guest can_join",
        ),
        pytest.param(
            state_entry(ENCRYPTION, {"algorithm": "m.olm.v1.curve25519-aes-sha2"}),
            {"algorithm": MEGOLM},
            id="another encryption algorithm",
        ),
        pytest.param(
            state_entry(ENCRYPTION, {}),
            {"algorithm": MEGOLM},
            id="encryption without algorithm",
        ),
        pytest.param(
            state_entry(RETENTION, {"max_lifetime": 16 * DAY}),
            {"max_lifetime": 7 * DAY},
            id="retention above max",
        ),
        pytest.param(
            state_entry(RETENTION, {}),
            {"max_lifetime": 7 * DAY},
            id="retention without max_lifetime",
        ),
        pytest.param(
            state_entry(RETENTION, {"max_lifetime": "15d"}),
            {"max_lifetime": 7 * DAY},
            id="retention as a string",
        ),
        pytest.param(
            state_entry(RETENTION, {"max_lifetime": True}),
            {"max_lifetime": 7 * DAY},
            id="retention as a boolean",
        ),
        pytest.param(
            state_entry(RETENTION, {"max_lifetime": 0}),
            {"max_lifetime": 7 * DAY},
            id="retention zero",
        ),
        pytest.param(
            state_entry(RETENTION, {"max_lifetime": DAY, "min_lifetime": 2 * DAY}),
            {"max_lifetime": 7 * DAY},
            id="retention min above max",
        ),
    ],
)
def test_initial_state_cannot_open_the_room(
    entry: dict[str, Any], forced_content: dict[str, Any]
) -> None:
    request = rewrite({"preset": "public_chat", "initial_state": [entry]})

    assert state_of(request)[(entry["type"], "")] == forced_content
    assert state_of(request).keys() == DEFAULT_STATE.keys()


def test_initial_state_of_a_protected_type_under_another_state_key_is_dropped() -> None:
    request = rewrite(
        {"initial_state": [state_entry(JOIN_RULES, {"join_rule": "public"}, state_key="x")]}
    )

    assert state_of(request) == DEFAULT_STATE


def test_the_last_of_duplicated_entries_is_the_one_judged_and_only_one_is_kept() -> None:
    request = rewrite(
        {
            "initial_state": [
                state_entry(HISTORY, {"history_visibility": "joined"}),
                state_entry(HISTORY, {"history_visibility": "world_readable"}),
            ]
        }
    )

    assert state_of(request) == DEFAULT_STATE


@pytest.mark.parametrize(
    "retention",
    [
        {"max_lifetime": DAY},
        {"max_lifetime": 15 * DAY},
        {"max_lifetime": 15 * DAY, "min_lifetime": DAY},
        {"max_lifetime": DAY, "min_lifetime": 0},
    ],
    ids=repr,
)
def test_a_retention_within_the_maximum_is_kept(retention: dict[str, int]) -> None:
    request = rewrite({"initial_state": [state_entry(RETENTION, retention)]})

    assert state_of(request)[(RETENTION, "")] == retention


def test_a_stricter_join_rule_and_history_visibility_are_kept() -> None:
    request = rewrite(
        {
            "initial_state": [
                state_entry(JOIN_RULES, {"join_rule": "invite"}),
                state_entry(HISTORY, {"history_visibility": "joined"}),
            ]
        },
        rooms=RoomPolicy(join_rule="public", history_visibility="shared"),
    )

    assert state_of(request)[(JOIN_RULES, "")] == {"join_rule": "invite"}
    assert state_of(request)[(HISTORY, "")] == {"history_visibility": "joined"}


def test_other_initial_state_is_kept_in_order_before_the_policy() -> None:
    name = state_entry("m.room.name", {"name": "Payroll"})
    topic = state_entry("m.room.topic", {"topic": "Q3"})
    avatar = {"type": "m.room.avatar", "content": {"url": "mxc://test.local/abc"}}

    request = rewrite(
        {"initial_state": [name, state_entry(GUEST, {"guest_access": "can_join"}), topic, avatar]}
    )

    assert request["initial_state"][:3] == [name, topic, avatar]
    assert state_of(request) == {
        ("m.room.name", ""): {"name": "Payroll"},
        ("m.room.topic", ""): {"topic": "Q3"},
        ("m.room.avatar", ""): {"url": "mxc://test.local/abc"},
        **DEFAULT_STATE,
    }


@pytest.mark.parametrize(
    "initial_state",
    ["m.room.join_rules", {"type": JOIN_RULES, "content": {"join_rule": "public"}}, None, 7],
    ids=repr,
)
def test_an_initial_state_that_is_not_a_list_is_replaced_by_the_policy(
    initial_state: object,
) -> None:
    request = rewrite({"initial_state": initial_state})

    assert state_of(request) == DEFAULT_STATE


def test_initial_state_entries_that_are_not_objects_are_dropped() -> None:
    request = rewrite(
        {"initial_state": ["m.room.join_rules", None, [JOIN_RULES, "", {"join_rule": "public"}]]}
    )

    assert state_of(request) == DEFAULT_STATE


def test_an_unhashable_join_rule_is_clamped_like_any_other() -> None:
    request = rewrite({"initial_state": [state_entry(JOIN_RULES, {"join_rule": ["public"]})]})

    assert state_of(request) == DEFAULT_STATE


# Creating a room: other policies -----------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "given"),
    [
        ("knock", "knock"),
        ("restricted", "restricted"),
        ("knock_restricted", "knock_restricted"),
        ("invite", "invite"),
        ("public", "invite"),
        ("private", "invite"),
    ],
)
def test_knock_policy_clamps_the_join_rule(asked: str, given: str) -> None:
    request = rewrite(
        {"initial_state": [state_entry(JOIN_RULES, {"join_rule": asked})]},
        rooms=RoomPolicy(join_rule="knock"),
    )

    assert state_of(request)[(JOIN_RULES, "")]["join_rule"] == given


@pytest.mark.parametrize("join_rule", ["restricted", "knock_restricted"])
def test_a_restricted_join_rule_keeps_its_allow_conditions(join_rule: str) -> None:
    content = {
        "join_rule": join_rule,
        "allow": [{"type": "m.room_membership", "room_id": "!TeamSpace"}],
    }

    request = rewrite(
        {"initial_state": [state_entry(JOIN_RULES, content)]},
        rooms=RoomPolicy(join_rule="knock"),
    )

    assert state_of(request)[(JOIN_RULES, "")] == content


def test_knock_policy_turns_public_chat_into_private_chat() -> None:
    request = rewrite({"preset": "public_chat"}, rooms=RoomPolicy(join_rule="knock"))

    assert request["preset"] == "private_chat"
    assert state_of(request)[(JOIN_RULES, "")] == {"join_rule": "invite"}


def test_public_policy_lets_public_chat_stay_public_but_out_of_the_directory() -> None:
    request = rewrite(
        {"preset": "public_chat", "visibility": "public"}, rooms=RoomPolicy(join_rule="public")
    )

    assert request["preset"] == "public_chat"
    assert request["visibility"] == "private"
    assert state_of(request)[(JOIN_RULES, "")] == {"join_rule": "public"}
    assert state_of(request)[(GUEST, "")] == {"guest_access": "forbidden"}
    assert state_of(request)[(ENCRYPTION, "")] == {"algorithm": MEGOLM}


def test_public_policy_infers_public_chat_from_a_public_visibility() -> None:
    request = rewrite(
        {"visibility": "public"}, rooms=RoomPolicy(join_rule="public", directory=True)
    )

    assert request["preset"] == "public_chat"
    assert request["visibility"] == "public"
    assert state_of(request)[(JOIN_RULES, "")] == {"join_rule": "public"}


@pytest.mark.parametrize(
    ("asked", "given"),
    [
        (None, "shared"),  # what every preset sends
        ("world_readable", "shared"),
        ("shared", "shared"),
        ("invited", "invited"),
        ("joined", "joined"),
        ("everyone", "joined"),
    ],
)
def test_shared_policy_clamps_history_visibility(asked: str | None, given: str) -> None:
    initial_state = [] if asked is None else [state_entry(HISTORY, {"history_visibility": asked})]

    request = rewrite(
        {"initial_state": initial_state}, rooms=RoomPolicy(history_visibility="shared")
    )

    assert state_of(request)[(HISTORY, "")] == {"history_visibility": given}


def test_world_readable_is_kept_only_when_the_policy_names_it() -> None:
    request = rewrite(
        {"initial_state": [state_entry(HISTORY, {"history_visibility": "world_readable"})]},
        rooms=RoomPolicy(history_visibility="world_readable"),
    )

    assert state_of(request)[(HISTORY, "")] == {"history_visibility": "world_readable"}


def test_guest_access_allowed_leaves_the_clients_choice() -> None:
    request = rewrite(
        {"initial_state": [state_entry(GUEST, {"guest_access": "can_join"})]},
        rooms=RoomPolicy(guest_access=True),
    )

    assert state_of(request)[(GUEST, "")] == {"guest_access": "can_join"}


def test_encryption_off_leaves_the_clients_choice() -> None:
    entry = state_entry(ENCRYPTION, {"algorithm": MEGOLM, "rotation_period_ms": 3_600_000})

    with_entry = rewrite({"initial_state": [entry]}, rooms=RoomPolicy(encryption="off"))
    without = rewrite({}, rooms=RoomPolicy(encryption="off"))

    assert state_of(with_entry)[(ENCRYPTION, "")] == entry["content"]
    assert (ENCRYPTION, "") not in state_of(without)


def test_directory_allowed_keeps_a_public_visibility() -> None:
    request = rewrite({"visibility": "public"}, rooms=RoomPolicy(directory=True))

    assert request["visibility"] == "public"
    assert request["preset"] == "private_chat"
    assert state_of(request)[(JOIN_RULES, "")] == {"join_rule": "invite"}


def test_federation_enabled_leaves_creation_content_alone() -> None:
    asked = rewrite({"creation_content": {"m.federate": True}}, federation=FederationPolicy(True))
    unset = rewrite({}, federation=FederationPolicy(enabled=True))

    assert asked["creation_content"] == {"m.federate": True}
    assert "creation_content" not in unset


def test_new_rooms_get_the_configured_default_lifetime() -> None:
    request = rewrite(
        {}, retention=RetentionPolicy(max_lifetime_ms=2 * DAY, default_lifetime_ms=DAY)
    )

    assert state_of(request)[(RETENTION, "")] == {"max_lifetime": DAY}


# Creating a room: any body -----------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
STATE_TYPES = st.sampled_from(
    [JOIN_RULES, HISTORY, GUEST, ENCRYPTION, RETENTION, "m.room.create", "m.room.name"]
)
INTERESTING_VALUES = st.sampled_from(
    [
        "invite",
        "knock",
        "restricted",
        "knock_restricted",
        "public",
        "private",
        "joined",
        "invited",
        "shared",
        "world_readable",
        "can_join",
        "forbidden",
        MEGOLM,
        "m.olm.v1.curve25519-aes-sha2",
    ]
) | st.integers(min_value=-DAY, max_value=40 * DAY)
CONTENT_KEYS = st.sampled_from(
    ["join_rule", "history_visibility", "guest_access", "algorithm", "max_lifetime",
     "min_lifetime", "allow"]
)  # fmt: skip


def create_bodies(values: st.SearchStrategy[Any], names: st.SearchStrategy[Any]) -> Any:
    contents = st.dictionaries(CONTENT_KEYS | st.text(max_size=4), values, max_size=4)
    entries = st.fixed_dictionaries(
        {"type": STATE_TYPES | names, "content": contents | values},
        optional={"state_key": st.just("") | names},
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "preset": st.sampled_from([*PRESETS, "secret_chat"]) | values,
            "visibility": st.sampled_from(["public", "private"]) | values,
            "is_direct": st.booleans(),
            "invite": st.lists(st.sampled_from(["@bob:test.local", "@mallory:evil.example"])),
            "creation_content": st.dictionaries(
                st.sampled_from(["m.federate", "type"]) | st.text(max_size=4), values, max_size=3
            )
            | values,
            "initial_state": st.lists(entries | values, max_size=6) | values,
            "room_version": st.sampled_from(["10", "11", "12"]),
        },
    )


POLICIES = st.builds(
    RoomPolicy,
    encryption=st.sampled_from(["required", "off"]),
    join_rule=st.sampled_from(sorted(JOIN_RULES_ADMITTED)),
    history_visibility=st.sampled_from(sorted(HISTORY_ADMITTED)),
    guest_access=st.booleans(),
    directory=st.booleans(),
)
RETENTIONS = st.integers(min_value=1, max_value=400 * DAY).flatmap(
    lambda max_ms: st.builds(
        RetentionPolicy,
        max_lifetime_ms=st.just(max_ms),
        default_lifetime_ms=st.integers(min_value=1, max_value=max_ms),
    )
)
FEDERATION = st.builds(FederationPolicy, enabled=st.booleans())


def assert_born_compliant(
    request: Mapping[str, Any],
    rooms: RoomPolicy,
    retention: RetentionPolicy,
    federation: FederationPolicy,
) -> None:
    initial_state = request["initial_state"]
    assert isinstance(initial_state, list)
    assert all(isinstance(entry, Mapping) for entry in initial_state)

    def the_one(event_type: str) -> Mapping[str, Any]:
        entries = [entry for entry in initial_state if entry.get("type") == event_type]
        assert len(entries) == 1, f"{event_type}: {entries}"
        assert entries[0].get("state_key", "") == ""
        content = entries[0]["content"]
        assert isinstance(content, Mapping)
        return content

    join_rule = the_one(JOIN_RULES)["join_rule"]
    assert join_rule in JOIN_RULES_ADMITTED[rooms.join_rule]
    assert the_one(HISTORY)["history_visibility"] in HISTORY_ADMITTED[rooms.history_visibility]
    if not rooms.guest_access:
        assert the_one(GUEST) == {"guest_access": "forbidden"}
    if rooms.encryption == "required":
        assert the_one(ENCRYPTION) == {"algorithm": MEGOLM}
    lifetime = the_one(RETENTION)
    max_lifetime = lifetime["max_lifetime"]
    assert type(max_lifetime) is int
    assert 0 < max_lifetime <= retention.max_lifetime_ms
    min_lifetime = lifetime.get("min_lifetime")
    assert min_lifetime is None or (type(min_lifetime) is int and 0 <= min_lifetime <= max_lifetime)

    assert request["preset"] in PRESETS
    if request["preset"] == "public_chat":
        assert join_rule == "public"
    if not rooms.directory:
        assert request["visibility"] == "private"
    if not federation.enabled:
        assert request["creation_content"]["m.federate"] is False


@given(
    request=create_bodies(INTERESTING_VALUES | JSON_SCALARS, st.text(max_size=4)),
    rooms=POLICIES,
    retention=RETENTIONS,
    federation=FEDERATION,
)
def test_any_well_formed_create_request_is_born_compliant(
    request: dict[str, Any],
    rooms: RoomPolicy,
    retention: RetentionPolicy,
    federation: FederationPolicy,
) -> None:
    rewrite_create_request(rooms, retention, federation, request)

    assert_born_compliant(request, rooms, retention, federation)


@given(request=create_bodies(INTERESTING_VALUES | JSON, JSON))
def test_any_json_create_request_is_born_compliant(request: dict[str, Any]) -> None:
    rooms, retention, federation = RoomPolicy(), RetentionPolicy(), FederationPolicy()

    rewrite_create_request(rooms, retention, federation, request)

    assert_born_compliant(request, rooms, retention, federation)


@given(
    request=create_bodies(INTERESTING_VALUES | JSON_SCALARS, st.text(max_size=4)),
    rooms=POLICIES,
    retention=RETENTIONS,
    federation=FEDERATION,
)
def test_rewriting_twice_changes_nothing_more(
    request: dict[str, Any],
    rooms: RoomPolicy,
    retention: RetentionPolicy,
    federation: FederationPolicy,
) -> None:
    rewrite_create_request(rooms, retention, federation, request)
    once = copy.deepcopy(request)

    rewrite_create_request(rooms, retention, federation, request)

    assert request == once


# Later state events ------------------------------------------------------------------------

NO_STATE: dict[tuple[str, str], StateEntry] = {}
MEGOLM_STATE = {(ENCRYPTION, ""): StateEntry("$encryption", {"algorithm": MEGOLM})}


def decide(
    event_type: str,
    content: dict[str, Any],
    rooms: RoomPolicy | None = None,
    current: Mapping[tuple[str, str], StateEntry] = NO_STATE,
    retention: RetentionPolicy | None = None,
) -> Verdict:
    return decide_state_event(
        rooms or RoomPolicy(), retention or RetentionPolicy(), event_type, content, current
    )


@pytest.mark.parametrize("policy", sorted(JOIN_RULES_ADMITTED))
@pytest.mark.parametrize(
    "join_rule", ["invite", "knock", "restricted", "knock_restricted", "public", "private", None]
)
def test_join_rule_changes_follow_the_policy(policy: str, join_rule: str | None) -> None:
    verdict = decide(JOIN_RULES, {"join_rule": join_rule}, rooms=RoomPolicy(join_rule=policy))

    if join_rule in JOIN_RULES_ADMITTED[policy]:
        assert verdict == ALLOWED
    else:
        assert verdict == Verdict(allowed=False, reason=Reason.JOIN_RULE)


@pytest.mark.parametrize("join_rule", [["public"], {"public": True}], ids=repr)
def test_an_unhashable_join_rule_is_refused_as_a_join_rule(join_rule: object) -> None:
    assert decide(JOIN_RULES, {"join_rule": join_rule}) == Verdict(False, Reason.JOIN_RULE)


@pytest.mark.parametrize("policy", sorted(HISTORY_ADMITTED))
@pytest.mark.parametrize(
    "visibility", ["joined", "invited", "shared", "world_readable", "everyone", None, ["shared"]]
)
def test_history_visibility_changes_follow_the_policy(policy: str, visibility: object) -> None:
    verdict = decide(
        HISTORY, {"history_visibility": visibility}, rooms=RoomPolicy(history_visibility=policy)
    )

    if isinstance(visibility, str) and visibility in HISTORY_ADMITTED[policy]:
        assert verdict == ALLOWED
    else:
        assert verdict == Verdict(allowed=False, reason=Reason.HISTORY_VISIBILITY)


@pytest.mark.parametrize(
    ("content", "allowed"),
    [
        ({"guest_access": "forbidden"}, True),
        ({"guest_access": "can_join"}, False),
        ({}, False),
        ({"guest_access": None}, False),
    ],
    ids=repr,
)
def test_guest_access_must_stay_forbidden(content: dict[str, Any], allowed: bool) -> None:
    expected = ALLOWED if allowed else Verdict(allowed=False, reason=Reason.GUEST_ACCESS)

    assert decide(GUEST, content) == expected


def test_guest_access_allowed_accepts_can_join() -> None:
    assert decide(GUEST, {"guest_access": "can_join"}, rooms=RoomPolicy(guest_access=True)) == (
        ALLOWED
    )


def test_encryption_can_be_turned_on_with_megolm() -> None:
    assert decide(ENCRYPTION, {"algorithm": MEGOLM}) == ALLOWED


@pytest.mark.parametrize(
    "content",
    [{"algorithm": "m.olm.v1.curve25519-aes-sha2"}, {}, {"algorithm": None}],
    ids=repr,
)
def test_encryption_with_another_algorithm_is_refused(content: dict[str, Any]) -> None:
    assert decide(ENCRYPTION, content) == Verdict(allowed=False, reason=Reason.ENCRYPTION)


def test_resending_the_same_encryption_is_harmless() -> None:
    assert decide(ENCRYPTION, {"algorithm": MEGOLM}, current=MEGOLM_STATE) == ALLOWED


@pytest.mark.parametrize(
    "content",
    [
        {"algorithm": MEGOLM, "rotation_period_ms": 604_800_000},
        {"algorithm": MEGOLM, "rotation_period_msgs": 1},
        {"algorithm": "m.olm.v1.curve25519-aes-sha2"},
        {},
    ],
    ids=repr,
)
def test_changing_encryption_once_set_is_refused(content: dict[str, Any]) -> None:
    assert decide(ENCRYPTION, content, current=MEGOLM_STATE) == Verdict(
        allowed=False, reason=Reason.ENCRYPTION
    )


def test_encryption_off_lets_any_encryption_event_through() -> None:
    off = RoomPolicy(encryption="off")

    assert decide(ENCRYPTION, {}, rooms=off, current=MEGOLM_STATE) == ALLOWED
    assert decide(ENCRYPTION, {"algorithm": "other"}, rooms=off) == ALLOWED


@pytest.mark.parametrize(
    ("content", "allowed"),
    [
        ({"max_lifetime": 15 * DAY}, True),
        ({"max_lifetime": 1}, True),
        ({"max_lifetime": 15 * DAY, "min_lifetime": 0}, True),
        ({"max_lifetime": 15 * DAY, "min_lifetime": 15 * DAY}, True),
        ({"max_lifetime": 15 * DAY + 1}, False),
        ({}, False),  # removing it
        ({"min_lifetime": DAY}, False),
        ({"max_lifetime": 0}, False),
        ({"max_lifetime": -DAY}, False),
        ({"max_lifetime": True}, False),
        ({"max_lifetime": "7d"}, False),
        ({"max_lifetime": 7.0 * DAY}, False),
        ({"max_lifetime": None}, False),
        ({"max_lifetime": DAY, "min_lifetime": DAY + 1}, False),
        ({"max_lifetime": DAY, "min_lifetime": -1}, False),
        ({"max_lifetime": DAY, "min_lifetime": "1h"}, False),
    ],
    ids=repr,
)
def test_retention_may_not_be_raised_above_the_maximum_or_removed(
    content: dict[str, Any], allowed: bool
) -> None:
    expected = ALLOWED if allowed else Verdict(allowed=False, reason=Reason.RETENTION)

    assert decide(RETENTION, content) == expected


def test_retention_follows_the_configured_maximum() -> None:
    retention = RetentionPolicy(max_lifetime_ms=DAY, default_lifetime_ms=DAY)

    assert decide(RETENTION, {"max_lifetime": DAY}, retention=retention) == ALLOWED
    assert decide(RETENTION, {"max_lifetime": 2 * DAY}, retention=retention) == Verdict(
        allowed=False, reason=Reason.RETENTION
    )


@pytest.mark.parametrize(
    ("event_type", "content"),
    [
        ("m.room.name", {"name": "Payroll"}),
        ("m.room.topic", {"topic": "Q3"}),
        ("m.room.power_levels", {"users": {"@alice:test.local": 100}}),
        ("m.room.pinned_events", {"pinned": []}),
    ],
)
def test_other_state_is_not_the_guards_business(event_type: str, content: dict[str, Any]) -> None:
    assert decide(event_type, content) == ALLOWED


# Redactions --------------------------------------------------------------------------------

CURRENT_STATE = {
    ("m.room.create", ""): StateEntry("$create", {"m.federate": False}),
    (ENCRYPTION, ""): StateEntry("$encryption", {"algorithm": MEGOLM}),
    (JOIN_RULES, ""): StateEntry("$join_rules", {"join_rule": "invite"}),
    (HISTORY, ""): StateEntry("$history", {"history_visibility": "joined"}),
    (GUEST, ""): StateEntry("$guest", {"guest_access": "forbidden"}),
    (RETENTION, ""): StateEntry("$retention", {"max_lifetime": 7 * DAY}),
}


@pytest.mark.parametrize(
    "event_id", ["$create", "$encryption", "$join_rules", "$history", "$guest", "$retention"]
)
def test_redacting_the_current_policy_state_is_refused(event_id: str) -> None:
    assert decide_redaction(event_id, CURRENT_STATE) == Verdict(
        allowed=False, reason=Reason.PROTECTED_STATE
    )


@pytest.mark.parametrize("redacts", ["$a_message", "$an_old_join_rules_event", None], ids=repr)
def test_redacting_anything_else_is_allowed(redacts: str | None) -> None:
    assert decide_redaction(redacts, CURRENT_STATE) == ALLOWED


def test_redacting_in_a_room_without_policy_state_is_allowed() -> None:
    assert decide_redaction("$join_rules", NO_STATE) == ALLOWED


# Publication -------------------------------------------------------------------------------


def test_publishing_to_the_directory_is_refused() -> None:
    assert decide_publication(RoomPolicy(), "public") == Verdict(
        allowed=False, reason=Reason.DIRECTORY
    )


def test_unpublishing_is_always_allowed() -> None:
    assert decide_publication(RoomPolicy(), "private") == ALLOWED


def test_publishing_is_allowed_when_the_directory_is() -> None:
    assert decide_publication(RoomPolicy(directory=True), "public") == ALLOWED
