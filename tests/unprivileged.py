"""Run a command without the privilege to read files whatever their mode.

Tests run as root, and root reads a file of mode 000: a test of "an unreadable file is refused"
would prove nothing. As root, the command runs through util-linux's `setpriv` with every
capability dropped (no CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH): still uid 0, so it can read
the test environment, but the permission bits of a file now hold for it as for any user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence


def without_file_privileges(argv: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(argv)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("setpriv (util-linux) is needed to drop root's file privileges")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--", *argv]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -c code args...` in this interpreter, without file privileges."""
    return subprocess.run(
        without_file_privileges([sys.executable, "-c", code, *args]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
