"""A login the guard refuses reads, and counts, as a wrong password.

`check_login_for_spam` runs only after Synapse accepted the password, so whatever it answers
is what a right password gets. It must answer what a wrong one gets, and use up the same
failure budget (rc_login.failed_attempts), or a refused address learns the password is right.
The real server proves the body byte for byte (tests/integration/test_login_oracle.py).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any
from unittest.mock import AsyncMock, Mock

import pytest

from synapse_guard import compat
from synapse_guard.compat import NOT_SPAM, Codes
from synapse_guard.lockdown import store as lockdown_store
from tests.unit.conftest import ALICE, create_module, make_api

WRONG_PASSWORD = (Codes.FORBIDDEN, {"error": "Invalid username or password"})


def guard_api(locked: bool = False) -> tuple[Mock, AsyncMock]:
    api = make_api()
    cursor = sqlite3.connect(":memory:").cursor()
    lockdown_store.ensure_table(cursor)
    if locked:
        lockdown_store.switch(cursor, True, "manual")

    async def run_db_interaction(desc: str, func: Any, *args: Any) -> Any:
        return func(cursor, *args)

    api.run_db_interaction.side_effect = run_db_interaction
    api.is_user_admin.return_value = False
    limiter = AsyncMock()
    api._auth_handler = Mock()
    api._auth_handler._failed_login_attempts_ratelimiter.can_do_action = limiter
    return api, limiter


def login(api: Mock, address: str, config: dict[str, Any]) -> Any:
    module = create_module(config, api=api)
    check = module.callbacks["check_login_for_spam"]
    return asyncio.run(check(ALICE, None, None, [("curl/8", address)], None))


NETWORK = {"network": {"allow_cidrs": ["10.8.0.0/24"]}}


def test_a_refused_address_gets_the_wrong_password_answer_and_a_counted_failure() -> None:
    api, limiter = guard_api()
    assert login(api, "192.0.2.1", NETWORK) == WRONG_PASSWORD
    limiter.assert_awaited_once_with(None, ALICE.lower())


def test_a_lockdown_refusal_reads_and_counts_the_same() -> None:
    api, limiter = guard_api(locked=True)
    assert login(api, "10.8.0.5", NETWORK) == WRONG_PASSWORD
    limiter.assert_awaited_once()


def test_an_accepted_login_counts_no_failure() -> None:
    api, limiter = guard_api()
    assert login(api, "10.8.0.5", NETWORK) is NOT_SPAM
    limiter.assert_not_awaited()


def test_the_key_is_synapses_lower_cased_user_id() -> None:
    api, limiter = guard_api()
    module = create_module(NETWORK, api=api)
    check = module.callbacks["check_login_for_spam"]
    asyncio.run(check("@Alice:test.local", None, None, [(None, "192.0.2.1")], None))
    limiter.assert_awaited_once_with(None, "@alice:test.local")


def test_without_synapses_limiter_the_refusal_stands_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat, "_failed_login_warned", False)
    api, _ = guard_api()
    del api._auth_handler
    caplog.set_level(logging.WARNING, logger="synapse_guard")
    for _ in range(3):
        assert login(api, "192.0.2.1", NETWORK) == WRONG_PASSWORD
    warnings = [r for r in caplog.records if "failed-login rate limiter" in r.getMessage()]
    assert len(warnings) == 1
