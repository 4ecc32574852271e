"""The session sweep, Synapse's side: the second layer behind the per-request gate.

Every `network.sweep_interval`, on the process that runs background tasks, it reads what
Synapse recorded in `user_ips` since the last sweep (sessions.py decides, purely, which
sessions to log out and how far to read next) and logs out each session seen from an address
the network policy refuses now. It revokes a session once, counted and audited only after the
logout succeeded; a failed logout is retried at the next sweep, counted once. A session that
cannot be judged (GeoIP database unreadable) is kept, never logged out for it.

The idle sweep (`sessions.idle_timeout`, below) runs beside it, on the same process, every
`sessions.sweep_interval`: it logs out every session nobody used for that long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from synapse.module_api import ModuleApi

from synapse_guard import compat, sessions
from synapse_guard.config import GuardConfig
from synapse_guard.geoip import GeoIPDatabase
from synapse_guard.record import metrics
from synapse_guard.record.reporting import Reporter
from synapse_guard.verdict import Check, Reason, Verdict, deny

logger = logging.getLogger("synapse_guard")


class SessionSweeper:
    def __init__(
        self,
        api: ModuleApi,
        config: GuardConfig,
        report: Reporter,
        geoip: GeoIPDatabase | None,
        decide: Callable[[str], Verdict],
    ) -> None:
        self._api = api
        self._report = report
        self._metrics = config.metrics.enabled
        self._geoip = geoip
        self._decide = decide
        self._sweep = sessions.SessionSweep()

    async def run(self) -> None:
        """One sweep: log out the sessions recorded from a refused address since the last."""
        sweep = self._sweep
        if self._geoip is not None:
            self._geoip.reload_if_changed()  # keeps the build-time gauge fresh
            database = self._geoip
            loaded = (database.database_type, database.build_epoch) if database.available else None
            if sweep.database_loaded(loaded):
                logger.info("session sweep: new GeoIP database, judging every recorded session")
        try:
            rows = await self._api.run_db_interaction(
                "synapse_guard_sessions_seen", sessions.select_seen_since, sweep.since
            )
        except Exception as e:  # the database is down: once per outage, not per sweep
            if not sweep.read_failing:
                sweep.read_failing = True
                self._report(Check.SESSION, deny(Reason.INTERNAL_ERROR))
                logger.warning("session sweep cannot read user_ips, retrying: %s", e, exc_info=e)
            return
        if sweep.read_failing:
            sweep.read_failing = False
            logger.info("session sweep reads user_ips again")
        plan = sweep.judge(rows, self._decide)
        failed: list[sessions.Refusal] = []
        first_failure: Exception | None = None
        new_failures = 0
        episode = not sweep.failing
        for refusal in plan.refusals:
            session = refusal.session
            try:
                tokens = await self._api.run_db_interaction(
                    "synapse_guard_session_tokens", sessions.select_session_tokens, session
                )
                await compat.log_out_session(
                    self._api, session.user_id, session.device_id, session.access_token, tokens
                )
            except Exception as e:
                # Not a new refusal: retried at the next sweep, counted once as an error.
                failed.append(refusal)
                if sweep.logout_failed(refusal):
                    new_failures += 1
                    first_failure = first_failure or e
                    self._report(
                        Check.SESSION,
                        deny(Reason.INTERNAL_ERROR),
                        user=session.user_id,
                        address=refusal.ip,
                    )
                continue
            sweep.logged_out(refusal)
            self._report(
                Check.SESSION,
                refusal.verdict,
                user=session.user_id,
                address=refusal.ip,
                event="session_revoked",
            )
            if self._metrics:
                metrics.SESSIONS_REVOKED.inc()
            if refusal.retry:
                logger.info("session sweep: a logout that had failed succeeded")
        if first_failure is not None:
            logger.warning(
                "session sweep: %d logout(s) failed (%s: %s); retried at every sweep, while "
                "the gate refuses their requests from refused addresses",
                new_failures,
                type(first_failure).__name__,
                first_failure,
                exc_info=first_failure if episode else None,  # one traceback per episode
            )
        self._report_outage(plan)
        sweep.advance(plan, failed)

    def _report_outage(self, plan: sessions.SweepPlan) -> None:
        """Sessions that could not be judged: counted and logged once per outage."""
        started, ended = self._sweep.outage(plan)
        for reason in sorted(started):
            self._report(Check.SESSION, deny(reason))
            logger.warning(
                "session sweep: %d session(s) cannot be judged (reason=%s): none is logged out "
                "for it; they are judged again at every sweep until it is fixed",
                plan.undecided_sessions,
                reason.value,
            )
        if ended:
            logger.info("session sweep: every session is judged again")


# -- idle sessions ---------------------------------------------------------------------------

_IDLE = deny(Reason.IDLE)
IDLE_BATCHES_PER_SWEEP = 20  # at most 10,000 logouts a sweep; the rest at the next one


def install_idle_sweep(api: ModuleApi, config: GuardConfig, report: Reporter) -> IdleSweeper | None:
    """Log out idle sessions every `sessions.sweep_interval`, where background tasks run
    (called from Guard.__init__). None where it does not run."""
    policy = config.sessions
    if policy.idle_timeout_ms is None or not api.should_run_background_tasks():
        return None
    refused = compat.cannot_log_out_here(api)
    if refused is not None:  # else every sweep would fail and every idle session stay
        raise compat.ConfigError(
            f"sessions.idle_timeout: idle sessions are logged out where background tasks run, "
            f"and {refused}: set run_background_tasks_on to the main process (or upgrade "
            "Synapse, or set sessions.idle_timeout: null)"
        )
    sweeper = IdleSweeper(api, config, report)
    api.looping_background_call(
        report.guarded(Check.SESSION, lambda: None)(sweeper.run),
        policy.sweep_interval_ms,
        desc="synapse_guard_idle_sweep",
    )
    logger.info(
        "idle sessions (unused for %dms) are logged out on this process every %dms",
        policy.idle_timeout_ms,
        policy.sweep_interval_ms,
    )
    return sweeper


def _now_ms() -> int:
    return int(time.time() * 1000)  # Synapse writes last_seen with this wall clock too


class IdleSweeper:
    """Each sweep reads the idle sessions (sessions.py) and logs each out, counted and
    audited once its logout succeeded. A failed logout is counted once, and retried at the
    next sweep, which reads it again."""

    def __init__(
        self,
        api: ModuleApi,
        config: GuardConfig,
        report: Reporter,
        now_ms: Callable[[], int] = _now_ms,
    ) -> None:
        assert config.sessions.idle_timeout_ms is not None
        self._api = api
        self._report = report
        self._timeout_ms = config.sessions.idle_timeout_ms
        self._now_ms = now_ms
        self._failing: set[tuple[str, str]] = set()
        self._read_failing = False

    async def run(self) -> None:
        """The looping call."""
        await self.sweep()

    async def sweep(self) -> int:
        """One sweep; returns how many sessions it logged out."""
        revoked = 0
        for _ in range(IDLE_BATCHES_PER_SWEEP):
            now = self._now_ms()
            try:
                uses = await self._api.run_db_interaction(
                    "synapse_guard_idle_sessions",
                    sessions.select_idle_candidates,
                    sessions.idle_cutoff(now, self._timeout_ms),
                )
            except Exception as e:  # the database is down: once per outage, not per sweep
                if not self._read_failing:
                    self._read_failing = True
                    self._report(Check.SESSION, deny(Reason.INTERNAL_ERROR))
                    logger.warning("idle sweep cannot read devices, retrying: %s", e)
                return revoked
            self._read_failing = False
            done, failed = await self._log_out(sessions.select_idle(uses, now, self._timeout_ms))
            revoked += done
            if failed or len(uses) < sessions.IDLE_BATCH:
                break  # all read, or a failure would be read again: next sweep
        if revoked:
            logger.info("idle sweep: logged out %d idle sessions", revoked)
        return revoked

    async def _log_out(self, idle: dict[str, list[str]]) -> tuple[int, int]:
        done = failed = 0
        first_failure: Exception | None = None
        for user_id, devices in idle.items():
            for device_id in devices:
                try:
                    await compat.log_out_session(self._api, user_id, device_id, None)
                except Exception as e:
                    failed += 1
                    if (user_id, device_id) not in self._failing:
                        self._failing.add((user_id, device_id))
                        first_failure = first_failure or e
                        self._report(Check.SESSION, deny(Reason.INTERNAL_ERROR), user=user_id)
                    continue
                self._failing.discard((user_id, device_id))
                done += 1
                self._report(Check.SESSION, _IDLE, user=user_id, event="session_revoked")
        if first_failure is not None:
            logger.warning(
                "idle sweep: %d logout(s) failed (%s: %s); retried at the next sweep",
                failed,
                type(first_failure).__name__,
                first_failure,
                exc_info=first_failure,
            )
        return done, failed
