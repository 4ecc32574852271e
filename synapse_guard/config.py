"""The guard's configuration: frozen data, built and validated in one place.

Every problem is reported with the full key path and what is accepted, so that a typo
can never silently weaken a control. This module does not import Synapse: the CLI uses
it on hosts where Synapse is not installed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import attrs

from synapse_guard.countries import ISO_3166_ALPHA2
from synapse_guard.push.gateways import NOTIFY_PATH, GatewayUrl, parse_gateway_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Openness orders: a later entry is more open than an earlier one.
JOIN_RULES = ("invite", "knock", "public")
HISTORY_VISIBILITIES = ("joined", "invited", "shared", "world_readable")

_DURATION_UNITS_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60 * 1000,
    "h": 60 * 60 * 1000,
    "d": 24 * 60 * 60 * 1000,
    "w": 7 * 24 * 60 * 60 * 1000,
    "y": 365 * 24 * 60 * 60 * 1000,
}
_DURATION_RE = re.compile(r"^([0-9]+)(ms|s|m|h|d|w|y)?$")


class GuardConfigError(Exception):
    """A configuration problem; `path` names the key (e.g. `network.allow_cidrs[2]`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@attrs.frozen(slots=True)
class RegistrationPolicy:
    mode: str = "closed"
    allow_3pid: bool = False

    @property
    def closed(self) -> bool:
        return self.mode == "closed"


@attrs.frozen(slots=True)
class FederationPolicy:
    enabled: bool = False


@attrs.frozen(slots=True)
class RoomPolicy:
    encryption: str = "required"
    join_rule: str = "invite"
    history_visibility: str = "joined"
    guest_access: bool = False
    directory: bool = False

    @property
    def encryption_required(self) -> bool:
        return self.encryption == "required"


@attrs.frozen(slots=True)
class RetentionPolicy:
    max_lifetime_ms: int = 15 * _DURATION_UNITS_MS["d"]
    default_lifetime_ms: int = 7 * _DURATION_UNITS_MS["d"]
    # Synapse's user_daily_visits, which it never deletes (metadata_purge.py); None: kept.
    daily_visits_max_age_ms: int | None = 3 * _DURATION_UNITS_MS["d"]  # as user_ips_max_age
    daily_visits_purge_interval_ms: int = _DURATION_UNITS_MS["h"]


@attrs.frozen(slots=True)
class NetworkPolicy:
    allow_cidrs: tuple[IPNetwork, ...] = ()
    deny_cidrs: tuple[IPNetwork, ...] = ()
    allow_countries: frozenset[str] = frozenset()
    geoip_database: str | None = None
    revoke_sessions: bool = True
    sweep_interval_ms: int = 30 * _DURATION_UNITS_MS["s"]

    @property
    def has_allow_rules(self) -> bool:
        return bool(self.allow_cidrs or self.allow_countries)


@attrs.frozen(slots=True)
class MetricsConfig:
    enabled: bool = True


@attrs.frozen(slots=True)
class AuditConfig:
    enabled: bool = False
    pseudonym_key_path: str | None = None


@attrs.frozen(slots=True)
class AuthConfig:
    """Second factor (TOTP) for password logins."""

    totp: str = "off"  # off | optional | required
    secrets_key_path: str | None = None  # >= 32 random bytes; encrypts TOTP secrets at rest
    password_pepper_path: str | None = None  # Synapse's password_config.pepper, if one is set
    max_failures: int = 5  # failed codes per user within failure_window before refusing
    failure_window_ms: int = 15 * _DURATION_UNITS_MS["m"]
    issuer: str = "synapse-guard"


@attrs.frozen(slots=True)
class LockdownConfig:
    """Server-wide lockdown and the dead man's switch."""

    exempt_users: frozenset[str] = frozenset()  # break-glass admins, full user IDs
    deadman_interval_ms: int | None = None  # None: no dead man's switch
    checkin_users: frozenset[str] = frozenset()  # admins who may check in


@attrs.frozen(slots=True)
class PushPolicy:
    """Where Synapse may send push notifications (docs/push.md)."""

    # Exact gateway URLs; empty: no HTTP pusher at all (nothing leaves the server).
    allowed_gateways: tuple[GatewayUrl, ...] = ()
    require_event_id_only: bool = False  # true: only pushers with format: event_id_only
    sweep_interval_ms: int = 10 * _DURATION_UNITS_MS["s"]  # stored pushers re-checked


# Below this, a phone that merely sleeps (no sync for hours) would be logged out; Synapse also
# writes a device's last use only every few minutes.
MIN_IDLE_TIMEOUT_MS = _DURATION_UNITS_MS["h"]


@attrs.frozen(slots=True)
class SessionsPolicy:
    """Sessions nobody used for `idle_timeout` are logged out (None: never)."""

    idle_timeout_ms: int | None = 30 * _DURATION_UNITS_MS["d"]
    sweep_interval_ms: int = _DURATION_UNITS_MS["h"]  # how often idle sessions are looked for


@attrs.frozen(slots=True)
class AlertsConfig:
    """Alertmanager's webhook, posted as notices into the admins' room (synapse_guard/alerts/)."""

    enabled: bool = False
    secret_path: str | None = None  # the bearer secret Alertmanager sends (credentials_file)
    room: str | None = None  # the admins' room: "!id", "#alias:server" or "#alias" (this server)
    sender: str | None = None  # the local account the notices are sent as (localpart or ID)
    allow_cidrs: tuple[IPNetwork, ...] = ()  # where Alertmanager posts from
    notices_per_minute: int = 10


@attrs.frozen(slots=True)
class GuardConfig:
    registration: RegistrationPolicy = RegistrationPolicy()
    federation: FederationPolicy = FederationPolicy()
    rooms: RoomPolicy = RoomPolicy()
    retention: RetentionPolicy = RetentionPolicy()
    network: NetworkPolicy = NetworkPolicy()
    metrics: MetricsConfig = MetricsConfig()
    audit: AuditConfig = AuditConfig()
    auth: AuthConfig = AuthConfig()
    lockdown: LockdownConfig = LockdownConfig()
    push: PushPolicy = PushPolicy()
    sessions: SessionsPolicy = SessionsPolicy()
    alerts: AlertsConfig = AlertsConfig()


T = TypeVar("T")


class _Section:
    """Reads one mapping, remembering which keys were used so unknown ones are refused."""

    def __init__(self, raw: object, path: str, known: tuple[str, ...]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise GuardConfigError(path, f"must be a mapping, got {_kind(raw)}")
        for key in raw:
            if key not in known:
                raise GuardConfigError(
                    _join(path, str(key)),
                    f"unknown key; known keys here: {', '.join(known)}",
                )
        self._raw = raw
        self.path = path

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def get(self, name: str, default: T, convert: Callable[[object, str], T]) -> T:
        if name not in self._raw:
            return default
        return convert(self._raw[name], self.key(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _choice(choices: tuple[str, ...]) -> Callable[[object, str], str]:
    def convert(value: object, path: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise GuardConfigError(path, f"{value!r} is not one of: {' | '.join(choices)}")
        return value

    return convert


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise GuardConfigError(path, f"must be true or false, got {value!r}")
    return value


def parse_duration(value: object, path: str) -> int:
    """Synapse's duration syntax: milliseconds as an integer, or `30s`, `15m`, `12h`, `7d`..."""
    if isinstance(value, bool):
        raise GuardConfigError(path, f"must be a duration such as 30s, 15m, 12h, 7d, got {value!r}")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str) and (match := _DURATION_RE.match(value.strip())):
        ms = int(match.group(1)) * _DURATION_UNITS_MS[match.group(2) or "ms"]
    else:
        raise GuardConfigError(
            path,
            f"{value!r} is not a duration: use milliseconds as an integer or a number "
            "followed by ms, s, m, h, d, w or y (e.g. 30s, 7d)",
        )
    if ms <= 0:
        raise GuardConfigError(path, f"must be longer than zero, got {value!r}")
    return ms


def _list_of(item: Callable[[object, str], T]) -> Callable[[object, str], tuple[T, ...]]:
    def convert(value: object, path: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise GuardConfigError(path, f"must be a list, got {_kind(value)}")
        return tuple(item(entry, f"{path}[{index}]") for index, entry in enumerate(value))

    return convert


def _cidr(value: object, path: str) -> IPNetwork:
    if not isinstance(value, str):
        raise GuardConfigError(path, f"must be a CIDR string such as '10.8.0.0/24', got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as e:
        hint = ""
        with contextlib.suppress(ValueError):
            hint = f"; did you mean '{ipaddress.ip_network(value.strip(), strict=False)}'?"
        raise GuardConfigError(
            path, f"{value!r} is not a valid IPv4 or IPv6 network ({e}){hint}"
        ) from None


def _country(value: object, path: str) -> str:
    if not isinstance(value, str) or value not in ISO_3166_ALPHA2:
        raise GuardConfigError(
            path, f"{value!r} is not an ISO 3166-1 alpha-2 country code, e.g. 'FR' or 'BE'"
        )
    return value


def _optional_path(value: object, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise GuardConfigError(path, f"must be a file path or null, got {value!r}")
    return value


def _parse_registration(raw: object, path: str) -> RegistrationPolicy:
    section = _Section(raw, path, ("mode", "allow_3pid"))
    return RegistrationPolicy(
        mode=section.get("mode", "closed", _choice(("closed", "open"))),
        allow_3pid=section.get("allow_3pid", False, _bool),
    )


def _parse_federation(raw: object, path: str) -> FederationPolicy:
    section = _Section(raw, path, ("enabled",))
    return FederationPolicy(enabled=section.get("enabled", False, _bool))


def _parse_rooms(raw: object, path: str) -> RoomPolicy:
    section = _Section(
        raw, path, ("encryption", "join_rule", "history_visibility", "guest_access", "directory")
    )
    return RoomPolicy(
        encryption=section.get("encryption", "required", _choice(("required", "off"))),
        join_rule=section.get("join_rule", "invite", _choice(JOIN_RULES)),
        history_visibility=section.get(
            "history_visibility", "joined", _choice(HISTORY_VISIBILITIES)
        ),
        guest_access=section.get("guest_access", False, _bool),
        directory=section.get("directory", False, _bool),
    )


def _parse_retention(raw: object, path: str) -> RetentionPolicy:
    section = _Section(
        raw,
        path,
        ("max_lifetime", "default_lifetime", "daily_visits_max_age", "daily_visits_purge_interval"),
    )
    defaults = RetentionPolicy()
    policy = RetentionPolicy(
        max_lifetime_ms=section.get("max_lifetime", defaults.max_lifetime_ms, parse_duration),
        default_lifetime_ms=section.get(
            "default_lifetime", defaults.default_lifetime_ms, parse_duration
        ),
        daily_visits_max_age_ms=section.get(
            "daily_visits_max_age", defaults.daily_visits_max_age_ms, _optional_duration
        ),
        daily_visits_purge_interval_ms=section.get(
            "daily_visits_purge_interval", defaults.daily_visits_purge_interval_ms, parse_duration
        ),
    )
    if policy.default_lifetime_ms > policy.max_lifetime_ms:
        raise GuardConfigError(
            section.key("default_lifetime"),
            f"must not exceed retention.max_lifetime ({policy.max_lifetime_ms} ms), "
            f"got {policy.default_lifetime_ms} ms",
        )
    return policy


_NO_CODES: tuple[str, ...] = ()  # a typed empty default for lists of strings


def _parse_network(raw: object, path: str) -> NetworkPolicy:
    section = _Section(
        raw,
        path,
        (
            "allow_cidrs",
            "deny_cidrs",
            "allow_countries",
            "geoip_database",
            "revoke_sessions",
            "sweep_interval",
        ),
    )
    defaults = NetworkPolicy()
    policy = NetworkPolicy(
        allow_cidrs=section.get("allow_cidrs", (), _list_of(_cidr)),
        deny_cidrs=section.get("deny_cidrs", (), _list_of(_cidr)),
        allow_countries=frozenset(section.get("allow_countries", _NO_CODES, _list_of(_country))),
        geoip_database=section.get("geoip_database", None, _optional_path),
        revoke_sessions=section.get("revoke_sessions", True, _bool),
        sweep_interval_ms=section.get("sweep_interval", defaults.sweep_interval_ms, parse_duration),
    )
    if policy.allow_countries and policy.geoip_database is None:
        raise GuardConfigError(
            section.key("geoip_database"),
            "is required when network.allow_countries is set: give the path of a MaxMind "
            "GeoIP2/GeoLite2 Country or City .mmdb file",
        )
    return policy


def _parse_metrics(raw: object, path: str) -> MetricsConfig:
    section = _Section(raw, path, ("enabled",))
    return MetricsConfig(enabled=section.get("enabled", True, _bool))


def _parse_audit(raw: object, path: str) -> AuditConfig:
    section = _Section(raw, path, ("enabled", "pseudonym_key_path"))
    audit = AuditConfig(
        enabled=section.get("enabled", False, _bool),
        pseudonym_key_path=section.get("pseudonym_key_path", None, _optional_path),
    )
    if audit.enabled and audit.pseudonym_key_path is None:
        raise GuardConfigError(
            section.key("pseudonym_key_path"),
            "is required when audit.enabled is true: give the path of a file holding at "
            "least 32 random bytes (e.g. `head -c 32 /dev/urandom > audit.key`)",
        )
    return audit


def _user_id(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.startswith("@") or ":" not in value:
        raise GuardConfigError(
            path, f"{value!r} is not a full user ID such as '@alice:example.org'"
        )
    return value


def _positive_int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise GuardConfigError(path, f"must be a whole number above zero, got {value!r}")
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise GuardConfigError(path, f"must be a non-empty string, got {value!r}")
    return value


def _parse_auth(raw: object, path: str) -> AuthConfig:
    section = _Section(
        raw,
        path,
        (
            "totp",
            "secrets_key_path",
            "password_pepper_path",
            "max_failures",
            "failure_window",
            "issuer",
        ),
    )
    defaults = AuthConfig()
    auth = AuthConfig(
        totp=section.get("totp", "off", _choice(("off", "optional", "required"))),
        secrets_key_path=section.get("secrets_key_path", None, _optional_path),
        password_pepper_path=section.get("password_pepper_path", None, _optional_path),
        max_failures=section.get("max_failures", defaults.max_failures, _positive_int),
        failure_window_ms=section.get("failure_window", defaults.failure_window_ms, parse_duration),
        issuer=section.get("issuer", defaults.issuer, _text),
    )
    if auth.totp != "off" and auth.secrets_key_path is None:
        raise GuardConfigError(
            section.key("secrets_key_path"),
            "is required when auth.totp is optional or required: give the path of a file "
            "holding at least 32 random bytes (it encrypts the TOTP secrets in the database)",
        )
    return auth


def _optional_duration(value: object, path: str) -> int | None:
    return None if value is None else parse_duration(value, path)


def _parse_lockdown(raw: object, path: str) -> LockdownConfig:
    section = _Section(raw, path, ("exempt_users", "deadman_interval", "checkin_users"))
    return LockdownConfig(
        exempt_users=frozenset(section.get("exempt_users", _NO_CODES, _list_of(_user_id))),
        deadman_interval_ms=section.get("deadman_interval", None, _optional_duration),
        checkin_users=frozenset(section.get("checkin_users", _NO_CODES, _list_of(_user_id))),
    )


def _gateway(value: object, path: str) -> GatewayUrl:
    example = f"'https://matrix.org{NOTIFY_PATH}'"
    if not isinstance(value, str):
        raise GuardConfigError(path, f"must be a URL string such as {example}, got {value!r}")
    try:
        url = parse_gateway_url(value)
    except ValueError as e:
        raise GuardConfigError(path, f"{value!r} {e}") from None
    if url.path != NOTIFY_PATH:
        raise GuardConfigError(
            path,
            f"{value!r} has path {url.path!r}: Synapse pushes only to {NOTIFY_PATH}, "
            f"e.g. {example}",
        )
    return url


def _parse_push(raw: object, path: str) -> PushPolicy:
    section = _Section(raw, path, ("allowed_gateways", "require_event_id_only", "sweep_interval"))
    defaults = PushPolicy()
    return PushPolicy(
        allowed_gateways=section.get("allowed_gateways", (), _list_of(_gateway)),
        require_event_id_only=section.get("require_event_id_only", False, _bool),
        sweep_interval_ms=section.get("sweep_interval", defaults.sweep_interval_ms, parse_duration),
    )


def _idle_timeout(value: object, path: str) -> int | None:
    if value is None or value is False:  # YAML's `off` and `false` read as False
        return None
    ms = parse_duration(value, path)
    if ms < MIN_IDLE_TIMEOUT_MS:
        raise GuardConfigError(
            path,
            f"must be at least 1h (or null to keep idle sessions), got {value!r}: a phone "
            "that merely sleeps would be logged out",
        )
    return ms


def _parse_sessions(raw: object, path: str) -> SessionsPolicy:
    section = _Section(raw, path, ("idle_timeout", "sweep_interval"))
    defaults = SessionsPolicy()
    return SessionsPolicy(
        idle_timeout_ms=section.get("idle_timeout", defaults.idle_timeout_ms, _idle_timeout),
        sweep_interval_ms=section.get("sweep_interval", defaults.sweep_interval_ms, parse_duration),
    )


def _room(value: object, path: str) -> str:
    # Room IDs of room version 12 carry no server name; an alias without one is this server's.
    if not isinstance(value, str) or value[:1] not in ("!", "#") or len(value) < 2:
        raise GuardConfigError(
            path,
            f"{value!r} is not a room ID or alias such as '!abc:example.org' or "
            "'#admins:example.org' (or '#admins', on this server)",
        )
    return value


_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")


def _local_user(value: object, path: str) -> str:
    """A full user ID, or a localpart of this server (the caller qualifies it)."""
    if isinstance(value, str) and _LOCALPART.match(value):
        return value
    return _user_id(value, path)


def _parse_alerts(raw: object, path: str) -> AlertsConfig:
    section = _Section(
        raw,
        path,
        ("enabled", "secret_path", "room", "sender", "allow_cidrs", "notices_per_minute"),
    )
    defaults = AlertsConfig()
    alerts = AlertsConfig(
        enabled=section.get("enabled", False, _bool),
        secret_path=section.get("secret_path", None, _optional_path),
        room=section.get("room", None, _room),
        sender=section.get("sender", None, _local_user),
        allow_cidrs=section.get("allow_cidrs", (), _list_of(_cidr)),
        notices_per_minute=section.get(
            "notices_per_minute", defaults.notices_per_minute, _positive_int
        ),
    )
    if alerts.enabled:
        required = {
            "secret_path": "the path of a file holding the bearer secret Alertmanager sends "
            "(its credentials_file, at least 32 characters)",
            "room": "the admins' room the notices go to ('!id', '#alias:server' or '#alias')",
            "sender": "the local account the notices are sent as, e.g. 'alerts'",
            "allow_cidrs": "the networks Alertmanager posts from, e.g. ['172.31.242.0/24']",
        }
        for key, what in required.items():
            if not getattr(alerts, key):
                raise GuardConfigError(
                    section.key(key), f"is required when alerts.enabled is true: give {what}"
                )
    return alerts


_SECTIONS: dict[str, Callable[[object, str], Any]] = {
    "registration": _parse_registration,
    "federation": _parse_federation,
    "rooms": _parse_rooms,
    "retention": _parse_retention,
    "network": _parse_network,
    "metrics": _parse_metrics,
    "audit": _parse_audit,
    "auth": _parse_auth,
    "lockdown": _parse_lockdown,
    "push": _parse_push,
    "sessions": _parse_sessions,
    "alerts": _parse_alerts,
}


def parse_guard_config(raw: object) -> GuardConfig:
    """Build the whole configuration, or raise GuardConfigError naming the faulty key."""
    top = _Section(raw, "", tuple(_SECTIONS))
    return GuardConfig(
        **{name: parse(top.get(name, None, _keep), name) for name, parse in _SECTIONS.items()}
    )


def _keep(value: object, path: str) -> object:
    return value
