"""The second factor's glue: the guard loaded on a mocked ModuleApi, its SQL on real SQLite."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import bcrypt
import pytest

from synapse_guard.compat import ConfigError, SynapseError
from synapse_guard.totp import provider as totp
from synapse_guard.totp.core import code_at, secret_from_uri, time_step
from synapse_guard.verdict import Check, Reason
from tests.unit.conftest import LoadedGuard, create_module, decisions, make_api

ALICE = "@alice:test.local"
PASSWORD = "Correct-Horse-9"
NOW_MS = 1_800_000_000_000
STEP = time_step(NOW_MS)


class FakeDatabase:
    """`run_db_interaction` on an in-memory SQLite holding Synapse's `users` table."""

    def __init__(self) -> None:
        self.connection = sqlite3.connect(":memory:")
        self.connection.execute("CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT)")
        self.fail = False

    def add_user(self, user_id: str, password: str) -> None:
        data = unicodedata.normalize("NFKC", password).encode()
        stored = bcrypt.hashpw(data, bcrypt.gensalt(4)).decode()
        self.connection.execute("INSERT INTO users VALUES (?, ?)", (user_id, stored))

    async def run(self, desc: str, func: Callable[..., Any], *args: Any) -> Any:
        if self.fail:
            raise RuntimeError("database unavailable")
        cursor = self.connection.cursor()
        try:
            return func(cursor, *args)
        finally:
            self.connection.commit()


async def in_thread(f: Callable[..., Any], *args: Any) -> Any:
    return f(*args)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    key = tmp_path / "totp.key"
    key.write_bytes(bytes(range(32)))
    return key


@pytest.fixture
def database() -> Iterator[FakeDatabase]:
    db = FakeDatabase()
    db.add_user(ALICE, PASSWORD)
    yield db
    db.connection.close()


def synapse_api(database: FakeDatabase, localdb: bool = False, pepper: str = "") -> Mock:
    api = make_api()
    api._hs = Mock()
    api._hs.config.auth.password_localdb_enabled = localdb
    api._hs.config.auth.password_pepper = pepper
    api._hs.config.registration.bcrypt_rounds = 4
    api._hs.config.experimental.msc3967_enabled = False  # Synapse < 1.110 has this switch
    api.run_db_interaction.side_effect = database.run
    api.defer_to_thread.side_effect = in_thread
    api.get_qualified_user_id.side_effect = lambda localpart: f"@{localpart}:test.local"
    api.is_mine.side_effect = lambda user_id: user_id.endswith(":test.local")

    async def exists(user_id: str) -> str | None:
        rows = database.connection.execute("SELECT name FROM users WHERE name = ?", (user_id,))
        row = rows.fetchone()
        return None if row is None else str(row[0])

    api.check_user_exists.side_effect = exists
    return api


def load(mode: str, key_file: Path, api: Mock) -> LoadedGuard:
    return create_module(
        {"auth": {"totp": mode, "secrets_key_path": str(key_file), "max_failures": 2}}, api
    )


def totp_paths(api: Mock) -> list[str]:
    paths = (call.args[0] for call in api.register_web_resource.call_args_list)
    return sorted(path for path in paths if path.startswith(totp.RESOURCE_PREFIX))


def checker(module: LoadedGuard) -> Callable[..., Any]:
    return module.callbacks["auth_checkers"][("m.login.password", ("password",))]


def login(module: LoadedGuard, value: str, user: str = "alice") -> Any:
    return asyncio.run(checker(module)(user, "m.login.password", {"password": value}))


def enroll(module: LoadedGuard, api: Mock) -> str:
    """Call the enrol resource's handler (as the web resource does); returns the secret."""
    (resource,) = [
        call.args[1]
        for call in api.register_web_resource.call_args_list
        if call.args[0].endswith("/enroll")
    ]
    reply = asyncio.run(resource._handler("@admin:test.local", {"user_id": ALICE}))
    return secret_from_uri(reply["otpauth_uri"])


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(totp, "_now_ms", lambda: NOW_MS)


def test_off_registers_no_endpoint_and_a_checker_that_never_accepts(
    key_file: Path, database: FakeDatabase
) -> None:
    api = synapse_api(database, localdb=True)
    module = load("off", key_file, api)
    assert totp_paths(api) == []
    assert set(module.callbacks["auth_checkers"]) == {("m.login.password", ("password",))}
    # Synapse's own check decides: the right password, a wrong one, an unknown user.
    for user, value in (("alice", PASSWORD), ("alice", "Wrong-1"), ("nobody", PASSWORD)):
        assert login(module, value, user=user) is None


def test_off_registers_nothing_when_synapse_checks_no_passwords(
    key_file: Path, database: FakeDatabase
) -> None:
    api = synapse_api(database, localdb=False)
    module = load("off", key_file, api)
    assert "auth_checkers" not in module.callbacks
    assert totp_paths(api) == []


def test_refuses_to_start_while_synapse_checks_passwords_itself(
    key_file: Path, database: FakeDatabase
) -> None:
    with pytest.raises(ConfigError, match="localdb_enabled: false"):
        load("required", key_file, synapse_api(database, localdb=True))


def test_refuses_to_start_with_another_pepper(key_file: Path, database: FakeDatabase) -> None:
    with pytest.raises(ConfigError, match="pepper"):
        load("required", key_file, synapse_api(database, pepper="synapse-pepper"))


def test_refuses_to_start_without_a_usable_key(tmp_path: Path, database: FakeDatabase) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"short")
    with pytest.raises(ConfigError, match=r"at least 32") as caught:
        load("required", short, synapse_api(database))
    # Raised by Guard.parse_config, which names the key as Synapse prints it.
    assert list(caught.value.path or []) == ["auth.secrets_key_path"]


def test_registers_the_checker_and_the_admin_resources(
    key_file: Path, database: FakeDatabase
) -> None:
    api = synapse_api(database)
    module = load("required", key_file, api)
    assert set(module.callbacks["auth_checkers"]) == {("m.login.password", ("password",))}
    assert totp_paths(api) == [
        f"{totp.RESOURCE_PREFIX}/{a}" for a in ("enroll", "password", "reset")
    ]


def test_required_refuses_users_not_enrolled(key_file: Path, database: FakeDatabase) -> None:
    module = load("required", key_file, synapse_api(database))
    before = decisions(Check.LOGIN, "deny", Reason.TOTP_NOT_ENROLLED)
    assert login(module, PASSWORD) is None
    assert decisions(Check.LOGIN, "deny", Reason.TOTP_NOT_ENROLLED) == before + 1


def test_optional_lets_users_not_enrolled_in_with_their_password(
    key_file: Path, database: FakeDatabase
) -> None:
    module = load("optional", key_file, synapse_api(database))
    assert login(module, PASSWORD) == (ALICE, None)
    assert login(module, "Wrong-Password-1") is None
    assert login(module, PASSWORD, user="@ALICE:test.local") == (ALICE, None)  # as Synapse


def test_an_enrolled_user_needs_a_fresh_code(key_file: Path, database: FakeDatabase) -> None:
    api = synapse_api(database)
    module = load("optional", key_file, api)
    secret = enroll(module, api)
    stored = database.connection.execute("SELECT secret FROM synapse_guard_totp").fetchone()[0]
    assert secret not in stored  # encrypted at rest

    assert login(module, PASSWORD) is None  # no code
    assert login(module, PASSWORD + code_at(secret, STEP)) == (ALICE, None)
    before = decisions(Check.LOGIN, "deny", Reason.TOTP_REPLAYED)
    assert login(module, PASSWORD + code_at(secret, STEP)) is None
    assert decisions(Check.LOGIN, "deny", Reason.TOTP_REPLAYED) == before + 1
    assert login(module, "Wrong" + code_at(secret, STEP + 1)) is None
    assert login(module, PASSWORD + code_at(secret, STEP + 1)) == (ALICE, None)


def test_the_failure_limit_refuses_even_the_right_code(
    key_file: Path, database: FakeDatabase
) -> None:
    api = synapse_api(database)
    module = load("required", key_file, api)
    secret = enroll(module, api)
    good = code_at(secret, STEP)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    assert login(module, PASSWORD + wrong) is None
    assert login(module, PASSWORD + wrong) is None
    before = decisions(Check.LOGIN, "deny", Reason.TOTP_RATE_LIMITED)
    assert login(module, PASSWORD + good) is None
    assert decisions(Check.LOGIN, "deny", Reason.TOTP_RATE_LIMITED) == before + 1


def test_a_failure_inside_denies_and_is_counted(key_file: Path, database: FakeDatabase) -> None:
    module = load("required", key_file, synapse_api(database))
    database.fail = True
    before = decisions(Check.LOGIN, "deny", Reason.INTERNAL_ERROR)
    assert login(module, PASSWORD + "123456") is None
    assert decisions(Check.LOGIN, "deny", Reason.INTERNAL_ERROR) == before + 1


def test_a_missing_password_field_is_not_a_login(key_file: Path, database: FakeDatabase) -> None:
    module = load("required", key_file, synapse_api(database))
    assert asyncio.run(checker(module)("alice", "m.login.password", {"password": 5})) is None


# -- One hash per attempt: the time of a refusal says nothing of the account ----------------


class HashCounter:
    """Counts the bcrypt runs of the guard's password checks, and their cost."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs = 0
        self.salts: list[int] = []
        real_checkpw, real_hashpw, real_gensalt = bcrypt.checkpw, bcrypt.hashpw, bcrypt.gensalt

        def checkpw(password: bytes, stored: bytes) -> bool:
            self.runs += 1
            return real_checkpw(password, stored)

        def hashpw(password: bytes, salt: bytes) -> bytes:
            self.runs += 1
            return real_hashpw(password, salt)

        def gensalt(rounds: int = 12) -> bytes:
            self.salts.append(rounds)
            return real_gensalt(rounds)

        for name, fake in (("checkpw", checkpw), ("hashpw", hashpw), ("gensalt", gensalt)):
            monkeypatch.setattr(f"synapse_guard.totp.core.bcrypt.{name}", fake)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> HashCounter:
    return HashCounter(monkeypatch)


def test_every_refusal_costs_one_hash_whether_the_user_exists_or_not(
    key_file: Path, database: FakeDatabase, hashes: HashCounter
) -> None:
    api = synapse_api(database)
    module = load("required", key_file, api)
    database.connection.execute("INSERT INTO users VALUES ('@gone:test.local', NULL)")
    database.add_user("@bob:test.local", PASSWORD)
    database.add_user("@carol:test.local", PASSWORD)
    secret = enroll(module, api)  # alice
    wrong_code = f"{(int(code_at(secret, STEP)) + 500_000) % 1_000_000:06d}"
    assert login(module, PASSWORD + wrong_code) is None  # one failure of two (max_failures: 2)
    assert login(module, PASSWORD + wrong_code) is None  # alice is now rate limited

    attempts = {
        "unknown user": ("nobody", PASSWORD + "123456"),
        "deactivated (no hash)": ("gone", PASSWORD),
        "not enrolled, right password": ("bob", PASSWORD),
        "not enrolled, wrong password": ("carol", "Wrong-1"),
        "enrolled, no code": ("alice", PASSWORD),
        "enrolled, wrong password": ("alice", "Wrong-1" + code_at(secret, STEP)),
        "enrolled, rate limited": ("alice", PASSWORD + code_at(secret, STEP)),
    }
    for what, (user, value) in attempts.items():
        hashes.runs, hashes.salts = 0, []
        assert login(module, value, user=user) is None, what
        assert hashes.runs == 1, what
        assert hashes.salts in ([], [4]), what  # a dummy costs Synapse's bcrypt_rounds


def test_a_lone_surrogate_in_a_password_is_a_wrong_password(
    key_file: Path, database: FakeDatabase
) -> None:
    module = load("optional", key_file, synapse_api(database))
    before = decisions(Check.LOGIN, "deny", Reason.INTERNAL_ERROR)
    assert login(module, "Correct\ud800") is None
    assert decisions(Check.LOGIN, "deny", Reason.INTERNAL_ERROR) == before  # not an error


def equal_cost(module: LoadedGuard, user: str, password: str = PASSWORD) -> Any:
    return asyncio.run(checker(module)(user, "m.login.password", {"password": password}))


def test_with_totp_off_an_account_without_a_hash_costs_one_hash_here(
    key_file: Path, database: FakeDatabase, hashes: HashCounter
) -> None:
    """Synapse hashes only for an account with a password; this checker, for every other."""
    module = load("off", key_file, synapse_api(database, localdb=True))
    database.connection.execute("INSERT INTO users VALUES ('@gone:test.local', NULL)")
    database.add_user("@Twin:test.local", PASSWORD)
    database.add_user("@TWIN:test.local", PASSWORD)  # two inexact matches: Synapse finds none
    for user, runs in (
        ("nobody", 1),
        ("gone", 1),
        ("twin", 1),
        ("alice", 0),
        ("@ALICE:test.local", 0),
    ):
        hashes.runs, hashes.salts = 0, []
        assert equal_cost(module, user) is None  # never a result: Synapse decides
        assert (hashes.runs, hashes.salts) == (runs, [4] * runs), user


def test_with_totp_off_an_error_is_no_result(key_file: Path, database: FakeDatabase) -> None:
    module = load("off", key_file, synapse_api(database, localdb=True))
    database.fail = True
    assert equal_cost(module, "alice") is None


# -- The admin endpoints' bodies --------------------------------------------------------------


class FakeRequest:
    def __init__(self, body: bytes) -> None:
        self.content = io.BytesIO(body)


def admin_post(api: Mock, action: str, body: bytes) -> Any:
    (resource,) = [
        call.args[1]
        for call in api.register_web_resource.call_args_list
        if call.args[0] == f"{totp.RESOURCE_PREFIX}/{action}"
    ]
    admin = Mock()
    admin.user.to_string.return_value = "@admin:test.local"
    api.get_user_by_req.return_value = admin
    api.is_user_admin.return_value = True
    return asyncio.run(resource._async_render_POST(FakeRequest(body)))


@pytest.mark.parametrize(
    ("body", "status", "errcode"),
    [
        (b"[" * 50_000 + b"]" * 50_000, 413, "M_TOO_LARGE"),
        (b'{"user_id": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400, "M_BAD_JSON"),
        (b"[" * 30_000, 400, "M_BAD_JSON"),
        (b'{"user_id": NaN}', 400, "M_NOT_JSON"),
        (b'{"user_id": "@alice:test.local", "user_id": "@bob:test.local"}', 400, "M_BAD_JSON"),
        (b'{"user_id": "@alice\xff:test.local"}', 400, "M_NOT_JSON"),
        (b'{"user_id": "@\\ud800:test.local"}', 400, "M_NOT_JSON"),
        (b"", 400, "M_NOT_JSON"),
        (b'"@alice:test.local"', 400, "M_BAD_JSON"),
        (b'{"user_id": 42}', 400, "M_INVALID_PARAM"),
        (b'{"user_id": "@a\\u0000b:test.local"}', 400, "M_INVALID_PARAM"),  # PostgreSQL: 500
        (b'{"user_id": "@alice:test.local\\n"}', 400, "M_INVALID_PARAM"),
        (b'{"user_id": "@' + b"a" * 300 + b':test.local"}', 400, "M_INVALID_PARAM"),
        (b'{"user_id": "@alice"}', 400, "M_INVALID_PARAM"),
        (b'{"user_id": "@alice:test.local", "password": 5}', 400, "M_INVALID_PARAM"),
    ],
)
def test_bad_admin_bodies_are_refused_and_enrol_nobody(
    key_file: Path, database: FakeDatabase, body: bytes, status: int, errcode: str
) -> None:
    api = synapse_api(database)
    load("required", key_file, api)
    for action in ("enroll", "reset", "password"):
        if action != "password" and b'"password"' in body:
            continue  # a field only the password action reads
        with pytest.raises(SynapseError) as caught:
            admin_post(api, action, body)
        assert (caught.value.code, caught.value.errcode) == (status, errcode), action
    tables = database.connection.execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'synapse_guard_totp'"
    ).fetchone()[0]
    if tables:
        assert (
            database.connection.execute("SELECT count(*) FROM synapse_guard_totp").fetchone()[0]
            == 0
        )


def test_a_good_admin_body_still_enrols(key_file: Path, database: FakeDatabase) -> None:
    api = synapse_api(database)
    load("required", key_file, api)
    code, reply = admin_post(api, "enroll", b'{"user_id": "@alice:test.local"}')
    assert code == 200
    assert reply["otpauth_uri"].startswith("otpauth://totp/")
