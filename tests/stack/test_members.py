"""The operator's accounts: `bin/create-user` makes members, and they log in through nginx."""

from __future__ import annotations

import os
import select
import subprocess
import time

import requests

from tests.stack.conftest import MATRIX, Member, Session, Stack, login


def test_create_user_makes_two_members_who_log_in_through_nginx(
    https: requests.Session, sessions: tuple[Session, Session]
) -> None:
    for session in sessions:
        whoami = https.get(
            f"{MATRIX}/_matrix/client/v3/account/whoami", headers=session.headers, timeout=30
        )
        assert whoami.status_code == 200, whoami.text
        assert whoami.json()["user_id"] == session.member.user_id


def test_a_wrong_password_is_refused(
    https: requests.Session, members: tuple[Member, Member]
) -> None:
    alice = members[0]
    response = login(https, Member(alice.localpart, alice.password + "x"))
    assert response.status_code == 403, response.text
    assert response.json()["errcode"] == "M_FORBIDDEN"


def test_create_user_refuses_an_existing_name(stack: Stack, members: tuple[Member, Member]) -> None:
    done = stack.bin("create-user", "--generate-password", members[0].localpart)
    assert done.returncode != 0
    assert "no account was created" in done.stderr


def test_an_attachment_round_trips_through_nginx(
    https: requests.Session, sessions: tuple[Session, Session]
) -> None:
    """Alice uploads (as a client does for an encrypted attachment: opaque bytes), Bob
    downloads the same bytes through the authenticated media API."""
    alice, bob = sessions
    blob = os.urandom(256 * 1024)
    uploaded = https.post(
        f"{MATRIX}/_matrix/media/v3/upload?filename=blob.bin",
        headers={**alice.headers, "Content-Type": "application/octet-stream"},
        data=blob,
        timeout=60,
    )
    assert uploaded.status_code == 200, uploaded.text
    server, media_id = uploaded.json()["content_uri"].removeprefix("mxc://").split("/")
    assert server == "stack.test"
    url = f"{MATRIX}/_matrix/client/v1/media/download/{server}/{media_id}"
    downloaded = https.get(url, headers=bob.headers, timeout=60)
    assert downloaded.status_code == 200, downloaded.text
    assert downloaded.content == blob
    # Without a token: refused (authenticated media).
    assert https.get(url, timeout=60).status_code in (401, 403, 404)


def test_element_x_discovers_the_server_from_its_name(https: requests.Session) -> None:
    """What Element X reads first when a member types the server's name (deploy/README.md 1.5)."""
    response = https.get(f"{MATRIX}/.well-known/matrix/client", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"m.homeserver": {"base_url": MATRIX}}
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    # No federation: nothing tells other servers where this one is.
    assert https.get(f"{MATRIX}/.well-known/matrix/server", timeout=30).status_code == 404


def answer_prompts(cmd: list[str], cwd: str, answers: list[tuple[str, str]]) -> tuple[int, str]:
    """Run an operator script on a terminal (a pty), typing each answer once its prompt shows
    (not before: typed early, the terminal would echo it before `read -s` turns echo off)."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        cmd, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    output, seen = b"", 0
    pending = list(answers)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the script ended and closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if pending and (at := output.find(pending[0][0].encode(), seen)) >= 0:
                seen = at + len(pending[0][0])
                os.write(master, pending.pop(0)[1].encode() + b"\n")
        elif process.poll() is not None:
            break
    os.close(master)
    return process.wait(timeout=60), output.decode(errors="replace")


def test_create_user_asks_the_password_twice_without_echo(stack: Stack) -> None:
    """deploy/README.md's `bin/create-user --admin alice`, at a terminal."""
    password = "Frank-" + os.urandom(6).hex() + "A9"
    code, output = answer_prompts(
        ["bin/create-user", "--admin", "frank"],
        str(stack.deploy),
        [("Password for frank: ", password), ("Again: ", password + "x")],
    )
    assert code == 1, output
    assert "the passwords differ" in output
    code, output = answer_prompts(
        ["bin/create-user", "--admin", "frank"],
        str(stack.deploy),
        [("Password for frank: ", password), ("Again: ", password)],
    )
    assert code == 0, output
    assert password not in output, "the password was echoed"
    status, body = stack.client_on_vpn(
        "172.31.243.6",
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "frank"},
            "password": password,
        },
    )
    assert status == 200, body
