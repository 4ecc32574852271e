"""The alerts endpoint in the module: registered only when enabled, refused at start when its
secret or sender is wrong, and the cleartext exception holds for the guard's own notice only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from synapse.module_api.errors import ConfigError

from synapse_guard.alerts.control import ALERTS_PATH
from tests.unit.conftest import ROOM_ID, SERVER_NAME, create_module, make_event

BOT = f"@alerts:{SERVER_NAME}"
MEGOLM = "m.megolm.v1.aes-sha2"


def alerts_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    secret = tmp_path / "alerts_secret"
    secret.write_text("a" * 64)
    return {
        "alerts": {
            "enabled": True,
            "secret_path": str(secret),
            "room": ROOM_ID,
            "sender": BOT,
            "allow_cidrs": ["127.0.0.1/32"],
            **extra,
        }
    }


def registered_paths(module: Any) -> list[str]:
    return [call.args[0] for call in module.api.register_web_resource.call_args_list]


def test_the_endpoint_exists_only_when_alerts_are_enabled(tmp_path: Path) -> None:
    assert ALERTS_PATH not in registered_paths(create_module())
    assert ALERTS_PATH in registered_paths(create_module(alerts_config(tmp_path)))


def test_a_missing_secret_file_stops_the_start(tmp_path: Path) -> None:
    config = alerts_config(tmp_path)
    config["alerts"]["secret_path"] = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match="cannot read"):
        create_module(config)


def test_a_sender_of_another_server_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"alerts\.sender: .* is not an account of this server"):
        create_module(alerts_config(tmp_path, sender="@alerts:evil.example"))


def check(module: Any, event: Any) -> Any:
    encryption = make_event("m.room.encryption", BOT, {"algorithm": MEGOLM}, state_key="")
    state = {("m.room.encryption", ""): encryption}
    return asyncio.run(module.callbacks["check_event_allowed"](event, state))


def test_only_the_notice_being_sent_may_enter_the_encrypted_room_in_clear(tmp_path: Path) -> None:
    module = create_module(alerts_config(tmp_path))
    content = {"msgtype": "m.notice", "body": "Alertmanager: firing: 1"}
    notice = make_event("m.room.message", BOT, content)
    # The bot's own client (or anyone with its token) sending the same text: refused.
    assert check(module, notice)[0] is False
    alerts = module.guard._alerts  # the state of the exception, set while sending
    assert alerts is not None
    alerts._sending.add((ROOM_ID, BOT, content["body"]))
    assert check(module, notice)[0] is True
    # Anything else at the same time stays refused: another body, another field, another type.
    other = make_event("m.room.message", BOT, {**content, "body": "other"})
    extra = make_event("m.room.message", BOT, {**content, "format": "org.matrix.custom.html"})
    text = make_event("m.room.message", BOT, {**content, "msgtype": "m.text"})
    for event in (other, extra, text):
        assert check(module, event)[0] is False
