"""The alerts endpoint: Alertmanager posts here, the guard posts a notice into the admins' room.

    POST /_synapse/client/synapse_guard/alerts   Alertmanager's webhook (version 4)

Synapse mounts it on every HTTP listener; it answers only when all of these hold, in order:
1. the caller's address is in `alerts.allow_cidrs` (the monitoring network): else 403;
2. `Authorization: Bearer <the secret in alerts.secret_path>`, compared in constant time:
   missing 401, wrong 403;
3. a well-formed webhook of at most 256 KiB: else 400 (413 when larger), never a traceback.
Then one m.notice per delivery (alert names, severities, statuses and counts only: webhook.py),
at most `alerts.notices_per_minute`; the rest are counted into the next notice's last line.

The admins' room is encrypted like every room, and the guard refuses cleartext into encrypted
rooms. Its own notice is the one exception (`own_notice`): the exact event this process is
sending, matched while it is being sent, so no client, not even one holding the sender's token,
can use it. The notice is then readable by the server (its text is the operator's alert names).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from synapse.module_api import DirectServeJsonResource, ModuleApi

from synapse_guard import compat
from synapse_guard.alerts.webhook import (
    MAX_BODY_BYTES,
    NoticeBudget,
    address_allowed,
    bearer_matches,
    parse_webhook,
    render_notice,
)
from synapse_guard.compat import Codes, SynapseError
from synapse_guard.config import AlertsConfig, GuardConfig, GuardConfigError
from synapse_guard.keyfile import read_key_file
from synapse_guard.record import metrics
from synapse_guard.request_body import RequestError, read_limited

logger = logging.getLogger("synapse_guard")

ALERTS_PATH = "/_synapse/client/synapse_guard/alerts"
MESSAGE = "m.room.message"
NOTICE = "m.notice"
MEMBER = "m.room.member"


def load_secret(config: AlertsConfig) -> bytes:
    """The bearer secret, as Alertmanager sends it (surrounding whitespace trimmed)."""
    key = "alerts.secret_path"
    secret = read_key_file(config.secret_path or "", key).strip()
    if len(secret) < 32 or not all(0x21 <= byte <= 0x7E for byte in secret):
        raise GuardConfigError(
            key,
            f"{config.secret_path!r} must hold at least 32 printable characters and no space "
            "(it travels in an HTTP header), e.g. `openssl rand -hex 32`",
        )
    return secret


def install(api: ModuleApi, config: GuardConfig) -> Alerts | None:
    """Register the endpoint when alerts are enabled (called from Guard.__init__)."""
    if not config.alerts.enabled:
        return None
    sender = config.alerts.sender or ""
    if not sender.startswith("@"):
        sender = api.get_qualified_user_id(sender)
    if sender.partition(":")[2] != api.server_name:
        raise compat.ConfigError(f"alerts.sender: {sender!r} is not an account of this server")
    room = config.alerts.room or ""
    if room.startswith("#") and ":" not in room:
        room = f"{room}:{api.server_name}"
    alerts = Alerts(
        api, config.alerts, load_secret(config.alerts), config.metrics.enabled, sender, room
    )
    api.register_web_resource(ALERTS_PATH, AlertsResource(alerts))
    return alerts


class Alerts:
    def __init__(
        self,
        api: ModuleApi,
        config: AlertsConfig,
        secret: bytes,
        metrics_enabled: bool,
        sender: str,
        room: str,
    ) -> None:
        self._api = api
        self._sender = sender
        self._room = room
        self._config = config
        self._secret = secret
        self._metrics = metrics_enabled
        self._budget = NoticeBudget(config.notices_per_minute)
        self._sending: set[tuple[str, str, str]] = set()  # (room, sender, body) being sent
        self._failing = False

    def count(self, outcome: str) -> None:
        if self._metrics:
            metrics.ALERTS_DELIVERED.labels(outcome=outcome).inc()

    def own_notice(self, event: Any) -> bool:
        """Is this the notice this process is sending right now? (the cleartext exception)"""
        if event.type != MESSAGE or event.is_state():
            return False
        content = event.content
        if set(content) != {"msgtype", "body"} or content.get("msgtype") != NOTICE:
            return False
        return (event.room_id, event.sender, content.get("body")) in self._sending

    def refuse_caller(self, request: Any) -> None:
        if not address_allowed(request.getClientAddress().host, self._config.allow_cidrs):
            self.count("address_refused")
            logger.info("alerts: refused a delivery from outside alerts.allow_cidrs")
            raise SynapseError(403, "Forbidden", Codes.FORBIDDEN)
        header = request.requestHeaders.getRawHeaders(b"Authorization")
        if not header:
            self.count("unauthenticated")
            raise SynapseError(401, "Missing bearer secret", Codes.MISSING_TOKEN)
        if len(header) != 1 or not bearer_matches(header[0], self._secret):
            self.count("unauthenticated")
            logger.info("alerts: refused a delivery with a wrong secret")
            raise SynapseError(403, "Forbidden", Codes.FORBIDDEN)

    async def deliver(self, body: bytes) -> dict[str, Any]:
        try:
            delivery = parse_webhook(body)
        except RequestError as e:
            self.count("malformed")
            raise SynapseError(e.status, str(e), e.errcode) from None
        now = time.monotonic()
        if not self._budget.take(now):
            self.count("rate_limited")
            return {"posted": False}
        text = render_notice(delivery, self._budget.suppressed)
        try:
            await self._post(text)
        except Exception as e:
            self._budget.give_back(now)
            self.count("failed")
            if not self._failing:
                self._failing = True
                logger.warning("alerts: cannot post into the admins' room: %s", e)
            # 503: Alertmanager retries the delivery.
            raise SynapseError(503, "Cannot post the notice", Codes.UNKNOWN) from None
        if self._failing:
            self._failing = False
            logger.info("alerts: posting into the admins' room works again")
        self._budget.suppressed = 0
        self.count("posted")
        return {"posted": True}

    async def _room_id(self) -> str:
        room = self._room
        if room.startswith("#"):
            room_id, _servers = await self._api.lookup_room_alias(room)
            return str(room_id)
        return room

    async def _post(self, text: str) -> None:
        room_id, sender = await self._room_id(), self._sender
        state = await self._api.get_room_state(room_id, [(MEMBER, sender)])
        member = state.get((MEMBER, sender))
        membership = member.content.get("membership") if member is not None else None
        if membership == "invite":
            # An admin invited the sender: it accepts on its first notice.
            await self._api.update_room_membership(sender, sender, room_id, "join")
        elif membership != "join":
            raise LookupError("alerts.sender is not a member of alerts.room (invite it)")
        key = (room_id, sender, text)
        self._sending.add(key)
        try:
            await self._api.create_and_send_event_into_room(
                {
                    "type": MESSAGE,
                    "room_id": room_id,
                    "sender": sender,
                    "content": {"msgtype": NOTICE, "body": text},
                }
            )
        finally:
            self._sending.discard(key)


class AlertsResource(DirectServeJsonResource):
    def __init__(self, alerts: Alerts) -> None:
        super().__init__()
        self._alerts = alerts

    async def _async_render_POST(self, request: Any) -> tuple[int, dict[str, Any]]:
        self._alerts.refuse_caller(request)
        body = read_limited(getattr(request, "content", None), MAX_BODY_BYTES)
        return 200, await self._alerts.deliver(body)
