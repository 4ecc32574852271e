"""Migration in minutes (runs last: the old stack goes down for good). The steps of
`deploy/bin/migrate plan`, with a second stack standing in for the new host (another project
name and data root, and a copy of the checkout made by `migrate copy-stack`): a last backup,
the old stack stopped, the new host's .env and data directories, the backup restored with
`migrate restore`, `migrate start`, `migrate smoke-test`; then the members' sessions and
logins work on the new stack. The time from the old stack's stop to a working new one is
printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import requests

from tests.stack.conftest import MATRIX, Member, Session, Stack, login


def new_host_env(**extra: str) -> dict[str, str]:
    """The new host's shell: scripts/stack-test exports the old stack's DATA_ROOT, which would
    win over the new deploy/.env (in docker compose and in bin/*, as documented)."""
    env = {k: v for k, v in os.environ.items() if k != "DATA_ROOT"}
    return {**env, **extra}


def run(cwd: Path, *cmd: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        list(cmd), cwd=cwd, env=env or new_host_env(), capture_output=True, text=True,
        timeout=900, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if done.returncode != 0:
        logs = subprocess.run(
            ["docker", "compose", "logs", "--no-color", "--tail", "40"], cwd=cwd,
            env=new_host_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        raise AssertionError(
            f"{' '.join(cmd)} failed: {done.stderr[-3000:]}\n--- logs:\n{logs.stdout[-6000:]}"
        )
    return done.stdout


def set_env(env_file: Path, key: str, value: str) -> None:
    text = env_file.read_text()
    text, found = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
    env_file.write_text(text if found else f"{text}{key}={value}\n")


def make_data_dirs(deploy: Path, data_root: Path) -> None:
    """The data directories with their owners: .env.example's own `install -d` lines, run."""
    lines = [
        line.lstrip("# ").split("  (")[0]
        for line in (deploy / ".env.example").read_text().splitlines()
        if line.lstrip("# ").startswith("install -d ")
    ]
    assert len(lines) >= 8, lines
    for line in lines:
        subprocess.run(["bash", "-c", line.replace("$DATA_ROOT", str(data_root))], check=True)


def test_migrate_to_a_second_stack_from_a_backup(
    stack: Stack,
    https: requests.Session,
    members: tuple[Member, Member],
    sessions: tuple[Session, Session],
) -> None:
    alice = sessions[0]
    run_dir = Path(os.environ["STACK_TEST_RUN"])
    new_checkout, new_data = run_dir / "new-host", run_dir / "new-data"
    # The old host: a last backup, then nothing writes any more (plan step 6); here the whole
    # stack goes down, since the new one takes the same published port and subnets.
    stack.compose("run", "--rm", "backup", "/opt/deploy/bin/backup")
    backup = sorted((stack.data / "backups").glob("synapse-guard-backup-*.tar.age"))[-1]
    onion_address = (stack.data / "tor" / "onion" / "hostname").read_text()
    started = time.monotonic()
    stack.compose("down")

    # The new host: the checkout (plan step 2), its .env with another data root and project.
    run(stack.deploy, "bin/migrate", "copy-stack", str(new_checkout))
    deploy = new_checkout / "deploy"
    assert not (deploy / ".env").exists(), "copy-stack must not copy .env"
    shutil.copy(stack.deploy / ".env", deploy / ".env")
    shutil.copy(stack.deploy / "backup-recipients.txt", deploy / "backup-recipients.txt")
    set_env(deploy / ".env", "DATA_ROOT", str(new_data))
    set_env(deploy / ".env", "COMPOSE_PROJECT_NAME", f"{stack.project}new")
    new_data.mkdir()
    make_data_dirs(deploy, new_data)
    # The certificates (plan step 5: copied, certbot renews them later), the backup (step 3).
    # (cp -a: nginx reads the key as its own uid, which the copy must keep)
    subprocess.run(
        ["cp", "-a", f"{stack.data}/letsencrypt/.", f"{new_data}/letsencrypt/"], check=True
    )
    (new_data / "backups").mkdir(exist_ok=True)
    for f in (backup, backup.with_name(backup.name + ".sha256")):
        shutil.copy2(f, new_data / "backups" / f.name)
    env = new_host_env(AGE_IDENTITY_FILE=str(stack.age_identity))
    run(deploy, "bin/migrate", "restore", str(new_data / "backups" / backup.name), env=env)
    run(deploy, "bin/migrate", "start")
    run(deploy, "docker", "compose", "up", "-d", "--wait")
    smoke = subprocess.run(
        ["bin/migrate", "smoke-test", MATRIX], cwd=deploy, capture_output=True, text=True,
        env=new_host_env(CURL_CA_BUNDLE=stack.ca), timeout=120,
    )  # fmt: skip
    assert smoke.returncode == 0, smoke.stderr
    took = time.monotonic() - started
    print(f"migration: old stack stopped to new stack serving in {took:.0f}s")

    new = Stack(stack.project + "new", deploy, new_data, stack.ca, stack.age_identity)
    assert new.inspect("synapse")["State"]["Running"]
    assert stack.compose("ps", "-q").strip() == "", "the old stack is still running"
    # The members' sessions moved with the database, and their passwords log in.
    whoami = https.get(
        f"{MATRIX}/_matrix/client/v3/account/whoami", headers=alice.headers, timeout=30
    )
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["user_id"] == alice.member.user_id
    response = login(https, members[1])
    assert response.status_code == 200, response.text
    # And the data root in use is the new one (Synapse writes its media there).
    assert (new_data / "synapse" / "media_store").is_dir()
    # The onion service kept its address: its keys came with the backup.
    assert (new_data / "tor" / "onion" / "hostname").read_text() == onion_address
