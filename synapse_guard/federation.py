"""Federation denial: nothing crosses the server's boundary while federation is disabled.

Room IDs are never parsed for a server name to judge a room: room version 12 IDs carry none.
Membership and senders are judged by user IDs; whether a room is ours, by who created it. (What
a client *names* in a URL is another matter: see `decide_request_target`.)
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

from synapse_guard.config import FederationPolicy
from synapse_guard.verdict import ALLOW, Reason, Verdict, deny


def domain_of(user_id: object) -> str | None:
    """The server part of a user ID (`@local:domain[:port]`), or None if it is not one."""
    if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
        return None
    domain = user_id.split(":", 1)[1]
    return domain or None


def is_local_user(user_id: object, server_name: str) -> bool:
    return domain_of(user_id) == server_name


def decide_invite(
    policy: FederationPolicy, inviter: object, invitee: object, server_name: str
) -> Verdict:
    """Both ends of an invite must be local (older Synapse asks `user_may_invite` about
    invites received over federation too)."""
    if policy.enabled or (
        is_local_user(inviter, server_name) and is_local_user(invitee, server_name)
    ):
        return ALLOW
    return deny(Reason.FEDERATION)


def decide_remote_traffic(policy: FederationPolicy) -> Verdict:
    """Anything that arrives from another server: invites, events, joins."""
    return ALLOW if policy.enabled else deny(Reason.FEDERATION)


def decide_join(policy: FederationPolicy, room_creator: str | None, server_name: str) -> Verdict:
    """A join is to a room of ours only if we hold its create event and a local user sent it."""
    if policy.enabled or is_local_user(room_creator, server_name):
        return ALLOW
    return deny(Reason.FEDERATION)


def decide_create_event(policy: FederationPolicy, content: Mapping[str, object]) -> Verdict:
    """Every room, new or upgraded, must say `m.federate: false`."""
    if policy.enabled or content.get("m.federate") is False:
        return ALLOW
    return deny(Reason.FEDERATION)


# Client requests that name another server in their URL ------------------------------------

# Query parameters through which a client names the servers to ask: joins and knocks
# (`server_name`, `via`), the room directory (`server`).
_SERVER_PARAMETERS = frozenset({"server_name", "via", "server"})
# Paths whose segment after `download`/`thumbnail` is the media's origin server.
_MEDIA_PREFIXES = ("/_matrix/media/", "/_matrix/client/v1/media/")
_MEDIA_ACTIONS = frozenset({"download", "thumbnail"})
_CLIENT_PREFIXES = ("/_matrix/client/", *_MEDIA_PREFIXES)
_SIGILS = ("@", "#", "!")  # user IDs, room aliases, room IDs of room versions before 12
# A segment that starts with a sigil and holds a colon, either of them maybe percent-encoded:
# without one, no segment can name a server (the common case, checked in one scan).
_MAY_NAME_A_SERVER = re.compile(r"/(?:[@#!]|%(?:40|23|21))[^/]*(?::|%3a)", re.IGNORECASE)


def servers_named_in_url(path: str, query: str) -> list[str]:
    """Every server a client request's URL names (path segments and server parameters).

    Segments are decoded once, as Synapse decodes them, so `%23room%3Aother` is read as
    `#room:other`. Only client and media paths are read (the admin API does not federate).
    On the request path of every request: the common case (no identifier with a server part,
    no server parameter) costs a few string scans.
    """
    if not path.startswith(_CLIENT_PREFIXES):
        return []
    named: list[str] = []
    media = path.startswith(_MEDIA_PREFIXES)
    if media or _MAY_NAME_A_SERVER.search(path):
        _scan_segments(path, media, named)
    if query and ("server" in query or "via" in query):
        named.extend(
            value
            for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True)
            if key in _SERVER_PARAMETERS
        )
    return named


def _scan_segments(path: str, media: bool, named: list[str]) -> None:
    segments = path.split("/")
    for i, segment in enumerate(segments):
        if "%" in segment:
            segments[i] = segment = urllib.parse.unquote(segment)
        # `@user:server`, `#alias:server`, `!room:server` (a v12 room ID names no server)
        if segment.startswith(_SIGILS) and ":" in segment:
            named.append(segment.split(":", 1)[1])
    if media:
        named.extend(
            segments[i + 1] for i, segment in enumerate(segments[:-1]) if segment in _MEDIA_ACTIONS
        )


def decide_request_target(
    policy: FederationPolicy, path: str, query: str, server_name: str
) -> Verdict:
    """A client request that names another server would make Synapse ask it: refused.

    This is the module's own layer for what no callback sees (or sees for admins only):
    joins and knocks by remote alias or `server_name`/`via`, remote room directories
    (`publicRooms?server=`), remote media, remote profiles. Anything but exactly our server
    name counts as another server (Synapse compares server names exactly too).
    """
    if policy.enabled:
        return ALLOW
    if any(server != server_name for server in servers_named_in_url(path, query)):
        return deny(Reason.FEDERATION)
    return ALLOW
