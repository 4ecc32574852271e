"""The Synapse module: registers callbacks and translates between Synapse and the decisions.

Every callback is thin: gather values, call a pure decision, count and log it, and answer in
the form Synapse expects. Any unexpected error denies (see `Reporter.guarded`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from synapse.module_api import ModuleApi

from synapse_guard import compat, federation, metadata_purge, registration, rooms
from synapse_guard.alerts import control as alerts
from synapse_guard.compat import NOT_SPAM, Codes, RegistrationBehaviour
from synapse_guard.config import GuardConfig, GuardConfigError, parse_guard_config
from synapse_guard.events import EventFacts, decide_cleartext, decide_event
from synapse_guard.gate import AddressJudge, RequestGate
from synapse_guard.geoip import load_geoip_database
from synapse_guard.lockdown import control as lockdown
from synapse_guard.members import control as members
from synapse_guard.network import compile_network_rules, decide_address
from synapse_guard.push import control as push
from synapse_guard.record import metrics
from synapse_guard.record.audit import AuditTrail, Pseudonymizer, load_key
from synapse_guard.record.reporting import Reporter
from synapse_guard.retention_check import check_retention
from synapse_guard.sweep import SessionSweeper, install_idle_sweep
from synapse_guard.synapse_config import SynapseConfigError, read_config
from synapse_guard.totp import provider as totp
from synapse_guard.verdict import ALLOW, Check, Reason, Verdict, deny

logger = logging.getLogger("synapse_guard")

_TOMBSTONE = "m.room.tombstone"
_UPGRADE_RETRY_MS = 500
_UPGRADE_ATTEMPTS = 120  # one minute for Synapse to finish an upgrade

SpamResult = Any  # NOT_SPAM or a Codes member; Synapse's own alias differs across versions


def _forbidden() -> SpamResult:
    return Codes.FORBIDDEN


def _refuse_event() -> tuple[bool, dict[str, Any] | None]:
    return False, None


def _refuse_room_creation() -> None:
    raise compat.SynapseError(403, "Room creation forbidden", Codes.FORBIDDEN)


def _facts_of(event: Any) -> EventFacts:
    return EventFacts(
        type=event.type,
        sender=event.sender,
        state_key=event.get_state_key() if event.is_state() else None,
        content=event.content,
        redacts=getattr(event, "redacts", None),
    )


class Guard:
    def __init__(self, config: GuardConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        self._server_name = api.server_name
        audit_key = config.audit.pseudonym_key_path if config.audit.enabled else None
        self._check_synapse_retention(config, api)
        self._report = Reporter(
            metrics_enabled=config.metrics.enabled,
            audit=AuditTrail(Pseudonymizer(load_key(audit_key)) if audit_key else None),
        )
        self._rules = compile_network_rules(config.network)
        self._geoip = load_geoip_database(config.network, metrics_enabled=config.metrics.enabled)
        addresses = AddressJudge(self._rules, self._geoip)
        self._sweeper = SessionSweeper(api, config, self._report, self._geoip, self._decide_address)
        guarded = self._report.guarded

        compat.register_callbacks(
            api.register_spam_checker_callbacks,
            "spam checker",
            {
                "check_login_for_spam": guarded(Check.LOGIN, compat.login_refusal)(
                    self.check_login_for_spam
                ),
                "check_registration_for_spam": guarded(
                    Check.REGISTRATION, lambda: RegistrationBehaviour.DENY
                )(self.check_registration_for_spam),
                "user_may_invite": guarded(Check.INVITE, _forbidden)(self.user_may_invite),
                "federated_user_may_invite": guarded(Check.INVITE, _forbidden)(
                    self.federated_user_may_invite
                ),
                "user_may_join_room": guarded(Check.JOIN, _forbidden)(self.user_may_join_room),
                "user_may_publish_room": guarded(Check.PUBLISH, _forbidden)(
                    self.user_may_publish_room
                ),
                "user_may_send_3pid_invite": guarded(Check.THREEPID, _forbidden)(
                    self.user_may_send_3pid_invite
                ),
                "should_drop_federated_event": guarded(Check.EVENT, lambda: True)(
                    self.should_drop_federated_event
                ),
            },
        )
        compat.register_callbacks(
            api.register_third_party_rules_callbacks,
            "third-party rules",
            {
                "on_create_room": guarded(Check.CREATE_ROOM, _refuse_room_creation)(
                    self.on_create_room
                ),
                "check_event_allowed": guarded(Check.EVENT, _refuse_event)(
                    self.check_event_allowed
                ),
                "check_visibility_can_be_modified": guarded(Check.PUBLISH, lambda: False)(
                    self.check_visibility_can_be_modified
                ),
                "check_threepid_can_be_invited": guarded(Check.THREEPID, lambda: False)(
                    self.check_threepid_can_be_invited
                ),
            },
        )
        compat.register_callbacks(
            api.register_password_auth_provider_callbacks,
            "password auth provider",
            {"is_3pid_allowed": guarded(Check.THREEPID, lambda: False)(self.is_3pid_allowed)},
        )
        totp.install(api, config, self._report)
        push.install(api, config, self._report)
        self._alerts = alerts.install(api, config)  # Alertmanager -> the admins' room
        self._lockdown = lockdown.install(api, config, self._report, self._check_endpoint_caller)
        self._members = members.install(
            api, config, self._report, self._lockdown, self._check_endpoint_caller
        )
        # Every authenticated request: address, target server, lockdown (gate.py).
        self._gate = RequestGate(
            config,
            self._server_name,
            self._report,
            addresses,
            members.Refusals(self._lockdown, self._members),
        )
        compat.register_callbacks(
            api.register_account_validity_callbacks,
            "account validity",
            {"is_user_expired": self._gate.is_user_expired},
        )
        network = config.network
        # Only where background tasks run: elsewhere Synapse would skip it with a warning.
        if (
            network.revoke_sessions
            and (network.has_allow_rules or network.deny_cidrs)
            and api.should_run_background_tasks()
        ):
            refused = compat.cannot_log_out_here(api)
            if refused is not None:  # else every sweep would fail and every session stay
                raise compat.ConfigError(
                    f"network.revoke_sessions: the session sweep runs where background tasks "
                    f"run, and {refused}: set run_background_tasks_on to the main process "
                    "(or upgrade Synapse)"
                )
            api.looping_background_call(
                guarded(Check.SESSION, lambda: None)(self.sweep_sessions),
                network.sweep_interval_ms,
                desc="synapse_guard_session_sweep",
            )
            logger.info("session sweep runs on this process every %dms", network.sweep_interval_ms)
        install_idle_sweep(api, config, self._report)  # sessions.idle_timeout (sweep.py)
        metadata_purge.install(api, config)  # user_daily_visits (metadata_purge.py)
        logger.info(
            "synapse-guard loaded: registration=%s federation=%s encryption=%s join_rule<=%s "
            "history_visibility<=%s max_lifetime=%dms",
            config.registration.mode,
            "enabled" if config.federation.enabled else "disabled",
            config.rooms.encryption,
            config.rooms.join_rule,
            config.rooms.history_visibility,
            config.retention.max_lifetime_ms,
        )

    def _check_endpoint_caller(self, requester: Any) -> None:
        self._gate.refuse_endpoint_caller(requester)  # the gate is built after the lockdown

    @staticmethod
    def _check_synapse_retention(config: GuardConfig, api: ModuleApi) -> None:
        """Refuse to start when Synapse itself would keep data longer than max_lifetime."""
        files = compat.synapse_config_files(api)
        if files is None:
            logger.warning(
                "cannot read Synapse's config files to check its retention settings; "
                "run `synapse-guard check-config` before starting Synapse"
            )
            return
        try:
            values = read_config(files).values
        except SynapseConfigError as e:
            raise compat.ConfigError(f"cannot check Synapse's retention settings: {e}") from None
        problems = check_retention(values, config)
        if problems:
            raise compat.ConfigError(
                "Synapse would keep data longer than retention.max_lifetime: "
                + "; ".join(str(problem) for problem in problems)
            )

    @staticmethod
    def parse_config(config: Mapping[str, Any]) -> GuardConfig:
        try:
            parsed = parse_guard_config(config)
            # Refuse to start on a missing, corrupt or wrong-type GeoIP database.
            database = load_geoip_database(parsed.network, metrics_enabled=False)
            if database is not None:
                database.close()
            if parsed.audit.enabled and parsed.audit.pseudonym_key_path:
                load_key(parsed.audit.pseudonym_key_path)  # refuse a missing or short key
            if parsed.auth.totp != "off":
                totp.load_files(parsed.auth)  # refuse a missing or short secrets key
            if parsed.alerts.enabled:
                alerts.load_secret(parsed.alerts)  # refuse a missing or short bearer secret
            return parsed
        except GuardConfigError as e:
            # One path element: Synapse prints it after `modules.<item N>.config.` as it is,
            # and a key that itself contains a dot is not mistaken for a nested one.
            raise compat.ConfigError(e.message, path=[e.path] if e.path else None) from None

    def _verdict_to_spam(
        self, check: Check, verdict: Verdict, user: str | None = None
    ) -> SpamResult:
        return NOT_SPAM if self._report(check, verdict, user=user).allowed else Codes.FORBIDDEN

    # Network -------------------------------------------------------------------------------

    def _decide_address(self, address: str) -> Verdict:
        country_of = self._geoip.country if self._geoip is not None else None
        return decide_address(address, self._rules, country_of)

    def _decide_addresses(
        self, request_info: Collection[tuple[str | None, str]]
    ) -> tuple[Verdict, str | None]:
        """Every address the request came from must pass; none at all is refused.

        Returns the verdict and the address it is about (the refused one, if any)."""
        verdict, last = deny(Reason.INVALID_ADDRESS), None
        for _user_agent, address in request_info:
            verdict, last = self._decide_address(address), address
            if not verdict.allowed:
                break
        return verdict, last

    async def check_login_for_spam(
        self,
        user_id: str,
        device_id: str | None,
        initial_display_name: str | None,
        request_info: Collection[tuple[str | None, str]],
        auth_provider_id: str | None = None,
    ) -> SpamResult:
        verdict, address = self._decide_addresses(request_info)
        if verdict.allowed and not totp.login_type_allowed(self._config, auth_provider_id, user_id):
            # auth.totp: required, and this login did not pass the guard's password + code check
            # (SSO, m.login.token, JWT, appservice).
            verdict = deny(Reason.TOTP_REQUIRED)
        self._report(Check.LOGIN, verdict, user=user_id, address=address)
        # The refusals of the lockdown and of a member lock count, log and audit themselves.
        if (
            not verdict.allowed
            or await self._lockdown.refuse_login(user_id)
            or await self._members.refuse_login(user_id)
        ):
            # This runs only once the password was accepted: answered and counted as a wrong
            # password, so neither the body nor the start of 429s tells that it was right.
            await compat.count_failed_login(self._api, user_id)
            return compat.login_refusal()
        if await self._api.is_user_admin(user_id):
            # Every admin login is visible: counted (the deployment alerts on it) and audited.
            if self._config.metrics.enabled:
                metrics.ADMIN_LOGINS.inc()
            self._report.audit(
                Check.LOGIN, verdict, user=user_id, address=address, event="admin_login"
            )
        return NOT_SPAM

    async def sweep_sessions(self) -> None:
        """Log out the sessions recorded from a refused address (sweep.py)."""
        await self._sweeper.run()

    # Registration --------------------------------------------------------------------------

    async def check_registration_for_spam(
        self,
        email_threepid: dict[str, str] | None,
        username: str | None,
        request_info: Collection[tuple[str | None, str]],
        auth_provider_id: str | None = None,
    ) -> RegistrationBehaviour:
        verdict = registration.decide_registration(
            self._config.registration,
            list(request_info),
            auth_provider_id,
            compat.current_request_path() if not request_info else None,
        )
        address = None
        if verdict.allowed and request_info:
            # A client registering (mode open) must come from an accepted address too; admin
            # provisioning carries no address and is not subject to the network rule.
            verdict, address = self._decide_addresses(request_info)
        user = self._api.get_qualified_user_id(username) if username else None
        provisioned = verdict.allowed and verdict.reason is Reason.ADMIN_PROVISIONING
        self._report(
            Check.REGISTRATION,
            verdict,
            user=user,
            address=address,
            event="account_provisioned" if provisioned else None,
        )
        return RegistrationBehaviour.ALLOW if verdict.allowed else RegistrationBehaviour.DENY

    async def is_3pid_allowed(self, medium: str, address: str, registration_: bool) -> bool:
        return self._report(
            Check.THREEPID, registration.decide_threepid(self._config.registration)
        ).allowed

    async def user_may_send_3pid_invite(
        self, inviter: str, medium: str, address: str, room_id: str
    ) -> SpamResult:
        return self._verdict_to_spam(
            Check.THREEPID, registration.decide_threepid(self._config.registration)
        )

    async def check_threepid_can_be_invited(
        self, medium: str, address: str, state_events: Any
    ) -> bool:
        return self._report(
            Check.THREEPID, registration.decide_threepid(self._config.registration)
        ).allowed

    # Federation ----------------------------------------------------------------------------

    async def user_may_invite(self, inviter: str, invitee: str, room_id: str) -> SpamResult:
        verdict = federation.decide_invite(
            self._config.federation, inviter, invitee, self._server_name
        )
        return self._verdict_to_spam(Check.INVITE, verdict, user=inviter)

    async def federated_user_may_invite(self, event: Any) -> SpamResult:
        return self._verdict_to_spam(
            Check.INVITE, federation.decide_remote_traffic(self._config.federation)
        )

    async def should_drop_federated_event(self, event: Any) -> bool:
        # Since Synapse 1.130 inbound invites reach this callback first: count them as invites.
        is_invite = event.type == "m.room.member" and event.content.get("membership") == "invite"
        verdict = federation.decide_remote_traffic(self._config.federation)
        if verdict.allowed and not event.is_state() and self._config.rooms.encryption_required:
            # Synapse runs `check_event_allowed` on federated knocks only: with federation on,
            # a remote member's cleartext into an encrypted room is judged here instead.
            state = await self._api.get_room_state(event.room_id, [(rooms.ENCRYPTION, "")])
            if (rooms.ENCRYPTION, "") in state:
                verdict = decide_cleartext(_facts_of(event))
        return not self._report(Check.INVITE if is_invite else Check.EVENT, verdict).allowed

    async def user_may_join_room(self, user_id: str, room_id: str, is_invited: bool) -> SpamResult:
        creator = None
        if not self._config.federation.enabled:
            state = await self._api.get_room_state(room_id, [(rooms.CREATE, "")])
            create_event = state.get((rooms.CREATE, ""))
            creator = create_event.sender if create_event is not None else None
        verdict = federation.decide_join(self._config.federation, creator, self._server_name)
        return self._verdict_to_spam(Check.JOIN, verdict, user=user_id)

    # Rooms ---------------------------------------------------------------------------------

    async def on_create_room(
        self, requester: Any, request_content: dict[str, Any], is_requester_admin: bool
    ) -> None:
        rooms.rewrite_create_request(
            self._config.rooms, self._config.retention, self._config.federation, request_content
        )

    async def check_event_allowed(
        self, event: Any, state_events: Mapping[tuple[str, str], Any]
    ) -> tuple[bool, dict[str, Any] | None]:
        state = {
            key: rooms.StateEntry(event_id=ev.event_id, content=ev.content)
            for key, ev in state_events.items()
            if key[0] in rooms.PROTECTED_STATE
        }
        facts = _facts_of(event)
        check, verdict = decide_event(self._config, self._server_name, facts, state)
        if verdict.reason is Reason.UNENCRYPTED and self._alerts and self._alerts.own_notice(event):
            verdict = ALLOW  # the guard's own alert notice (alerts/control.py explains)
        if not self._report(check, verdict, user=facts.sender).allowed:
            return False, None
        if facts.type == _TOMBSTONE and facts.state_key == "":
            self._after_upgrade(event)
        return True, compat.thawed_event_dict_if_needed(event)

    async def check_visibility_can_be_modified(
        self, room_id: str, state_events: Any, new_visibility: str
    ) -> bool:
        verdict = rooms.decide_publication(self._config.rooms, new_visibility)
        return self._report(Check.PUBLISH, verdict).allowed

    async def user_may_publish_room(self, user_id: str, room_id: str) -> SpamResult:
        return self._verdict_to_spam(
            Check.PUBLISH, rooms.decide_publication(self._config.rooms, "public")
        )

    def _after_upgrade(self, event: Any, attempt: int = 0) -> None:
        """Give an upgraded room the retention Synapse does not copy from its predecessor.

        Synapse builds the tombstone (seen here) before it creates the new room, and sends it
        once the new room is complete. A state event cannot be sent from inside
        `check_event_allowed`, so this waits until the tombstone is in the old room's state,
        then sends the retention into the new one. (An `on_new_event` callback would see the
        tombstone persisted, but registering one makes Synapse load a room's whole state after
        every event: about 10% on message latency, measured with bench/bench_e2e.py.)
        """
        if attempt < _UPGRADE_ATTEMPTS:
            self._api.delayed_background_call(
                _UPGRADE_RETRY_MS,
                self._report.guarded(Check.EVENT, lambda: None)(self._ensure_retention),
                event,
                attempt,
                desc="synapse_guard_upgrade_retention",
            )

    async def _ensure_retention(self, tombstone: Any, attempt: int) -> None:
        old_state = await self._api.get_room_state(tombstone.room_id, [(_TOMBSTONE, "")])
        sent = old_state.get((_TOMBSTONE, ""))
        if sent is None or sent.event_id != tombstone.event_id:
            self._after_upgrade(tombstone, attempt + 1)  # the upgrade is still under way
            return
        room_id = tombstone.content.get("replacement_room")
        if not isinstance(room_id, str):
            return
        state = await self._api.get_room_state(room_id, [(rooms.RETENTION, "")])
        current = state.get((rooms.RETENTION, ""))
        if current is not None and rooms.retention_allowed(self._config.retention, current.content):
            return
        try:
            await self._api.create_and_send_event_into_room(
                {
                    "type": rooms.RETENTION,
                    "room_id": room_id,
                    "sender": tombstone.sender,
                    "state_key": "",
                    "content": {"max_lifetime": self._config.retention.default_lifetime_ms},
                }
            )
        except compat.SynapseError as e:
            # The upgrader may lack the power to send state in the new room (e.g. from
            # room version 12, whose creators hold no power level entry, to 11). The new
            # room then falls back to Synapse's own `retention.default_policy`
            # (homeserver.d: 7d), still within max_lifetime.
            if e.code != 403:
                raise
            logger.warning(
                "could not give an upgraded room its retention event (%s); Synapse's "
                "default retention policy applies to it",
                e.msg,
            )
            return
        logger.info("gave an upgraded room the default retention policy")
