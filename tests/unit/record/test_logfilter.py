"""RedactIdentifiers: addresses, user IDs, aliases and e-mail addresses leave no log line."""

from __future__ import annotations

import ipaddress
import logging
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard.record.logfilter import ALIAS, EMAIL, IP, USER, RedactIdentifiers, redact

# Real Synapse lines (the arguments filled in), and what is left of them.
LINES = [
    (
        "Failed password login for user @alice-1f2e:guard.test",
        f"Failed password login for user {USER}",
    ),
    (
        "Aborting connection from IPv4Address(type='TCP', host='192.0.2.1', port=4711) because",
        f"Aborting connection from IPv4Address(type='TCP', host='{IP}', port=4711) because",
    ),
    (
        "<XForwardedForRequest method='GET' uri='/_matrix/client/v3/profile/%40bob%3Aguard.test"
        "/displayname' site='8008'>",
        f"<XForwardedForRequest method='GET' uri='/_matrix/client/v3/profile/{USER}"
        "/displayname' site='8008'>",
    ),
    ("from ::ffff:192.0.2.1 and [2001:db8::1]:8448.", f"from {IP} and [{IP}]:8448."),
    ("ip:2001:db8::7, 10.8.0.5, 192.0.2.1", f"ip:{IP}, {IP}, {IP}"),
    ("#project-x:guard.test, @a/b=c+d:host.example:8448", f"{ALIAS}, {USER}"),
    (
        "unknown 3pid identifier medium email, address 'x.y@example.org'",
        f"unknown 3pid identifier medium email, address '{EMAIL}'",
    ),
    # Left alone: times, versions, room and event IDs, pseudonyms.
    (
        "12:30:05,123 1.163.2 !AbCd:guard.test $ev-ent u:1f2e3d4c5b6a7980 a:9f8e7d6c5b4a3f2e",
        "12:30:05,123 1.163.2 !AbCd:guard.test $ev-ent u:1f2e3d4c5b6a7980 a:9f8e7d6c5b4a3f2e",
    ),
]


@pytest.mark.parametrize(("line", "redacted"), LINES)
def test_redact(line: str, redacted: str) -> None:
    assert redact(line) == redacted


AROUND = st.sampled_from(["", " ", "'", '"', "(", "[", "=", "from ", "ip:", "\n"])
AFTER = st.sampled_from(["", " ", "'", '"', ")", "]", ",", ".", ":8008", "\n"])


@given(AROUND, st.ip_addresses(), AFTER)
def test_no_address_survives(before: str, address: ipaddress._BaseAddress, after: str) -> None:
    forms = {str(address), address.exploded}
    if address.version == 4:
        forms.add(f"::ffff:{address}")
    for form in forms:
        out = redact(f"x{before}{form}{after}y")
        assert IP in out
        assert form not in out


LOCALPART = st.text("abcdefghijklmnopqrstuvwxyz0123456789._=-/+", min_size=1, max_size=20)


@given(AROUND, LOCALPART, st.sampled_from(["guard.test", "a.b.example:8448", "[::1]:8448"]))
def test_no_user_id_survives(before: str, localpart: str, server: str) -> None:
    user_id = f"@{localpart}:{server}"
    encoded = user_id.replace("@", "%40").replace(":", "%3A", 1)
    for form in (user_id, encoded):
        out = redact(f"x{before}{form} y")
        assert out == f"x{before}{USER} y"


def record(
    name: str, msg: str, *args: object, exc: BaseException | None = None
) -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args or None, exc_info)


def test_the_filter_redacts_message_traceback_and_request_fields() -> None:
    rec = record(
        "synapse.http.server",
        "Failed handle request for %s from %s",
        "@alice:guard.test",
        "10.8.0.5",
        exc=ValueError("no such user @alice:guard.test at 10.8.0.5"),
    )
    rec.ip_address = "10.8.0.5"
    rec.requester = "@alice:guard.test"
    rec.user_agent = "Element/1.0 (Alice's phone)"
    assert RedactIdentifiers().filter(rec) is True
    out = logging.Formatter("%(message)s %(ip_address)s %(requester)s %(user_agent)s").format(rec)
    for identifier in ("alice", "10.8.0.5", "phone"):
        assert identifier not in out
    assert f"Failed handle request for {USER} from {IP}" in out
    assert f"ValueError: no such user {USER} at {IP}" in out


def test_the_filter_passes_audit_records_and_survives_bad_arguments() -> None:
    audit = record("synapse_guard.audit", '{"user": "u:1f2e3d4c5b6a7980", "ts": "12:30:05"}')
    assert RedactIdentifiers().filter(audit) is True
    assert audit.getMessage() == '{"user": "u:1f2e3d4c5b6a7980", "ts": "12:30:05"}'

    broken = record("synapse", "%s and %s from @alice:guard.test", "one")
    assert RedactIdentifiers().filter(broken) is True
    assert "alice" not in broken.getMessage()
