"""The audit trail: one JSON record per refusal, session revoked and account provisioned.

Users and addresses appear only as keyed pseudonyms (HMAC-SHA256 with a secret key from a
file, truncated to 16 hex digits), so records about the same user or address can be
correlated, and the operator holding the key can test a suspect (`synapse-guard pseudonym`),
while a stolen log alone reveals neither.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

from synapse_guard.keyfile import read_key_file
from synapse_guard.network import parse_address
from synapse_guard.verdict import Check, Verdict

audit_logger = logging.getLogger("synapse_guard.audit")

PSEUDONYM_HEX_DIGITS = 16  # 64 bits: no collision in practice for a team's users and addresses


def load_key(path: str) -> bytes:
    """Read the pseudonym key; refuse a missing, unreadable or short file (names the key)."""
    return read_key_file(path, "audit.pseudonym_key_path")


class Pseudonymizer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _digest(self, kind: str, value: str) -> str:
        mac = hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:PSEUDONYM_HEX_DIGITS]

    def user(self, user_id: str) -> str:
        return "u:" + self._digest("user", user_id.lower())

    def address(self, address: str) -> str:
        # The same client is one pseudonym however Synapse wrote its address
        # (`::ffff:192.0.2.1` and `192.0.2.1`).
        ip = parse_address(address)
        return "a:" + self._digest("address", str(ip) if ip is not None else address)

    def matches(
        self, pseudonym: str, *, user: str | None = None, address: str | None = None
    ) -> bool:
        candidate = self.user(user) if user is not None else self.address(address or "")
        return hmac.compare_digest(candidate, pseudonym)


class AuditTrail:
    """Writes records; without a key (audit disabled) it writes nothing."""

    def __init__(self, pseudonymizer: Pseudonymizer | None) -> None:
        self._pseudonymizer = pseudonymizer

    @property
    def enabled(self) -> bool:
        return self._pseudonymizer is not None

    def record(
        self,
        check: Check,
        verdict: Verdict,
        *,
        user: str | None = None,
        address: str | None = None,
        event: str | None = None,
    ) -> None:
        pseudonymizer = self._pseudonymizer
        if pseudonymizer is None:
            return
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "check": check.value,
            "outcome": verdict.outcome,
            "reason": verdict.reason.value,
            "user": pseudonymizer.user(user) if user else None,
            "address": pseudonymizer.address(address) if address else None,
        }
        if event:
            record["event"] = event
        audit_logger.info("%s", json.dumps(record, sort_keys=True))
