"""A test-only Synapse module: Synapse's own media retention job, every second instead of hourly.

Synapse runs `media_retention` (`MediaRepository._apply_media_retention_rules`) from a looping
call whose period is a module constant, not a setting: one hour (`MEDIA_RETENTION_CHECK_PERIOD`,
`MEDIA_RETENTION_CHECK_PERIOD_MS` before Synapse 1.144), first run one period after start-up.
No test can wait for that. Synapse imports and configures its modules (`parse_config`) while it
reads its configuration, before it builds the media repository (when the listeners start), so
setting the constant here makes that same looping call fire every `period_ms`. Nothing else
changes: the job, its `media_retention:` settings and what it deletes are Synapse's own.
"""

from __future__ import annotations

from typing import Any

from synapse.media import media_repository
from synapse.module_api import ModuleApi


class MediaRetentionPeriod:
    def __init__(self, config: int, api: ModuleApi) -> None:
        pass

    @staticmethod
    def parse_config(config: dict[str, Any]) -> int:
        period_ms = int(config.get("period_ms", 1000))
        if hasattr(media_repository, "MEDIA_RETENTION_CHECK_PERIOD"):
            # Synapse >= 1.144: a Duration (a timedelta subclass).
            duration = type(media_repository.MEDIA_RETENTION_CHECK_PERIOD)
            media_repository.MEDIA_RETENTION_CHECK_PERIOD = duration(milliseconds=period_ms)
        elif hasattr(media_repository, "MEDIA_RETENTION_CHECK_PERIOD_MS"):
            media_repository.MEDIA_RETENTION_CHECK_PERIOD_MS = period_ms
        else:
            # Fail loudly: silently keeping the hourly period would make the test wait in vain.
            raise RuntimeError("this Synapse has no known media retention period constant")
        return period_ms
