"""What every decision returns: allowed or not, and why (a label from a small fixed set)."""

from __future__ import annotations

import enum

import attrs


class Check(str, enum.Enum):
    """Where a decision is taken; the `check` label of the decisions metric."""

    REGISTRATION = "registration"
    LOGIN = "login"
    SESSION = "session"
    INVITE = "invite"
    JOIN = "join"
    CREATE_ROOM = "create_room"
    EVENT = "event"
    PUBLISH = "publish"
    THREEPID = "threepid"
    REQUEST = "request"  # an authenticated request (the per-request gate, the lockdown)
    PUSH = "push"  # a pusher refused before Synapse stores it, or removed from its table


class Reason(str, enum.Enum):
    """Why; the `reason` label of the decisions metric. Never holds an identifier."""

    OK = "ok"
    ADMIN_PROVISIONING = "admin_provisioning"
    REGISTRATION_CLOSED = "registration_closed"
    THREEPID = "threepid"
    FEDERATION = "federation"
    ENCRYPTION = "encryption"
    UNENCRYPTED = "unencrypted"  # a timeline event in clear in an encrypted room
    JOIN_RULE = "join_rule"
    HISTORY_VISIBILITY = "history_visibility"
    GUEST_ACCESS = "guest_access"
    RETENTION = "retention"
    DIRECTORY = "directory"
    PROTECTED_STATE = "protected_state"
    IP_DENIED = "ip_denied"
    IP_NOT_ALLOWED = "ip_not_allowed"
    COUNTRY_NOT_ALLOWED = "country_not_allowed"
    COUNTRY_UNKNOWN = "country_unknown"
    GEOIP_UNAVAILABLE = "geoip_unavailable"  # the database could not be read: an outage
    INVALID_ADDRESS = "invalid_address"
    INTERNAL_ERROR = "internal_error"
    LOCKDOWN = "lockdown"
    PUPPET = "puppet_token"  # a token an admin minted to act as the user ("login as")
    PASSWORD_INVALID = "password_invalid"  # noqa: S105 (a label, not a password)
    TOTP_INVALID = "totp_invalid"
    TOTP_REPLAYED = "totp_replayed"
    TOTP_RATE_LIMITED = "totp_rate_limited"
    TOTP_NOT_ENROLLED = "totp_not_enrolled"
    TOTP_REQUIRED = "totp_required"
    PUSH_GATEWAY = "push_gateway"  # a pusher whose URL is not an allowed gateway
    PUSH_FORMAT = "push_format"  # require_event_id_only, and the pusher asked for more
    IDLE = "idle"  # a session nobody used for sessions.idle_timeout
    MEMBER_LOCKED = "member_locked"  # `synapse-guard member lock`: a lost or seized phone


@attrs.frozen(slots=True)
class Verdict:
    allowed: bool
    reason: Reason

    @property
    def outcome(self) -> str:
        return "allow" if self.allowed else "deny"


def allow(reason: Reason = Reason.OK) -> Verdict:
    return Verdict(True, reason)


def deny(reason: Reason) -> Verdict:
    return Verdict(False, reason)


ALLOW = allow()
