"""Federation denial: nothing crosses the server's boundary while federation is disabled.

Room IDs are never parsed for a server name: room version 12 IDs carry none. Membership and
senders are judged by user IDs; whether a room is ours, by who created it.
"""

from __future__ import annotations

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
