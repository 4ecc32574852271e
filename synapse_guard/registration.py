"""Registration lockdown: in `closed` mode only admin provisioning creates accounts."""

from __future__ import annotations

from collections.abc import Sequence

from synapse_guard.config import RegistrationPolicy
from synapse_guard.verdict import ALLOW, Reason, Verdict, allow, deny

# The Matrix APIs. A registration with no client address made while serving one of these is
# a client creating an account without the usual registration flow: a guest (`/register?kind=
# guest`) or a JWT login creating its user. Admin provisioning is served elsewhere: the admin
# API and the shared-secret endpoint under /_synapse/admin/, and other modules' resources
# under /_synapse/client/ (or no request at all) calling ModuleApi.register_user.
CLIENT_API_PREFIX = "/_matrix/"


def decide_registration(
    policy: RegistrationPolicy,
    request_info: Sequence[tuple[str | None, str]],
    auth_provider_id: str | None,
    request_path: str | None,
) -> Verdict:
    """Decide one registration.

    Synapse passes the client's (user agent, IP) pairs for client registrations and SSO, and an
    empty list for admin provisioning but also for guests and JWT auto-creation, so the path
    of the request being served (None outside any HTTP request, e.g. the module API called
    from a background task) settles the empty case. Every Matrix API path is refused, so an
    endpoint added in a later Synapse is refused too.
    """
    if not policy.closed:
        return ALLOW
    if auth_provider_id is not None or request_info:
        return deny(Reason.REGISTRATION_CLOSED)
    if request_path is not None and request_path.startswith(CLIENT_API_PREFIX):
        return deny(Reason.REGISTRATION_CLOSED)
    return allow(Reason.ADMIN_PROVISIONING)


def decide_threepid(policy: RegistrationPolicy) -> Verdict:
    """Binding or registering an e-mail address or phone number."""
    return ALLOW if policy.allow_3pid else deny(Reason.THREEPID)
