"""A logging filter that redacts addresses and Matrix IDs from Synapse's log records.

Synapse's WARNING lines still name people: "Failed password login for user @alice:example",
"Attempted to login as @bob:example but they do not exist", "Aborting connection from
<client address>...", request URIs in error lines, and its logging context puts the client
address, user ID and user agent on every record of a request. `RedactIdentifiers`, attached to
a handler in the log config (deploy/synapse/log.yaml), replaces, in the rendered message, the
exception text and those context fields:

- IPv4 and IPv6 addresses (IPv4-mapped ones too) with `<redacted-ip>`,
- user IDs `@local:server` (also percent-encoded, `%40local%3Aserver`) with `<redacted-user>`,
- room aliases `#name:server`, which often name a team or a project, with `<redacted-alias>`,
- e-mail addresses with `<redacted-email>`,

and drops the user agent. Records of `synapse_guard.audit` pass untouched: they hold only
keyed pseudonyms. What it cannot recognise (a bare localpart, a display name, a phone number,
a push key) it leaves as is: keep the root level at WARNING so that few lines are written.
"""

from __future__ import annotations

import ipaddress
import logging
import re

IP = "<redacted-ip>"
USER = "<redacted-user>"
ALIAS = "<redacted-alias>"
EMAIL = "<redacted-email>"
AUDIT_LOGGER = "synapse_guard.audit"

# Candidates only: every IPv6 match is checked with `ipaddress`, so times (`12:30:05`) stay.
# An embedded IPv4 tail is part of the address (`::ffff:192.0.2.1`); up to 10 groups, for an
# address followed by `:port`. Text like `synapse::bad` parses as an address and is redacted
# too: a redacted word costs less than a leaked address.
_IPV6 = re.compile(
    r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,9}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})"
    r"(?![0-9A-Fa-f:])"
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
# A sigil, a localpart (any character a log line would not put around an ID; `%XX` escapes
# other than `%3A`), `:` or `%3A`, then a server name with an optional port.
_MATRIX_ID = re.compile(
    r"(?P<sigil>@|#|%40|%23)"
    r"(?:[^\s:@#%?&\"'<>,;()\[\]{}|\\]|%(?!3[Aa])[0-9A-Fa-f]{2})+"
    r"(?::|%3[Aa])(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::\d{1,5})?"
)
_EMAIL = re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# Request fields Synapse's logging context copies onto each record (a JSON formatter prints them).
_CONTEXT_FIELDS = ("request", "ip_address", "requester", "authenticated_entity", "url")
_TRACEBACKS = logging.Formatter()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    # A leading ":" may belong to the text before it (`ip:2001:db8::1`), a trailing ":<digits>"
    # may be a port.
    for head in ("", ":")[: 1 + text.startswith(":")]:
        body = text[len(head) :]
        if _is_ip(body):
            return head + IP
        address, colon, port = body.rpartition(":")
        if port.isdigit() and _is_ip(address):
            return head + IP + colon + port
    return text


def _matrix_id(match: re.Match[str]) -> str:
    return USER if match.group("sigil") in ("@", "%40") else ALIAS


def redact(text: str) -> str:
    """`text` with every address, user ID, room alias and e-mail address replaced."""
    text = _MATRIX_ID.sub(_matrix_id, text)
    text = _EMAIL.sub(EMAIL, text)
    text = _IPV6.sub(_ipv6, text)
    return _IPV4.sub(IP, text)


class RedactIdentifiers(logging.Filter):
    """Redacts a record in place (message, traceback, context fields); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == AUDIT_LOGGER or record.name.startswith(AUDIT_LOGGER + "."):
            return True
        try:
            record.msg = redact(record.getMessage())
        except Exception:  # a record whose arguments do not fit its format string
            record.msg = "<log record redacted: it could not be formatted>"
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # formatters print exc_text; none may render the raw exception
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if isinstance(value, str):
                setattr(record, field, redact(value))
        if getattr(record, "user_agent", None) is not None:
            setattr(record, "user_agent", "<redacted>")  # noqa: B010 (not a LogRecord field)
        return True
