"""Does Synapse's own configuration purge everything the guard's `retention.max_lifetime` bounds?

The guard only sets and defends each room's `m.room.retention`; Synapse does the purging, and
keeps other personal data on timers of its own. `check_retention` reads Synapse's merged
configuration (the dict Synapse builds from its `-c` files, see `synapse_config.read_config`)
and lists every setting that would let data outlive the guard's `retention.max_lifetime`, with
what to set instead. It is pure: no I/O, no Synapse import, and it never raises on a value of a
wrong type (that value is a problem of its own).

What is required, and why (Synapse 1.163 semantics, `synapse/config/retention.py`,
`synapse/handlers/pagination.py`, `synapse/config/server.py`, `synapse/config/repository.py`):

- `retention.enabled` is `true` (a YAML boolean). It is off by default; off, nothing is purged.
- `retention.default_policy.max_lifetime` is set and <= max_lifetime. It is the lifetime of a
  room without `m.room.retention` (one created before the guard, or an upgraded room whose
  retention event could not be sent); unset, such a room is never purged. It is not required to
  be <= the guard's `default_lifetime`: that is what the guard gives new rooms, while the
  guard's promise is only that no room keeps messages longer than `max_lifetime`.
- `retention.allowed_lifetime_max` is set and <= max_lifetime: Synapse caps every room's
  lifetime with it when purging, so it bounds rooms whatever their `m.room.retention` says.
- `retention.purge_jobs`: each `interval` is > 0 and <= max_lifetime (a message can outlive its
  lifetime by up to one interval). Without jobs (absent or `[]`) Synapse runs one job a day
  for every room, so that is a problem when max_lifetime is shorter than a day. A job only
  handles rooms whose *stored* `m.room.retention` max_lifetime (before the caps above) is in
  `(shortest_max_lifetime, longest_max_lifetime]`, so the jobs together must handle every
  lifetime a room can carry, above max_lifetime included: a room that kept an older, longer
  policy would otherwise never be purged, `allowed_lifetime_max` notwithstanding.
- `media_retention.local_media_lifetime` is set and <= max_lifetime: message retention never
  deletes uploaded files (attachments). Synapse counts it from a file's last access.
- `redaction_retention_period` (default 7d; null keeps redacted content forever),
  `forgotten_room_retention_period` (default null: forgotten rooms are kept forever) and
  `user_ips_max_age` (default 28d; null keeps client addresses forever) are <= max_lifetime.

Durations are read as Synapse reads them: an integer is milliseconds, a string is a number
with an optional `s`, `m`, `h`, `d`, `w` or `y` suffix (parsed by the guard's
`parse_duration`). Synapse refuses the `ms` suffix, so this does too. Zero is accepted where
Synapse accepts it (it purges at once), except as a purge interval.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

import attrs

from synapse_guard.config import GuardConfig, GuardConfigError, parse_duration

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# Synapse's defaults for the settings checked here (1.163).
SYNAPSE_DEFAULT_PURGE_INTERVAL_MS = DAY_MS  # one job for every room when purge_jobs is empty
SYNAPSE_DEFAULT_REDACTION_RETENTION_MS = 7 * DAY_MS
SYNAPSE_DEFAULT_USER_IPS_MAX_AGE_MS = 28 * DAY_MS

# What the fixes suggest for timers with no natural value: a day, or max_lifetime if shorter.
_SUGGESTED_TIMER_MS = DAY_MS

_SYNAPSE_RE = re.compile(r"[0-9]+[smhdwy]?")
_ZERO_RE = re.compile(r"0+[smhdwy]?")
_FOREVER = float("inf")


@attrs.frozen(slots=True)
class RetentionProblem:
    """One Synapse setting that lets data outlive the guard's `retention.max_lifetime`."""

    setting: str
    """The Synapse key, dotted: `retention.purge_jobs[1].interval`."""
    problem: str
    """What is wrong with it, and what it lets happen."""
    fix: str
    """What to set, as `key: value`, e.g. `retention.allowed_lifetime_max: 15d`."""

    def __str__(self) -> str:
        return f"{self.setting}: {self.problem}; set {self.fix}"


def check_retention(
    synapse_config: Mapping[str, Any], guard: GuardConfig
) -> list[RetentionProblem]:
    """Every problem of Synapse's merged configuration against the guard's retention, in order.

    An empty list means Synapse purges messages, media and the related personal data within
    the guard's `retention.max_lifetime` (plus at most one purge interval).
    """
    return _Checker(synapse_config, guard).run()


def format_duration(ms: int) -> str:
    """A duration as Synapse reads it, in the largest exact unit: `15d`, `36h`, `90s`, `1500`."""
    for suffix, size in (("d", DAY_MS), ("h", HOUR_MS), ("m", MINUTE_MS), ("s", SECOND_MS)):
        if ms and ms % size == 0:
            return f"{ms // size}{suffix}"
    return str(ms)  # milliseconds: Synapse has no `ms` suffix


class _Bad(Exception):
    """A value that cannot be used; the message says why."""


@attrs.frozen(slots=True)
class _Job:
    shortest_ms: int | None
    longest_ms: int | None


class _Checker:
    def __init__(self, config: Mapping[str, Any], guard: GuardConfig) -> None:
        self.config = config
        self.max_ms = guard.retention.max_lifetime_ms
        self.default_ms = min(guard.retention.default_lifetime_ms, self.max_ms)
        self.max = format_duration(self.max_ms)
        self.timer_ms = min(_SUGGESTED_TIMER_MS, self.max_ms)
        self.problems: list[RetentionProblem] = []

    def run(self) -> list[RetentionProblem]:
        self._retention()
        self._media_retention()
        self._redaction_retention_period()
        self._forgotten_room_retention_period()
        self._user_ips_max_age()
        return self.problems

    # Helpers ------------------------------------------------------------------------------

    def add(self, setting: str, problem: str, fix: str) -> None:
        self.problems.append(RetentionProblem(setting, problem, fix))

    def at_most(self, setting: str, suggested_ms: int) -> str:
        """The fix for a duration bounded by max_lifetime: a value, and the bound if different."""
        value = format_duration(suggested_ms)
        if suggested_ms >= self.max_ms:
            return f"{setting}: {value} or less"
        return f"{setting}: {value} (at most {self.max})"

    def longer(self, ms: int) -> str:
        return (
            f"is {format_duration(ms)}, longer than the guard's retention.max_lifetime ({self.max})"
        )

    def duration(self, setting: str, value: object, fix: str) -> int | None:
        """A present, non-null duration in ms; None (a problem added) if it is unreadable."""
        try:
            return _duration(value)
        except _Bad as e:
            self.add(setting, str(e), fix)
            return None

    def bounded(self, setting: str, value: object, harm: str, suggested_ms: int) -> None:
        """A present, non-null duration that must not exceed max_lifetime."""
        fix = self.at_most(setting, suggested_ms)
        ms = self.duration(setting, value, fix)
        if ms is not None and ms > self.max_ms:
            self.add(setting, f"{self.longer(ms)}: {harm}", fix)

    def section(self, setting: str, value: object, fix: str) -> Mapping[str, Any] | None:
        """A mapping (null reads as empty, as in Synapse); None (a problem added) otherwise."""
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return value
        self.add(setting, f"must be a mapping, got {_show(value)}", fix)
        return None

    # retention: -------------------------------------------------------------------------

    def _retention(self) -> None:
        max_fix = self.at_most("retention.allowed_lifetime_max", self.max_ms)
        default_fix = self.at_most("retention.default_policy.max_lifetime", self.default_ms)
        section = self.section(
            "retention",
            self.config.get("retention"),
            "retention: {enabled: true, "
            f"default_policy: {{max_lifetime: {format_duration(self.default_ms)}}}, "
            f"allowed_lifetime_max: {self.max}}}",
        )
        if section is None:
            return

        enabled = section.get("enabled")
        if enabled is not True:
            off = "Synapse's message retention is off, so messages are never purged"
            if "enabled" not in section:
                problem = f"is not set: {off} (off is Synapse's default)"
            elif enabled is False or enabled is None:
                problem = f"is {_show(enabled)}: {off}"
            else:  # Synapse reads it as a truth value; a typo must not pass for either
                problem = f"must be the YAML boolean true, got {_show(enabled)}"
            self.add("retention.enabled", problem, "retention.enabled: true")

        policy = self.section(
            "retention.default_policy",
            section.get("default_policy"),
            f"retention.default_policy: {{max_lifetime: {format_duration(self.default_ms)}}}",
        )
        if policy is not None:
            harm = (
                "rooms without an m.room.retention event (created before the guard, or "
                "upgraded without one) keep their messages"
            )
            key = "retention.default_policy.max_lifetime"
            if policy.get("max_lifetime") is None:
                self.add(key, f"{_unset(policy, 'max_lifetime')}: {harm} forever", default_fix)
            else:
                self.bounded(key, policy["max_lifetime"], f"{harm} that long", self.default_ms)

        key = "retention.allowed_lifetime_max"
        harm = "Synapse does not cap the lifetime a room's m.room.retention asks for"
        if section.get("allowed_lifetime_max") is None:
            self.add(key, f"{_unset(section, 'allowed_lifetime_max')}: {harm}", max_fix)
        else:
            self.bounded(
                key,
                section["allowed_lifetime_max"],
                "rooms may keep their messages that long",
                self.max_ms,
            )

        self._purge_jobs(section)

    def _purge_jobs(self, section: Mapping[str, Any]) -> None:
        key = "retention.purge_jobs"
        interval = format_duration(self.timer_ms)
        if "purge_jobs" not in section or section["purge_jobs"] == []:
            if self.max_ms < SYNAPSE_DEFAULT_PURGE_INTERVAL_MS:
                self.add(
                    key,
                    f"{'is empty' if 'purge_jobs' in section else 'is not set'}: Synapse then "
                    "purges once a day, "
                    f"less often than the guard's retention.max_lifetime ({self.max}), so "
                    "messages outlive it",
                    f"{key}: [{{interval: {interval}}}]",
                )
            return
        jobs = section["purge_jobs"]
        if not isinstance(jobs, list):
            self.add(
                key,
                f"must be a list, got {_show(jobs)} (Synapse cannot start)",
                f"{key}: [{{interval: {interval}}}]",
            )
            return

        parsed: list[_Job] = []
        for index, raw in enumerate(jobs):
            job = self._purge_job(f"{key}[{index}]", raw)
            if job is not None:
                parsed.append(job)
        if len(parsed) == len(jobs):  # a broken job is reported already: no guessing its range
            self._purge_coverage(parsed)

    def _purge_job(self, key: str, raw: object) -> _Job | None:
        fix_interval = self.at_most(f"{key}.interval", self.timer_ms)
        if not isinstance(raw, Mapping):
            self.add(
                key,
                f"must be a mapping, got {_show(raw)}",
                f"{key}: {{interval: {format_duration(self.timer_ms)}}}",
            )
            return None
        ok = True
        if raw.get("interval") is None:
            self.add(
                f"{key}.interval",
                f"{_unset(raw, 'interval')}: Synapse requires it and cannot start",
                fix_interval,
            )
            ok = False
        else:
            ms = self.duration(f"{key}.interval", raw["interval"], fix_interval)
            if ms is None:
                ok = False
            elif ms == 0:
                self.add(f"{key}.interval", "must be longer than zero", fix_interval)
            elif ms > self.max_ms:
                self.add(
                    f"{key}.interval",
                    f"{self.longer(ms)}: this job purges less often than that, so messages "
                    "outlive it",
                    fix_interval,
                )

        bounds: dict[str, int | None] = {}
        for name in ("shortest_max_lifetime", "longest_max_lifetime"):
            bounds[name] = None
            if raw.get(name) is not None:
                bounds[name] = self.duration(
                    f"{key}.{name}",
                    raw[name],
                    f"{key}.{name}: a duration such as 3d, or nothing for no bound",
                )
                ok = ok and bounds[name] is not None
        shortest, longest = bounds["shortest_max_lifetime"], bounds["longest_max_lifetime"]
        if shortest is not None and longest is not None and shortest > longest:
            self.add(
                f"{key}.shortest_max_lifetime",
                f"is {format_duration(shortest)}, longer than longest_max_lifetime "
                f"({format_duration(longest)}): Synapse cannot start",
                f"{key}.shortest_max_lifetime: {format_duration(longest)} or less",
            )
            ok = False
        return _Job(shortest, longest) if ok else None

    def _purge_coverage(self, jobs: list[_Job]) -> None:
        """Report the room lifetimes (in ms, from 1 up) that no job's range handles."""
        covered: float = 0  # every stored max_lifetime in (0, covered] has a job
        gaps: list[tuple[int, float]] = []
        ranges = sorted(
            (job.shortest_ms or 0, _FOREVER if job.longest_ms is None else job.longest_ms)
            for job in jobs
        )
        for low, high in ranges:
            if low > covered:
                gaps.append((int(covered), low))
            covered = max(covered, high)
        if covered != _FOREVER:
            gaps.append((int(covered), _FOREVER))
        timer = format_duration(self.timer_ms)
        for low, high in gaps:
            where = []
            job = []
            if low > 0:
                where.append(f"above {format_duration(low)}")
                job.append(f"shortest_max_lifetime: {format_duration(low)}")
            if high != _FOREVER:
                where.append(f"at most {format_duration(int(high))}")
                job.append(f"longest_max_lifetime: {format_duration(int(high))}")
            job.append(f"interval: {timer}")
            older = " (rooms whose policy predates the guard)" if low >= self.max_ms else ""
            self.add(
                "retention.purge_jobs",
                f"no purge job handles rooms whose m.room.retention max_lifetime is "
                f"{' and '.join(where)}{older}: those rooms are never purged",
                f"a job {{{', '.join(job)}}} in retention.purge_jobs, or one job without "
                "shortest_max_lifetime and longest_max_lifetime",
            )

    # The other timers ---------------------------------------------------------------------

    def _media_retention(self) -> None:
        key = "media_retention.local_media_lifetime"
        fix = self.at_most(key, self.max_ms)
        raw = self.config.get("media_retention")
        # Synapse reads `config.get("media_retention") or {}`.
        section = self.section("media_retention", raw or None, f"media_retention: {{{fix}}}")
        if section is None:
            return
        if section.get("local_media_lifetime") is None:
            self.add(
                key,
                f"{_unset(section, 'local_media_lifetime')}: uploaded files (attachments) are "
                "kept forever; message retention never deletes media",
                fix,
            )
        else:
            self.bounded(
                key,
                section["local_media_lifetime"],
                "attachments outlive the messages that carry them",
                self.max_ms,
            )

    def _redaction_retention_period(self) -> None:
        self._timer(
            "redaction_retention_period",
            SYNAPSE_DEFAULT_REDACTION_RETENTION_MS,
            "Synapse keeps the original content of redacted events",
        )

    def _forgotten_room_retention_period(self) -> None:
        self._timer(
            "forgotten_room_retention_period",
            None,
            "Synapse keeps rooms that every local member has forgotten",
        )

    def _user_ips_max_age(self) -> None:
        self._timer(
            "user_ips_max_age",
            SYNAPSE_DEFAULT_USER_IPS_MAX_AGE_MS,
            "Synapse keeps the client IP addresses and user agents of every session",
        )

    def _timer(self, key: str, default_ms: int | None, keeps: str) -> None:
        """A top-level duration of Synapse where null (or, without a default, unset) is forever."""
        fix = self.at_most(key, self.timer_ms)
        if key not in self.config and default_ms is not None:
            if default_ms > self.max_ms:
                self.add(
                    key,
                    f"is not set: {keeps} for {format_duration(default_ms)} (Synapse's default), "
                    f"longer than the guard's retention.max_lifetime ({self.max})",
                    fix,
                )
        elif self.config.get(key) is None:
            self.add(key, f"{_unset(self.config, key)}: {keeps} forever", fix)
        else:
            self.bounded(key, self.config[key], f"{keeps} that long", self.timer_ms)


def _duration(value: object) -> int:
    """Milliseconds, for a value Synapse's `Config.parse_duration` reads the same way."""
    if isinstance(value, bool):
        pass  # Synapse refuses booleans (`type(value) is int` is false)
    elif isinstance(value, int):
        if value < 0:
            raise _Bad(f"must not be negative, got {value}")
        return value
    elif isinstance(value, str):
        if value.endswith("ms"):
            raise _Bad(
                f"{value!r}: Synapse does not accept the ms suffix and cannot start; "
                "write milliseconds as a plain integer"
            )
        # Synapse's forms without the ones it reads by accident (`" 5d"`, `"5 d"`, `"-1d"`,
        # `"1_000"`), which `parse_duration` would read differently or not at all.
        if _ZERO_RE.fullmatch(value):
            return 0
        if _SYNAPSE_RE.fullmatch(value):
            with contextlib.suppress(GuardConfigError):
                return parse_duration(value, "")
    raise _Bad(
        f"{_show(value)} is not a duration: use a number followed by s, m, h, d, w or y "
        "(e.g. 12h, 7d), or milliseconds as an integer"
    )


def _unset(mapping: Mapping[str, Any], key: str) -> str:
    return "is null" if key in mapping else "is not set"


def _show(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
