"""Reporter: every decision is counted, every refusal logged without identifiers, and any
unexpected exception inside a check becomes a counted denial."""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest

from synapse_guard.record.reporting import Reporter
from synapse_guard.verdict import Check, Reason, Verdict, allow, deny
from tests.unit.conftest import decisions


class Boom(Exception):
    pass


def test_an_allowed_decision_is_counted() -> None:
    before = decisions(Check.JOIN, "allow", Reason.OK)

    verdict = Reporter(metrics_enabled=True)(Check.JOIN, allow())

    assert verdict == Verdict(allowed=True, reason=Reason.OK)
    assert decisions(Check.JOIN, "allow", Reason.OK) == before + 1


def test_a_refusal_is_counted_under_its_reason() -> None:
    before = decisions(Check.INVITE, "deny", Reason.FEDERATION)
    other = decisions(Check.INVITE, "deny", Reason.INTERNAL_ERROR)

    verdict = Reporter(metrics_enabled=True)(Check.INVITE, deny(Reason.FEDERATION))

    assert verdict == Verdict(allowed=False, reason=Reason.FEDERATION)
    assert decisions(Check.INVITE, "deny", Reason.FEDERATION) == before + 1
    assert decisions(Check.INVITE, "deny", Reason.INTERNAL_ERROR) == other


def test_nothing_is_counted_with_metrics_disabled() -> None:
    before = decisions(Check.PUBLISH, "deny", Reason.DIRECTORY)

    Reporter(metrics_enabled=False)(Check.PUBLISH, deny(Reason.DIRECTORY))

    assert decisions(Check.PUBLISH, "deny", Reason.DIRECTORY) == before


def test_a_refusal_is_logged_at_info_with_check_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="synapse_guard")

    Reporter(metrics_enabled=False)(Check.CREATE_ROOM, deny(Reason.ENCRYPTION))

    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("synapse_guard", logging.INFO, "refused: check=create_room reason=encryption")
    ]


def test_an_allowed_decision_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="synapse_guard")

    Reporter(metrics_enabled=True)(Check.LOGIN, allow())

    assert caplog.records == []


def test_guarded_passes_results_through_untouched() -> None:
    reporter = Reporter(metrics_enabled=True)

    @reporter.guarded(Check.INVITE, lambda: "denied")
    async def callback(inviter: str, invitee: str, room_id: str) -> str:
        return f"{inviter}>{invitee}@{room_id}"

    assert asyncio.run(callback("a", "b", room_id="c")) == "a>b@c"


def test_guarded_turns_an_exception_into_the_given_denial(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="synapse_guard")
    reporter = Reporter(metrics_enabled=True)
    before = decisions(Check.JOIN, "deny", Reason.INTERNAL_ERROR)

    @reporter.guarded(Check.JOIN, lambda: "M_FORBIDDEN")
    async def callback(user_id: str, room_id: str, is_invited: bool) -> str:
        raise Boom("database went away")

    assert asyncio.run(callback("@alice:test.local", "!room", False)) == "M_FORBIDDEN"
    assert decisions(Check.JOIN, "deny", Reason.INTERNAL_ERROR) == before + 1
    failure = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert failure.name == "synapse_guard"
    assert "check=join" in failure.getMessage()
    assert failure.exc_info is not None
    assert failure.exc_info[0] is Boom
    assert "refused: check=join reason=internal_error" in caplog.messages


def test_guarded_counts_nothing_with_metrics_disabled() -> None:
    reporter = Reporter(metrics_enabled=False)
    before = decisions(Check.EVENT, "deny", Reason.INTERNAL_ERROR)

    @reporter.guarded(Check.EVENT, lambda: (False, None))
    async def callback() -> tuple[bool, None]:
        raise Boom

    assert asyncio.run(callback()) == (False, None)
    assert decisions(Check.EVENT, "deny", Reason.INTERNAL_ERROR) == before


def test_a_denial_that_raises_reaches_synapse() -> None:
    # on_create_room refuses by raising; that exception must not be swallowed in turn.
    reporter = Reporter(metrics_enabled=True)

    def refuse() -> None:
        raise PermissionError("Room creation forbidden")

    @reporter.guarded(Check.CREATE_ROOM, refuse)
    async def callback() -> None:
        raise Boom

    with pytest.raises(PermissionError, match="Room creation forbidden"):
        asyncio.run(callback())


def test_guarded_keeps_the_signature_synapse_inspects() -> None:
    reporter = Reporter(metrics_enabled=True)

    async def user_may_create_room(user_id: str, room_config: dict | None = None) -> str:
        return "NOT_SPAM"

    wrapped = reporter.guarded(Check.CREATE_ROOM, lambda: "M_FORBIDDEN")(user_may_create_room)

    assert inspect.signature(wrapped) == inspect.signature(user_may_create_room)
    assert wrapped.__name__ == "user_may_create_room"
    assert inspect.iscoroutinefunction(wrapped)
