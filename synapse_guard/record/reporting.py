"""Counting, logging and the single failure wrapper shared by every callback.

A refusal is logged at INFO on logger `synapse_guard` with the check and the reason only:
no user ID, room ID, address or content (see DESIGN.md, section 5).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from synapse_guard.record import metrics
from synapse_guard.record.audit import AuditTrail
from synapse_guard.verdict import Check, Reason, Verdict, deny

logger = logging.getLogger("synapse_guard")

P = ParamSpec("P")
R = TypeVar("R")


class Reporter:
    def __init__(self, metrics_enabled: bool, audit: AuditTrail | None = None) -> None:
        self._metrics_enabled = metrics_enabled
        self._audit = audit or AuditTrail(None)

    def __call__(
        self,
        check: Check,
        verdict: Verdict,
        *,
        user: str | None = None,
        address: str | None = None,
        event: str | None = None,
    ) -> Verdict:
        """Count a decision; log and audit a refusal (and any decision naming an `event`)."""
        if self._metrics_enabled:
            metrics.record(check, verdict)
        if not verdict.allowed:
            logger.info("refused: check=%s reason=%s", check.value, verdict.reason.value)
        if not verdict.allowed or event is not None:
            self.audit(check, verdict, user=user, address=address, event=event)
        return verdict

    def audit(
        self,
        check: Check,
        verdict: Verdict,
        *,
        user: str | None = None,
        address: str | None = None,
        event: str | None = None,
    ) -> None:
        """An audit record only (the decision was already counted)."""
        self._audit.record(check, verdict, user=user, address=address, event=event)

    def guarded(
        self, check: Check, on_error: Callable[[], R]
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Wrap a callback so that any unexpected exception denies instead of reaching Synapse.

        `on_error` builds the callback's own way of saying "deny" (a `Codes` member, `False`,
        a raised 403...). `functools.wraps` keeps the signature visible to Synapse, which
        inspects some callbacks' parameter counts.
        """

        def wrap(callback: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            @functools.wraps(callback)
            async def run(*args: P.args, **kwargs: P.kwargs) -> R:
                try:
                    return await callback(*args, **kwargs)
                except Exception:
                    logger.exception(
                        "check=%s failed unexpectedly; denying (reason=internal_error)",
                        check.value,
                    )
                    self(check, deny(Reason.INTERNAL_ERROR))
                    return on_error()

            return run

        return wrap


class Outage:
    """Logs a dependency going down once, and coming back once, however many requests fail.

    A request path that cannot reach the database refuses every request while it lasts; a
    traceback per request would flood the log (85 in 12 s were seen under load)."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._down = False

    @property
    def down(self) -> bool:
        return self._down

    def failed(self, error: BaseException) -> None:
        if not self._down:
            self._down = True
            logger.warning(
                "%s unavailable, refusing requests until it answers again: %s: %s",
                self._what,
                type(error).__name__,
                error,
            )

    def recovered(self) -> None:
        if self._down:
            self._down = False
            logger.warning("%s is back", self._what)
