"""Server-wide lockdown and the dead man's switch (docs/lockdown.md).

While locked, every authenticated request of a user outside `lockdown.exempt_users` gets 403
M_FORBIDDEN (`Lockdown.refuses`, asked by the per-request gate, synapse_guard/gate.py) and
their logins are refused (`Lockdown.refuse_login`, asked by `Guard.check_login_for_spam`).
Exemption belongs to whoever holds the token: a "login as user" token that a non-exempt admin
minted for an exempt user is revoked and refused. The state lives in the
guard's own table (lockdown_store), so it holds across restarts and on every worker; each
process trusts its last read for 2 seconds.

Endpoints (mounted by Synapse on every listener, authenticated here):
    GET  /_synapse/client/synapse_guard/lockdown   server admins: the state
    POST /_synapse/client/synapse_guard/lockdown   {"locked": bool, "revoke_sessions": bool}
    POST /_synapse/client/synapse_guard/checkin    a check-in for the dead man's switch
While locked, only exempt admins may use the lockdown endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from synapse.module_api import DirectServeJsonResource, ModuleApi

from synapse_guard import compat, schema
from synapse_guard.compat import Codes, SynapseError
from synapse_guard.config import GuardConfig, LockdownConfig
from synapse_guard.lockdown import store as lockdown_store
from synapse_guard.lockdown.state import (
    LockdownState,
    RequestError,
    StateCache,
    deadman_poll_ms,
    login_refused,
    parse_checkin,
    parse_switch,
    status_json,
    user_expired,
)
from synapse_guard.record import metrics
from synapse_guard.record.reporting import Reporter
from synapse_guard.request_body import read_limited
from synapse_guard.verdict import Check, Reason, allow, deny

logger = logging.getLogger("synapse_guard")

LOCKDOWN_PATH = "/_synapse/client/synapse_guard/lockdown"
CHECKIN_PATH = "/_synapse/client/synapse_guard/checkin"

_LOCKDOWN = deny(Reason.LOCKDOWN)
_PUPPET = deny(Reason.PUPPET)
_INTERNAL = deny(Reason.INTERNAL_ERROR)
# Every process re-reads the state this often for its `lockdown_active` gauge, also one that
# serves no request (otherwise an idle worker keeps showing a lifted lockdown).
GAUGE_REFRESH_MS = 5_000


EndpointCheck = Callable[[Any], None]  # raises the refusal of an endpoint's caller


def install(
    api: ModuleApi, config: GuardConfig, report: Reporter, endpoint_check: EndpointCheck
) -> Lockdown:
    """Register this control's resources and timer (called from Guard.__init__).

    `endpoint_check(requester)` is the per-request gate's judgement of the caller (address,
    "login as" tokens): these endpoints authenticate with `allow_expired`, so the gate does
    not run for them by itself."""
    control = Lockdown(
        api, config.lockdown, report, metrics_enabled=config.metrics.enabled, check=endpoint_check
    )
    control.register()
    return control


class Lockdown:
    def __init__(
        self,
        api: ModuleApi,
        config: LockdownConfig,
        report: Reporter,
        *,
        metrics_enabled: bool,
        check: EndpointCheck,
    ) -> None:
        self._api = api
        self._check_caller = check
        self._config = config
        self._report = report
        self._metrics = metrics_enabled
        self._cache = StateCache()
        self._table = schema.Tables(api, "lockdown", (lockdown_store.CREATE,))
        self._gauge_failing = False

    def register(self) -> None:
        guarded = self._report.guarded
        self._api.register_web_resource(LOCKDOWN_PATH, LockdownResource(self))
        self._api.register_web_resource(CHECKIN_PATH, CheckinResource(self))
        interval = self._config.deadman_interval_ms
        if interval is not None and self._api.should_run_background_tasks():  # else Synapse warns
            self._api.looping_background_call(
                guarded(Check.REQUEST, lambda: None)(self.deadman_tick),
                deadman_poll_ms(interval),
                desc="synapse_guard_deadman",
            )
            logger.info("dead man's switch runs on this process")
        if self._metrics:
            self._api.looping_background_call(
                self.refresh_gauge,
                GAUGE_REFRESH_MS,
                desc="synapse_guard_lockdown_gauge",
                run_on_all_instances=True,
            )
        if not self._config.exempt_users:
            logger.warning(
                "lockdown.exempt_users is empty: once the server is locked down, no account can "
                "unlock it through the API (see docs/lockdown.md, 'Recovery')"
            )

    # -- state -------------------------------------------------------------------------------

    async def _db(self, desc: str, func: Any, *args: Any) -> Any:
        await self._table.ensure()
        return await self._api.run_db_interaction(f"synapse_guard_{desc}", func, *args)

    def _remember(self, state: LockdownState) -> LockdownState:
        self._cache.put(state)
        if self._metrics:
            metrics.LOCKDOWN_ACTIVE.set(1 if state.locked else 0)
        return state

    async def state(self) -> LockdownState:
        cached = self._cache.get()
        if cached is not None:
            return cached
        return self._remember(await self._db("lockdown_read", lockdown_store.read_state))

    async def refresh_gauge(self) -> None:
        """The looping call of every process: its gauge follows the table (logged once per
        outage; the gauge keeps its last value meanwhile)."""
        try:
            await self.state()
        except Exception as e:
            if not self._gauge_failing:
                self._gauge_failing = True
                logger.warning("lockdown: cannot read the state for its gauge, retrying: %s", e)
            return
        if self._gauge_failing:
            self._gauge_failing = False
            logger.info("lockdown: the state is readable again")

    def exempt(self, user_id: str) -> bool:
        return user_id in self._config.exempt_users

    # -- callbacks ---------------------------------------------------------------------------

    async def refuses(self, user_id: str) -> bool:
        """True (counted) if the lockdown refuses a request of `user_id` (the user the token
        acts as). Raises if the state cannot be read: the caller decides what an outage
        answers."""
        state = await self.state()
        if not state.locked:
            return False
        if user_expired(state, user_id, self._config.exempt_users):
            if self._metrics:
                # Counted, not logged: a locked-out client retries, and each retry would log.
                metrics.record(Check.REQUEST, _LOCKDOWN)
            return True
        return await self._refuse_foreign_puppets(user_id)

    async def _refuse_foreign_puppets(self, user_id: str) -> bool:
        """An exempt user's request during a lockdown: is some token for them one that a
        non-exempt admin minted ("login as user")? Synapse does not tell which token this
        request carries, so all of those are revoked, and this request refused; the exempt
        admin's own next request passes. Exempt users are few, so the query is cheap."""
        tokens = await self._db(
            "lockdown_puppets",
            lockdown_store.select_foreign_puppet_tokens,
            user_id,
            self._config.exempt_users,
        )
        if not tokens:
            return False
        for token in tokens:
            await compat.log_out_session(self._api, user_id, None, token)
        logger.warning(
            "lockdown: revoked %d 'login as' token(s) that a non-exempt admin minted for an "
            "exempt user; the request was refused",
            len(tokens),
        )
        self._report(Check.REQUEST, _PUPPET, user=user_id, event="puppet_revoked")
        return True

    async def refuse_login(self, user_id: str) -> bool:
        """True (counted, logged and audited) if this login must be refused.

        Called by `Guard.check_login_for_spam`, which already runs inside the single failure
        wrapper (an error there refuses the login)."""
        if self.exempt(user_id):
            return False
        if login_refused(await self.state(), user_id, self._config.exempt_users):
            self._report(Check.LOGIN, _LOCKDOWN, user=user_id)
            return True
        return False

    # -- switching ---------------------------------------------------------------------------

    async def switch(self, locked: bool, cause: str, user: str | None = None) -> bool:
        """Lock or unlock; True if this changed the state."""
        result = await self._db("lockdown_switch", lockdown_store.switch, locked, cause)
        self._remember(result.state)
        if result.changed:
            self._announce(result.state, user)
        return bool(result.changed)

    def _announce(self, state: LockdownState, user: str | None) -> None:
        if state.locked:
            logger.warning("lockdown switched on (cause=%s)", state.cause)
            if self._metrics:
                metrics.LOCKDOWNS.labels(cause=state.cause or "manual").inc()
        else:
            logger.warning("lockdown switched off")
        event = "lockdown_on" if state.locked else "lockdown_off"
        self._report.audit(Check.REQUEST, allow(Reason.LOCKDOWN), user=user, event=event)

    def refuse_revocation_here(self) -> None:
        """400 before anything is switched if this process cannot log sessions out."""
        refused = compat.cannot_log_out_here(self._api)
        if refused is not None:
            raise SynapseError(
                400,
                f"revoke_sessions: {refused}; send this request to the main process",
                Codes.INVALID_PARAM,
            )

    async def revoke_sessions(self) -> tuple[int, int]:
        """Log out every session of every user who is not exempt; returns (logged out,
        failed). A failed logout does not stop the others (nor the answer to the switch);
        while locked, those sessions are refused anyway."""
        sessions = await self._db(
            "lockdown_sessions", lockdown_store.select_sessions, self._config.exempt_users
        )
        revoked, failures = 0, []
        for user_id, device_id, token in sessions:
            try:
                seen = await self._db(
                    "lockdown_session_tokens", lockdown_store.select_seen_tokens, user_id, device_id
                )
                await compat.log_out_session(self._api, user_id, device_id, token, seen)
            except Exception as e:
                failures.append(e)
                continue
            revoked += 1
            if self._metrics:
                metrics.LOCKDOWN_SESSIONS_REVOKED.inc()
        if revoked:
            logger.warning("lockdown: logged out %d sessions", revoked)
        if failures:
            self._report(Check.REQUEST, _INTERNAL)
            logger.warning(
                "lockdown: %d sessions could not be logged out: %s",
                len(failures),
                failures[0],
                exc_info=failures[0],
            )
        return revoked, len(failures)

    async def checkin(self, user: str) -> int:
        now = int(await self._db("deadman_checkin", lockdown_store.record_checkin))
        if self._metrics:
            metrics.DEADMAN_LAST_CHECKIN.set(now / 1000)
        logger.info("dead man's switch: check-in recorded")
        self._report.audit(Check.REQUEST, allow(Reason.LOCKDOWN), user=user, event="checkin")
        return now

    async def status(self) -> dict[str, Any]:
        snapshot = await self._db("lockdown_status", lockdown_store.read_snapshot)
        self._remember(snapshot.state)
        return status_json(
            snapshot.state,
            self._config.deadman_interval_ms,
            snapshot.last_checkin_ms,
            snapshot.now_ms,
        )

    async def deadman_tick(self) -> None:
        interval = self._config.deadman_interval_ms
        if interval is None:
            return
        snapshot, locked = await self._db("deadman_tick", lockdown_store.deadman_lock, interval)
        self._remember(snapshot.state)
        if self._metrics and snapshot.last_checkin_ms is not None:
            metrics.DEADMAN_LAST_CHECKIN.set(snapshot.last_checkin_ms / 1000)
        if locked:
            logger.warning(
                "dead man's switch: no check-in for %d ms (interval %d ms); locking down",
                snapshot.now_ms - (snapshot.last_checkin_ms or snapshot.now_ms),
                interval,
            )
            self._announce(snapshot.state, None)

    # -- endpoint authorisation --------------------------------------------------------------

    async def caller(self, request: Any) -> str:
        # allow_expired: the guard's own `is_user_expired` must not shut exempt admins (nor a
        # check-in) out of these endpoints; the rules below decide instead.
        requester = await self._api.get_user_by_req(request, allow_expired=True)
        self._check_caller(requester)  # refused address or "login as" token: 403
        return str(requester.user.to_string())

    async def require_admin(self, user: str) -> None:
        if not await self._api.is_user_admin(user):
            raise SynapseError(403, "You are not a server admin", Codes.FORBIDDEN)
        if not self.exempt(user) and (await self.state()).locked:
            raise SynapseError(
                403, "The server is locked down; only exempt admins may do this", Codes.FORBIDDEN
            )

    async def require_checkin_user(self, user: str) -> None:
        if self._config.checkin_users:
            allowed = user in self._config.checkin_users
        else:
            allowed = await self._api.is_user_admin(user)
        if not allowed:
            raise SynapseError(403, "You may not check in", Codes.FORBIDDEN)


def _body(request: Any) -> bytes:
    return read_limited(getattr(request, "content", None))


def _bad_request(error: RequestError) -> SynapseError:
    return SynapseError(error.status, str(error), error.errcode)


class LockdownResource(DirectServeJsonResource):
    def __init__(self, control: Lockdown) -> None:
        super().__init__()
        self._control = control

    async def _async_render_GET(self, request: Any) -> tuple[int, dict[str, Any]]:
        control = self._control
        await control.require_admin(await control.caller(request))
        return 200, await control.status()

    async def _async_render_POST(self, request: Any) -> tuple[int, dict[str, Any]]:
        control = self._control
        user = await control.caller(request)
        await control.require_admin(user)
        try:
            wanted = parse_switch(_body(request))
        except RequestError as e:
            raise _bad_request(e) from None
        if wanted.revoke_sessions:
            control.refuse_revocation_here()
        changed = await control.switch(wanted.locked, "manual", user)
        revoked, failed = await control.revoke_sessions() if wanted.revoke_sessions else (0, 0)
        status = await control.status()
        answer = {**status, "changed": changed, "revoked_sessions": revoked}
        if failed:
            answer["revoke_failed"] = failed
        return 200, answer


class CheckinResource(DirectServeJsonResource):
    def __init__(self, control: Lockdown) -> None:
        super().__init__()
        self._control = control

    async def _async_render_POST(self, request: Any) -> tuple[int, dict[str, Any]]:
        control = self._control
        user = await control.caller(request)
        await control.require_checkin_user(user)
        try:
            parse_checkin(_body(request))
        except RequestError as e:
            raise _bad_request(e) from None
        await control.checkin(user)
        return 200, await control.status()
