"""Second factor for password logins (auth.totp): password followed by a 6-digit TOTP code.

Stock Matrix clients only speak `m.login.password`, so the user types the password with the
current code appended. The guard takes over `m.login.password` as a password auth provider:
it checks the password against Synapse's own hash, then the code, and answers for Synapse.
Synapse must not check the password itself (`password_config.localdb_enabled: false`),
otherwise a plain password would still be accepted; the guard refuses to start if it does.

Enrolment is by an admin, over `/_synapse/client/synapse_guard/totp/{enroll,reset,password}`
(or `synapse-guard totp ...`). See docs/totp.md for the operator's side.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import synapse
from synapse.logging.context import current_context
from synapse.module_api import DirectServeJsonResource, ModuleApi

from synapse_guard import schema
from synapse_guard.compat import (
    Codes,
    ConfigError,
    SynapseError,
    first_cross_signing_without_uia,
)
from synapse_guard.config import AuthConfig, GuardConfig, GuardConfigError
from synapse_guard.record.reporting import Reporter
from synapse_guard.request_body import RequestError, parse_object, read_limited
from synapse_guard.totp import store as totp_store
from synapse_guard.totp.core import (
    CodeCheck,
    SecretCipher,
    check_code,
    check_password,
    hash_password,
    load_pepper,
    load_secrets_key,
    new_secret,
    provisioning_uri,
    rate_limited,
    spend_one_hash,
    split_code,
)
from synapse_guard.verdict import ALLOW, Check, Reason, Verdict, deny

logger = logging.getLogger("synapse_guard")

RESOURCE_PREFIX = "/_synapse/client/synapse_guard/totp"
_DEFAULT_BCRYPT_ROUNDS = 12  # Synapse's default, if its own setting cannot be read
_PASSED_TTL_S = 60.0
# A user ID the database can store: "@", a localpart, ":", a server name; printable, no NUL
# (PostgreSQL refuses it in text), at most 255 characters as the spec says.
_USER_ID = re.compile(r"@[^:\x00-\x20\x7f]+:[^\x00-\x20\x7f]+")
_USER_ID_MAX = 255

LoginResult = tuple[str, Callable[[Any], Awaitable[None]] | None] | None

# (request id, user ID) of the logins this process's checker accepted, for `login_type_allowed`.
_passed: dict[tuple[str, str], float] = {}


def install(api: ModuleApi, config: GuardConfig, report: Reporter) -> None:
    """Register this control's callbacks and resources (called from Guard.__init__)."""
    if config.auth.totp == "off":
        _install_equal_cost(api, report)
        return
    try:
        cipher, pepper = load_files(config.auth)
    except GuardConfigError as e:
        # Raised from Guard.__init__, Synapse prints the message without the key: keep it in.
        raise ConfigError(str(e)) from None
    _check_synapse_settings(api, pepper)
    _first_run_without_replay(api, config.auth)
    factor = SecondFactor(api, config.auth, report, cipher, pepper)
    # Since Synapse 1.46, so in every supported version: no compat shim needed.
    api.register_password_auth_provider_callbacks(
        auth_checkers={
            ("m.login.password", ("password",)): report.guarded(Check.LOGIN, _no_login)(
                factor.check_password_login
            )
        }
    )
    for action, handler in (
        ("enroll", factor.enroll),
        ("reset", factor.reset),
        ("password", factor.set_password),
    ):
        api.register_web_resource(f"{RESOURCE_PREFIX}/{action}", AdminAction(api, handler))
    _allow_password_changes(api, report)


def load_files(config: AuthConfig) -> tuple[SecretCipher, str]:
    """The cipher and the pepper; GuardConfigError names the key of a missing or short file.

    Also meant for `Guard.parse_config`, so that Synapse reports the problem as a config error.
    """
    if config.secrets_key_path is None:
        raise GuardConfigError("auth.secrets_key_path", "is required when auth.totp is on")
    cipher = SecretCipher(load_secrets_key(config.secrets_key_path))
    return cipher, load_pepper(config.password_pepper_path)


def _no_login() -> LoginResult:
    return None  # Synapse then answers 403 "Invalid username or password"


def _install_equal_cost(api: ModuleApi, report: Reporter) -> None:
    """With auth.totp off, make Synapse's own password check cost the same for every account.

    Synapse's check (`_check_local_password`) runs bcrypt only for an account that has a hash,
    and answers an unknown user in a few milliseconds: the time tells who exists. A checker
    registered for `m.login.password` runs before it on every password login (and UIA password
    step), spends one bcrypt where Synapse will not, and always answers None, so Synapse's own
    check still decides (verified for 1.100.0 to 1.163.2: `validate_login` falls back to the
    local database when no checker returned a result; a raised exception counts as none).
    Not registered when Synapse checks no passwords itself (`localdb_enabled: false`).
    """
    localdb = _synapse_auth_setting(api, "password_localdb_enabled")
    if localdb is None:
        logger.warning(
            "cannot read Synapse's password_config.localdb_enabled: a login for an unknown "
            "user may be answered faster than one for an existing user"
        )
    if not localdb:
        return
    cost = EqualCost(api, _bcrypt_rounds(api))
    api.register_password_auth_provider_callbacks(
        auth_checkers={
            ("m.login.password", ("password",)): report.guarded(Check.LOGIN, _no_login)(
                cost.check_password_login
            )
        }
    )


def login_type_allowed(
    config: GuardConfig, auth_provider_id: str | None, user_id: str | None = None
) -> bool:
    """For `check_login_for_spam`: may this login complete, given auth.totp?

    With `required`, only a login whose password and code the guard checked in this very
    request may: SSO (`auth_provider_id` set), `m.login.token`, JWT and appservice logins
    carry no code and are refused. Give `user_id` to recognise the guard's own password logins
    (without it, only SSO can be told apart and every other login is allowed).
    """
    if config.auth.totp != "required":
        return True
    if auth_provider_id is not None:
        return False
    if user_id is None:
        return True
    return _take_passed(user_id)


def _request_id() -> str | None:
    """Synapse's ID of the request being served (`ContextRequest.request_id`, 1.100 to 1.163)."""
    request = getattr(current_context(), "request", None)
    request_id = getattr(request, "request_id", None)
    return request_id if isinstance(request_id, str) else None


def _mark_passed(user_id: str) -> None:
    now = time.monotonic()
    for key in [key for key, seen in _passed.items() if now - seen > _PASSED_TTL_S]:
        del _passed[key]
    request_id = _request_id()
    if request_id is not None:
        _passed[(request_id, user_id)] = now


def _take_passed(user_id: str) -> bool:
    request_id = _request_id()
    return request_id is not None and _passed.pop((request_id, user_id), None) is not None


def _synapse_auth_setting(api: ModuleApi, name: str) -> object:
    """A value of Synapse's `hs.config.auth` (private; present from 1.100 to 1.163.2)."""
    auth = getattr(getattr(getattr(api, "_hs", None), "config", None), "auth", None)
    return getattr(auth, name, None)


def _check_synapse_settings(api: ModuleApi, pepper: str) -> None:
    """Refuse to start when Synapse would accept a password without its code."""
    localdb = _synapse_auth_setting(api, "password_localdb_enabled")
    if localdb is None:
        logger.warning(
            "cannot read Synapse's password_config.localdb_enabled: make sure it is false, "
            "or a password without its code is accepted"
        )
    elif localdb:
        raise ConfigError(
            "auth.totp needs Synapse's password_config.localdb_enabled: false (otherwise "
            "Synapse accepts the password alone when the code is missing or wrong)",
            path=["auth", "totp"],
        )
    synapse_pepper = _synapse_auth_setting(api, "password_pepper")
    if isinstance(synapse_pepper, str) and synapse_pepper != pepper:
        raise ConfigError(
            "does not hold Synapse's password_config.pepper: put exactly that value in a file "
            "and name it here",
            path=["auth", "password_pepper_path"],
        )


def _first_run_without_replay(api: ModuleApi, config: AuthConfig) -> None:
    """Let Element's first run set up cross-signing: see `first_cross_signing_without_uia`.

    Right after login, Element uploads its first cross-signing keys and answers the UIA with
    the password + code it logged in with. Refused as a replay, the member would be left
    without cross-signing or key backup. No UIA for a first upload (Synapse's own rule from
    1.110.0) keeps every code single-use, UIA included.
    """
    done = first_cross_signing_without_uia(api)
    if done:
        return
    if done is None:
        logger.warning(
            "cannot read Synapse's config: on Synapse < 1.110 set experimental_features: "
            "msc3967_enabled: true, or members cannot set up cross-signing on first sign-in"
        )
        return
    cannot = (
        f"Synapse {synapse.__version__} cannot upload a first cross-signing key without "
        "UIA (1.110.0 does; MSC3967)"
    )
    if config.totp == "required":
        raise ConfigError(
            f"{cannot}: with auth.totp required no member could set up cross-signing on "
            "first sign-in; upgrade Synapse",
            path=["auth", "totp"],
        )
    logger.warning("%s: enrolled members cannot set up cross-signing on first sign-in", cannot)


def _allow_password_changes(api: ModuleApi, report: Reporter) -> None:
    """Let members change their own password (`POST /account/password`) under auth.totp.

    Synapse allows a change only when it checks passwords itself:
    `AuthHandler.can_change_password()` is `password_config.enabled and localdb_enabled`
    (read in 1.100.0 and 1.163.2), and both the change (`SetPasswordHandler.set_password`,
    403 "Password change disabled") and the capability `m.change_password` ask it. auth.totp
    needs `localdb_enabled: false`, so the guard answers that question instead. What keeps the
    second factor: the change's UIA step is an `m.login.password` step, which only
    `check_password_login` answers (password + a fresh code, replays refused, failures
    counted). The servlet checks the new password against `password_config.policy` before
    UIA, and `AuthHandler.hash` makes the hash the guard checks (pepper, bcrypt_rounds).

    Private objects (`_auth_handler`, `_hs`): if they are not there, changes stay disabled
    and this says so once. On 1.100 only the main process has a SetPasswordHandler; workers
    change no passwords (the servlet is main-only), they only answer the capability.
    """
    auth_handler: Any = getattr(api, "_auth_handler", None)
    enabled = getattr(auth_handler, "_password_enabled_for_login", None)
    on_worker = isinstance(api.worker_app, str)
    setter: Any = None
    if not on_worker:  # the main process, where passwords are changed
        get_setter = getattr(getattr(api, "_hs", None), "get_set_password_handler", None)
        setter = get_setter() if callable(get_setter) else None
    original: Any = getattr(setter, "set_password", None)
    if not isinstance(enabled, bool) or not (on_worker or callable(original)):
        logger.warning(
            "cannot reach Synapse's password change: under auth.totp members cannot change "
            "their password (an admin can: synapse-guard totp set-password)"
        )
        return
    if not enabled:
        return  # password_config.enabled: false, nobody has a password to change

    async def set_password(
        user_id: str, password_hash: str, logout_devices: bool, requester: Any = None
    ) -> None:
        if requester is None:
            # The e-mail reset (no access token) would replace password + code by a mailbox.
            raise SynapseError(
                403, "Password reset by e-mail is disabled: ask an admin", Codes.FORBIDDEN
            )
        # Every other session is logged out, whatever the client asked: a change is often
        # the answer to a password that leaked.
        await original(user_id, password_hash, True, requester)
        own = requester.user.to_string() == user_id
        report.audit(
            Check.LOGIN, ALLOW, user=user_id, event="password_changed" if own else "password_set"
        )
        logger.info(
            "totp: %s", "a member changed their password" if own else "an admin set a password"
        )

    if not on_worker:
        setter.set_password = set_password
    auth_handler.can_change_password = lambda: True


def _bcrypt_rounds(api: ModuleApi) -> int:
    registration = getattr(getattr(getattr(api, "_hs", None), "config", None), "registration", None)
    rounds = getattr(registration, "bcrypt_rounds", None)
    return rounds if isinstance(rounds, int) else _DEFAULT_BCRYPT_ROUNDS


def _now_ms() -> int:
    return int(time.time() * 1000)


_HASHED_TTL_S = 300.0
_HASHED_MAX = 10_000


class EqualCost:
    """auth.totp off: one bcrypt for each password login Synapse would answer without one."""

    def __init__(self, api: ModuleApi, rounds: int) -> None:
        self._api = api
        self._rounds = rounds
        # Accounts seen with a password hash lately: Synapse will spend the bcrypt itself, so
        # their logins skip the look-up here (measured: +3% on a login without this).
        self._hashed: dict[str, float] = {}

    async def check_password_login(
        self, username: str, login_type: str, login_dict: dict[str, Any]
    ) -> LoginResult:
        """Never a result: Synapse's own check decides, after this one has spent the time.

        Synapse finds the account as `totp_store.get_password_hash` does (case-insensitive,
        one match) and runs bcrypt only on a non-empty hash; everything else (no such user,
        several inexact matches, no password: deactivated or SSO-only) gets the dummy here.
        """
        password = login_dict.get("password")
        if not isinstance(password, str):
            return None
        qualified = (
            username if username.startswith("@") else self._api.get_qualified_user_id(username)
        )
        now = time.monotonic()
        if now - self._hashed.get(qualified, -_HASHED_TTL_S) < _HASHED_TTL_S:
            return None
        found = await self._api.run_db_interaction(
            "synapse_guard_password_hash", totp_store.get_password_hash, qualified
        )
        if found is None or not found[1]:
            await self._api.defer_to_thread(spend_one_hash, password, self._rounds)
        else:
            if len(self._hashed) >= _HASHED_MAX:
                self._hashed.clear()
            self._hashed[qualified] = now
        return None


class SecondFactor:
    def __init__(
        self,
        api: ModuleApi,
        config: AuthConfig,
        report: Reporter,
        cipher: SecretCipher,
        pepper: str,
    ) -> None:
        self._api = api
        self._config = config
        self._report = report
        self._cipher = cipher
        self._pepper = pepper
        self._rounds = _bcrypt_rounds(api)
        self._table = schema.Tables(api, "totp", (totp_store.CREATE_TABLE,))

    async def _ready(self) -> None:
        """Create the guard's table once per process (safe when every worker does at once)."""
        await self._table.ensure()

    async def _password_matches(self, password: str, stored_hash: str | None) -> bool:
        """One bcrypt, real or dummy (see `check_password`): every attempt costs the same."""
        return await self._api.defer_to_thread(
            check_password, password, self._pepper, stored_hash, self._rounds
        )

    def _refuse(self, verdict: Verdict, user_id: str | None) -> None:
        self._report(Check.LOGIN, verdict, user=user_id)

    # Login ---------------------------------------------------------------------------------

    async def check_password_login(
        self, username: str, login_type: str, login_dict: dict[str, Any]
    ) -> LoginResult:
        """Synapse's `auth_checkers` callback for `m.login.password` (/login and UIA).

        Every attempt makes the same database reads and exactly one bcrypt, whether the user
        exists, is enrolled, is rate limited or sent a code at all: the time of the refusal
        does not tell an unknown account from a wrong password. Only after the password is
        right do the paths differ (the code's check and its writes).
        """
        value = login_dict.get("password")
        if not isinstance(value, str):
            return None
        await self._ready()
        qualified = (
            username if username.startswith("@") else self._api.get_qualified_user_id(username)
        )
        found = await self._api.run_db_interaction(
            "synapse_guard_totp_password_hash", totp_store.get_password_hash, qualified
        )
        user_id, stored_hash = found if found is not None else (qualified, None)
        enrolment = await self._api.run_db_interaction(
            "synapse_guard_totp_get", totp_store.get_enrolment, user_id
        )
        parts = split_code(value) if enrolment is not None else None
        password_matches = await self._password_matches(
            parts[0] if parts is not None else value, stored_hash
        )
        if found is None:
            self._refuse(deny(Reason.PASSWORD_INVALID), None)
            return None
        if enrolment is None:
            if not password_matches:
                self._refuse(deny(Reason.PASSWORD_INVALID), user_id)
                return None
            if self._config.totp == "required":
                self._refuse(deny(Reason.TOTP_NOT_ENROLLED), user_id)
                return None
            return self._accepted(user_id)

        now = _now_ms()
        if rate_limited(
            enrolment.failures, now, self._config.max_failures, self._config.failure_window_ms
        ):
            self._refuse(deny(Reason.TOTP_RATE_LIMITED), user_id)
            return None
        if parts is None:
            self._refuse(deny(Reason.TOTP_INVALID), user_id)  # no code: not a guess, not counted
            return None
        if not password_matches:
            # Counted by Synapse's own rc_login.failed_attempts, not here: only someone who
            # knows the password gets to guess codes.
            self._refuse(deny(Reason.PASSWORD_INVALID), user_id)
            return None
        secret = self._cipher.decrypt(user_id, enrolment.secret)
        checked = check_code(secret, parts[1], now, enrolment.last_step)
        if checked.step is not None and not await self._api.run_db_interaction(
            "synapse_guard_totp_accept", totp_store.accept_step, user_id, checked.step
        ):
            checked = CodeCheck(deny(Reason.TOTP_REPLAYED))  # another worker won
        if not checked.verdict.allowed:
            await self._api.run_db_interaction(
                "synapse_guard_totp_failure",
                totp_store.record_failure,
                user_id,
                now,
                self._config.failure_window_ms,
            )
            self._refuse(checked.verdict, user_id)
            return None
        return self._accepted(user_id)

    def _accepted(self, user_id: str) -> LoginResult:
        _mark_passed(user_id)
        return user_id, None

    # Admin actions -------------------------------------------------------------------------

    async def _local_user(self, body: dict[str, Any]) -> str:
        user_id = body.get("user_id")
        if (
            not isinstance(user_id, str)
            or len(user_id) > _USER_ID_MAX
            or not _USER_ID.fullmatch(user_id)
        ):
            raise SynapseError(400, "user_id: a full user ID is required", Codes.INVALID_PARAM)
        if not self._api.is_mine(user_id):
            raise SynapseError(400, "user_id: not a user of this server", Codes.INVALID_PARAM)
        canonical = await self._api.check_user_exists(user_id)
        if canonical is None:
            raise SynapseError(404, "user_id: no such user", Codes.NOT_FOUND)
        await self._ready()
        return canonical

    async def enroll(self, admin: str, body: dict[str, Any]) -> dict[str, Any]:
        user_id = await self._local_user(body)
        existing = await self._api.run_db_interaction(
            "synapse_guard_totp_get", totp_store.get_enrolment, user_id
        )
        if existing is not None:
            raise SynapseError(
                409, "already enrolled: reset first to issue a new secret", Codes.USER_IN_USE
            )
        secret = new_secret()
        if not await self._api.run_db_interaction(
            "synapse_guard_totp_enrol",
            totp_store.enrol_if_new,
            user_id,
            self._cipher.encrypt(user_id, secret),
            _now_ms(),
        ):  # another admin (or worker) enrolled them meanwhile
            raise SynapseError(
                409, "already enrolled: reset first to issue a new secret", Codes.USER_IN_USE
            )
        self._report.audit(Check.LOGIN, ALLOW, user=user_id, event="totp_enrolled")
        logger.info("totp: an admin enrolled a user")
        return {
            "user_id": user_id,
            "otpauth_uri": provisioning_uri(secret, user_id, self._config.issuer),
        }

    async def reset(self, admin: str, body: dict[str, Any]) -> dict[str, Any]:
        user_id = await self._local_user(body)
        removed = await self._api.run_db_interaction(
            "synapse_guard_totp_reset", totp_store.remove, user_id
        )
        self._report.audit(Check.LOGIN, ALLOW, user=user_id, event="totp_reset")
        logger.info("totp: an admin reset a user's second factor")
        return {"user_id": user_id, "removed": removed}

    async def set_password(self, admin: str, body: dict[str, Any]) -> dict[str, Any]:
        """Set a password hash (Synapse refuses password changes with localdb_enabled: false)."""
        user_id = await self._local_user(body)
        password = body.get("password")
        if not isinstance(password, str) or not password:
            raise SynapseError(400, "password: a non-empty string is required", Codes.INVALID_PARAM)
        password_hash = await self._api.defer_to_thread(
            hash_password, password, self._pepper, _bcrypt_rounds(self._api)
        )
        await self._api.run_db_interaction(
            "synapse_guard_totp_set_password", totp_store.set_password_hash, user_id, password_hash
        )
        self._report.audit(Check.LOGIN, ALLOW, user=user_id, event="password_set")
        logger.info("totp: an admin set a user's password")
        return {"user_id": user_id}


AdminHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class AdminAction(DirectServeJsonResource):
    """`POST {"user_id": ...}` by a server admin (access token); anyone else gets 403."""

    def __init__(self, api: ModuleApi, handler: AdminHandler) -> None:
        super().__init__()
        self._api = api
        self._handler = handler

    async def _async_render_POST(self, request: Any) -> tuple[int, dict[str, Any]]:
        requester = await self._api.get_user_by_req(request)
        admin = requester.user.to_string()
        if not await self._api.is_user_admin(admin):
            raise SynapseError(403, "You are not a server admin", Codes.FORBIDDEN)
        try:
            body = parse_object(read_limited(getattr(request, "content", None)))
        except RequestError as e:
            raise SynapseError(e.status, str(e), e.errcode) from None
        return 200, await self._handler(admin, body)
