"""The second factor's pure parts: code split, password hash, TOTP steps, rate limit, secrets.

Nothing here imports Synapse or Twisted: every function takes values and returns a value, so
the unit tests exercise it directly (see `synapse_guard/totp.py` for the glue).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata
import urllib.parse
from pathlib import Path

import attrs
import bcrypt
import nacl.exceptions
import nacl.secret
import nacl.utils
import pyotp

from synapse_guard.config import GuardConfigError
from synapse_guard.keyfile import MIN_KEY_BYTES, read_key_file
from synapse_guard.verdict import Reason, Verdict, allow, deny

CODE_DIGITS = 6
STEP_SECONDS = 30  # RFC 6238's default, what every authenticator app assumes

# Clock skew accepted between the server and the phone, in time steps either side.
SKEW_STEPS = 1
BCRYPT_MAX_BYTES = 72  # bcrypt reads no further; bcrypt >= 5 raises on longer input
BCRYPT_MIN_ROUNDS, BCRYPT_MAX_ROUNDS = 4, 31  # what bcrypt.gensalt accepts

_KEY_CONTEXT = b"synapse-guard/totp-secrets/v1"
_CIPHER_PREFIX = "v1:"


class SecretError(Exception):
    """A stored secret cannot be decrypted (wrong key, tampered row, row of another user)."""


# Login value --------------------------------------------------------------------------------


def split_code(value: str) -> tuple[str, str] | None:
    """Split `password + 6-digit code` (what a stock client sends) into (password, code).

    None when the value does not end with 6 ASCII digits or leaves an empty password.
    """
    password, code = value[:-CODE_DIGITS], value[-CODE_DIGITS:]
    if not password or len(code) != CODE_DIGITS or not (code.isascii() and code.isdigit()):
        return None
    return password, code


# Password hash (Synapse's validate_hash, re-implemented) -------------------------------------


def _password_bytes(password: str, pepper: str) -> bytes:
    # As Synapse: NFKC, UTF-8, the pepper appended, then what bcrypt reads (72 bytes). A lone
    # surrogate (valid in a JSON string, not in UTF-8) is kept as bytes no real password has,
    # so it is a wrong password, not an error.
    normalised = unicodedata.normalize("NFKC", password)
    data = normalised.encode("utf-8", "surrogatepass") + pepper.encode("utf-8")
    return data[:BCRYPT_MAX_BYTES]


def spend_one_hash(password: str, rounds: int) -> None:
    """The work of one bcrypt check at `rounds`, for an account that has no hash to check.

    Hashing with a fresh salt of that cost is exactly the work `checkpw` does against a stored
    hash of that cost (blocking: run it in a thread).
    """
    bounded = min(max(rounds, BCRYPT_MIN_ROUNDS), BCRYPT_MAX_ROUNDS)
    bcrypt.hashpw(_password_bytes(password, ""), bcrypt.gensalt(bounded))


def check_password(password: str, pepper: str, stored_hash: str | None, rounds: int) -> bool:
    """Whether `password` matches Synapse's bcrypt hash (blocking: run it in a thread).

    Always one bcrypt: with no usable hash (an unknown user, a deactivated or SSO-only one, a
    value that is not a bcrypt hash) one at `rounds` (Synapse's `bcrypt_rounds`, the cost of
    the hashes it writes), so the time of the answer does not say whether the account exists.
    """
    if stored_hash:
        try:
            return bcrypt.checkpw(_password_bytes(password, pepper), stored_hash.encode("ascii"))
        except ValueError:
            pass  # not a bcrypt hash: never a match
    spend_one_hash(password, rounds)
    return False


def hash_password(password: str, pepper: str, rounds: int) -> str:
    """A hash Synapse's own check accepts (blocking: run it in a thread)."""
    return bcrypt.hashpw(_password_bytes(password, pepper), bcrypt.gensalt(rounds)).decode("ascii")


# TOTP ---------------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh base32 secret (160 bits, RFC 4226's recommended length)."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, user_id: str, issuer: str) -> str:
    """The otpauth:// URI authenticator apps read (from a QR code or typed in)."""
    return pyotp.TOTP(secret, digits=CODE_DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=user_id, issuer_name=issuer
    )


def secret_from_uri(uri: str) -> str:
    """The secret inside an otpauth:// URI (tests and the CLI)."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    return query["secret"][0]


def time_step(now_ms: int) -> int:
    return now_ms // 1000 // STEP_SECONDS


def code_at(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=CODE_DIGITS, interval=STEP_SECONDS).generate_otp(step)


@attrs.frozen(slots=True)
class CodeCheck:
    """The outcome of checking a code: the verdict and, if accepted, the time step it is for."""

    verdict: Verdict
    step: int | None = None


def check_code(secret: str, code: str, now_ms: int, last_step: int | None) -> CodeCheck:
    """Accept a code for the current step or one step either side, never one already used.

    Every candidate step is compared (in constant time) so the answer does not depend on which
    one matched. A match for a step at or before `last_step` is a replay.
    """
    current = time_step(now_ms)
    matched: int | None = None
    for step in range(current - SKEW_STEPS, current + SKEW_STEPS + 1):
        if hmac.compare_digest(code_at(secret, step), code):
            matched = step
    if matched is None:
        return CodeCheck(deny(Reason.TOTP_INVALID))
    if last_step is not None and matched <= last_step:
        return CodeCheck(deny(Reason.TOTP_REPLAYED))
    return CodeCheck(allow(), matched)


# Rate limit ---------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Failures:
    """Failed codes counted in a fixed window that starts at the first failure."""

    count: int = 0
    window_start_ms: int | None = None


def rate_limited(failures: Failures, now_ms: int, max_failures: int, window_ms: int) -> bool:
    """True while `max_failures` failures have been counted in a window still open."""
    if failures.window_start_ms is None or now_ms - failures.window_start_ms >= window_ms:
        return False
    return failures.count >= max_failures


def after_failure(failures: Failures, now_ms: int, window_ms: int) -> Failures:
    """The state after one more failure (what the database update computes, for the tests)."""
    if failures.window_start_ms is None or now_ms - failures.window_start_ms >= window_ms:
        return Failures(1, now_ms)
    return Failures(failures.count + 1, failures.window_start_ms)


# Secrets at rest ----------------------------------------------------------------------------


def load_secrets_key(path: str) -> bytes:
    """Read auth.secrets_key_path; refuse a missing, unreadable or short file (names the key)."""
    return read_key_file(path, "auth.secrets_key_path")


def load_pepper(path: str | None) -> str:
    """Synapse's password_config.pepper, from auth.password_pepper_path (one line, no newline)."""
    if path is None:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise GuardConfigError(
            "auth.password_pepper_path", f"cannot read {path!r}: {reason}"
        ) from None
    return text.rstrip("\r\n")


class SecretCipher:
    """Encrypts TOTP secrets with XSalsa20-Poly1305 (PyNaCl's SecretBox).

    The box key is derived from the key file (any length >= 32 bytes). The user ID is sealed
    with the secret, so a row copied onto another user's does not decrypt for them.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the secrets key needs at least {MIN_KEY_BYTES} bytes")
        derived = hmac.new(key, _KEY_CONTEXT, hashlib.sha256).digest()
        self._box = nacl.secret.SecretBox(derived)

    def encrypt(self, user_id: str, secret: str) -> str:
        plaintext = user_id.encode("utf-8") + b"\x00" + secret.encode("ascii")
        sealed = self._box.encrypt(plaintext, nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE))
        return _CIPHER_PREFIX + base64.b64encode(bytes(sealed)).decode("ascii")

    def decrypt(self, user_id: str, stored: str) -> str:
        if not stored.startswith(_CIPHER_PREFIX):
            raise SecretError("unknown secret format")
        try:
            plaintext = self._box.decrypt(base64.b64decode(stored[len(_CIPHER_PREFIX) :]))
        except (nacl.exceptions.CryptoError, ValueError):
            raise SecretError("the secret does not decrypt with this key") from None
        owner, _, secret = plaintext.partition(b"\x00")
        if owner != user_id.encode("utf-8"):
            raise SecretError("the secret belongs to another user")
        return secret.decode("ascii")
