"""The per-request gate: every authenticated client request is judged before Synapse serves it.

Synapse asks account validity's `is_user_expired` on every request authenticated with an
access token (client API with /sync, the admin API, module endpoints), except /logout,
/versions and appservice requests, and before it records the request in `user_ips`. That
callback runs inside the request, whose address and URL Synapse's logging context holds
(`compat.current_request`). In this order, the gate refuses with 403 M_FORBIDDEN:
1. a request from an address the network policy refuses (`network.decide_address`, memoised
   per address: a repeated address costs a dictionary lookup);
2. a request whose URL names another server while federation is off
   (`federation.decide_request_target`);
3. a request of a user the lockdown refuses, judged by who holds the token (lockdown/).
A dependency that is down (the GeoIP database unreadable, the database unreachable) answers
503 while it lasts, logged once per outage: nothing passes, and a client retries instead of
ending its session. An unexpected error refuses (403, `internal_error`).

Outside a request (the pusher pool asks whether to notify a user) only the lockdown is
consulted, and the answer is a plain True/None: raising there would stop notifications for
everyone.

The guard's own endpoints authenticate with `allow_expired` (so that an exempt admin can lift
a lockdown); they call `refuse_endpoint_caller` instead.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any, Protocol

from synapse_guard import compat
from synapse_guard.compat import Codes, SynapseError
from synapse_guard.config import GuardConfig
from synapse_guard.federation import decide_request_target
from synapse_guard.geoip import GeoIPDatabase
from synapse_guard.network import CompiledNetworkRules, VerdictCache, decide_address
from synapse_guard.record import metrics
from synapse_guard.record.reporting import Outage, Reporter
from synapse_guard.verdict import Check, Reason, Verdict, deny

logger = logging.getLogger("synapse_guard")

_REPORT_EVERY_S = 300.0  # log and audit a refused (user, address, reason) at most this often
_REPORTED_MAX = 4096
_NO_REQUEST_FACTS = deny(Reason.INVALID_ADDRESS)
_PUPPET = deny(Reason.PUPPET)


class Outcome(enum.Enum):
    SERVE = "serve"
    REFUSE = "refuse"
    UNAVAILABLE = "unavailable"


class LockdownJudge(Protocol):
    async def refuses(self, user_id: str) -> bool: ...


def _forbidden() -> SynapseError:
    return SynapseError(403, "Forbidden", Codes.FORBIDDEN)


def _unavailable() -> SynapseError:
    return SynapseError(503, "Service temporarily unavailable", Codes.UNKNOWN)


class AddressJudge:
    """The network policy for the address of the request being served, memoised."""

    def __init__(self, rules: CompiledNetworkRules, geoip: GeoIPDatabase | None) -> None:
        self._rules = rules
        self._geoip = geoip
        self._cache = VerdictCache()

    def decide(self, address: str) -> Verdict:
        generation = self._geoip.poll() if self._geoip is not None else 0
        verdict = self._cache.get(address, generation)
        if verdict is None:
            country_of = self._geoip.country if self._geoip is not None else None
            verdict = decide_address(address, self._rules, country_of)
            self._cache.put(address, generation, verdict)
        return verdict


class RequestGate:
    def __init__(
        self,
        config: GuardConfig,
        server_name: str,
        report: Reporter,
        addresses: AddressJudge,
        lockdown: LockdownJudge,
    ) -> None:
        self._federation = config.federation
        self._server_name = server_name
        self._report = report
        self._metrics = config.metrics.enabled
        self._addresses = addresses
        self._lockdown = lockdown
        self._database = Outage("the database (lockdown state)")
        self._reported: dict[tuple[str, str, Reason], float] = {}
        self._judge = report.guarded(Check.REQUEST, lambda: Outcome.REFUSE)(self._decide)

    # -- the callback -------------------------------------------------------------------------

    async def is_user_expired(self, user_id: str) -> bool | None:
        """Registered as account validity's `is_user_expired`: refuse by raising."""
        try:
            facts = compat.current_request()
        except LookupError:
            self._refused(_NO_REQUEST_FACTS, user_id, None)  # cannot be judged: refused
            raise _forbidden() from None
        if facts is None:
            # Not a request (the pusher pool): only the lockdown, answered as Synapse expects.
            try:
                return True if await self._lockdown.refuses(user_id) else None
            except Exception as e:
                self._database.failed(e)
                return True  # cannot tell: no notification rather than one to a locked user
        outcome = await self._judge(user_id, facts)
        if outcome is Outcome.UNAVAILABLE:
            raise _unavailable()
        if outcome is Outcome.REFUSE:
            raise _forbidden()
        return None

    async def _decide(self, user_id: str, facts: compat.RequestFacts) -> Outcome:
        verdict = self._addresses.decide(facts.address)
        if verdict.allowed:
            verdict = decide_request_target(
                self._federation, facts.path, facts.query, self._server_name
            )
        if not verdict.allowed:
            self._refused(verdict, user_id, facts.address)
            if verdict.reason is Reason.GEOIP_UNAVAILABLE:
                return Outcome.UNAVAILABLE  # the GeoIP database logs its own outage, once
            return Outcome.REFUSE
        try:
            locked = await self._lockdown.refuses(user_id)
        except Exception as e:
            self._database.failed(e)
            self._count(deny(Reason.INTERNAL_ERROR))
            return Outcome.UNAVAILABLE
        self._database.recovered()
        return Outcome.REFUSE if locked else Outcome.SERVE  # the lockdown counts its refusals

    # -- the guard's own endpoints ------------------------------------------------------------

    def refuse_endpoint_caller(self, requester: Any) -> None:
        """For endpoints that authenticate with `allow_expired` (the gate did not run): the
        address must pass, and the token must be the user's own, not one minted by an admin
        acting as them ("login as user"). Raises the refusal."""
        user_id = str(requester.user.to_string())
        if requester.authenticated_entity != user_id:
            self._refused(_PUPPET, user_id, None)
            raise _forbidden()
        try:
            facts = compat.current_request()
        except LookupError:
            facts = None
        if facts is None:
            self._refused(_NO_REQUEST_FACTS, user_id, None)
            raise _forbidden()
        verdict = self._addresses.decide(facts.address)
        if not verdict.allowed:
            self._refused(verdict, user_id, facts.address)
            if verdict.reason is Reason.GEOIP_UNAVAILABLE:
                raise _unavailable()
            raise _forbidden()

    # -- counting -----------------------------------------------------------------------------

    def _count(self, verdict: Verdict) -> None:
        if self._metrics:
            metrics.record(Check.REQUEST, verdict)

    def _refused(self, verdict: Verdict, user_id: str, address: str | None) -> None:
        """Count every refusal; log and audit each (user, address, reason) once in a while: a
        refused client retries, and every retry would log."""
        key = (user_id, address or "", verdict.reason)
        now = time.monotonic()
        last = self._reported.get(key)
        if last is not None and now - last < _REPORT_EVERY_S:
            self._count(verdict)
            return
        if len(self._reported) >= _REPORTED_MAX:
            self._reported.clear()
        self._reported[key] = now
        self._report(Check.REQUEST, verdict, user=user_id, address=address)


__all__ = ["AddressJudge", "LockdownJudge", "Outcome", "RequestGate"]
