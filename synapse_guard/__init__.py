"""synapse-guard: a Synapse module for confidential, closed Matrix servers.

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
