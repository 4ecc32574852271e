"""Second factor for password logins (auth.totp). Not built yet: `install` is a no-op."""

from __future__ import annotations

from synapse.module_api import ModuleApi

from synapse_guard.config import GuardConfig
from synapse_guard.reporting import Reporter


def install(api: ModuleApi, config: GuardConfig, report: Reporter) -> None:
    """Register this control's callbacks and resources (called from Guard.__init__)."""
