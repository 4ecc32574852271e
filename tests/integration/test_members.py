"""A lost phone, in one command, on a real Synapse: `synapse-guard member lock|unlock|remove`.

A story: Alice's phone is gone. The admin locks her: every token she had (two devices, and a
"login as" token an admin minted for her) stops working at once, her pushers are gone, and
her password no longer logs in, also after a restart. Unlocked, she logs in again. Someone
with a member's token, or an admin's "login as" token, cannot lock anyone. Removed, the
account is deactivated and erased, and its login refused.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from synapse_guard.cli import main as cli
from synapse_guard.record.audit import Pseudonymizer
from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, MatrixClient, SynapseServer, iter_log_lines

LOCK = "/_synapse/client/synapse_guard/member/lock"
WHOAMI = "/_matrix/client/v3/account/whoami"
GATEWAY = "http://127.0.0.1:9/_matrix/push/v1/notify"  # stored, never reached here
AUDIT_KEY = b"m" * 32
ADMIN = "keeper"


@pytest.fixture(scope="module")
def server(synapse_factory: SynapseFactory, tmp_path_factory: pytest.TempPathFactory) -> Any:
    key = tmp_path_factory.mktemp("audit") / "audit.key"
    key.write_bytes(AUDIT_KEY)
    guard = {
        "audit": {"enabled": True, "pseudonym_key_path": str(key)},
        "push": {"allowed_gateways": [GATEWAY]},
    }
    server = synapse_factory(guard=guard).start()
    server.register_user(ADMIN, admin=True)
    return server


@pytest.fixture(scope="module")
def admin(server: SynapseServer) -> MatrixClient:
    return server.login(ADMIN)


@pytest.fixture(scope="module")
def token_file(admin: MatrixClient, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("admin") / "token"
    path.write_text(f"{admin.token}\n")
    return path


def member(server: SynapseServer, *action: str, token_file: Path) -> int:
    return cli.main(["member", *action, "--url", server.url, "--token-file", str(token_file)])


def pushers(admin: MatrixClient, user_id: str) -> list[Any]:
    quoted = urllib.parse.quote(user_id, safe="")
    status, body = admin.request("GET", f"/_synapse/admin/v1/users/{quoted}/pushers")
    assert status == 200, body
    return list(body["pushers"])


def audited(server: SynapseServer, user_id: str, event: str) -> int:
    pseudonym = Pseudonymizer(AUDIT_KEY).user(user_id)
    return sum(
        f'"event": "{event}"' in line and pseudonym in line for line in iter_log_lines(server)
    )


def test_a_locked_member_is_logged_out_everywhere_until_unlocked(
    server: SynapseServer, admin: MatrixClient, token_file: Path
) -> None:
    localpart = server.new_account("alice")
    user_id = server.user_id(localpart)
    phone, laptop = server.login(localpart), server.login(localpart)
    assert phone.set_pusher(GATEWAY, "phone-push-key")[0] == 200
    status, minted = admin.request("POST", f"/_synapse/admin/v1/users/{user_id}/login", {})
    assert status == 200, minted
    puppet = server.client(minted["access_token"])
    assert puppet.request("GET", WHOAMI)[0] == 200
    assert len(pushers(admin, user_id)) == 1
    locks = server.metric("synapse_guard_member_actions_total", action="lock")

    assert member(server, "lock", user_id, token_file=token_file) == 0

    for client in (phone, laptop, puppet):
        status, body = client.request("GET", WHOAMI)
        assert status in (401, 403), body  # logged out; a token that escaped: refused
    assert pushers(admin, user_id) == []
    status, body = server.client().login(localpart, PASSWORD)
    assert (status, body.get("errcode")) == (403, "M_FORBIDDEN")
    assert body.get("error") == "Invalid username or password"  # what a wrong password gets
    assert server.decisions("login", "deny", "member_locked") >= 1
    assert server.metric("synapse_guard_member_actions_total", action="lock") == locks + 1
    assert audited(server, user_id, "member_locked") == 1
    # Locking again changes nothing and succeeds (a retry after a partial failure).
    assert member(server, "lock", user_id, token_file=token_file) == 0

    server.restart()
    assert server.client().login(localpart, PASSWORD)[0] == 403, "the lock survives a restart"

    assert member(server, "unlock", user_id, token_file=token_file) == 0
    assert audited(server, user_id, "member_unlocked") == 1
    back = server.login(localpart)
    assert back.request("GET", WHOAMI)[0] == 200


def test_neither_a_member_nor_a_login_as_token_can_lock(
    server: SynapseServer, admin: MatrixClient
) -> None:
    victim_id, victim = server.new_user("victim")
    _member_id, someone = server.new_user("someone")
    status, body = someone.request("POST", LOCK, {"user_id": victim_id})
    assert (status, body.get("errcode")) == (403, "M_FORBIDDEN")

    # A "login as" token for another admin acts as that admin, but is not theirs.
    other_admin = server.new_account("admin2", admin=True)
    status, minted = admin.request(
        "POST", f"/_synapse/admin/v1/users/{server.user_id(other_admin)}/login", {}
    )
    assert status == 200, minted
    status, body = server.client(minted["access_token"]).request(
        "POST", LOCK, {"user_id": victim_id}
    )
    assert status == 403, body
    assert server.decisions("request", "deny", "puppet_token") >= 1
    assert server.client().request("POST", LOCK, {"user_id": victim_id}, auth=False)[0] == 401
    assert victim.request("GET", WHOAMI)[0] == 200, "nobody was locked"

    # An admin cannot lock themselves out; an unknown member is 404.
    status, _ = admin.request("POST", LOCK, {"user_id": server.user_id(ADMIN)})
    assert status == 400
    assert admin.request("POST", LOCK, {"user_id": server.user_id("nobody-here")})[0] == 404


def test_a_removed_member_is_deactivated_erased_and_refused(
    server: SynapseServer, admin: MatrixClient, token_file: Path
) -> None:
    localpart = server.new_account("leaver")
    user_id = server.user_id(localpart)
    phone = server.login(localpart)
    assert member(server, "remove", user_id, token_file=token_file) == 2, "needs --yes"
    assert phone.request("GET", WHOAMI)[0] == 200

    assert member(server, "remove", f"@{localpart}", "--yes", token_file=token_file) == 0

    assert phone.request("GET", WHOAMI)[0] in (401, 403)
    status, body = admin.request("GET", f"/_synapse/admin/v2/users/{user_id}")
    assert status == 200, body
    assert body["deactivated"] is True
    if "erased" in body:  # the admin API shows it from Synapse 1.104
        assert body["erased"] is True
    assert server.client().login(localpart, PASSWORD)[0] == 403
    assert server.metric("synapse_guard_member_actions_total", action="remove") >= 1
    assert audited(server, user_id, "member_removed") == 1
