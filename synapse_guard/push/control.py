"""The Synapse side of `push:`: no pusher notifies anything but an allowed gateway.

Two layers, both judged by `gateways.decide_pusher`:
- before Synapse stores or starts a pusher (`compat.refuse_pushers_at_creation`): a refused
  pusher is never stored, never started, never notified; the client gets 400;
- a sweep over Synapse's `pushers` table (every `push.sweep_interval`, on the process that
  runs background tasks) removes any refused pusher that is there anyway: stored before the
  guard or before the operator narrowed `allowed_gateways`, or by a Synapse on which the
  first layer is unavailable (a warning at start-up says so).
Each refusal and removal is counted (`check="push"`), logged at INFO without URL or user, and
audited (`pusher_refused`, `pusher_removed`).
"""

from __future__ import annotations

import logging
from typing import Any

import synapse
from synapse.module_api import ModuleApi

from synapse_guard import compat
from synapse_guard.config import GuardConfig, PushPolicy
from synapse_guard.push.gateways import (
    StoredPusher,
    decide_pusher,
    judge_pushers,
    select_pushers_since,
)
from synapse_guard.record.reporting import Reporter
from synapse_guard.verdict import Check, Reason, Verdict, deny

logger = logging.getLogger("synapse_guard")

# What a refused client reads, after Synapse's "Config Error: ". It names no rule.
REFUSAL = "pusher not allowed by this server's push policy"


def install(api: ModuleApi, config: GuardConfig, report: Reporter) -> PushGuard:
    """Register this control (called from Guard.__init__)."""
    control = PushGuard(api, config.push, report)
    control.register()
    return control


class PushGuard:
    def __init__(self, api: ModuleApi, policy: PushPolicy, report: Reporter) -> None:
        self._api = api
        self._policy = policy
        self._report = report
        self._since = 0  # the first sweep reads the whole table
        self._failing: set[int] = set()  # pushers whose removal failed (logged once each)

    def register(self) -> None:
        if not compat.refuse_pushers_at_creation(self._api, self.pusher_allowed, REFUSAL):
            logger.warning(
                "Synapse %s: the guard cannot refuse a pusher before Synapse stores it; a "
                "pusher outside push.allowed_gateways is removed by the sweep within "
                "push.sweep_interval and may be notified until then",
                synapse.__version__,
            )
        if self._api.should_run_background_tasks():
            self._api.looping_background_call(
                self._report.guarded(Check.PUSH, lambda: None)(self.sweep),
                self._policy.sweep_interval_ms,
                desc="synapse_guard_pusher_sweep",
            )
            logger.info(
                "pusher sweep runs on this process every %dms", self._policy.sweep_interval_ms
            )

    def decide(self, kind: object, data: object) -> Verdict:
        return decide_pusher(
            self._policy.allowed_gateways,
            kind,
            data,
            event_id_only=self._policy.require_event_id_only,
        )

    def pusher_allowed(self, kind: str, data: Any, user_id: str) -> bool:
        """Synapse's factory asks, synchronously, before it stores or starts a pusher."""
        try:
            verdict = self.decide(kind, data)
        except Exception:
            # Reporter.guarded wraps coroutines; Synapse calls this one synchronously.
            logger.exception("check=push failed unexpectedly; denying (reason=internal_error)")
            verdict = deny(Reason.INTERNAL_ERROR)
        event = None if verdict.allowed else "pusher_refused"
        return self._report(Check.PUSH, verdict, user=user_id, event=event).allowed

    def _decide_stored(self, pusher: StoredPusher) -> Verdict:
        return self.decide(pusher.kind, pusher.data)

    async def sweep(self) -> None:
        """Remove every stored pusher the policy refuses; a failed removal is retried."""
        rows = await self._api.run_db_interaction(
            "synapse_guard_pushers_since", select_pushers_since, self._since
        )
        result = judge_pushers(rows, self._since, self._decide_stored)
        retry_from: int | None = None
        for pusher, verdict in result.refused:
            try:
                await compat.remove_pusher(self._api, pusher.app_id, pusher.pushkey, pusher.user_id)
            except Exception as e:
                if pusher.id not in self._failing:
                    logger.warning(
                        "could not remove a refused pusher (%s); retrying at every sweep",
                        type(e).__name__,
                    )
                    logger.debug("pusher removal failure", exc_info=True)
                self._failing.add(pusher.id)
                retry_from = pusher.id if retry_from is None else min(retry_from, pusher.id)
                continue
            self._failing.discard(pusher.id)
            self._report(Check.PUSH, verdict, user=pusher.user_id, event="pusher_removed")
        # A failed pusher is re-read from the table at every sweep until it is gone.
        self._failing &= {pusher.id for pusher, _ in result.refused}
        self._since = (
            result.next_since if retry_from is None else min(result.next_since, retry_from - 1)
        )
