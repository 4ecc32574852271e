"""deploy/bin/deadman-shred, run for real against a throwaway LUKS volume.

The volume is a 20 MiB image file in the test's temp dir with a real LUKS2 header (made by
cryptsetup, with a key file), attached to a loop device when this machine allows it (root and
/dev/loop-control); otherwise the script works on the image file itself, which cryptsetup
accepts for everything it does here (luksErase and the overwrite touch only the header).
Never a real disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.integration.harness import REPO

SCRIPT = REPO / "deploy" / "bin" / "deadman-shred"
ARMED = "yes-destroy-the-luks-header"
IMAGE_MIB = 20
DEADMAN = {"locked": True, "cause": "deadman", "since": 1}


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A LUKS2 volume (loop device or image file) whose key file is tmp_path/key."""
    if shutil.which("cryptsetup") is None:
        require("cryptsetup is not installed (apt-get install cryptsetup-bin)")
    image = tmp_path / "volume.img"
    with image.open("wb") as f:
        f.truncate(IMAGE_MIB * 1024 * 1024)
    (tmp_path / "key").write_bytes(os.urandom(32))
    subprocess.run(
        [
            "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
            "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
            "--key-file", str(tmp_path / "key"), str(image),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    # Stand-in for the encrypted data: what follows the header must survive the shredding.
    with image.open("r+b") as f:
        f.seek(16 * 1024 * 1024)
        f.write(os.urandom(1024 * 1024))
    loop = _attach(image)
    try:
        yield Path(loop) if loop else image
    finally:
        if loop:
            subprocess.run(["losetup", "--detach", loop], check=False, capture_output=True)


def _attach(image: Path) -> str | None:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        return None
    result = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def is_luks(device: Path) -> bool:
    return subprocess.run(["cryptsetup", "isLuks", str(device)], check=False).returncode == 0


def key_opens(device: Path, key: Path) -> bool:
    result = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", "--key-file", str(key), str(device)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def data_digest(device: Path) -> str:
    with device.open("rb") as f:
        f.seek(16 * 1024 * 1024)
        return hashlib.sha256(f.read()).hexdigest()


def armed_env(tmp_path: Path, device: Path, status: Any = DEADMAN, **extra: str) -> dict[str, str]:
    flag = tmp_path / "armed"
    flag.write_text(f"{device}\n")
    flag.chmod(0o600)
    status_file = tmp_path / "status.json"
    status_file.write_text(status if isinstance(status, str) else json.dumps(status))
    return {
        "PATH": os.environ["PATH"],
        "DEADMAN_SHRED_ARMED": ARMED,
        "DEADMAN_SHRED_DEVICE": str(device),
        "DEADMAN_SHRED_FLAG_FILE": str(flag),
        "DEADMAN_SHRED_STATUS_FILE": str(status_file),
        **extra,
    }


def shred(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def assert_intact(volume: Path, tmp_path: Path) -> None:
    assert is_luks(volume)
    assert key_opens(volume, tmp_path / "key")


def test_it_refuses_without_both_opt_ins(volume: Path, tmp_path: Path) -> None:
    env = armed_env(tmp_path, volume)
    cases = {
        "no DEADMAN_SHRED_ARMED": {**env, "DEADMAN_SHRED_ARMED": ""},
        "a wrong phrase": {**env, "DEADMAN_SHRED_ARMED": "yes"},
        "no flag file": {**env, "DEADMAN_SHRED_FLAG_FILE": str(tmp_path / "missing")},
    }
    for case, case_env in cases.items():
        result = shred(case_env, "--once")
        assert result.returncode == 1, case
        assert "REFUSED" in result.stderr
        assert "not armed" in result.stderr, case
    assert_intact(volume, tmp_path)


def test_a_flag_for_another_device_or_open_to_others_arms_nothing(
    volume: Path, tmp_path: Path
) -> None:
    env = armed_env(tmp_path, volume)
    flag = Path(env["DEADMAN_SHRED_FLAG_FILE"])
    flag.write_text("/dev/sdz9\n")
    result = shred(env, "--once")
    assert result.returncode == 1
    assert "arms '/dev/sdz9'" in result.stderr
    flag.write_text(f"{volume}\n")
    flag.chmod(0o622)
    result = shred(env, "--once")
    assert result.returncode == 1
    assert "writable by group or others" in result.stderr
    assert_intact(volume, tmp_path)


@pytest.mark.parametrize(
    "status",
    [
        {"locked": True, "cause": "manual", "since": 1},
        {"locked": False, "cause": None, "since": None},
        {"locked": "true", "cause": "deadman"},
        "<html>502 Bad Gateway</html>",
        "",
    ],
    ids=["manual", "open", "string-locked", "not-json", "empty"],
)
def test_anything_but_a_deadman_lockdown_leaves_the_volume(
    volume: Path, tmp_path: Path, status: Any
) -> None:
    result = shred(armed_env(tmp_path, volume, status), "--once")
    assert result.returncode == 0, result.stderr
    assert "destroying" not in result.stderr
    assert_intact(volume, tmp_path)


def test_a_dry_run_says_what_it_would_destroy(volume: Path, tmp_path: Path) -> None:
    result = shred(armed_env(tmp_path, volume), "--once", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"DRY RUN: would erase every key slot of {volume}" in result.stderr
    assert_intact(volume, tmp_path)


def test_armed_and_fired_it_destroys_the_header_and_only_the_header(
    volume: Path, tmp_path: Path
) -> None:
    before = data_digest(volume)
    result = shred(armed_env(tmp_path, volume), "--once")
    assert result.returncode == 0, result.stderr
    assert "can no longer be decrypted" in result.stderr
    assert not is_luks(volume)
    assert not key_opens(volume, tmp_path / "key")
    assert data_digest(volume) == before
    # Already shredded: a second run refuses rather than writing anything.
    again = shred(armed_env(tmp_path, volume), "--once")
    assert again.returncode == 1
    assert "no LUKS header" in again.stderr


def test_watching_it_needs_two_looks_in_a_row(volume: Path, tmp_path: Path) -> None:
    result = shred(armed_env(tmp_path, volume, DEADMAN_SHRED_POLL="1"))
    assert result.returncode == 0, result.stderr
    assert "(2/2)" in result.stderr
    assert not is_luks(volume)


class _Status(BaseHTTPRequestHandler):
    answer: bytes = b""
    seen_token: str | None = None

    def do_GET(self) -> None:
        type(self).seen_token = self.headers.get("Authorization")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).answer)

    def log_message(self, *args: Any) -> None:
        pass


def test_it_reads_the_status_endpoint_with_the_token_from_a_file(
    volume: Path, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        require("curl is not installed")
    _Status.answer = json.dumps(DEADMAN).encode()
    server = HTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        token = tmp_path / "token"
        token.write_text("syt_breakglass_secret\n")
        env = armed_env(tmp_path, volume)
        del env["DEADMAN_SHRED_STATUS_FILE"]
        env["DEADMAN_SHRED_URL"] = f"http://127.0.0.1:{server.server_address[1]}/"
        env["DEADMAN_SHRED_TOKEN_FILE"] = str(token)
        result = shred(env, "--once", "--dry-run")
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert _Status.seen_token == "Bearer syt_breakglass_secret"
    assert "syt_breakglass_secret" not in result.stderr + result.stdout
    assert "DRY RUN" in result.stderr
    assert_intact(volume, tmp_path)


def test_a_bad_argument_is_a_usage_error() -> None:
    result = shred({"PATH": os.environ["PATH"]}, "--now")
    assert result.returncode == 2
    assert "unknown argument" in result.stderr
