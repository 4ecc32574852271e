"""Every difference between the Synapse versions we support, in one place.

Each shim names the Synapse release that made it necessary, so it can be deleted when that
release is no longer supported. Supported range: see README ("Compatibility").
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs
import synapse
from synapse.module_api import NOT_SPAM, ModuleApi
from synapse.module_api.errors import Codes, ConfigError, SynapseError
from synapse.spam_checker_api import RegistrationBehaviour

logger = logging.getLogger("synapse_guard")

__all__ = [
    "NOT_SPAM",
    "Codes",
    "ConfigError",
    "RegistrationBehaviour",
    "RequestFacts",
    "SynapseError",
    "cannot_log_out_here",
    "count_failed_login",
    "current_request",
    "current_request_path",
    "deactivate_account",
    "first_cross_signing_without_uia",
    "log_out_session",
    "login_refusal",
    "refuse_pushers_at_creation",
    "register_callbacks",
    "remove_pusher",
    "synapse_version",
    "thawed_event_dict_if_needed",
]


def _parse_version(text: str) -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        return (0, 0, 0)
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


def synapse_version() -> tuple[int, int, int]:
    return _parse_version(synapse.__version__)


def register_callbacks(
    register: Callable[..., None], family: str, callbacks: Mapping[str, Callable[..., Any]]
) -> list[str]:
    """Register the callbacks this Synapse knows; warn (never silently) about the others.

    `register_*_callbacks` take keyword-only arguments, and an older Synapse raises TypeError
    on a callback it does not know (e.g. `federated_user_may_invite` before 1.134). Returns
    the names that were skipped.
    """
    accepted = inspect.signature(register).parameters
    known = {name: cb for name, cb in callbacks.items() if name in accepted}
    skipped = sorted(set(callbacks) - set(known))
    for name in skipped:
        logger.warning(
            "Synapse %s has no %s callback %r: that layer of the guard is inactive on this "
            "version; the other layers still apply",
            synapse.__version__,
            family,
            name,
        )
    register(**known)
    return skipped


def current_request_path() -> str | None:
    """The path of the HTTP request being served, or None outside any request.

    Registration callbacks are not told whether a client or an admin is registering: guest
    registration, JWT auto-creation, the admin API and the shared-secret endpoint all pass an
    empty `request_info`. The request that triggered the callback tells them apart. This reads
    Synapse's logging context (`ContextRequest.url`, present in every supported version); if it
    cannot be read, the caller treats the request as a client request and denies.
    """
    from synapse.logging.context import current_context

    request = getattr(current_context(), "request", None)
    if request is None:
        return None
    url = getattr(request, "url", None)
    if not isinstance(url, str):
        raise LookupError("the current request carries no URL")
    return url.split("?", 1)[0]


@attrs.frozen(slots=True)
class RequestFacts:
    """What the guard needs of the HTTP request being served."""

    address: str  # as Synapse resolved it (leftmost X-Forwarded-For on an x_forwarded listener)
    path: str  # still percent-encoded
    query: str


def current_request() -> RequestFacts | None:
    """The request being served, or None when Synapse is not serving one.

    Read from Synapse's logging context (`ContextRequest.ip_address` and `.url`, present from
    1.100 to 1.163.2): `is_user_expired` gets only a user ID, but it runs inside the request
    it authenticates. None means no request at all (a background job, e.g. the pusher pool
    asking whether to notify); a request whose facts cannot be read raises LookupError, and
    the caller refuses it.
    """
    from synapse.logging.context import current_context

    request = getattr(current_context(), "request", None)
    if request is None:
        return None
    address, url = getattr(request, "ip_address", None), getattr(request, "url", None)
    if not isinstance(address, str) or not isinstance(url, str):
        raise LookupError("the current request carries no address or URL")
    path, _, query = url.partition("?")
    return RequestFacts(address=address, path=path, query=query)


def _thaw(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(item) for item in value]
    return value


def thawed_event_dict_if_needed(event: Any) -> dict[str, Any] | None:
    """Work around Synapse < 1.162 rejecting messages with `m.mentions` (400 M_BAD_JSON).

    Synapse freezes an event before `check_event_allowed` and then validates `m.mentions` with
    a pydantic 2 model that refuses the frozen (immutable) containers: element-hq/synapse#19634,
    fixed in 1.154.0, and for room version 12 in 1.162.0. Seen here on 1.153.0 (tested in tox),
    not on 1.140.0 or older, whose validation accepted them. Returning the event as plain JSON
    makes Synapse rebuild it unfrozen. Delete when the oldest supported Synapse is 1.162.
    """
    if synapse_version() >= (1, 162, 0) or event.is_state():
        return None
    if "m.mentions" not in event.content:
        return None
    thawed = _thaw(event.get_dict())
    assert isinstance(thawed, dict)
    json.dumps(thawed)  # must be plain JSON, or Synapse would refuse the rebuilt event
    return thawed


# Synapse 1.135.0 moved device changes off the main process (element-hq/synapse#18581): from
# then on every process's `DeviceHandler` has `delete_devices` and every process's store has
# `delete_access_token`; before, only the main process's (`DeviceWorkerHandler` and
# `RegistrationWorkerStore` have neither, read in 1.100.0 and 1.134.0).
LOGOUT_ON_WORKERS_SINCE = (1, 135, 0)


def cannot_log_out_here(api: ModuleApi) -> str | None:
    """Why this process cannot log sessions out (`log_out_session`), or None if it can."""
    if synapse_version() >= LOGOUT_ON_WORKERS_SINCE or not isinstance(api.worker_app, str):
        return None  # the main process, or a Synapse whose workers can
    return (
        f"Synapse {synapse.__version__} can log sessions out only on the main process (workers "
        "can from 1.135.0), and this is worker "
        f"{api.worker_name!r}"
    )


async def log_out_session(
    api: ModuleApi,
    user_id: str,
    device_id: str | None,
    access_token: str | None,
    seen_tokens: Collection[str] = (),
) -> None:
    """Log a session out: delete its device (with every token of that device, refresh tokens
    included), or, for a token without a device (a puppet token), that token.

    This is what `ModuleApi.invalidate_access_token` does, but that method fails on Synapse
    1.163.2 (`'Requester' object has no attribute 'get'`: Requester became a Rust class), and
    no other public method logs a session out. The sweep already knows the user and device,
    so this calls the handlers that method calls. Deleting a device that is gone already is
    a no-op in Synapse; a token gone already (the user logged out meanwhile) is logged out.

    Workers: `delete_devices` is on every process's device handler from Synapse 1.135.0; on
    older releases only the main process's handler has it (`DeviceWorkerHandler` does not),
    so a sweep on a background worker fails, saying why, and retries.

    `seen_tokens`: tokens the session was used with. A token that `/refresh` rotated is
    deleted from the database without being dropped from Synapse's token cache
    (`get_user_by_access_token`, on every process), so it keeps authenticating, until it
    expires, even once its device is deleted (seen on 1.163.2). They are dropped from the
    cache first, on every worker (the cache stream), so a failure leaves the session whole
    to be retried.
    """
    for token in seen_tokens:
        await api._store.invalidate_cache_and_stream("get_user_by_access_token", (token,))
    if device_id:
        delete_devices = getattr(api._device_handler, "delete_devices", None)
        if delete_devices is None:
            raise RuntimeError(
                f"Synapse {synapse.__version__} cannot delete devices on a worker (1.135 can): "
                "run background tasks on the main process (run_background_tasks_on)"
            )
        await delete_devices(user_id, [device_id])
    elif access_token:
        try:
            await api._auth_handler.delete_access_token(access_token)
        except SynapseError as e:
            if e.code != 401:  # 401: "Unrecognised access token", gone already
                raise
    else:
        raise ValueError("a session to log out needs a device or a token")


def synapse_config_files(api: ModuleApi) -> list[str] | None:
    """The config files this Synapse was started with, or None if they cannot be known.

    No public ModuleApi call exposes the homeserver's config; `hs.config.config_files` (the
    expanded, absolute list of `-c` files, present from 1.100 to 1.163.2) lets the guard
    re-read exactly what Synapse read. Private: if it disappears, the start-up retention
    check is skipped with a warning and `synapse-guard check-config` remains.
    """
    files = getattr(getattr(getattr(api, "_hs", None), "config", None), "config_files", None)
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files) or not files:
        return None
    return list(files)


def refuse_pushers_at_creation(
    api: ModuleApi, pusher_allowed: Callable[[str, Any, str], bool], message: str
) -> bool:
    """Make Synapse refuse a pusher the guard refuses, before it stores or starts one.

    Synapse has no module callback for a new pusher. Every pusher it stores or runs is first
    built by its pool's `pusher_factory.create_pusher(PusherConfig)`: `add_or_update_pusher`
    (POST /pushers/set; email pushers from registration and the admin API) builds one "just
    to validate the config" before it writes the row, and `_start_pusher` (start-up, a change
    replicated from another process) builds the one it runs. A `PusherConfigException` there
    is Synapse's own refusal: the client gets 400 M_MISSING_PARAM "Config Error: <message>"
    and nothing is stored; at start-up the pusher is not started (Synapse logs a warning).
    Checked unchanged in synapse/push/pusherpool.py and pusher.py of 1.100.0, 1.153.0,
    1.157.1 and 1.163.2. Each process builds its own pool, and the module loads in each, so
    this holds on workers too. `pusher_allowed(kind, data, user_id)` is called synchronously,
    as Synapse calls the factory. Private: returns False if the factory is not there, and the
    caller says so at start-up.
    """
    try:
        from synapse.push import PusherConfigException

        factory: Any = api._hs.get_pusherpool().pusher_factory
        create = factory.create_pusher
    except (AttributeError, ImportError):
        return False

    def create_pusher(pusher_config: Any) -> Any:
        kind, data, user = pusher_config.kind, pusher_config.data, pusher_config.user_name
        if not pusher_allowed(kind, data, user):
            raise PusherConfigException(message)
        return create(pusher_config)

    factory.create_pusher = create_pusher
    return True


async def remove_pusher(api: ModuleApi, app_id: str, pushkey: str, user_id: str) -> None:
    """Stop and delete a pusher, as Synapse does when a client deletes its own.

    `PusherPool.remove_pusher` (same signature from 1.100.0 to 1.163.2) stops the pusher if
    this process runs it and deletes its row, through the main process when called on a
    worker; the deletion replicates to the process that runs it, which stops it too. No
    public ModuleApi method removes a pusher.
    """
    await api._hs.get_pusherpool().remove_pusher(app_id, pushkey, user_id)


async def deactivate_account(api: ModuleApi, user_id: str, requester: Any) -> None:
    """Deactivate an account with erasure, as the admin API's `POST /_synapse/admin/v1/
    deactivate/<user_id>` with `{"erase": true}` does (`by_admin`, the admin's requester).

    No public ModuleApi method deactivates; `DeactivateAccountHandler.deactivate_account
    (user_id, erase_data, requester, id_server=None, by_admin=False)` has the same signature
    from 1.100.0 to 1.157.1 (read). It deletes devices, tokens, pushers, 3PIDs and the
    password, marks the user erased (their events are then redacted for new readers), blanks
    the profile, and parts their rooms in the background. Devices are deleted through the
    device handler: main process only before 1.135 (`cannot_log_out_here`).
    """
    handler = api._hs.get_deactivate_account_handler()
    await handler.deactivate_account(user_id, erase_data=True, requester=requester, by_admin=True)


# What Synapse answers a wrong password or an unknown user: `LoginError(403,
# INVALID_USERNAME_OR_PASSWORD, Codes.FORBIDDEN)` in synapse/handlers/auth.py, 1.100 to 1.163.2.
WRONG_PASSWORD_MESSAGE = "Invalid username or password"  # noqa: S105 (a message, not a password)


def login_refusal() -> tuple[Codes, dict[str, Any]]:
    """What `check_login_for_spam` returns to refuse a login: the answer to a wrong password.

    Synapse turns a refusal into `SynapseError(403, "Login was blocked by the server", errcode,
    additional_fields=<the dict>)` (synapse/rest/client/login.py, `_complete_login`) and writes
    the body with `cs_error(msg, errcode, **additional_fields)`, whose extra keys overwrite
    "error" (synapse/api/errors.py). Read in 1.100.0, 1.153.0, 1.157.1 and 1.163.2: the same
    code in each. The refusal thus reads 403 {"error": "Invalid username or password",
    "errcode": "M_FORBIDDEN"}, the very body (same keys, same order) of a wrong password, and
    "Login was blocked" no longer tells a refused address that the password was right.
    """
    return Codes.FORBIDDEN, {"error": WRONG_PASSWORD_MESSAGE}


_failed_login_warned = False


async def count_failed_login(api: ModuleApi, user_id: str) -> None:
    """Count a refused login as Synapse counts a wrong password (`rc_login.failed_attempts`).

    Synapse counts a failure only when the password was wrong (`AuthHandler.validate_login`);
    a login the guard refuses had the right one. Uncounted, it would leave the account's
    failure budget as it was, and a refused address could tell a right password by when 429
    begins. The limiter is private (`AuthHandler._failed_login_attempts_ratelimiter`, keyed
    by the lower-cased user ID, 1.100 to 1.163.2); if it is gone, the refusal still stands,
    uncounted, and this says so once.
    """
    global _failed_login_warned
    limiter = getattr(
        getattr(api, "_auth_handler", None), "_failed_login_attempts_ratelimiter", None
    )
    can_do_action = getattr(limiter, "can_do_action", None)
    if can_do_action is None:
        if not _failed_login_warned:
            _failed_login_warned = True
            logger.warning(
                "Synapse %s has no failed-login rate limiter the guard can reach: refused "
                "logins are not counted as failures (rc_login.failed_attempts)",
                synapse.__version__,
            )
        return
    await can_do_action(None, user_id.lower())


# Synapse 1.110.0 (element-hq/synapse#17284, MSC3967 made stable) uploads a user's first
# cross-signing keys without UIA; 1.100 to 1.109 only with `experimental_features:
# msc3967_enabled`, which `SigningKeyUploadServlet` reads at each request (1.100.0, 1.109.0).
FIRST_CROSS_SIGNING_WITHOUT_UIA_SINCE = (1, 110, 0)


def first_cross_signing_without_uia(api: ModuleApi) -> bool | None:
    """Make a first cross-signing upload need no UIA, as Synapse does from 1.110.0.

    Under auth.totp, Element answers the UIA of its first-run bootstrap with the password +
    code it has just logged in with, a replay the guard refuses. A reset (keys already set up)
    still needs UIA, as from 1.110.0. True when done or not needed, False when this Synapse
    has no such switch, None when its config cannot be read (private `hs.config`).
    """
    if synapse_version() >= FIRST_CROSS_SIGNING_WITHOUT_UIA_SINCE:
        return True
    config = getattr(getattr(api, "_hs", None), "config", None)
    if config is None:
        return None
    experimental = getattr(config, "experimental", None)
    if not isinstance(getattr(experimental, "msc3967_enabled", None), bool):
        return False
    experimental.msc3967_enabled = True  # type: ignore[union-attr]
    return True
