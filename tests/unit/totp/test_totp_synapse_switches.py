"""The Synapse switches auth.totp turns: password changes and the first cross-signing upload.

On a stand-in for Synapse's private objects (the integration tests run the real ones:
tests/integration/test_totp_password_change.py and test_totp_first_run.py).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, Mock

import pytest

from synapse_guard import compat
from synapse_guard.compat import ConfigError, SynapseError
from synapse_guard.config import AuthConfig
from synapse_guard.totp import provider as totp

ALICE = "@alice:test.local"


def synapse_api(*, worker: str | None = None, password_enabled: bool = True) -> Any:
    auth_handler = SimpleNamespace(
        _password_enabled_for_login=password_enabled, can_change_password=lambda: False
    )
    setter = SimpleNamespace(set_password=AsyncMock())
    hs = SimpleNamespace(
        get_set_password_handler=lambda: setter,
        config=SimpleNamespace(experimental=SimpleNamespace(msc3967_enabled=False)),
    )
    return SimpleNamespace(_auth_handler=auth_handler, _hs=hs, worker_app=worker), setter


def requester(user_id: str) -> Any:
    return SimpleNamespace(user=SimpleNamespace(to_string=lambda: user_id))


def test_members_may_change_their_password_and_every_other_session_ends() -> None:
    api, setter = synapse_api()
    original = setter.set_password
    report = Mock()
    totp._allow_password_changes(api, report)
    assert api._auth_handler.can_change_password() is True
    asyncio.run(setter.set_password(ALICE, "hash", False, requester(ALICE)))
    assert original.await_args.args[:3] == (ALICE, "hash", True)  # logout_devices forced
    assert report.audit.call_args.kwargs["event"] == "password_changed"


def test_a_reset_by_e_mail_is_refused() -> None:
    api, setter = synapse_api()
    original = setter.set_password
    totp._allow_password_changes(api, Mock())
    with pytest.raises(SynapseError) as refused:
        asyncio.run(setter.set_password(ALICE, "hash", True, None))
    assert refused.value.code == 403
    original.assert_not_awaited()


def test_without_synapse_s_objects_changes_stay_disabled() -> None:
    api = SimpleNamespace(worker_app=None)
    totp._allow_password_changes(api, Mock())  # type: ignore[arg-type]
    assert not hasattr(api, "_auth_handler")
    disabled, _ = synapse_api(password_enabled=False)
    totp._allow_password_changes(disabled, Mock())
    assert disabled._auth_handler.can_change_password() is False


def test_a_worker_only_answers_the_capability() -> None:
    api, setter = synapse_api(worker="client_reader")
    original = setter.set_password
    totp._allow_password_changes(api, Mock())
    assert api._auth_handler.can_change_password() is True
    assert setter.set_password is original


@pytest.mark.parametrize(("version", "enabled"), [((1, 100, 0), True), ((1, 110, 0), False)])
def test_before_1_110_the_first_cross_signing_upload_is_made_uia_free(
    monkeypatch: pytest.MonkeyPatch, version: tuple[int, int, int], enabled: bool
) -> None:
    monkeypatch.setattr(compat, "synapse_version", lambda: version)
    api, _ = synapse_api()
    assert compat.first_cross_signing_without_uia(api) is True
    assert api._hs.config.experimental.msc3967_enabled is enabled


def test_required_refuses_to_start_where_the_first_run_cannot_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compat, "synapse_version", lambda: (1, 105, 0))
    monkeypatch.setattr(compat.synapse, "__version__", "1.105.0")
    api = SimpleNamespace(_hs=SimpleNamespace(config=SimpleNamespace(experimental=None)))
    with pytest.raises(ConfigError, match=r"Synapse 1\.105\.0 .*1\.110\.0"):
        totp._first_run_without_replay(api, AuthConfig(totp="required"))  # type: ignore[arg-type]
    totp._first_run_without_replay(api, AuthConfig(totp="optional"))  # type: ignore[arg-type]
    unreadable = SimpleNamespace()  # no Synapse config to read: warn, as for other settings
    totp._first_run_without_replay(unreadable, AuthConfig(totp="required"))  # type: ignore[arg-type]
