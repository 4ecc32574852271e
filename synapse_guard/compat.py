"""Every difference between the Synapse versions we support, in one place.

Each shim names the Synapse release that made it necessary, so it can be deleted when that
release is no longer supported. Supported range: see README ("Compatibility").
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

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
    "SynapseError",
    "current_request_path",
    "log_out_session",
    "register_callbacks",
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


async def log_out_session(
    api: ModuleApi, user_id: str, device_id: str | None, access_token: str
) -> None:
    """Log a session out: delete its device (and with it every token of that device).

    This is what `ModuleApi.invalidate_access_token` does, but that method fails on Synapse
    1.163.2 (`'Requester' object has no attribute 'get'`: Requester became a Rust class), and
    no other public method logs a session out. The sweep already knows the user and device,
    so this calls the handlers that method calls. On a worker deployment the sweep runs on
    the background-tasks process, which must be able to delete devices (the main process).
    """
    if device_id:
        await api._device_handler.delete_devices(user_id, [device_id])
    else:
        await api._auth_handler.delete_access_token(access_token)


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
