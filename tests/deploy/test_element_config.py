"""deploy/element/config.json: Element Web fixed to this server, with nothing that phones out."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy.compose import DEPLOY, load_compose

CONFIG_FILE = DEPLOY / "element" / "config.json"
CONFIG: dict[str, Any] = json.loads(CONFIG_FILE.read_text(encoding="utf-8"))
PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def test_homeserver_is_fixed_from_a_template_variable() -> None:
    homeserver = CONFIG["default_server_config"]["m.homeserver"]
    assert homeserver["base_url"] == "https://${MATRIX_DOMAIN}"
    assert homeserver["server_name"] == "${SERVER_NAME}"
    assert "default_server_name" not in CONFIG
    assert "default_hs_url" not in CONFIG
    assert "m.identity_server" not in CONFIG["default_server_config"]


def test_every_placeholder_is_rendered_by_the_element_service() -> None:
    element = load_compose()["services"]["element"]
    script = "\n".join(element["command"])
    used = set(PLACEHOLDER.findall(CONFIG_FILE.read_text(encoding="utf-8")))
    assert used
    for name in used:
        assert f"${{{name}}}" in script, f"{name} is not in the envsubst list"
        assert name in element["environment"], f"{name} is not passed to the element service"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("disable_custom_urls", True),  # members cannot point Element at another server
        ("disable_guests", True),
        ("disable_3pid_login", True),  # no e-mail / phone login
        ("show_labs_settings", False),  # no experimental features
        ("piwik", False),  # no analytics
        ("integrations_ui_url", None),  # no integration manager (scalar.vector.im)
        ("integrations_rest_url", None),
        ("integrations_widgets_urls", []),
        ("bug_report_endpoint_url", None),  # no rageshakes to a third party
    ],
)
def test_setting(key: str, value: object) -> None:
    assert key in CONFIG
    assert CONFIG[key] == value


@pytest.mark.parametrize("key", ["posthog", "sentry", "map_style_url", "jitsi", "element_call"])
def test_no_third_party_service(key: str) -> None:
    assert key not in CONFIG


@pytest.mark.parametrize(
    "setting",
    [
        "urlPreviewsEnabled",  # link previews make the server fetch what members post
        "urlPreviewsEnabled_e2ee",
        "UIFeature.urlPreviews",
        "UIFeature.registration",
        "UIFeature.passwordReset",
        "UIFeature.thirdPartyId",
        "UIFeature.identityServer",
        "UIFeature.widgets",
        "UIFeature.voip",  # calls go through third-party Jitsi / Element Call servers
        "UIFeature.locationSharing",  # map tiles from a third party
    ],
)
def test_setting_default_off(setting: str) -> None:
    assert CONFIG["setting_defaults"][setting] is False


def test_no_feature_is_switched_on() -> None:
    assert all(value is False for value in CONFIG.get("features", {}).values())


def test_no_url_to_a_third_party() -> None:
    urls = re.findall(r"https?://[^\"]+", CONFIG_FILE.read_text(encoding="utf-8"))
    for url in urls:
        assert re.fullmatch(r"https://\$\{MATRIX_(?:ELEMENT_)?DOMAIN\}", url), url
