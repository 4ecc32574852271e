"""The official image's entrypoint contract, `run` mode only (the one the compose file uses).

As a non-root user without UID/GID it replaces itself with Synapse, passing every argument
after the mode on; the official image then needs no gosu, and neither does this stand-in,
which has none (so it refuses to run as root, where the official image would switch user).
"""

import os
import sys


def main(argv: list[str]) -> None:
    mode = argv[1] if len(argv) > 1 else "run"
    if mode != "run":
        sys.exit(f"stand-in start.py: only the `run` mode exists here, not {mode!r}")
    if os.getuid() == 0 or "UID" in os.environ:
        sys.exit("stand-in start.py: run as a non-root `user:` without UID/GID (no gosu here)")
    args = argv[2:]
    if "-m" not in args:
        args = ["-m", os.environ.get("SYNAPSE_WORKER", "synapse.app.homeserver"), *args]
    os.execv(sys.executable, [sys.executable, *args])


if __name__ == "__main__":
    main(sys.argv)
