"""Secret keys read from files (the audit pseudonym key, the TOTP sealing key)."""

from __future__ import annotations

from pathlib import Path

from synapse_guard.config import GuardConfigError

MIN_KEY_BYTES = 32


def read_key_file(path: str, key: str) -> bytes:
    """The key in `path`, used as it is (random bytes may start or end with whitespace).

    Raises GuardConfigError naming the config `key` when the file is missing, unreadable or
    shorter than MIN_KEY_BYTES.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise GuardConfigError(key, f"cannot read {path!r}: {e.strerror}") from None
    if len(data) < MIN_KEY_BYTES:
        raise GuardConfigError(
            key,
            f"{path!r} holds {len(data)} bytes; at least {MIN_KEY_BYTES} random bytes are "
            f"needed (e.g. `head -c {MIN_KEY_BYTES} /dev/urandom > {Path(path).name}`)",
        )
    return data
