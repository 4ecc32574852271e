"""Which pushers may exist: only HTTP pushers whose URL is exactly an allowed gateway.

A pusher is where Synapse sends a notification of every event that notifies its user: event
and room IDs, unread counts and, unless it asked for `format: event_id_only`, the sender, the
sender's display name and the room's name, for encrypted messages too. Any user can register
one at any URL, so the URL is matched exactly against `push.allowed_gateways`.

"Exactly" means the same scheme, host, port and path, nothing more. A URL is read by a strict
grammar that every URL parser reads the same way (urllib, Twisted's agent, the proxy): ASCII
letters, digits and `.-_~/` only, so no userinfo (`@`), percent-encoding, backslash, query,
fragment or whitespace can make two parsers disagree about the host. Dot segments, empty or
over-long labels, a trailing dot and hosts that some parsers read as a number are refused, not
normalised. Scheme and host are case-insensitive (as DNS and every parser treat them) and an
omitted port is the scheme's default; nothing else is equated.

Pure: no Synapse import (config.py reads the allowed gateways with `parse_gateway_url`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import attrs

from synapse_guard.verdict import Reason, Verdict, allow, deny

NOTIFY_PATH = "/_matrix/push/v1/notify"  # the only path Synapse accepts for an HTTP pusher
EVENT_ID_ONLY = "event_id_only"
_DEFAULT_PORTS = {"https": 443, "http": 80}
_MAX_LENGTH = 2048

_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~/-]*)?"
)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@attrs.frozen(slots=True)
class GatewayUrl:
    scheme: str  # https | http, lower case
    host: str  # lower-case DNS name, dotted IPv4, or [IPv6] in its compressed form
    port: int  # explicit, or the scheme's default
    path: str

    def __str__(self) -> str:
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}{self.path}"


def parse_gateway_url(text: object) -> GatewayUrl:
    """Read a URL by the strict grammar; ValueError says what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError("must be a URL string")
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"is longer than {_MAX_LENGTH} characters")
    match = _URL.fullmatch(text)
    if match is None:
        raise ValueError(
            "is not a plain URL such as 'https://push.example.org/_matrix/push/v1/notify' "
            "(only letters, digits and . - _ ~ / after the scheme: no user name or password, "
            "percent-encoding, query or fragment)"
        )
    scheme = match["scheme"].lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"has scheme {match['scheme']!r}; use https (or http)")
    host = _host(match["host"])
    port = _DEFAULT_PORTS[scheme] if match["port"] is None else int(match["port"])
    if not 0 < port < 65536:
        raise ValueError(f"has port {match['port']}, outside 1-65535")
    path = match["path"] or ""
    if not path:
        raise ValueError(f"has no path (a push gateway's is {NOTIFY_PATH})")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError("has a '.' or '..' path segment")
    return GatewayUrl(scheme=scheme, host=host, port=port, path=path)


def _host(text: str) -> str:
    if text.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1]).compressed}]"
        except ValueError:
            raise ValueError(f"has host {text!r}, which is not an IPv6 address") from None
    host = text.lower()
    labels = host.split(".")
    if labels[-1].isdigit():
        # Only a dotted-quad IPv4 address; parsers disagree about '127.1', '0x7f.1', '2130706433'.
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(
                f"has host {text!r}, which is neither a name nor an IPv4 address"
            ) from None
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"has host {text!r}, which is not a valid DNS name (no trailing dot)")
    return host


def decide_pusher(
    allowed: Collection[GatewayUrl], kind: object, data: object, *, event_id_only: bool = False
) -> Verdict:
    """May this pusher exist? `kind` and `data` as the client sent them (any JSON)."""
    if kind == "email":
        # Mail to the user's own verified address through the operator's SMTP server: only
        # Synapse's `email.enable_notifs` creates this kind, an operator's choice.
        return allow()
    if kind != "http" or not isinstance(data, Mapping):
        return deny(Reason.PUSH_GATEWAY)
    try:
        url = parse_gateway_url(data.get("url"))
    except ValueError:
        return deny(Reason.PUSH_GATEWAY)
    if url not in allowed:
        return deny(Reason.PUSH_GATEWAY)
    if event_id_only and data.get("format") != EVENT_ID_ONLY:
        return deny(Reason.PUSH_FORMAT)
    return allow()


# The sweep over Synapse's `pushers` table ---------------------------------------------------

# `pushers.id` is a stream ID, renewed whenever a pusher is added or updated. IDs are handed
# out before their transaction commits, so one may appear after a higher one: each sweep
# re-reads this many IDs below the highest it has seen.
OVERLAP_IDS = 100


@attrs.frozen(slots=True)
class StoredPusher:
    id: int
    user_id: str = attrs.field(repr=False)
    app_id: str = attrs.field(repr=False)
    pushkey: str = attrs.field(repr=False)
    kind: str
    data: Any = attrs.field(repr=False)  # the decoded JSON, or None if it does not decode


@attrs.frozen(slots=True)
class PusherSweep:
    refused: tuple[tuple[StoredPusher, Verdict], ...]
    next_since: int


def judge_pushers(
    rows: Iterable[StoredPusher], since: int, decide: Callable[[StoredPusher], Verdict]
) -> PusherSweep:
    """Which stored pushers to remove, and where the next sweep starts reading."""
    refused = []
    newest = since
    for row in rows:
        newest = max(newest, row.id)
        verdict = decide(row)
        if not verdict.allowed:
            refused.append((row, verdict))
    return PusherSweep(tuple(refused), max(since, newest - OVERLAP_IDS))


PUSHERS_SINCE_SQL = """
    SELECT id, user_name, app_id, pushkey, kind, data
    FROM pushers
    WHERE id > ?
    ORDER BY id
"""


def select_pushers_since(txn: Any, since: int) -> Sequence[StoredPusher]:
    """Runs inside `ModuleApi.run_db_interaction` (SQLite and PostgreSQL alike)."""
    txn.execute(PUSHERS_SINCE_SQL, (since,))
    return [
        StoredPusher(int(id_), str(user), str(app_id), str(pushkey), str(kind), _json(data))
        for id_, user, app_id, pushkey, kind, data in txn.fetchall()
    ]


def _json(data: object) -> Any:
    if isinstance(data, memoryview):
        data = data.tobytes()
    if isinstance(data, bytes | bytearray):
        data = data.decode("utf-8", "replace")
    if not isinstance(data, str):
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None  # Synapse does not start such a pusher either; refused, so removed
