"""A member's lock, unlock and removal, Synapse's side (`synapse-guard member ...`).

Locking a member (a lost or seized phone) logs out every session they have (each device
holding a token, every "login as" token acting as them) and removes every pusher, at once;
until they are unlocked, their logins are refused (`Members.refuse_login`, asked by
`Guard.check_login_for_spam`, answered as a wrong password) and any request with a token
that escaped gets 403 (`Members.refuses`, asked by the per-request gate). The lock lives in
the guard's own table (members/store.py): it survives restarts and holds on every worker,
each of which trusts its last read for 2 seconds. Removing a member locks them first (so a
failure half-way leaves them locked), then deactivates the account with erasure, as the
admin API's `deactivate` with `erase: true` does, and drops their second factor.

Endpoints (mounted by Synapse on every listener; server admins only, and only exempt admins
during a lockdown; a "login as" token or a refused address gets 403, as for the lockdown):
    POST /_synapse/client/synapse_guard/member/lock     {"user_id": "@alice:example.org"}
    POST /_synapse/client/synapse_guard/member/unlock   {"user_id": ...}
    POST /_synapse/client/synapse_guard/member/remove   {"user_id": ...}
Each action is audited (event member_locked, member_unlocked, member_removed; the member
pseudonymised) and counted (`synapse_guard_member_actions_total{action}`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from synapse.module_api import DirectServeJsonResource, ModuleApi

from synapse_guard import compat, schema
from synapse_guard.compat import Codes, SynapseError
from synapse_guard.config import GuardConfig
from synapse_guard.gate import LockdownJudge
from synapse_guard.lockdown.control import Lockdown
from synapse_guard.members import store as member_store
from synapse_guard.members.state import LockedCache, parse_member_request
from synapse_guard.record import metrics
from synapse_guard.record.reporting import Reporter
from synapse_guard.request_body import RequestError, read_limited
from synapse_guard.totp import store as totp_store
from synapse_guard.verdict import Check, Reason, allow, deny

logger = logging.getLogger("synapse_guard")

RESOURCE_PREFIX = "/_synapse/client/synapse_guard/member"

_LOCKED = deny(Reason.MEMBER_LOCKED)
_ACTION = allow(Reason.MEMBER_LOCKED)  # what an action's audit record carries
_INTERNAL = deny(Reason.INTERNAL_ERROR)

EndpointCheck = Callable[[Any], None]  # raises the refusal of an endpoint's caller
Action = Callable[[Any, str], Awaitable[dict[str, Any]]]  # (admin's requester, member)


def install(
    api: ModuleApi,
    config: GuardConfig,
    report: Reporter,
    lockdown: Lockdown,
    endpoint_check: EndpointCheck,
) -> Members:
    """Register the endpoints (called from Guard.__init__). `lockdown` decides who may act
    (server admins; only exempt ones during a lockdown); `endpoint_check(requester)` is the
    per-request gate's judgement of the caller, as for the lockdown's endpoints."""
    control = Members(api, config, report, lockdown, endpoint_check)
    for action, handler, logs_out in (
        ("lock", control.lock, True),
        ("unlock", control.unlock, False),
        ("remove", control.remove, True),
    ):
        api.register_web_resource(
            f"{RESOURCE_PREFIX}/{action}", MemberAction(control, handler, logs_out=logs_out)
        )
    return control


class Members:
    def __init__(
        self,
        api: ModuleApi,
        config: GuardConfig,
        report: Reporter,
        lockdown: Lockdown,
        endpoint_check: EndpointCheck,
    ) -> None:
        self._api = api
        self._report = report
        self._metrics = config.metrics.enabled
        self._totp = config.auth.totp != "off"
        self._lockdown = lockdown
        self._check_caller = endpoint_check
        self._cache = LockedCache()
        self._table = schema.Tables(api, "member_locks", (member_store.CREATE,))

    async def _db(self, desc: str, func: Any, *args: Any) -> Any:
        await self._table.ensure()
        return await self._api.run_db_interaction(f"synapse_guard_{desc}", func, *args)

    async def locked(self) -> frozenset[str]:
        cached = self._cache.get()
        if cached is not None:
            return cached
        return self._cache.put(await self._db("member_locks_read", member_store.read_locked))

    # -- callbacks ---------------------------------------------------------------------------

    async def refuses(self, user_id: str) -> bool:
        """True (counted) if `user_id` (the user the token acts as) is locked. Raises if the
        table cannot be read: the gate answers 503 while it lasts."""
        if user_id not in await self.locked():
            return False
        if self._metrics:
            # Counted, not logged: a locked-out client retries, and each retry would log.
            metrics.record(Check.REQUEST, _LOCKED)
        return True

    async def refuse_login(self, user_id: str) -> bool:
        """True (counted, logged and audited) if this login must be refused. Called inside
        the login callback's failure wrapper: an unreadable table refuses the login."""
        if user_id not in await self.locked():
            return False
        self._report(Check.LOGIN, _LOCKED, user=user_id)
        return True

    # -- actions -----------------------------------------------------------------------------

    async def lock(self, requester: Any, user_id: str) -> dict[str, Any]:
        changed = await self._lock(user_id)
        answer = await self._log_out_everywhere(user_id)
        self._done("lock", user_id, "member_locked")
        logger.warning("member locked: %d sessions logged out", answer["revoked_sessions"])
        return {"user_id": user_id, "locked": True, "changed": changed, **answer}

    async def unlock(self, requester: Any, user_id: str) -> dict[str, Any]:
        changed = await self._db("member_unlock", member_store.unlock, user_id)
        self._cache.forget()
        self._done("unlock", user_id, "member_unlocked")
        logger.warning("member unlocked")
        return {"user_id": user_id, "locked": False, "changed": bool(changed)}

    async def remove(self, requester: Any, user_id: str) -> dict[str, Any]:
        """Lock, log out, then deactivate with erasure. The lock stays: logins were refused
        already, and an account an admin reactivates later stays shut until unlocked."""
        await self._lock(user_id)
        answer = await self._log_out_everywhere(user_id)
        await compat.deactivate_account(self._api, user_id, requester)
        if self._totp:
            await self._api.run_db_interaction(
                "synapse_guard_member_totp_remove", _remove_second_factor, user_id
            )
        self._done("remove", user_id, "member_removed")
        logger.warning("member removed: account deactivated and erased")
        return {"user_id": user_id, "locked": True, "deactivated": True, "erased": True, **answer}

    async def _lock(self, user_id: str) -> bool:
        changed = await self._db("member_lock", member_store.lock, user_id, _now_ms())
        self._cache.forget()  # this process refuses at once; the others within 2 s
        return bool(changed)

    async def _log_out_everywhere(self, user_id: str) -> dict[str, Any]:
        """Every session and pusher of the member. A failure does not stop the others; the
        lock refuses what is left, and locking again retries."""
        revoked, failures = 0, []
        seen = await self._db("member_seen_tokens", member_store.select_seen_tokens, user_id)
        devices = await self._db("member_devices", member_store.select_devices, user_id)
        for device_id in devices:
            try:
                # Rotated tokens leave Synapse's token cache first (compat.log_out_session).
                await compat.log_out_session(self._api, user_id, device_id, None, seen)
                seen = []
            except Exception as e:
                failures.append(e)
                continue
            revoked += 1
        for token in await self._db("member_tokens", member_store.select_tokens, user_id):
            try:
                await compat.log_out_session(self._api, user_id, None, token, seen)
                seen = []
            except Exception as e:
                failures.append(e)
                continue
            revoked += 1
        pushers = 0
        for app_id, pushkey in await self._db(
            "member_pushers", member_store.select_pushers, user_id
        ):
            try:
                await compat.remove_pusher(self._api, app_id, pushkey, user_id)
            except Exception as e:
                failures.append(e)
                continue
            pushers += 1
        answer: dict[str, Any] = {"revoked_sessions": revoked, "removed_pushers": pushers}
        if failures:
            answer["failed"] = len(failures)
            self._report(Check.REQUEST, _INTERNAL, user=user_id)
            logger.warning(
                "member: %d sessions or pushers could not be removed (the lock refuses them): %s",
                len(failures),
                failures[0],
                exc_info=failures[0],
            )
        return answer

    def _done(self, action: str, user_id: str, event: str) -> None:
        if self._metrics:
            metrics.MEMBER_ACTIONS.labels(action=action).inc()
        self._report.audit(Check.REQUEST, _ACTION, user=user_id, event=event)

    # -- endpoint authorisation --------------------------------------------------------------

    async def authorise(self, request: Any) -> Any:
        """The admin's requester, or the refusal: as for the lockdown's endpoints (a "login
        as" token or a refused address 403, `allow_expired` so that an exempt admin can act
        during a lockdown, a non-admin 403)."""
        requester = await self._api.get_user_by_req(request, allow_expired=True)
        self._check_caller(requester)
        await self._lockdown.require_admin(str(requester.user.to_string()))
        return requester

    async def member(self, requester: Any, body: bytes) -> str:
        try:
            user_id = parse_member_request(body)
        except RequestError as e:
            raise SynapseError(e.status, str(e), e.errcode) from None
        if not self._api.is_mine(user_id):
            raise SynapseError(400, "user_id: not a user of this server", Codes.INVALID_PARAM)
        canonical = await self._api.check_user_exists(user_id)
        if canonical is None:
            raise SynapseError(404, "user_id: no such user", Codes.NOT_FOUND)
        if canonical == requester.user.to_string():
            raise SynapseError(
                400, "user_id: an admin cannot act on themselves", Codes.INVALID_PARAM
            )
        return str(canonical)

    def refuse_logout_here(self) -> None:
        """400 before anything changes if this process cannot log sessions out."""
        refused = compat.cannot_log_out_here(self._api)
        if refused is not None:
            raise SynapseError(
                400, f"{refused}; send this request to the main process", Codes.INVALID_PARAM
            )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _remove_second_factor(txn: Any, user_id: str) -> bool:
    totp_store.create_table(txn)  # the table exists once anyone enrolled; maybe not yet
    return totp_store.remove(txn, user_id)


class Refusals:
    """What the per-request gate asks: the lockdown, then the member locks."""

    def __init__(self, lockdown: LockdownJudge, members: Members) -> None:
        self._lockdown = lockdown
        self._members = members

    async def refuses(self, user_id: str) -> bool:
        return await self._lockdown.refuses(user_id) or await self._members.refuses(user_id)


class MemberAction(DirectServeJsonResource):
    """`POST {"user_id": ...}` by a server admin."""

    def __init__(self, control: Members, action: Action, *, logs_out: bool) -> None:
        super().__init__()
        self._control = control
        self._action = action
        self._logs_out = logs_out

    async def _async_render_POST(self, request: Any) -> tuple[int, dict[str, Any]]:
        control = self._control
        requester = await control.authorise(request)
        user_id = await control.member(requester, read_limited(getattr(request, "content", None)))
        if self._logs_out:
            control.refuse_logout_here()
        return 200, await self._action(requester, user_id)
