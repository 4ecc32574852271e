"""Faults on the live stack. Synapse and then PostgreSQL are killed with SIGKILL (a crash, not a
stop: Docker's `restart: unless-stopped` must bring them back) under a light write load: no
message Synapse acknowledged is lost, and the lockdown and the second factor's replay and
failure counters are what they were. A full media disk gives clean errors, keeps the media
already stored intact, and uploads work again once space returns."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.stack.conftest import MATRIX, SERVER_NAME, Enrolled, Member, Session, Stack, psql

PHONE = "172.31.243.5"  # carol's phone on the VPN, for her logins here


def b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode().rstrip("=")


class WriteLoad(threading.Thread):
    """Megolm-shaped messages (the room is encrypted) about five a second, from an exempt admin
    so that the lockdown does not stop it; remembers every event ID Synapse acknowledged."""

    def __init__(self, https: requests.Session, token: str, room_id: str) -> None:
        super().__init__(daemon=True)
        self.https, self.token, self.room_id = https, token, room_id
        self.acked: list[str] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            content = {
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": b64(96),
                "session_id": b64(32),
                "sender_key": b64(32),
                "device_id": "LOADDEVICE",
            }
            txn = uuid.uuid4().hex
            url = f"{MATRIX}/_matrix/client/v3/rooms/{self.room_id}/send/m.room.encrypted/{txn}"
            try:
                response = self.https.put(
                    url, headers={"Authorization": f"Bearer {self.token}"}, json=content, timeout=10
                )
                if response.status_code == 200:
                    self.acked.append(response.json()["event_id"])
                else:
                    self.failed += 1
            except requests.RequestException:
                self.failed += 1
            self.stop.wait(0.2)

    def acked_since(self, count: int, seconds: float = 180) -> None:
        """Wait until Synapse acknowledges writes again after a fault."""
        deadline = time.monotonic() + seconds
        while len(self.acked) <= count + 2:
            assert time.monotonic() < deadline, "writes were not acknowledged again after the fault"
            time.sleep(0.5)


def phone_login(stack: Stack, member: Member, code: str) -> int:
    status, _ = stack.client_on_vpn(
        PHONE,
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": member.localpart},
            "password": member.password + code,
        },
    )
    return status


def crash(stack: Stack, service: str) -> float:
    """SIGKILL the container's init from the host, as the kernel's OOM killer would; wait
    until Docker restarted it; returns how long that took."""
    before = stack.inspect(service)
    assert before["State"]["Running"]
    restarts = before["RestartCount"]
    started = time.monotonic()
    os.kill(before["State"]["Pid"], 9)
    deadline = started + 120
    while True:
        state = stack.inspect(service)
        if state["RestartCount"] > restarts and state["State"]["Running"]:
            return time.monotonic() - started
        assert time.monotonic() < deadline, f"{service} was not restarted: {state['State']}"
        time.sleep(0.5)


def whoami_status(https: requests.Session, session: Session) -> int:
    return https.get(
        f"{MATRIX}/_matrix/client/v3/account/whoami", headers=session.headers, timeout=30
    ).status_code


def totp_row(localpart: str) -> str:
    return (
        "SELECT last_step, failures, failure_window_start FROM synapse_guard_totp"
        f" WHERE user_id = '@{localpart}:{SERVER_NAME}'"
    )


def wait_status(https: requests.Session, session: Session, want: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while (status := whoami_status(https, session)) != want:
        assert time.monotonic() < deadline, f"whoami answers {status}, not {want}"
        time.sleep(1)


def test_kill_9_synapse_then_postgres_under_writes_loses_nothing(
    stack: Stack,
    https: requests.Session,
    sessions: tuple[Session, Session],
    admin_token: str,
    enrolled: Enrolled,
    request: pytest.FixtureRequest,
) -> None:
    alice = sessions[0]
    admin = {"Authorization": f"Bearer {admin_token}"}
    room = https.post(f"{MATRIX}/_matrix/client/v3/createRoom", headers=admin, json={}, timeout=30)
    assert room.status_code == 200, room.text
    room_id = room.json()["room_id"]
    # carol's second factor used (a code of the next step, within the guard's skew): the
    # counters the crash must not reset.
    carol = enrolled.member
    step_code = enrolled.code(step_offset=1)
    assert phone_login(stack, carol, step_code) == 200
    totp_before = psql(stack, totp_row(carol.localpart))
    assert totp_before.split("|")[0], "no last_step recorded for carol"
    # The lockdown on: alice is refused from now on, across both crashes (lifted whatever
    # happens, for the tests after this one).
    request.addfinalizer(lambda: stack.admin_laptop("lockdown", "off", token=admin_token))
    done = stack.admin_laptop("lockdown", "on", token=admin_token)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_status(https, alice, 403)

    load = WriteLoad(https, admin_token, room_id)
    load.start()
    try:
        load.acked_since(0)
        timings = []
        for service in ("synapse", "postgres"):
            count, started = len(load.acked), time.monotonic()
            restarted = crash(stack, service)
            load.acked_since(count)
            timings.append(
                f"{service}: restarted in {restarted:.1f}s, writes again after "
                f"{time.monotonic() - started:.1f}s"
            )
            # Across the crash: the lockdown holds, alice is still refused.
            assert whoami_status(https, alice) == 403
    finally:
        load.stop.set()
        load.join(timeout=30)
    print(f"SIGKILL {'; '.join(timings)}; {len(load.acked)} writes acknowledged, "
          f"{load.failed} failed during the faults")  # fmt: skip

    # Every acknowledged message is in the database, in the order Synapse acknowledged it.
    stored = psql(
        stack,
        f"SELECT event_id FROM events WHERE room_id = '{room_id}' AND type = 'm.room.encrypted' "
        "ORDER BY stream_ordering",
    ).split()
    missing = set(load.acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost"
    positions = [stored.index(e) for e in load.acked]
    assert positions == sorted(positions)
    # And readable by a client (the room's history through nginx).
    history = https.get(
        f"{MATRIX}/_matrix/client/v3/rooms/{room_id}/messages",
        headers=admin,
        params={"dir": "b", "limit": "1000"},
        timeout=30,
    )
    assert history.status_code == 200
    assert set(load.acked) <= {e["event_id"] for e in history.json()["chunk"]}

    # The second factor's state survived both crashes: the same step cannot be used again.
    assert psql(stack, totp_row(carol.localpart)) == totp_before
    status_line = stack.admin_laptop("lockdown", "status", token=admin_token)
    assert status_line.stdout.startswith("locked down"), status_line.stdout + status_line.stderr
    done = stack.admin_laptop("lockdown", "off", token=admin_token)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_status(https, alice, 200)
    if time.time() // 30 <= int(totp_before.split("|")[0]) + 1:
        # Still within the code's validity: refused only because it was used (a replay).
        assert phone_login(stack, carol, step_code) == 403


# --- a full media disk --------------------------------------------------------------------


def host_sh(script: str) -> str:
    """A shell command in dockerd's mount namespace. This test runs in the private one of `ip
    netns exec`, which neither sees mounts made after it started nor shares its own."""
    pid = Path(os.environ["STACK_TEST_RUN"], "dockerd.pid").read_text().strip()
    done = subprocess.run(
        ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "sh", "-euc", script],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout


def upload(https: requests.Session, session: Session, data: bytes) -> requests.Response:
    return https.post(
        f"{MATRIX}/_matrix/media/v3/upload",
        headers={**session.headers, "Content-Type": "application/octet-stream"},
        data=data,
        timeout=60,
    )


def download(https: requests.Session, session: Session, mxc: str) -> bytes:
    server, media_id = mxc.removeprefix("mxc://").split("/")
    # Authenticated media (Synapse >= 1.111), the legacy path otherwise.
    for path in (f"/_matrix/client/v1/media/download/{server}/{media_id}",
                 f"/_matrix/media/v3/download/{server}/{media_id}"):  # fmt: skip
        response = https.get(f"{MATRIX}{path}", headers=session.headers, timeout=60)
        if response.status_code != 404 or path.startswith("/_matrix/media"):
            assert response.status_code == 200, response.text
            return response.content
    raise AssertionError("unreachable")


def wait_ready(https: requests.Session, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if https.get(f"{MATRIX}/_matrix/client/versions", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "Synapse did not come back"
        time.sleep(1)


@pytest.fixture
def small_media_disk(stack: Stack, https: requests.Session) -> Iterator[Path]:
    """The media store on an 8 MiB filesystem, filled but for 256 KiB; put back afterwards."""
    media = stack.data / "synapse" / "media_store"
    real = media.with_name("media_store.real")
    stack.compose("stop", "synapse")
    host_sh(
        f"mv '{media}' '{real}'; install -d -m 0750 -o 991 -g 991 '{media}';"
        f"mount -t tmpfs -o size=8m,uid=991,gid=991,mode=0750 sg-media '{media}';"
        f"cp -a '{real}/.' '{media}/'"
    )
    try:
        stack.compose("start", "synapse")
        wait_ready(https)
        yield media
    finally:
        stack.compose("stop", "synapse")
        host_sh(
            f"rm -f '{media}/filler'; cp -a '{media}/.' '{real}/'; umount '{media}';"
            f"rmdir '{media}'; mv '{real}' '{media}'"
        )
        stack.compose("start", "synapse")
        wait_ready(https)


def fill(media: Path, leave: int) -> None:
    free = int(host_sh(f"df --output=avail -B1 '{media}' | tail -n 1"))
    assert 0 < free - leave < 8 * 1024 * 1024, f"{free} bytes free: not the small filesystem"
    host_sh(f"head -c {free - leave} /dev/zero > '{media}/filler'")


def test_a_full_media_disk_gives_clean_errors_and_loses_nothing(
    stack: Stack, https: requests.Session, sessions: tuple[Session, Session], small_media_disk: Path
) -> None:
    alice = sessions[0]
    kept = os.urandom(64 * 1024)
    stored = upload(https, alice, kept)
    assert stored.status_code == 200, stored.text
    fill(small_media_disk, leave=256 * 1024)

    big = os.urandom(1024 * 1024)
    for _ in range(3):
        refused = upload(https, alice, big)
        # A clean error from Synapse (JSON, through nginx), not a hang, a reset or a 502.
        assert refused.status_code == 500, (refused.status_code, refused.text[:200])
        assert refused.json()["errcode"] == "M_UNKNOWN"
    # The server and what it stored before are fine.
    assert whoami_status(https, alice) == 200
    assert download(https, alice, stored.json()["content_uri"]) == kept

    # Space returns: uploads work again, and the file comes back byte for byte.
    host_sh(f"rm -f '{small_media_disk}/filler'")
    again = upload(https, alice, big)
    assert again.status_code == 200, again.text
    assert hashlib.sha256(download(https, alice, again.json()["content_uri"])).digest() == (
        hashlib.sha256(big).digest()
    )
    # No record of media whose file is missing or cut short (the failed uploads left none).
    rows = psql(stack, "SELECT media_id, media_length FROM local_media_repository").split()
    local = small_media_disk / "local_content"
    sizes = dict(
        line.split(" ", 1)[::-1]
        for line in host_sh(f"cd '{local}' && find . -type f -printf '%s %P\\n'").splitlines()
    )
    for row in rows:
        media_id, length = row.split("|")
        path = f"{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}"
        assert sizes.get(path) == length, (media_id, sizes.get(path), length)
