"""The second factor on the live stack, switched on the way deploy/README.md says (scripts/
stack-test edits zz-deploy.yaml and 20-accounts.yaml; bin/init made the key): a member made by
`bin/create-user` and enrolled by the admin's `synapse-guard totp enroll` from the VPN logs in
through nginx with password + code, and what a thief with the password alone tries fails."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pyotp
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


def qr_codes(pdf: Path) -> list[str]:
    """The QR codes of the sheet's first page, as a phone's camera would read them."""
    subprocess.run(
        ["pdftoppm", "-r", "150", "-png", "-f", "1", "-l", "1", str(pdf), str(pdf.with_suffix(""))],
        check=True,
    )
    [image] = pdf.parent.glob(f"{pdf.stem}-*.png")
    done = subprocess.run(
        ["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(image)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.split()


def test_member_add_onboards_in_one_step_with_a_sheet_that_opens_the_account(
    stack: Stack, admin_token: str, tmp_path: Path
) -> None:
    """README's "A new member in one step", from the admin's laptop on the VPN: the sheet's
    QR codes and password are all a new member needs."""
    tmp_path.chmod(0o777)  # the laptop's user (the image's 991) writes the sheet here
    user_id = f"@erin:{SERVER_NAME}"
    done = stack.admin_laptop(
        "member", "add", user_id, "--sheet", "/out/erin.pdf", "--show-password",
        token=admin_token, out_dir=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    sheet = tmp_path / "erin.pdf"
    assert sheet.stat().st_mode & 0o777 == 0o600
    password = re.search(r"Initial password: (\S+)", done.stdout)[1]  # type: ignore[index]
    codes = qr_codes(sheet)
    [uri] = [c for c in codes if c.startswith("otpauth://")]
    assert user_id in codes
    assert MATRIX in codes
    code = pyotp.parse_uri(uri).now()
    assert password_login(stack, "172.31.243.7", "erin", password) == 403
    assert password_login(stack, "172.31.243.7", "erin", password + code) == 200
