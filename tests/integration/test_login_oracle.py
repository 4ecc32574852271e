"""No oracle from a refused address: one answer, in one time, whatever the account or password.

A hostile client at an address the network policy refuses tries to learn whether an account
exists and whether a password is right, from the status and body of the answer, from when
rate limiting starts, and from how long the answer takes. Without the guard's help, Synapse
tells all three: the guard's login check runs only after the password was accepted ("Login
was blocked" for the right one), and bcrypt runs only for an account that exists (~130 ms here
against ~3 ms). Both servers below hash at `bcrypt_rounds: 11` so that one hash more or less
shows; one checks passwords itself (auth.totp off), the other through the guard (required).

Which layer closes what: nginx (`synapse-guard render nginx`) refuses these addresses before
Synapse sees a password; `rc_login` bounds how many guesses anyone gets; and these tests prove
the module alone gives a refused address nothing to learn, should the edge be missing.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import bcrypt
import pytest
import requests

from tests.integration.conftest import SynapseFactory
from tests.integration.harness import PASSWORD, SynapseServer
from tests.integration.test_totp import LOCALDB_OFF, auth_config, code, enroll, provision

REFUSED = "192.0.2.1"
ALLOWED = "10.8.0.5"
ROUNDS = 11
FAILED_BURST = 10  # rc_login.failed_attempts per account, refilled too slowly to matter here
ATTEMPTS = 9  # per kind of login in the timing tests: medians of 9, interleaved
GATEKEEPER = "gatekeeper"  # exempt from the lockdown
LOCKDOWN = "/_synapse/client/synapse_guard/lockdown"
WRONG_PASSWORD = {"errcode": "M_FORBIDDEN", "error": "Invalid username or password"}

GUARD = {
    # 127.0.0.1 (no X-Forwarded-For) is the admin's own address in these tests.
    "network": {"allow_cidrs": ["10.8.0.0/24", "127.0.0.0/8"]},
    "lockdown": {"exempt_users": [f"@{GATEKEEPER}:guard.test"]},
}
HASH_COST = {"bcrypt_rounds": ROUNDS}
FAILURE_BUDGET = {
    "rc_login": {"failed_attempts": {"per_second": 0.001, "burst_count": FAILED_BURST}}
}


@attrs.frozen
class Answer:
    status: int
    body: bytes
    headers: frozenset[str]  # names, not values (Date differs, by design)
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def shape(self) -> tuple[int, bytes, frozenset[str]]:
        return self.status, self.body, self.headers


def attempt(server: SynapseServer, user: str, password: str, address: str = REFUSED) -> Answer:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    start = time.perf_counter()
    response = requests.post(
        f"{server.url}/_matrix/client/v3/login",
        json=body,
        headers={"X-Forwarded-For": address},
        timeout=60,
    )
    seconds = time.perf_counter() - start
    names = frozenset(name.lower() for name in response.headers) - {"date"}
    return Answer(response.status_code, response.content, names, seconds)


def unknown_user() -> str:
    return f"nobody-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def localdb(synapse_factory: SynapseFactory) -> SynapseServer:
    """auth.totp off: Synapse checks passwords itself."""
    server = synapse_factory(guard=GUARD, extra={**HASH_COST, **FAILURE_BUDGET}).start()
    server.register_user(GATEKEEPER, admin=True)
    return server


@pytest.fixture(scope="module")
def secrets_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("oracle") / "totp.key"
    key.write_bytes(uuid.uuid4().bytes * 2)
    return key


@pytest.fixture(scope="module")
def with_totp(synapse_factory: SynapseFactory, secrets_key: Path) -> tuple[SynapseServer, str]:
    """auth.totp required: the guard checks password and code; returns an admin token too."""
    guard = {**GUARD, **auth_config(secrets_key, "required")}
    server = synapse_factory(guard=guard, extra={**HASH_COST, **LOCALDB_OFF}).start()
    return server, provision(server, "admin", admin=True)[1]


# -- One answer ------------------------------------------------------------------------------


def test_a_refused_address_gets_the_wrong_password_answer_whatever_it_sends(
    localdb: SynapseServer,
) -> None:
    member = localdb.new_account("member")
    answers = {
        "right password": attempt(localdb, member, PASSWORD),
        "wrong password": attempt(localdb, member, "Wrong-Password-1"),
        "unknown user": attempt(localdb, unknown_user(), PASSWORD),
    }
    for what, answer in answers.items():
        assert (answer.status, answer.json()) == (403, WRONG_PASSWORD), what
    assert len({answer.shape for answer in answers.values()}) == 1, answers  # byte for byte
    # The password was right: from an allowed address it logs in.
    assert attempt(localdb, member, PASSWORD, address=ALLOWED).status == 200
    assert localdb.decisions("login", "deny", "ip_not_allowed") >= 1


def test_with_the_second_factor_too(with_totp: tuple[SynapseServer, str]) -> None:
    server, admin_token = with_totp
    member, _ = provision(server, "member")
    totp = enroll(server, admin_token, server.user_id(member))
    answers = {
        "right password and code": attempt(server, member, PASSWORD + code(totp)),
        "right password, no code": attempt(server, member, PASSWORD),
        "wrong password": attempt(server, member, "Wrong-Password-1" + code(totp)),
        "unknown user": attempt(server, unknown_user(), PASSWORD + code(totp)),
    }
    for what, answer in answers.items():
        assert (answer.status, answer.json()) == (403, WRONG_PASSWORD), what
    assert len({answer.shape for answer in answers.values()}) == 1, answers
    assert attempt(server, member, PASSWORD + code(totp, +1), address=ALLOWED).status == 200


def test_a_locked_down_member_gets_the_wrong_password_answer_too(
    localdb: SynapseServer,
) -> None:
    member = localdb.new_account("member")
    gatekeeper = localdb.login(GATEKEEPER)
    assert gatekeeper.request("POST", LOCKDOWN, {"locked": True})[0] == 200
    try:
        answers = [
            attempt(localdb, member, PASSWORD, address=ALLOWED),
            attempt(localdb, member, "Wrong-Password-1", address=ALLOWED),
            attempt(localdb, unknown_user(), PASSWORD, address=ALLOWED),
        ]
    finally:
        assert gatekeeper.request("POST", LOCKDOWN, {"locked": False})[0] == 200
    assert (answers[0].status, answers[0].json()) == (403, WRONG_PASSWORD)
    assert len({answer.shape for answer in answers}) == 1, answers
    assert localdb.decisions("login", "deny", "lockdown") >= 1


def test_a_refused_right_password_uses_up_the_failure_budget_like_a_wrong_one(
    localdb: SynapseServer,
) -> None:
    """Otherwise the attempt at which 429 begins would tell that a password was right."""
    right, wrong = localdb.new_account("right"), localdb.new_account("wrong")
    for user, password in ((right, PASSWORD), (wrong, "Wrong-Password-1")):
        statuses = [attempt(localdb, user, password).status for _ in range(FAILED_BURST + 1)]
        assert statuses == [403] * FAILED_BURST + [429], (user, statuses)


# -- One time --------------------------------------------------------------------------------


def one_hash() -> float:
    """The time of one bcrypt at ROUNDS, here, now: the unit of the timing tests."""
    start = time.perf_counter()
    bcrypt.hashpw(b"calibration", bcrypt.gensalt(ROUNDS))
    return time.perf_counter() - start


def medians(kinds: dict[str, Callable[[], Answer]]) -> tuple[dict[str, float], float]:
    """The median time of each kind of attempt, and of one hash measured between them: all
    interleaved, so that the load of a busy machine weighs on each alike."""
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    hashes = []
    order = list(kinds)
    for round_ in range(ATTEMPTS):
        for kind in order[round_ % len(order) :] + order[: round_ % len(order)]:
            answer = kinds[kind]()
            assert answer.status == 403, (kind, answer)
            times[kind].append(answer.seconds)
        hashes.append(one_hash())
    found = {kind: statistics.median(values) for kind, values in times.items()}
    return found, statistics.median(hashes)


def assert_same_time(found: dict[str, float], hash_seconds: float) -> None:
    """Each kind costs one hash, give or take less than half of one.

    What an oracle shows is a whole hash more or less (an unknown user answered without one);
    what remains once every path hashes once is a database read or two, milliseconds. Half a
    hash lies between the two, far from both, and the medians of interleaved attempts keep a
    busy machine's outliers out. The slowest kind must cost a hash at least half, or the test
    could not see one.
    """
    print({kind: f"{seconds * 1000:.0f} ms" for kind, seconds in found.items()})
    print(f"one hash here: {hash_seconds * 1000:.0f} ms")
    assert max(found.values()) >= 0.5 * hash_seconds, found
    assert max(found.values()) - min(found.values()) < 0.5 * hash_seconds, found


def test_an_unknown_user_takes_as_long_as_a_wrong_password(localdb: SynapseServer) -> None:
    known, refused = localdb.new_account("known"), localdb.new_account("refused")
    found, hash_seconds = medians(
        {
            "unknown user": lambda: attempt(localdb, unknown_user(), PASSWORD),
            "wrong password": lambda: attempt(localdb, known, "Wrong-Password-1"),
            "right password, refused": lambda: attempt(localdb, refused, PASSWORD),
        }
    )
    assert_same_time(found, hash_seconds)


def test_with_the_second_factor_every_refusal_takes_one_hash(
    with_totp: tuple[SynapseServer, str],
) -> None:
    server, admin_token = with_totp
    no_code, wrong, limited = (provision(server, name)[0] for name in ("no-code", "wrong", "limit"))
    secrets = [
        enroll(server, admin_token, server.user_id(user)) for user in (no_code, wrong, limited)
    ]
    not_enrolled, _ = provision(server, "not-enrolled")
    # Five wrong codes with the right password: this account is rate limited for 15 minutes.
    wrong_code = f"{(int(code(secrets[2])) + 500_000) % 1_000_000:06d}"
    for _ in range(5):
        assert attempt(server, limited, PASSWORD + wrong_code, address=ALLOWED).status == 403
    limited_before = server.decisions("login", "deny", "totp_rate_limited")
    found, hash_seconds = medians(
        {
            "unknown user": lambda: attempt(server, unknown_user(), PASSWORD + "123456"),
            "enrolled, no code": lambda: attempt(server, no_code, "Wrong-Password-1"),
            "enrolled, wrong password": lambda: attempt(server, wrong, "Wrong-1" + "123456"),
            "enrolled, rate limited": lambda: attempt(server, limited, PASSWORD + "123456"),
            "not enrolled": lambda: attempt(server, not_enrolled, PASSWORD),
        }
    )
    assert server.decisions("login", "deny", "totp_rate_limited") == limited_before + ATTEMPTS
    assert_same_time(found, hash_seconds)
