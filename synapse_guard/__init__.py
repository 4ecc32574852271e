"""synapse-guard: a Synapse module for confidential, closed Matrix servers.

The package is laid out by where the code runs:
- at the front, the controls Synapse runs: one pure decision per file (`registration`,
  `federation`, `rooms`, `events`, `network`, `geoip`, `sessions`, `retention_check`), the
  config model (`config`), the verdict type (`verdict`), the version shims (`compat`), and
  `module`, the one place that registers Synapse callbacks;
- `totp/` and `lockdown/`: the second factor and the lockdown, each a Synapse side, a pure core
  and a store;
- `record/`: what the guard tells the operator (metrics, audit trail, the reporting wrapper,
  the log filter); it records decisions and never makes one;
- `cli/`: the `synapse-guard` command; never loaded by Synapse.
Imports run one way: `cli/` may import anything; nothing else imports `cli/`.

`synapse_guard.Guard` is imported lazily so that the configuration model and the CLI work on
hosts where Synapse itself is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from synapse_guard.module import Guard

__all__ = ["Guard", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Guard":
        from synapse_guard.module import Guard

        return Guard
    raise AttributeError(f"module 'synapse_guard' has no attribute {name!r}")
