"""The second factor on the live stack, switched on the way deploy/README.md says (scripts/
stack-test edits zz-deploy.yaml and 20-accounts.yaml; bin/init made the key): a member made by
`bin/create-user` and enrolled by the admin's `synapse-guard totp enroll` from the VPN logs in
through nginx with password + code, and what a thief with the password alone tries fails."""

from __future__ import annotations

import requests

from tests.stack.conftest import MATRIX, SERVER_NAME, Enrolled, Stack

PHONE = "172.31.243.3"  # carol's phone on the VPN (its own login rate-limit bucket)


def password_login(stack: Stack, address: str, localpart: str, password: str) -> int:
    status, _ = stack.client_on_vpn(
        address,
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        },
    )
    return status


def test_the_guards_admin_endpoints_answer_only_from_the_vpn(
    https: requests.Session, admin_token: str
) -> None:
    """A stolen admin token used from a member's address: nginx refuses before Synapse."""
    response = https.post(
        f"{MATRIX}/_synapse/client/synapse_guard/totp/enroll",
        headers={"Authorization": f"Bearer {admin_token}"},
        json={"user_id": f"@alice:{SERVER_NAME}"},
        timeout=30,
    )
    assert response.status_code == 403, response.text


def test_an_enrolled_member_needs_the_code_and_a_code_works_once(
    stack: Stack, enrolled: Enrolled
) -> None:
    carol = enrolled.member
    # The password alone (a thief who read it off the onboarding sheet) is refused.
    assert password_login(stack, PHONE, carol.localpart, carol.password) == 403
    code = enrolled.code()
    assert password_login(stack, PHONE, carol.localpart, carol.password + code) == 200
    # The same code again, even from the member's own phone: a replay.
    assert password_login(stack, PHONE, carol.localpart, carol.password + code) == 403


def test_a_member_without_a_second_factor_still_logs_in_under_optional(stack: Stack) -> None:
    """`totp: optional` (deploy/README.md's step before `required`): the not yet enrolled log in
    with the password alone, so switching on does not lock the team out."""
    made = stack.bin("create-user", "--generate-password", "dave")
    assert made.returncode == 0, made.stderr
    assert password_login(stack, "172.31.243.4", "dave", made.stdout.strip()) == 200
