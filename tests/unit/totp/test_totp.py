"""The second factor's pure parts, and its SQL on a real SQLite database."""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_guard.config import AuthConfig, GuardConfig, GuardConfigError
from synapse_guard.totp import provider as totp
from synapse_guard.totp import store as totp_store
from synapse_guard.totp.core import (
    Failures,
    SecretCipher,
    SecretError,
    after_failure,
    check_code,
    check_password,
    code_at,
    hash_password,
    load_pepper,
    load_secrets_key,
    new_secret,
    provisioning_uri,
    rate_limited,
    secret_from_uri,
    split_code,
    time_step,
)
from synapse_guard.totp.provider import load_files, login_type_allowed
from synapse_guard.verdict import Reason

KEY = bytes(range(32))
ALICE = "@alice:test.local"
NOW_MS = 1_800_000_000_000
STEP = time_step(NOW_MS)
WINDOW_MS = 15 * 60 * 1000
ROUNDS = 4  # the cost of a dummy hash in these tests (Synapse's bcrypt_rounds)


# Splitting what the client sent -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hunter2123456", ("hunter2", "123456")),
        ("pass word 000000", ("pass word ", "000000")),
        ("123456789012", ("123456", "789012")),
        ("password", None),  # no code
        ("12345", None),
        ("123456", None),  # a code and no password
        ("hunter212345a", None),
        ("hunter2" + "\uff11" * 6, None),  # full-width digits are not a code
        ("", None),
    ],
)
def test_split_code(value: str, expected: tuple[str, str] | None) -> None:
    assert split_code(value) == expected


@given(st.text(min_size=1), st.from_regex(r"\A[0-9]{6}\Z"))
def test_split_code_recovers_any_password_and_code(password: str, digits: str) -> None:
    assert split_code(password + digits) == (password, digits)


# Password hash, as Synapse checks it --------------------------------------------------------


def synapse_hash(password: str, pepper: str = "") -> str:
    """What Synapse stores (its `hash` method): NFKC, UTF-8 + pepper, 72 bytes, bcrypt."""
    data = (unicodedata.normalize("NFKC", password).encode() + pepper.encode())[:72]
    return bcrypt.hashpw(data, bcrypt.gensalt(4)).decode()


def test_check_password_matches_synapse_hashes() -> None:
    stored = synapse_hash("Correct-Horse-9")
    assert check_password("Correct-Horse-9", "", stored, ROUNDS)
    assert not check_password("Correct-Horse-8", "", stored, ROUNDS)
    assert not check_password("Correct-Horse-9", "pepper", stored, ROUNDS)


def test_check_password_with_pepper_and_unicode_normalisation() -> None:
    stored = synapse_hash("ﬁancé", pepper="s3cret")  # the ligature NFKC-normalises to "fi"
    assert check_password("fiancé", "s3cret", stored, ROUNDS)
    assert check_password("ﬁancé", "s3cret", stored, ROUNDS)
    assert not check_password("fiancé", "", stored, ROUNDS)


def test_check_password_truncates_long_passwords_like_synapse() -> None:
    long = "x" * 100
    stored = synapse_hash(long)
    assert check_password(long, "", stored, ROUNDS)  # bcrypt >= 5 would raise on 100 bytes
    assert check_password("x" * 72 + "anything", "", stored, ROUNDS)


@pytest.mark.parametrize("stored", [None, "", "not-a-bcrypt-hash"])
def test_no_usable_hash_never_matches(stored: str | None) -> None:
    assert not check_password("", "", stored, ROUNDS)
    assert not check_password("anything", "", stored, ROUNDS)


def test_hash_password_is_accepted_by_the_check() -> None:
    stored = hash_password("New-Password-1", "pep", rounds=4)
    assert stored.startswith("$2b$04$")
    assert check_password("New-Password-1", "pep", stored, ROUNDS)
    assert not check_password("New-Password-1", "", stored, ROUNDS)


# Codes --------------------------------------------------------------------------------------


def test_the_uri_carries_the_secret_issuer_and_user() -> None:
    secret = new_secret()
    uri = provisioning_uri(secret, ALICE, "Guard Test")
    assert uri.startswith("otpauth://totp/Guard%20Test:%40alice%3Atest.local?")
    assert secret_from_uri(uri) == secret
    parsed = pyotp.parse_uri(uri)
    assert parsed.now() == pyotp.TOTP(secret).now()


def test_codes_are_what_an_authenticator_app_shows() -> None:
    secret = new_secret()
    assert code_at(secret, STEP) == pyotp.TOTP(secret).at(NOW_MS // 1000)


def test_a_current_code_is_accepted_with_its_step() -> None:
    secret = new_secret()
    checked = check_code(secret, code_at(secret, STEP), NOW_MS, last_step=None)
    assert checked.verdict.allowed
    assert checked.step == STEP


@pytest.mark.parametrize("offset", [-1, +1])
def test_one_step_of_clock_skew_is_accepted(offset: int) -> None:
    secret = new_secret()
    checked = check_code(secret, code_at(secret, STEP + offset), NOW_MS, last_step=None)
    assert checked.step == STEP + offset


@pytest.mark.parametrize("offset", [-3, -2, +2])
def test_older_or_later_codes_are_invalid(offset: int) -> None:
    secret = new_secret()
    candidate = code_at(secret, STEP + offset)
    if any(candidate == code_at(secret, STEP + o) for o in (-1, 0, 1)):
        pytest.skip("this random secret gives the same code for two steps")
    checked = check_code(secret, candidate, NOW_MS, last_step=None)
    assert checked.verdict.reason is Reason.TOTP_INVALID
    assert checked.step is None


def test_a_used_code_or_an_earlier_one_is_a_replay() -> None:
    secret = new_secret()
    assert (
        check_code(secret, code_at(secret, STEP), NOW_MS, last_step=STEP).verdict.reason
        is Reason.TOTP_REPLAYED
    )
    assert (
        check_code(secret, code_at(secret, STEP - 1), NOW_MS, last_step=STEP).verdict.reason
        is Reason.TOTP_REPLAYED
    )
    # The next step's code is still good after the current one was used.
    assert check_code(secret, code_at(secret, STEP + 1), NOW_MS, last_step=STEP).step == STEP + 1


def test_a_code_from_another_secret_is_invalid() -> None:
    checked = check_code(new_secret(), "000000", NOW_MS, last_step=None)
    # One chance in a million per step that "000000" is right: accept either answer then.
    assert checked.verdict.reason in (Reason.TOTP_INVALID, Reason.OK)


# Rate limit ---------------------------------------------------------------------------------


def test_failures_within_the_window_limit_then_expire() -> None:
    failures = Failures()
    for attempt in range(5):
        assert not rate_limited(failures, NOW_MS + attempt, 5, WINDOW_MS)
        failures = after_failure(failures, NOW_MS + attempt, WINDOW_MS)
    assert failures == Failures(5, NOW_MS)
    assert rate_limited(failures, NOW_MS + 10, 5, WINDOW_MS)
    assert rate_limited(failures, NOW_MS + WINDOW_MS - 1, 5, WINDOW_MS)
    assert not rate_limited(failures, NOW_MS + WINDOW_MS, 5, WINDOW_MS)
    # The first failure after the window opens a new one.
    assert after_failure(failures, NOW_MS + WINDOW_MS, WINDOW_MS) == Failures(1, NOW_MS + WINDOW_MS)


# Secrets at rest ----------------------------------------------------------------------------


def test_secrets_round_trip_and_are_not_stored_in_clear() -> None:
    cipher = SecretCipher(KEY)
    secret = new_secret()
    stored = cipher.encrypt(ALICE, secret)
    assert secret not in stored
    assert stored != cipher.encrypt(ALICE, secret)  # a fresh nonce every time
    assert cipher.decrypt(ALICE, stored) == secret


def test_a_secret_does_not_decrypt_with_another_key() -> None:
    stored = SecretCipher(KEY).encrypt(ALICE, new_secret())
    with pytest.raises(SecretError):
        SecretCipher(bytes(32)).decrypt(ALICE, stored)


def test_a_secret_copied_onto_another_user_does_not_decrypt() -> None:
    cipher = SecretCipher(KEY)
    stored = cipher.encrypt("@mallory:test.local", new_secret())
    with pytest.raises(SecretError, match="another user"):
        cipher.decrypt(ALICE, stored)


@pytest.mark.parametrize("stored", ["", "v1:", "v1:!!!", "v2:AAAA", "v1:" + "A" * 80])
def test_garbage_does_not_decrypt(stored: str) -> None:
    with pytest.raises(SecretError):
        SecretCipher(KEY).decrypt(ALICE, stored)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        SecretCipher(b"x" * 31)


def test_key_file_missing_or_short_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(GuardConfigError, match="cannot read") as missing:
        load_secrets_key(str(tmp_path / "absent"))
    assert missing.value.path == "auth.secrets_key_path"
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    with pytest.raises(GuardConfigError, match="holds 31 bytes; at least 32"):
        load_secrets_key(str(short))
    good = tmp_path / "good.key"
    good.write_bytes(b"\n" + b"x" * 31)  # whitespace counts: the key is raw bytes
    assert load_secrets_key(str(good)) == b"\n" + b"x" * 31


def test_pepper_file(tmp_path: Path) -> None:
    assert load_pepper(None) == ""
    pepper = tmp_path / "pepper"
    pepper.write_text("s3cret pepper\n")
    assert load_pepper(str(pepper)) == "s3cret pepper"
    with pytest.raises(GuardConfigError, match=r"auth\.password_pepper_path: cannot read"):
        load_pepper(str(tmp_path / "absent"))


def test_load_files_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(GuardConfigError, match=r"auth\.secrets_key_path"):
        load_files(AuthConfig(totp="required"))
    key = tmp_path / "totp.key"
    key.write_bytes(KEY)
    cipher, pepper = load_files(AuthConfig(totp="required", secrets_key_path=str(key)))
    assert pepper == ""
    assert cipher.decrypt(ALICE, cipher.encrypt(ALICE, "ABC")) == "ABC"


# Other login types --------------------------------------------------------------------------


def test_login_types_without_a_code_are_refused_only_when_required() -> None:
    for mode in ("off", "optional"):
        config = GuardConfig(auth=AuthConfig(totp=mode))
        assert login_type_allowed(config, "oidc-corp")
        assert login_type_allowed(config, None, ALICE)
    required = GuardConfig(auth=AuthConfig(totp="required"))
    assert not login_type_allowed(required, "oidc-corp")  # SSO
    assert login_type_allowed(required, None)  # not told who: only SSO can be told apart
    # Told who, and outside any request the guard's checker accepted: refused.
    assert not login_type_allowed(required, None, ALICE)


# The SQL, on SQLite -------------------------------------------------------------------------


class Txn:
    """The slice of Synapse's LoggingTransaction the store uses."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._cursor = connection.cursor()

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> None:
        self._cursor.execute(sql, args)

    def fetchone(self) -> tuple[object, ...] | None:
        row: tuple[object, ...] | None = self._cursor.fetchone()
        return row

    def fetchall(self) -> list[tuple[object, ...]]:
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


@pytest.fixture
def txn() -> Iterator[Txn]:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT)")
    yield Txn(connection)
    connection.close()


def test_the_table_is_created_idempotently(txn: Txn) -> None:
    totp_store.create_table(txn)
    totp_store.create_table(txn)
    assert totp_store.get_enrolment(txn, ALICE) is None


def test_enrolment_replay_and_failures_in_sql(txn: Txn) -> None:
    totp_store.create_table(txn)
    totp_store.enrol(txn, ALICE, "v1:sealed", NOW_MS)
    enrolment = totp_store.get_enrolment(txn, ALICE)
    assert enrolment == totp_store.Enrolment(ALICE, "v1:sealed", None, Failures())

    assert totp_store.accept_step(txn, ALICE, STEP)
    assert not totp_store.accept_step(txn, ALICE, STEP)  # the same step again
    assert not totp_store.accept_step(txn, ALICE, STEP - 1)
    assert totp_store.accept_step(txn, ALICE, STEP + 1)

    # The SQL counts failures exactly as the pure rule does.
    expected = Failures()
    for now in (NOW_MS, NOW_MS + 1000, NOW_MS + WINDOW_MS, NOW_MS + WINDOW_MS + 5):
        totp_store.record_failure(txn, ALICE, now, WINDOW_MS)
        expected = after_failure(expected, now, WINDOW_MS)
        stored = totp_store.get_enrolment(txn, ALICE)
        assert stored is not None
        assert stored.failures == expected
    assert expected == Failures(2, NOW_MS + WINDOW_MS)

    # A new enrolment starts afresh; a reset removes it.
    totp_store.enrol(txn, ALICE, "v1:other", NOW_MS)
    assert totp_store.get_enrolment(txn, ALICE) == totp_store.Enrolment(
        ALICE, "v1:other", None, Failures()
    )
    assert totp_store.remove(txn, ALICE)
    assert not totp_store.remove(txn, ALICE)
    assert totp_store.get_enrolment(txn, ALICE) is None


def test_password_hash_lookup_is_case_insensitive_like_synapse(txn: Txn) -> None:
    txn.execute("INSERT INTO users VALUES (?, ?)", ("@Alice:test.local", "h1"))
    assert totp_store.get_password_hash(txn, "@alice:test.local") == ("@Alice:test.local", "h1")
    txn.execute("INSERT INTO users VALUES (?, ?)", ("@ALICE:test.local", "h2"))
    # Two inexact matches: none; an exact one among several: that one.
    assert totp_store.get_password_hash(txn, "@alice:test.local") is None
    assert totp_store.get_password_hash(txn, "@ALICE:test.local") == ("@ALICE:test.local", "h2")
    assert totp_store.get_password_hash(txn, "@bob:test.local") is None
    assert totp_store.set_password_hash(txn, "@ALICE:test.local", "h3")
    assert totp_store.get_password_hash(txn, "@ALICE:test.local") == ("@ALICE:test.local", "h3")
    assert not totp_store.set_password_hash(txn, "@bob:test.local", "h4")


def test_a_password_login_the_guard_accepted_passes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    required = GuardConfig(auth=AuthConfig(totp="required"))
    monkeypatch.setattr(totp, "_request_id", lambda: "POST-17")
    totp._mark_passed(ALICE)
    assert not login_type_allowed(required, None, "@bob:test.local")  # another user
    assert login_type_allowed(required, None, ALICE)
    assert not login_type_allowed(required, None, ALICE)  # used up
    totp._mark_passed(ALICE)
    monkeypatch.setattr(totp, "_request_id", lambda: "POST-18")
    assert not login_type_allowed(required, None, ALICE)  # another request (e.g. a JWT login)
