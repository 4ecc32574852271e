"""The metadata purge: deletes the activity log Synapse keeps for ever.

Synapse writes `user_daily_visits` (member, device, day, user agent) every 5 minutes on the
process that runs background tasks, whether `report_stats` is on or off
(synapse/app/phone_stats_home.py, 1.100 to 1.163), and never deletes a row: a seized database
would say who was active on which day with which client since the server started. Each row's
`timestamp` is the start of its day (UTC, ms). Synapse reads the table only for the statistics
it phones home (`report_stats`), which lose their 30-day figures once rows are deleted.

Every `retention.daily_visits_purge_interval`, on that same process, the rows whose day began
more than `retention.daily_visits_max_age` ago are deleted (`null` keeps Synapse's behaviour).
A failed purge is logged once per outage and retried at the next run; it never reaches Synapse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from synapse.module_api import ModuleApi

from synapse_guard.config import GuardConfig
from synapse_guard.record import metrics

logger = logging.getLogger("synapse_guard")

TABLE = "user_daily_visits"
# One statement over the table's timestamp index: a small team's table is thousands of rows.
# `?` placeholders: Synapse rewrites them for PostgreSQL.
_DELETE = "DELETE FROM user_daily_visits WHERE timestamp < ?"

Txn = Any  # Synapse's LoggingTransaction


def cutoff_ms(now_ms: int, max_age_ms: int) -> int:
    """Rows whose day began before this are deleted: a day of activity is kept at most
    `max_age` after it began (plus one purge interval)."""
    return now_ms - max_age_ms


def delete_older_than(txn: Txn, cutoff: int) -> int:
    """A `run_db_interaction` body (SQLite and PostgreSQL alike); returns the rows deleted."""
    txn.execute(_DELETE, (cutoff,))
    return max(int(txn.rowcount), 0)


def _now_ms() -> int:
    return int(time.time() * 1000)  # Synapse stamps the rows with this wall clock too


class MetadataPurge:
    def __init__(
        self,
        api: ModuleApi,
        max_age_ms: int,
        *,
        metrics_enabled: bool,
        now_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._api = api
        self._max_age_ms = max_age_ms
        self._metrics = metrics_enabled
        self._now_ms = now_ms
        self._failing = False

    async def run(self) -> int | None:
        """One purge; the rows deleted, or None when it failed (retried at the next run)."""
        try:
            deleted = await self._api.run_db_interaction(
                "synapse_guard_purge_daily_visits",
                delete_older_than,
                cutoff_ms(self._now_ms(), self._max_age_ms),
            )
        except Exception as e:  # the database is down: logged once per outage, not per run
            if self._metrics:
                metrics.METADATA_PURGE_FAILURES.labels(table=TABLE).inc()
            if not self._failing:
                self._failing = True
                logger.warning(
                    "metadata purge cannot delete old %s rows, retrying at every run: %s: %s",
                    TABLE,
                    type(e).__name__,
                    e,
                    exc_info=e,
                )
            return None
        if self._failing:
            self._failing = False
            logger.info("metadata purge deletes %s rows again", TABLE)
        if self._metrics:
            metrics.METADATA_PURGED_ROWS.labels(table=TABLE).inc(deleted)
        logger.info("metadata purge: deleted %d %s row(s)", deleted, TABLE)
        return int(deleted)


def install(api: ModuleApi, config: GuardConfig) -> MetadataPurge | None:
    """Purge every `retention.daily_visits_purge_interval` where background tasks run, as
    Synapse writes the table only there (called from Guard.__init__). None elsewhere."""
    policy = config.retention
    if not api.should_run_background_tasks():
        return None
    if policy.daily_visits_max_age_ms is None:
        logger.warning(
            "retention.daily_visits_max_age is null: Synapse keeps %s (who was active on "
            "which day, with which client) for ever",
            TABLE,
        )
        return None
    purge = MetadataPurge(
        api, policy.daily_visits_max_age_ms, metrics_enabled=config.metrics.enabled
    )
    api.looping_background_call(  # run() never raises: a failure is logged, retried next time
        purge.run, policy.daily_visits_purge_interval_ms, desc="synapse_guard_metadata_purge"
    )
    logger.info(
        "metadata purge: %s rows older than %dms are deleted on this process every %dms",
        TABLE,
        policy.daily_visits_max_age_ms,
        policy.daily_visits_purge_interval_ms,
    )
    return purge
