"""Registration lockdown: in closed mode only admin provisioning creates accounts."""

from __future__ import annotations

import pytest

from synapse_guard.config import RegistrationPolicy
from synapse_guard.registration import decide_registration, decide_threepid
from synapse_guard.verdict import Reason, Verdict

CLOSED = RegistrationPolicy(mode="closed")
OPEN = RegistrationPolicy(mode="open")
CLIENT = [("Element/1.11 (Linux)", "10.8.0.12")]

ALLOWED_AS_ADMIN = Verdict(allowed=True, reason=Reason.ADMIN_PROVISIONING)
REFUSED = Verdict(allowed=False, reason=Reason.REGISTRATION_CLOSED)


@pytest.mark.parametrize(
    ("request_info", "auth_provider_id"),
    [
        (CLIENT, None),
        ([("curl/8", "10.8.0.12"), ("Element", "10.8.0.13")], None),
        ([(None, "10.8.0.12")], None),
        (CLIENT, "oidc-keycloak"),
        ([], "cas"),
    ],
    ids=["password", "several-uia-steps", "no-user-agent", "sso", "sso-without-address"],
)
def test_closed_mode_refuses_client_and_sso_registration(
    request_info: list[tuple[str | None, str]], auth_provider_id: str | None
) -> None:
    verdict = decide_registration(
        CLOSED, request_info, auth_provider_id, "/_matrix/client/v3/register"
    )

    assert verdict == REFUSED


def test_closed_mode_refuses_sso_even_when_served_under_synapse_client() -> None:
    verdict = decide_registration(CLOSED, CLIENT, "oidc", "/_synapse/client/pick_username/submit")

    assert verdict == REFUSED


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/register",  # guest registration (kind=guest): no address recorded
        "/_matrix/client/r0/register",
        "/_matrix/client/v3/login",  # JWT login auto-creating its user
        "/_matrix/client/unstable/org.matrix.msc3861/register",
    ],
)
def test_closed_mode_refuses_a_client_api_registration_without_address(path: str) -> None:
    assert decide_registration(CLOSED, [], None, path) == REFUSED


@pytest.mark.parametrize(
    "path",
    [
        "/_synapse/admin/v2/users/@carol:test.local",  # admin user API
        "/_synapse/admin/v1/register",  # shared secret (register_new_matrix_user)
    ],
)
def test_closed_mode_lets_admin_provisioning_through(path: str) -> None:
    assert decide_registration(CLOSED, [], None, path) == ALLOWED_AS_ADMIN


def test_closed_mode_lets_the_module_api_register_outside_any_request() -> None:
    assert decide_registration(CLOSED, [], None, None) == ALLOWED_AS_ADMIN


def test_an_admin_path_with_a_client_address_is_still_refused() -> None:
    # A client address means a client flow, whatever request is being served.
    assert decide_registration(CLOSED, CLIENT, None, "/_synapse/admin/v1/register") == REFUSED


@pytest.mark.parametrize(
    ("request_info", "auth_provider_id", "path"),
    [
        (CLIENT, None, "/_matrix/client/v3/register"),
        (CLIENT, "oidc", "/_synapse/client/oidc/callback"),
        ([], None, "/_matrix/client/v3/register"),
        ([], None, None),
    ],
)
def test_open_mode_allows_every_registration(
    request_info: list[tuple[str | None, str]], auth_provider_id: str | None, path: str | None
) -> None:
    verdict = decide_registration(OPEN, request_info, auth_provider_id, path)

    assert verdict.allowed
    assert verdict.reason == Reason.OK


def test_threepids_are_refused_by_default() -> None:
    assert decide_threepid(RegistrationPolicy()) == Verdict(allowed=False, reason=Reason.THREEPID)


def test_threepids_are_allowed_when_configured() -> None:
    assert decide_threepid(RegistrationPolicy(allow_3pid=True)) == Verdict(
        allowed=True, reason=Reason.OK
    )
