"""The restore drill on the live stack (runs last: it replaces the database): back up, wipe
the database and the media, restore with the operator's `bin/migrate restore` and `start`, and
the same users, rooms, events and media come back, and the members' sessions still work."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import requests

from tests.stack.conftest import MATRIX, Session, Stack, psql

STATE_SQL = {
    "users": "SELECT name, admin, deactivated FROM users ORDER BY name",
    "rooms": "SELECT room_id, creator FROM rooms ORDER BY room_id",
    "events": "SELECT event_id, room_id, type, sender FROM events ORDER BY stream_ordering",
    "encrypted": "SELECT event_id, json FROM event_json"
    " WHERE json LIKE '%m.room.encrypted%' ORDER BY event_id",
    "media": "SELECT media_id, media_length, user_id FROM local_media_repository ORDER BY media_id",
}


def database_state(stack: Stack) -> dict[str, str]:
    return {name: psql(stack, sql) for name, sql in STATE_SQL.items()}


def media_files(stack: Stack) -> dict[str, int]:
    root = stack.data / "synapse" / "media_store" / "local_content"
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def file_owners(folder: Path) -> dict[str, tuple[int, int, int]]:
    """uid, gid and mode of every file: the containers' uids, which this host may name
    differently (its own `postgres` user has another uid than the image's 70)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_wipe_and_restore_brings_everything_back(
    stack: Stack, https: requests.Session, sessions: tuple[Session, Session]
) -> None:
    alice = sessions[0]
    # Something to lose, so the comparison is about content: a message and a file.
    room = https.post(
        f"{MATRIX}/_matrix/client/v3/createRoom", headers=alice.headers, json={}, timeout=30
    )
    assert room.status_code == 200, room.text
    upload = https.post(
        f"{MATRIX}/_matrix/media/v3/upload",
        headers={**alice.headers, "Content-Type": "application/octet-stream"},
        data=os.urandom(4096),
        timeout=30,
    )
    assert upload.status_code == 200, upload.text
    # Nothing writes between the comparison's first side and the backup (Alertmanager's
    # notices would).
    stack.compose("stop", "alertmanager")
    before, files = database_state(stack), media_files(stack)
    owners = {d: file_owners(stack.data / d) for d in ("secrets", "synapse")}
    assert before["users"].count("\n") >= 2, before["users"]
    assert before["encrypted"], "no encrypted event to compare"
    assert files

    stack.compose("run", "--rm", "backup", "/opt/deploy/bin/backup")
    backup = sorted((stack.data / "backups").glob("synapse-guard-backup-*.tar.age"))[-1]

    # The disaster: the stack stops, the database cluster and the media are gone.
    stack.compose("down")
    subprocess.run(["find", str(stack.data / "postgres"), "-mindepth", "1", "-delete"], check=True)
    subprocess.run(["rm", "-rf", str(stack.data / "synapse" / "media_store")], check=True)

    env = {**os.environ, "AGE_IDENTITY_FILE": str(stack.age_identity)}
    started = time.monotonic()
    for step in (["restore", str(backup)], ["start"]):
        done = subprocess.run(
            ["bin/migrate", *step],
            cwd=stack.deploy,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"migrate {step[0]}: {done.stderr[-3000:]}"
    stack.compose("up", "-d", "--wait")
    print(f"restore and start took {time.monotonic() - started:.0f}s")

    after = database_state(stack)
    # The restored stack runs again: Alertmanager, restarted with it, may already have posted
    # a notice (Prometheus re-sends what still fires). Everything of the backup is back, in
    # its order; anything after it is such a notice.
    restored, backed_up = after.pop("events").splitlines(), before.pop("events").splitlines()
    assert restored[: len(backed_up)] == backed_up
    later = restored[len(backed_up) :]
    assert all(line.endswith("|m.room.message|@alerts:stack.test") for line in later), later
    assert after == before
    assert media_files(stack) == files
    assert file_owners(stack.data / "secrets") == owners["secrets"]
    # Synapse's data: every file that is there again (its pid file comes and goes).
    restored = file_owners(stack.data / "synapse")
    common = owners["synapse"].keys() & restored.keys()
    assert "homeserver.yaml" in common, sorted(restored)[:20]
    assert any(name.startswith("media_store/local_content/") for name in common)
    assert {k: restored[k] for k in common} == {k: owners["synapse"][k] for k in common}
    # The members' sessions survived the restore; the client API answers through nginx.
    whoami = https.get(
        f"{MATRIX}/_matrix/client/v3/account/whoami", headers=alice.headers, timeout=30
    )
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["user_id"] == alice.member.user_id
