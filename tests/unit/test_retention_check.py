"""The start-up retention check: Synapse's own settings against the guard's max_lifetime."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from synapse.config._base import Config, ConfigError
from synapse.config.retention import RetentionConfig

from synapse_guard.config import GuardConfig, RetentionPolicy, parse_guard_config
from synapse_guard.retention_check import (
    DAY_MS,
    HOUR_MS,
    RetentionProblem,
    check_retention,
    format_duration,
)
from synapse_guard.synapse_config import guard_entry, read_config

REPO = Path(__file__).resolve().parents[2]
GUARD = GuardConfig()  # max_lifetime 15d, default_lifetime 7d


def guard(max_lifetime: str, default_lifetime: str | None = None) -> GuardConfig:
    retention = {"max_lifetime": max_lifetime, "default_lifetime": default_lifetime or "1s"}
    return parse_guard_config({"retention": retention})


def passing() -> dict[str, Any]:
    """The smallest configuration that passes against the default guard (15d)."""
    return {
        "retention": {
            "enabled": True,
            "default_policy": {"max_lifetime": "7d"},
            "allowed_lifetime_max": "15d",
        },
        "media_retention": {"local_media_lifetime": "15d"},
        "forgotten_room_retention_period": "1d",
        "user_ips_max_age": "3d",
    }


def with_value(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` (default `passing()`) with the dotted `path` set; `...` deletes the key."""
    config = copy.deepcopy(passing() if base is None else base)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return config


def settings(problems: list[RetentionProblem]) -> list[str]:
    return [p.setting for p in problems]


def only(problems: list[RetentionProblem]) -> RetentionProblem:
    assert len(problems) == 1, problems
    return problems[0]


# What passes ------------------------------------------------------------------------------


def test_a_complete_configuration_passes() -> None:
    assert check_retention(passing(), GUARD) == []


def test_the_repository_homeserver_d_passes(tmp_path: Path) -> None:
    """homeserver.d/ on top of a generated-like minimal homeserver.yaml, as Synapse merges it."""
    base = tmp_path / "homeserver.yaml"
    base.write_text("server_name: guard.test\nreport_stats: false\n")
    config = read_config([base, REPO / "homeserver.d"])
    entry = guard_entry(config)
    assert entry.config.retention == RetentionPolicy(15 * DAY_MS, 7 * DAY_MS)
    assert config.origins["retention"].name == "60-retention.yaml"
    assert check_retention(config.values, entry.config) == []


def test_the_synapse_documentation_example_purge_jobs_pass() -> None:
    jobs = [
        {"longest_max_lifetime": "3d", "interval": "12h"},
        {"shortest_max_lifetime": "3d", "interval": "1d"},
    ]
    assert check_retention(with_value("retention.purge_jobs", jobs), GUARD) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        # Exactly max_lifetime is allowed everywhere.
        ("retention.default_policy.max_lifetime", "15d"),
        ("retention.allowed_lifetime_max", "2w"),
        ("retention.allowed_lifetime_max", 15 * DAY_MS),
        ("media_retention.local_media_lifetime", str(15 * DAY_MS)),
        ("forgotten_room_retention_period", "360h"),
        ("user_ips_max_age", "15d"),
        ("redaction_retention_period", "15d"),
        # The default policy may exceed the guard's default_lifetime (7d), not its maximum:
        # the guard promises that no room keeps messages longer than max_lifetime.
        ("retention.default_policy.max_lifetime", "10d"),
        # Stricter is fine, down to zero (Synapse purges at once).
        ("retention.allowed_lifetime_max", "1d"),
        ("redaction_retention_period", 0),
        ("redaction_retention_period", "0d"),
        ("user_ips_max_age", "0"),
        ("retention.purge_jobs", [{"interval": "1m"}]),
        ("retention.purge_jobs", [{"interval": "15d"}]),
        ("retention.purge_jobs", []),  # Synapse's daily job
        ("retention.purge_jobs", [{"interval": 60_000, "shortest_max_lifetime": 0}]),
        # The lower bounds are Synapse's business (it refuses min > max itself).
        ("retention.default_policy.min_lifetime", "1d"),
        ("retention.allowed_lifetime_min", "1d"),
        # Unrelated keys are left alone.
        ("retention.something_else", [1, 2]),
    ],
)
def test_values_within_max_lifetime_pass(path: str, value: Any) -> None:
    assert check_retention(with_value(path, value), GUARD) == []


def test_synapse_defaults_that_are_short_enough_pass() -> None:
    # Without purge_jobs Synapse purges daily; redaction_retention_period defaults to 7d.
    config = with_value("redaction_retention_period", ...)
    assert "purge_jobs" not in config["retention"]
    assert check_retention(config, GUARD) == []
    # user_ips_max_age defaults to 28d: fine for a 30d guard.
    long_guard = guard("30d")
    assert check_retention(with_value("user_ips_max_age", ...), long_guard) == []


# Synapse's defaults -----------------------------------------------------------------------


def test_an_empty_configuration_lists_what_synapse_keeps_by_default() -> None:
    problems = check_retention({}, GUARD)
    assert settings(problems) == [
        "retention.enabled",
        "retention.default_policy.max_lifetime",
        "retention.allowed_lifetime_max",
        "media_retention.local_media_lifetime",
        "forgotten_room_retention_period",
        "user_ips_max_age",
    ]
    assert [str(p) for p in problems] == [
        "retention.enabled: is not set: Synapse's message retention is off, so messages are "
        "never purged (off is Synapse's default); set retention.enabled: true",
        "retention.default_policy.max_lifetime: is not set: rooms without an m.room.retention "
        "event (created before the guard, or upgraded without one) keep their messages "
        "forever; set retention.default_policy.max_lifetime: 7d (at most 15d)",
        "retention.allowed_lifetime_max: is not set: Synapse does not cap the lifetime a "
        "room's m.room.retention asks for; set retention.allowed_lifetime_max: 15d or less",
        "media_retention.local_media_lifetime: is not set: uploaded files (attachments) are "
        "kept forever; message retention never deletes media; set "
        "media_retention.local_media_lifetime: 15d or less",
        "forgotten_room_retention_period: is not set: Synapse keeps rooms that every local "
        "member has forgotten forever; set forgotten_room_retention_period: 1d (at most 15d)",
        "user_ips_max_age: is not set: Synapse keeps the client IP addresses and user agents "
        "of every session for 28d (Synapse's default), longer than the guard's "
        "retention.max_lifetime (15d); set user_ips_max_age: 1d (at most 15d)",
    ]


def test_a_guard_shorter_than_synapse_defaults_flags_them() -> None:
    """Under 7d, the default redaction_retention_period; under 1d, the default daily purge."""
    problems = check_retention(passing(), guard("5d"))
    assert settings(problems) == [
        "retention.default_policy.max_lifetime",  # 7d
        "retention.allowed_lifetime_max",  # 15d
        "media_retention.local_media_lifetime",  # 15d
        "redaction_retention_period",  # Synapse's 7d
    ]
    assert problems[3].problem.startswith("is not set: Synapse keeps the original content of")
    assert problems[3].fix == "redaction_retention_period: 1d (at most 5d)"

    short = {
        "retention": {
            "enabled": True,
            "default_policy": {"max_lifetime": "6h"},
            "allowed_lifetime_max": "12h",
        },
        "media_retention": {"local_media_lifetime": "12h"},
        "forgotten_room_retention_period": "1h",
        "user_ips_max_age": "12h",
        "redaction_retention_period": "1h",
    }
    problem = only(check_retention(short, guard("12h")))
    assert str(problem) == (
        "retention.purge_jobs: is not set: Synapse then purges once a day, less often than the "
        "guard's retention.max_lifetime (12h), so messages outlive it; "
        "set retention.purge_jobs: [{interval: 12h}]"
    )
    empty = only(check_retention(with_value("retention.purge_jobs", [], short), guard("12h")))
    assert empty.problem.startswith("is empty: Synapse then purges once a day")
    jobs = [{"interval": "12h"}]
    assert check_retention(with_value("retention.purge_jobs", jobs, short), guard("12h")) == []


# Each problem -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (False, "is false: Synapse's message retention is off, so messages are never purged"),
        (None, "is null: Synapse's message retention is off, so messages are never purged"),
        ("true", "must be the YAML boolean true, got 'true'"),
        (1, "must be the YAML boolean true, got 1"),
        ("off", "must be the YAML boolean true, got 'off'"),
    ],
)
def test_retention_must_be_enabled(value: Any, problem: str) -> None:
    found = only(check_retention(with_value("retention.enabled", value), GUARD))
    assert found == RetentionProblem("retention.enabled", problem, "retention.enabled: true")


@pytest.mark.parametrize("retention", [None, {}])
def test_no_retention_section_at_all(retention: Any) -> None:
    problems = check_retention(with_value("retention", retention), GUARD)
    assert settings(problems) == [
        "retention.enabled",
        "retention.default_policy.max_lifetime",
        "retention.allowed_lifetime_max",
    ]


@pytest.mark.parametrize("retention", [[], "on", True, 7])
def test_a_retention_section_that_is_not_a_mapping(retention: Any) -> None:
    problem = only(check_retention(with_value("retention", retention), GUARD))
    assert problem.setting == "retention"
    assert problem.problem.startswith("must be a mapping, got ")
    assert problem.fix == (
        "retention: {enabled: true, default_policy: {max_lifetime: 7d}, allowed_lifetime_max: 15d}"
    )


@pytest.mark.parametrize(
    ("path", "value", "problem", "fix"),
    [
        (
            "retention.default_policy.max_lifetime",
            "16d",
            "is 16d, longer than the guard's retention.max_lifetime (15d): rooms without an "
            "m.room.retention event (created before the guard, or upgraded without one) keep "
            "their messages that long",
            "retention.default_policy.max_lifetime: 7d (at most 15d)",
        ),
        (
            "retention.default_policy.max_lifetime",
            None,
            "is null: rooms without an m.room.retention event (created before the guard, or "
            "upgraded without one) keep their messages forever",
            "retention.default_policy.max_lifetime: 7d (at most 15d)",
        ),
        (
            "retention.allowed_lifetime_max",
            15 * DAY_MS + 1,
            "is 1296000001, longer than the guard's retention.max_lifetime (15d): rooms may "
            "keep their messages that long",
            "retention.allowed_lifetime_max: 15d or less",
        ),
        (
            "retention.allowed_lifetime_max",
            None,
            "is null: Synapse does not cap the lifetime a room's m.room.retention asks for",
            "retention.allowed_lifetime_max: 15d or less",
        ),
        (
            "media_retention.local_media_lifetime",
            "1y",
            "is 365d, longer than the guard's retention.max_lifetime (15d): attachments "
            "outlive the messages that carry them",
            "media_retention.local_media_lifetime: 15d or less",
        ),
        (
            "redaction_retention_period",
            None,
            "is null: Synapse keeps the original content of redacted events forever",
            "redaction_retention_period: 1d (at most 15d)",
        ),
        (
            "redaction_retention_period",
            "3w",
            "is 21d, longer than the guard's retention.max_lifetime (15d): Synapse keeps the "
            "original content of redacted events that long",
            "redaction_retention_period: 1d (at most 15d)",
        ),
        (
            "forgotten_room_retention_period",
            None,
            "is null: Synapse keeps rooms that every local member has forgotten forever",
            "forgotten_room_retention_period: 1d (at most 15d)",
        ),
        (
            "forgotten_room_retention_period",
            "16d",
            "is 16d, longer than the guard's retention.max_lifetime (15d): Synapse keeps "
            "rooms that every local member has forgotten that long",
            "forgotten_room_retention_period: 1d (at most 15d)",
        ),
        (
            "user_ips_max_age",
            None,
            "is null: Synapse keeps the client IP addresses and user agents of every session "
            "forever",
            "user_ips_max_age: 1d (at most 15d)",
        ),
        (
            "user_ips_max_age",
            "28d",
            "is 28d, longer than the guard's retention.max_lifetime (15d): Synapse keeps the "
            "client IP addresses and user agents of every session that long",
            "user_ips_max_age: 1d (at most 15d)",
        ),
    ],
)
def test_a_looser_setting_is_named_with_what_to_set(
    path: str, value: Any, problem: str, fix: str
) -> None:
    assert only(check_retention(with_value(path, value), GUARD)) == RetentionProblem(
        path, problem, fix
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("retention.default_policy", ...),
        ("retention.default_policy", None),
        ("retention.default_policy", {}),
        ("retention.default_policy.max_lifetime", ...),
        ("retention.allowed_lifetime_max", ...),
        ("media_retention", ...),
        ("media_retention", None),
        ("media_retention", []),  # Synapse reads `media_retention or {}`
        ("media_retention.local_media_lifetime", ...),
        ("forgotten_room_retention_period", ...),
    ],
)
def test_a_missing_setting_is_a_problem(path: str, value: Any) -> None:
    problem = only(check_retention(with_value(path, value), GUARD))
    assert problem.problem.startswith(("is not set: ", "is null: "))
    expected = {
        "retention.default_policy": "retention.default_policy.max_lifetime",
        "media_retention": "media_retention.local_media_lifetime",
    }
    assert problem.setting == expected.get(path, path)


@pytest.mark.parametrize(
    ("path", "fix"),
    [
        ("retention.default_policy", "retention.default_policy: {max_lifetime: 7d}"),
        ("media_retention", "media_retention: {media_retention.local_media_lifetime: 15d or less}"),
    ],
)
@pytest.mark.parametrize("value", [["x"], "7d", 5, True])
def test_a_section_that_is_not_a_mapping(path: str, fix: str, value: Any) -> None:
    problem = only(check_retention(with_value(path, value), GUARD))
    assert problem.setting == path
    assert problem.problem.startswith("must be a mapping, got ")
    assert problem.fix == fix


# Purge jobs -------------------------------------------------------------------------------


def jobs(*entries: Any) -> dict[str, Any]:
    return with_value("retention.purge_jobs", list(entries))


@pytest.mark.parametrize(
    ("interval", "problem"),
    [
        (
            "16d",
            "is 16d, longer than the guard's retention.max_lifetime (15d): this job purges less "
            "often than that, so messages outlive it",
        ),
        ("0", "must be longer than zero"),
        (0, "must be longer than zero"),
        (None, "is null: Synapse requires it and cannot start"),
        (..., "is not set: Synapse requires it and cannot start"),
        (
            "30ms",
            "'30ms': Synapse does not accept the ms suffix and cannot start; write milliseconds "
            "as a plain integer",
        ),
        (
            "1 day",
            "'1 day' is not a duration: use a number followed by s, m, h, d, w or y (e.g. 12h, "
            "7d), or milliseconds as an integer",
        ),
    ],
)
def test_a_purge_interval_must_be_at_most_max_lifetime(interval: Any, problem: str) -> None:
    job: dict[str, Any] = {"longest_max_lifetime": "1d"}
    if interval is not ...:
        job["interval"] = interval
    config = jobs({"interval": "1h"}, job, {"shortest_max_lifetime": "1d", "interval": "1d"})
    assert only(check_retention(config, GUARD)) == RetentionProblem(
        "retention.purge_jobs[1].interval",
        problem,
        "retention.purge_jobs[1].interval: 1d (at most 15d)",
    )


@pytest.mark.parametrize("value", ["1d", None, 3, {"interval": "1d"}])
def test_purge_jobs_must_be_a_list(value: Any) -> None:
    problem = only(check_retention(with_value("retention.purge_jobs", value), GUARD))
    assert problem.setting == "retention.purge_jobs"
    assert problem.problem.startswith("must be a list, got ")
    assert problem.problem.endswith(" (Synapse cannot start)")
    assert problem.fix == "retention.purge_jobs: [{interval: 1d}]"


@pytest.mark.parametrize("entry", ["every day", None, ["1d"], 86_400_000])
def test_a_purge_job_must_be_a_mapping(entry: Any) -> None:
    problem = only(check_retention(jobs({"interval": "1d"}, entry), GUARD))
    assert problem.setting == "retention.purge_jobs[1]"
    assert problem.problem.startswith("must be a mapping, got ")
    assert problem.fix == "retention.purge_jobs[1]: {interval: 1d}"


def test_purge_jobs_must_handle_every_room_lifetime() -> None:
    # Only up to 15d: a room that kept an older, longer policy is never purged, because
    # Synapse picks rooms by their stored max_lifetime and caps it only afterwards.
    problem = only(check_retention(jobs({"longest_max_lifetime": "15d", "interval": "1d"}), GUARD))
    assert str(problem) == (
        "retention.purge_jobs: no purge job handles rooms whose m.room.retention max_lifetime "
        "is above 15d (rooms whose policy predates the guard): those rooms are never purged; "
        "set a job {shortest_max_lifetime: 15d, interval: 1d} in retention.purge_jobs, or one "
        "job without shortest_max_lifetime and longest_max_lifetime"
    )
    # A hole in the middle, and nothing below 1h.
    config = jobs(
        {"shortest_max_lifetime": "1h", "longest_max_lifetime": "3d", "interval": "1h"},
        {"shortest_max_lifetime": "4d", "interval": "1d"},
    )
    problems = check_retention(config, GUARD)
    assert [p.problem for p in problems] == [
        "no purge job handles rooms whose m.room.retention max_lifetime is at most 1h: "
        "those rooms are never purged",
        "no purge job handles rooms whose m.room.retention max_lifetime is above 3d and at "
        "most 4d: those rooms are never purged",
    ]
    assert problems[1].fix.startswith(
        "a job {shortest_max_lifetime: 3d, longest_max_lifetime: 4d, interval: 1d} in "
    )
    # Overlapping ranges, in any order, cover everything.
    config = jobs(
        {"shortest_max_lifetime": "2d", "interval": "1d"},
        {"longest_max_lifetime": "3d", "interval": "1h"},
    )
    assert check_retention(config, GUARD) == []


def test_a_range_synapse_refuses_is_reported_and_not_guessed() -> None:
    config = jobs(
        {"shortest_max_lifetime": "3d", "longest_max_lifetime": "1d", "interval": "1d"},
        {"interval": "1d"},
    )
    assert only(check_retention(config, GUARD)) == RetentionProblem(
        "retention.purge_jobs[0].shortest_max_lifetime",
        "is 3d, longer than longest_max_lifetime (1d): Synapse cannot start",
        "retention.purge_jobs[0].shortest_max_lifetime: 1d or less",
    )
    config = jobs({"longest_max_lifetime": "soon", "interval": "1d"})
    problem = only(check_retention(config, GUARD))
    assert problem.setting == "retention.purge_jobs[0].longest_max_lifetime"
    assert problem.problem.startswith("'soon' is not a duration")


# Wrong types never crash ------------------------------------------------------------------

DURATION_KEYS = [
    "retention.default_policy.max_lifetime",
    "retention.allowed_lifetime_max",
    "media_retention.local_media_lifetime",
    "redaction_retention_period",
    "forgotten_room_retention_period",
    "user_ips_max_age",
]


@pytest.mark.parametrize("path", DURATION_KEYS)
@pytest.mark.parametrize(
    "value",
    [True, False, 1.5, "7 days", "-1d", "+1d", "1_000", -5, "30ms", [], {}, ["7d"], b"7d", ""],
)
def test_a_value_that_is_not_a_duration_is_a_problem(path: str, value: Any) -> None:
    problem = only(check_retention(with_value(path, value), GUARD))
    assert problem.setting == path
    assert problem.problem.endswith(
        (
            "is not a duration: use a number followed by s, m, h, d, w or y (e.g. 12h, 7d), or "
            "milliseconds as an integer",
            "write milliseconds as a plain integer",
            "must not be negative, got -5",
        )
    )
    assert problem.fix.startswith(f"{path}: ")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
KEYS = [
    *DURATION_KEYS,
    "retention",
    "retention.enabled",
    "retention.default_policy",
    "retention.purge_jobs",
    "media_retention",
]


def settable(config: dict[str, Any], path: str) -> bool:
    node: Any = config
    for key in path.split(".")[:-1]:
        node = node.get(key, {})
        if not isinstance(node, dict):
            return False
    return True


@given(st.lists(st.tuples(st.sampled_from(KEYS), JSON), max_size=4))
def test_any_value_anywhere_gives_problems_never_an_exception(
    changes: list[tuple[str, Any]],
) -> None:
    config = passing()
    for path, value in changes:
        if settable(config, path):
            config = with_value(path, value, config)
    for problem in check_retention(config, GUARD):
        assert str(problem) == f"{problem.setting}: {problem.problem}; set {problem.fix}"


@given(JSON)
def test_any_purge_jobs_value_gives_problems_never_an_exception(value: Any) -> None:
    for raw in (value, [value], [{"interval": value, "shortest_max_lifetime": value}]):
        check_retention(with_value("retention.purge_jobs", raw), GUARD)


# Agreement with Synapse's own parsing ----------------------------------------------------

DURATION_TEXT = st.text(alphabet="0123456789smhdwy _+-.", max_size=8)
DURATIONS = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    DURATION_TEXT,
    st.from_regex(r"\A[0-9]{1,4}[smhdwy]?\Z"),
    st.booleans(),
    st.floats(allow_nan=False),
)


def synapse_duration(value: Any) -> int | None:
    try:
        return Config.parse_duration(value)
    except (TypeError, ValueError):
        return None


@given(DURATIONS)
def test_a_duration_that_passes_is_one_synapse_reads_within_max_lifetime(value: Any) -> None:
    """Soundness: the check never passes a value Synapse would read as longer, or not at all."""
    config = with_value("retention.allowed_lifetime_max", value)
    passed = check_retention(config, GUARD) == []
    if passed:
        ms = synapse_duration(value)
        assert ms is not None
        assert 0 <= ms <= GUARD.retention.max_lifetime_ms


@given(st.from_regex(r"\A[0-9]{1,6}[smhdwy]?\Z") | st.integers(0, 10**12))
def test_the_canonical_forms_are_read_as_synapse_reads_them(value: Any) -> None:
    ms = synapse_duration(value)
    assert ms is not None
    problems = check_retention(with_value("user_ips_max_age", value), GUARD)
    assert (problems == []) == (ms <= GUARD.retention.max_lifetime_ms)


RANGE = st.none() | st.sampled_from(["0", "1h", "1d", "3d", "7d", "15d", "16d", "1y", 1, 3600000])
JOB = st.fixed_dictionaries(
    {"interval": st.sampled_from(["1h", "1d", "15d", "16d", "0", 0, "1w"])},
    optional={"shortest_max_lifetime": RANGE, "longest_max_lifetime": RANGE},
)
ANY_RETENTION = st.fixed_dictionaries(
    {},
    optional={
        "enabled": st.sampled_from([True, False, None, "yes"]),
        "default_policy": st.none()
        | st.fixed_dictionaries({}, optional={"max_lifetime": RANGE, "min_lifetime": RANGE}),
        "allowed_lifetime_max": RANGE,
        "purge_jobs": st.lists(JOB, max_size=3),
    },
)
# Mostly within the bounds, so that many examples pass and are checked against Synapse.
NEAR = st.sampled_from(["1h", "1d", "7d", "15d", 1, 15 * DAY_MS, "16d"])
NEAR_JOB = st.fixed_dictionaries(
    {"interval": st.sampled_from(["1h", "1d", "15d", "16d"])},
    optional={
        "shortest_max_lifetime": st.sampled_from(["1h", "3d", "15d", "16d", 0]),
        "longest_max_lifetime": st.sampled_from(["1h", "3d", "15d", "16d", "1y"]),
    },
)
NEAR_RETENTION = st.fixed_dictionaries(
    {
        "enabled": st.just(True),
        "default_policy": st.fixed_dictionaries({"max_lifetime": NEAR}),
        "allowed_lifetime_max": NEAR,
    },
    optional={
        "allowed_lifetime_min": st.sampled_from(["1h", "1d", "15d", "16d"]),
        "purge_jobs": st.lists(NEAR_JOB | st.builds(dict, interval=NEAR), max_size=4),
    },
)
RETENTION = ANY_RETENTION | NEAR_RETENTION
# Every stored max_lifetime a room may carry, around each bound the strategies use.
LIFETIMES = sorted(
    {
        ms + delta
        for ms in (1, HOUR_MS, DAY_MS, 3 * DAY_MS, 7 * DAY_MS, 15 * DAY_MS, 16 * DAY_MS)
        for delta in (-1, 0, 1)
        if ms + delta > 0
    }
    | {365 * DAY_MS, 10**15}
)


@given(RETENTION)
def test_a_retention_section_that_passes_is_one_synapse_runs_within_max_lifetime(
    retention: dict[str, Any],
) -> None:
    """Soundness against Synapse's own `RetentionConfig` and its purge jobs' range rule."""
    config = with_value("retention", retention)
    problems = [p for p in check_retention(config, GUARD) if p.setting.startswith("retention")]
    if problems:
        return
    synapse = RetentionConfig(None)
    try:
        synapse.read_config(config)
    except ConfigError:
        # Synapse refuses to start (e.g. allowed_lifetime_min > allowed_lifetime_max, which
        # the check leaves to it): nothing runs, so nothing is kept.
        assert "allowed_lifetime_min" in retention or "min_lifetime" in str(retention)
        return
    bound = GUARD.retention.max_lifetime_ms
    assert synapse.retention_enabled is True
    assert synapse.retention_default_max_lifetime is not None
    assert synapse.retention_default_max_lifetime <= bound
    assert synapse.retention_allowed_lifetime_max is not None
    assert synapse.retention_allowed_lifetime_max <= bound
    for job in synapse.retention_purge_jobs:
        assert 0 < job.interval <= bound
    for lifetime in LIFETIMES:  # `shortest < max_lifetime <= longest`, as Synapse selects
        assert any(
            (job.shortest_max_lifetime is None or job.shortest_max_lifetime < lifetime)
            and (job.longest_max_lifetime is None or lifetime <= job.longest_max_lifetime)
            for job in synapse.retention_purge_jobs
        ), lifetime


def test_format_duration_writes_what_synapse_reads() -> None:
    for ms in (1, 999, 1000, 90_000, HOUR_MS, 36 * HOUR_MS, DAY_MS, 15 * DAY_MS, 365 * DAY_MS):
        assert Config.parse_duration(format_duration(ms)) == ms
    assert [format_duration(ms) for ms in (1500, 90_000, 36 * HOUR_MS, 14 * DAY_MS)] == [
        "1500",
        "90s",
        "36h",
        "14d",
    ]
