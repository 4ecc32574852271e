"""Push gateways: the URL an attacker registers must be exactly an allowed one, or nothing.

The attacks: a host that starts or ends like the gateway's, userinfo that hides the real host,
dot segments, another scheme or port, encodings some parser decodes and another does not. The
property tests check the strict grammar against the two parsers that matter: urllib (Synapse
checks the path with it) and Twisted's URI (the agent that connects).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import urllib.parse
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, Mock

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from synapse.push import PusherConfigException
from twisted.web.client import URI

from synapse_guard import compat
from synapse_guard.config import GuardConfigError, PushPolicy, parse_guard_config
from synapse_guard.push import control
from synapse_guard.push.gateways import (
    NOTIFY_PATH,
    OVERLAP_IDS,
    GatewayUrl,
    StoredPusher,
    decide_pusher,
    judge_pushers,
    parse_gateway_url,
    select_pushers_since,
)
from synapse_guard.record.reporting import Reporter
from synapse_guard.verdict import Check, Reason

from .conftest import ALICE, create_module, decisions, make_api

ELEMENT = "https://matrix.org/_matrix/push/v1/notify"
SYGNAL = "https://push.example.org:8443/_matrix/push/v1/notify"
ALLOWED = (parse_gateway_url(ELEMENT), parse_gateway_url(SYGNAL))


def http(url: object, **data: object) -> dict[str, object]:
    return {"url": url, **data}


def allowed(url: object) -> bool:
    return decide_pusher(ALLOWED, "http", http(url)).allowed


# The exact gateway, written as every parser reads it -----------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        ELEMENT,
        "https://MATRIX.ORG/_matrix/push/v1/notify",  # DNS names are case-insensitive
        "HTTPS://matrix.org/_matrix/push/v1/notify",
        "https://matrix.org:443/_matrix/push/v1/notify",  # the default port, written out
        SYGNAL,
    ],
)
def test_the_allowed_gateway_passes_however_its_case_and_default_port_are_written(
    url: str,
) -> None:
    assert decide_pusher(ALLOWED, "http", http(url)).allowed


@pytest.mark.parametrize(
    "url",
    [
        # Look-alike hosts: prefix, suffix and sub-domain matches.
        "https://matrix.org.evil.example/_matrix/push/v1/notify",
        "https://evilmatrix.org/_matrix/push/v1/notify",
        "https://push.matrix.org/_matrix/push/v1/notify",
        "https://matrix.org./_matrix/push/v1/notify",  # the trailing-dot FQDN
        "https://matrix.or/_matrix/push/v1/notify",
        "https://xn--matrix-9ya.org/_matrix/push/v1/notify",
        "https://matr\u0131x.org/_matrix/push/v1/notify",  # a dotless i
        # Userinfo: the real host is after the last '@'.
        "https://matrix.org@evil.example/_matrix/push/v1/notify",
        "https://matrix.org:443@evil.example/_matrix/push/v1/notify",
        "https://user:pass@matrix.org/_matrix/push/v1/notify",
        "https://evil.example\\@matrix.org/_matrix/push/v1/notify",
        "https://evil.example#@matrix.org/_matrix/push/v1/notify",
        # Paths that a server may normalise to the gateway's, or that are not its path.
        "https://matrix.org/_matrix/push/v1/notify/../x",
        "https://matrix.org/_matrix/push/v1/notify/../../../evil",
        "https://matrix.org/_matrix/push/v1/./notify",
        "https://matrix.org/_matrix/push/v1/notify/",
        "https://matrix.org//_matrix/push/v1/notify",
        "https://matrix.org/_matrix/push/v1/notify?to=evil.example",
        "https://matrix.org/_matrix/push/v1/notify#fragment",
        "https://matrix.org/_matrix/push/v1/notif%79",
        "https://matrix.org/_MATRIX/push/v1/notify",
        "https://matrix.org/_matrix/push/v1/notify;x",
        "https://matrix.org/_matrix/push/v1/notifyx",
        "https://matrix.org/_matrix/push/v1/notify/x",
        # Another scheme or port.
        "http://matrix.org/_matrix/push/v1/notify",
        "https://matrix.org:8443/_matrix/push/v1/notify",
        "https://matrix.org:80/_matrix/push/v1/notify",
        "https://push.example.org/_matrix/push/v1/notify",  # Sygnal without its port
        "https://matrix.org:0/_matrix/push/v1/notify",
        "https://matrix.org:99999/_matrix/push/v1/notify",
        "ftp://matrix.org/_matrix/push/v1/notify",
        "//matrix.org/_matrix/push/v1/notify",
        # Encodings and whitespace that parsers treat differently.
        "https://matrix%2Eorg/_matrix/push/v1/notify",
        "https://matrix.org /_matrix/push/v1/notify",
        " https://matrix.org/_matrix/push/v1/notify",
        "https://matrix.org/_matrix/push/v1/notify\n",
        "https://matrix.org\t/_matrix/push/v1/notify",
        "https://matrix.org\x00.evil.example/_matrix/push/v1/notify",
        "https:/matrix.org/_matrix/push/v1/notify",
        "https:\\\\matrix.org/_matrix/push/v1/notify",
        # Hosts that some parsers read as numbers.
        "https://2130706433/_matrix/push/v1/notify",
        "https://0x7f.1/_matrix/push/v1/notify",
        "https://127.1/_matrix/push/v1/notify",
        "https://127.000.000.001/_matrix/push/v1/notify",
        "https://[::ffff:127.0.0.1]/_matrix/push/v1/notify",
        # Not a URL at all.
        "",
        "matrix.org",
        "https://",
        "https://matrix.org",
    ],
)
def test_a_url_that_only_resembles_the_gateway_is_refused(url: str) -> None:
    verdict = decide_pusher(ALLOWED, "http", http(url))

    assert not verdict.allowed
    assert verdict.reason is Reason.PUSH_GATEWAY


@pytest.mark.parametrize(
    "data",
    [None, [], "https://matrix.org/_matrix/push/v1/notify", {}, {"url": None}, {"url": 7},
     {"url": ["https://matrix.org/_matrix/push/v1/notify"]}, {"URL": ELEMENT}],
)  # fmt: skip
def test_an_http_pusher_without_a_url_string_is_refused(data: object) -> None:
    assert decide_pusher(ALLOWED, "http", data).reason is Reason.PUSH_GATEWAY


@pytest.mark.parametrize("kind", ["HTTP", "https", "webpush", "", None, 1, ["http"]])
def test_a_pusher_of_another_kind_is_refused_even_with_an_allowed_url(kind: object) -> None:
    assert decide_pusher(ALLOWED, kind, http(ELEMENT)).reason is Reason.PUSH_GATEWAY


def test_an_email_pusher_is_the_operators_choice_and_passes() -> None:
    # Synapse creates this kind only with email.enable_notifs, to the user's verified address.
    assert decide_pusher((), "email", {"brand": "Example"}).allowed


def test_no_allowed_gateway_refuses_every_http_pusher() -> None:
    assert not decide_pusher((), "http", http(ELEMENT)).allowed


def test_require_event_id_only_refuses_a_pusher_asking_for_the_full_payload() -> None:
    def verdict(**data: object) -> Any:
        return decide_pusher(ALLOWED, "http", http(ELEMENT, **data), event_id_only=True)

    assert verdict(format="event_id_only").allowed
    assert verdict().reason is Reason.PUSH_FORMAT
    assert verdict(format="full").reason is Reason.PUSH_FORMAT
    assert verdict(format="EVENT_ID_ONLY").reason is Reason.PUSH_FORMAT
    # Without the option, the format is the client's choice.
    assert decide_pusher(ALLOWED, "http", http(ELEMENT, format="full")).allowed


# Properties ---------------------------------------------------------------------------------

SCHEMES = st.sampled_from(["https", "http", "HTTPS", "ftp", "wss", "httpss"])
LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
HOSTS = st.one_of(
    st.lists(LABELS, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["matrix.org", "push.example.org", "matrix.org.evil.example", "127.0.0.1"]),
)
PORTS = st.one_of(st.none(), st.integers(min_value=1, max_value=65535))
PATHS = st.one_of(
    st.just(NOTIFY_PATH),
    st.from_regex(r"(/[A-Za-z0-9._~-]{0,8}){1,5}", fullmatch=True),
    st.sampled_from([NOTIFY_PATH + "/", NOTIFY_PATH + "/../x", "/_matrix/push/v1/../v1/notify"]),
)
USERINFO = st.one_of(
    st.none(), st.sampled_from(["matrix.org", "u:p", "matrix.org:443", "@", "user"])
)


def canonical(scheme: str, host: str, port: int | None, path: str) -> tuple[str, str, int, str]:
    scheme = scheme.lower()
    default = {"https": 443, "http": 80}.get(scheme, -1)
    return scheme, host.lower(), default if port is None else port, path


@given(scheme=SCHEMES, host=HOSTS, port=PORTS, path=PATHS, userinfo=USERINFO)
@example(scheme="https", host="matrix.org", port=None, path=NOTIFY_PATH, userinfo=None)
def test_no_url_differing_from_an_allowed_one_passes(
    scheme: str, host: str, port: int | None, path: str, userinfo: str | None
) -> None:
    url = f"{scheme}://{userinfo + '@' if userinfo is not None else ''}{host}"
    url += f":{port}" if port is not None else ""
    url += path
    same = userinfo is None and any(
        canonical(scheme, host, port, path) == (g.scheme, g.host, g.port, g.path) for g in ALLOWED
    )

    assert allowed(url) == same, url


def mutations(base: str) -> st.SearchStrategy[str]:
    """The gateway's URL with characters inserted, replaced or removed anywhere."""
    alphabet = st.sampled_from([*"@:/\\.%?#;[]-_~ \t\n\x00AaZz09", "..", "%2e", "\u0131"])

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        text = base
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            at = draw(st.integers(min_value=0, max_value=len(text)))
            action = draw(st.sampled_from(["insert", "replace", "delete"]))
            piece = draw(alphabet)
            if action == "insert":
                text = text[:at] + piece + text[at:]
            elif action == "replace":
                text = text[:at] + piece + text[at + 1 :]
            else:
                text = text[:at] + text[at + 1 :]
        return text

    return mutate()


def parsed_by_urllib(url: str) -> tuple[str, str, int, str]:
    parts = urllib.parse.urlsplit(url)
    assert (parts.username, parts.password, parts.query, parts.fragment) == (None, None, "", "")
    assert parts.hostname is not None
    port = parts.port or {"https": 443, "http": 80}[parts.scheme]
    return parts.scheme, parts.hostname, port, parts.path


def parsed_by_twisted(url: str) -> tuple[str, str, int, str]:
    uri = URI.fromBytes(url.encode("ascii"))
    return uri.scheme.decode(), uri.host.decode().lower(), uri.port, uri.path.decode()


@given(url=st.one_of(mutations(ELEMENT), mutations(SYGNAL)))
@example(url="HTTPS://Matrix.ORG:443/_matrix/push/v1/notify")
@example(url="https://PUSH.example.org:08443/_matrix/push/v1/notify")
def test_whatever_passes_is_read_as_an_allowed_gateway_by_urllib_and_twisted(url: str) -> None:
    if not allowed(url):
        return
    expected = {(g.scheme, g.host, g.port, g.path) for g in ALLOWED}

    assert parsed_by_urllib(url) in expected, url
    assert parsed_by_twisted(url) in expected, url


@given(url=st.text(max_size=80))
def test_any_text_is_refused_or_is_an_allowed_gateway(url: str) -> None:
    verdict = decide_pusher(ALLOWED, "http", http(url))
    if verdict.allowed:
        assert parsed_by_urllib(url) in {(g.scheme, g.host, g.port, g.path) for g in ALLOWED}


@given(host=HOSTS, port=PORTS)
def test_the_canonical_form_reads_back_as_itself(host: str, port: int | None) -> None:
    text = f"https://{host}{f':{port}' if port else ''}{NOTIFY_PATH}"
    try:
        url = parse_gateway_url(text)
    except ValueError:
        return
    assert parse_gateway_url(str(url)) == url


# Config ------------------------------------------------------------------------------------


def test_push_defaults_allow_no_gateway_and_sweep_every_ten_seconds() -> None:
    assert parse_guard_config({}).push == PushPolicy(
        allowed_gateways=(), require_event_id_only=False, sweep_interval_ms=10_000
    )


def test_every_push_key_is_read() -> None:
    config = parse_guard_config(
        {
            "push": {
                "allowed_gateways": [
                    ELEMENT,
                    "https://Push.Example.org:8443/_matrix/push/v1/notify",
                ],
                "require_event_id_only": True,
                "sweep_interval": "3s",
            }
        }
    )

    assert config.push == PushPolicy(
        allowed_gateways=(
            GatewayUrl("https", "matrix.org", 443, NOTIFY_PATH),
            GatewayUrl("https", "push.example.org", 8443, NOTIFY_PATH),
        ),
        require_event_id_only=True,
        sweep_interval_ms=3000,
    )


def push_error(push: object) -> GuardConfigError:
    with pytest.raises(GuardConfigError) as caught:
        parse_guard_config({"push": push})
    return caught.value


@pytest.mark.parametrize(
    ("push", "path", "message"),
    [
        (
            {"allowed_gateway": [ELEMENT]},
            "push.allowed_gateway",
            "unknown key; known keys here: allowed_gateways, require_event_id_only, sweep_interval",
        ),
        ([ELEMENT], "push", "must be a mapping, got list"),
        ({"allowed_gateways": ELEMENT}, "push.allowed_gateways", "must be a list, got str"),
        (
            {"allowed_gateways": [ELEMENT, None]},
            "push.allowed_gateways[1]",
            "must be a URL string such as 'https://matrix.org/_matrix/push/v1/notify', got None",
        ),
        (
            {"allowed_gateways": ["https://matrix.org/"]},
            "push.allowed_gateways[0]",
            "'https://matrix.org/' has path '/': Synapse pushes only to /_matrix/push/v1/notify, "
            "e.g. 'https://matrix.org/_matrix/push/v1/notify'",
        ),
        (
            {"allowed_gateways": ["https://matrix.org"]},
            "push.allowed_gateways[0]",
            "'https://matrix.org' has no path (a push gateway's is /_matrix/push/v1/notify)",
        ),
        (
            {"allowed_gateways": ["wss://matrix.org/_matrix/push/v1/notify"]},
            "push.allowed_gateways[0]",
            "'wss://matrix.org/_matrix/push/v1/notify' has scheme 'wss'; use https (or http)",
        ),
        (
            {"allowed_gateways": ["https://admin:pw@matrix.org/_matrix/push/v1/notify"]},
            "push.allowed_gateways[0]",
            "'https://admin:pw@matrix.org/_matrix/push/v1/notify' is not a plain URL such as "
            "'https://push.example.org/_matrix/push/v1/notify' (only letters, digits and "
            ". - _ ~ / after the scheme: no user name or password, percent-encoding, query or "
            "fragment)",
        ),
        (
            {"allowed_gateways": ["https://matrix.org./_matrix/push/v1/notify"]},
            "push.allowed_gateways[0]",
            "'https://matrix.org./_matrix/push/v1/notify' has host 'matrix.org.', which is not "
            "a valid DNS name (no trailing dot)",
        ),
        (
            {"allowed_gateways": ["https://127.1/_matrix/push/v1/notify"]},
            "push.allowed_gateways[0]",
            "'https://127.1/_matrix/push/v1/notify' has host '127.1', which is neither a name "
            "nor an IPv4 address",
        ),
        (
            {"allowed_gateways": ["https://matrix.org:0/_matrix/push/v1/notify"]},
            "push.allowed_gateways[0]",
            "'https://matrix.org:0/_matrix/push/v1/notify' has port 0, outside 1-65535",
        ),
        (
            {"allowed_gateways": ["https://matrix.org/_matrix/push/v1/../v1/notify"]},
            "push.allowed_gateways[0]",
            "'https://matrix.org/_matrix/push/v1/../v1/notify' has a '.' or '..' path segment",
        ),
        (
            {"require_event_id_only": "yes"},
            "push.require_event_id_only",
            "must be true or false, got 'yes'",
        ),
        (
            {"sweep_interval": "0s"},
            "push.sweep_interval",
            "must be longer than zero, got '0s'",
        ),
    ],
)
def test_a_bad_push_value_is_refused_with_its_key_path(
    push: object, path: str, message: str
) -> None:
    error = push_error(push)

    assert (error.path, error.message) == (path, message)


# The sweep over the pushers table -----------------------------------------------------------


def pushers_table() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE pushers (id BIGINT PRIMARY KEY, user_name TEXT, app_id TEXT, "
        "pushkey TEXT, kind TEXT, data TEXT)"
    )
    return db


def test_the_sweep_reads_the_rows_added_or_updated_since_with_their_json(tmp_path: Any) -> None:
    db = pushers_table()
    db.executemany(
        "INSERT INTO pushers VALUES (?, ?, ?, ?, ?, ?)",
        [
            (3, ALICE, "app", "k1", "http", '{"url": "https://evil.example/x"}'),
            (7, ALICE, "app", "k2", "http", "not json"),
            (9, ALICE, "app", "k3", "email", None),
        ],
    )

    rows = select_pushers_since(db.cursor(), 3)

    assert rows == [
        StoredPusher(7, ALICE, "app", "k2", "http", None),
        StoredPusher(9, ALICE, "app", "k3", "email", None),
    ]
    assert select_pushers_since(db.cursor(), 0)[0].data == {"url": "https://evil.example/x"}


def test_judging_keeps_only_refused_pushers_and_rereads_an_overlap() -> None:
    rows = [
        StoredPusher(1, ALICE, "app", "ok", "http", http(ELEMENT)),
        StoredPusher(500, ALICE, "app", "bad", "http", http("https://evil.example" + NOTIFY_PATH)),
        StoredPusher(501, ALICE, "app", "broken", "http", None),
    ]

    result = judge_pushers(rows, 0, lambda p: decide_pusher(ALLOWED, p.kind, p.data))

    assert [p.pushkey for p, _ in result.refused] == ["bad", "broken"]
    assert result.next_since == 501 - OVERLAP_IDS
    assert judge_pushers([], 42, lambda p: decide_pusher(ALLOWED, p.kind, p.data)).next_since == 42


# The Synapse side ---------------------------------------------------------------------------


class FakeFactory:
    def __init__(self) -> None:
        self.created: list[Any] = []

    def create_pusher(self, pusher_config: Any) -> str:
        self.created.append(pusher_config)
        return "a pusher"


def api_with_pool(should_run_background_tasks: bool = True) -> tuple[Mock, Mock, FakeFactory]:
    api = make_api()
    api.should_run_background_tasks.return_value = should_run_background_tasks
    pool = Mock()
    pool.pusher_factory = FakeFactory()
    pool.remove_pusher = AsyncMock()
    api._hs = Mock()
    api._hs.get_pusherpool.return_value = pool
    return api, pool, pool.pusher_factory


def pusher_config(url: str, kind: str = "http") -> SimpleNamespace:
    return SimpleNamespace(kind=kind, data={"url": url}, user_name=ALICE)


GUARD_PUSH = {"push": {"allowed_gateways": [ELEMENT]}}


def test_synapse_refuses_a_pusher_outside_the_allowlist_before_storing_it() -> None:
    api, _, factory = api_with_pool()
    create_module(GUARD_PUSH, api=api)
    refused = decisions(Check.PUSH, "deny", Reason.PUSH_GATEWAY)

    with pytest.raises(PusherConfigException, match=r"^pusher not allowed by this server"):
        factory.create_pusher(pusher_config("https://evil.example" + NOTIFY_PATH))

    assert decisions(Check.PUSH, "deny", Reason.PUSH_GATEWAY) == refused + 1
    assert factory.created == []  # Synapse's own factory never saw it


def test_a_pusher_at_the_allowed_gateway_is_built_by_synapse() -> None:
    api, _, factory = api_with_pool()
    create_module(GUARD_PUSH, api=api)
    config = pusher_config(ELEMENT)

    assert factory.create_pusher(config) == "a pusher"
    assert factory.created == [config]


def test_a_failing_decision_refuses_the_pusher(monkeypatch: pytest.MonkeyPatch) -> None:
    api, _, factory = api_with_pool()
    create_module(GUARD_PUSH, api=api)
    monkeypatch.setattr(control, "decide_pusher", Mock(side_effect=RuntimeError("bug")))
    errors = decisions(Check.PUSH, "deny", Reason.INTERNAL_ERROR)

    with pytest.raises(PusherConfigException):
        factory.create_pusher(pusher_config(ELEMENT))

    assert decisions(Check.PUSH, "deny", Reason.INTERNAL_ERROR) == errors + 1


def test_without_synapses_pusher_factory_the_guard_says_so_at_start_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = make_api()  # Mock(spec=ModuleApi): no `_hs`
    with caplog.at_level(logging.WARNING, logger="synapse_guard"):
        create_module(GUARD_PUSH, api=api)

    assert any("cannot refuse a pusher" in r.getMessage() for r in caplog.records)
    assert not compat.refuse_pushers_at_creation(api, lambda *_: True, "no")


def sweep_calls(api: Mock) -> list[Any]:
    return [
        call
        for call in api.looping_background_call.call_args_list
        if call.kwargs.get("desc") == "synapse_guard_pusher_sweep"
    ]


def test_the_sweep_runs_only_where_background_tasks_run() -> None:
    api, _, _ = api_with_pool(should_run_background_tasks=False)
    create_module(GUARD_PUSH, api=api)
    assert sweep_calls(api) == []

    api, _, _ = api_with_pool()
    create_module({"push": {"sweep_interval": "2s"}}, api=api)
    (call,) = sweep_calls(api)
    assert call.args[1] == 2000


def run_sweep(api: Mock, rows: list[StoredPusher]) -> None:
    api.run_db_interaction = AsyncMock(return_value=rows)
    (call,) = sweep_calls(api)
    asyncio.run(call.args[0]())


def test_the_sweep_removes_a_stored_pusher_and_counts_it_once_removed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, pool, _ = api_with_pool()
    create_module(GUARD_PUSH, api=api)
    evil = "https://evil.example" + NOTIFY_PATH
    rows = [
        StoredPusher(4, ALICE, "app", "good", "http", http(ELEMENT)),
        StoredPusher(5, ALICE, "app", "evil", "http", http(evil)),
    ]
    removed = decisions(Check.PUSH, "deny", Reason.PUSH_GATEWAY)

    with caplog.at_level(logging.INFO, logger="synapse_guard"):
        run_sweep(api, rows)

    pool.remove_pusher.assert_awaited_once_with("app", "evil", ALICE)
    assert decisions(Check.PUSH, "deny", Reason.PUSH_GATEWAY) == removed + 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "check=push reason=push_gateway" in logged
    assert ALICE not in logged
    assert "evil.example" not in logged


def test_a_failing_removal_is_logged_once_not_counted_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, pool, _ = api_with_pool()
    create_module(GUARD_PUSH, api=api)
    pool.remove_pusher.side_effect = ConnectionError("database down")
    row = StoredPusher(900, ALICE, "app", "evil", "http", None)
    removed = decisions(Check.PUSH, "deny", Reason.PUSH_GATEWAY)

    with caplog.at_level(logging.WARNING, logger="synapse_guard"):
        run_sweep(api, [row])
        run_sweep(api, [row])
    # The second sweep read from below the failed pusher, so it is read again.
    assert api.run_db_interaction.call_args.args[2] < 900

    warnings = [r.getMessage() for r in caplog.records if "could not remove" in r.getMessage()]
    assert warnings == [
        "could not remove a refused pusher (ConnectionError); retrying at every sweep"
    ]
    assert decisions(Check.PUSH, "deny", Reason.PUSH_GATEWAY) == removed
    assert pool.remove_pusher.await_count == 2

    pool.remove_pusher.side_effect = None
    run_sweep(api, [row])
    assert decisions(Check.PUSH, "deny", Reason.PUSH_GATEWAY) == removed + 1


def test_the_guard_loads_with_push_defaults_and_reporter_alone() -> None:
    # install() needs nothing but the api, the config and the reporter.
    api, _, factory = api_with_pool()
    guard = control.install(api, parse_guard_config({}), Reporter(metrics_enabled=False))

    assert not guard.pusher_allowed("http", http(ELEMENT), ALICE)
    with pytest.raises(PusherConfigException):
        factory.create_pusher(pusher_config(ELEMENT))
