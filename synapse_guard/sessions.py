"""The session sweep: log out sessions used from an address the network policy refuses.

The per-request gate refuses every authenticated request from a refused address, and Synapse
records in `user_ips` only the requests that passed authentication. The sweep is the second
layer: it logs out every session Synapse recorded from an address refused *now*, recorded
before a change of policy (a restart: the first sweep reads the whole table) or of the GeoIP
database (the next sweep reads the whole table again), or by a request the gate does not judge
(`/versions` with a token, which Synapse authenticates with `allow_expired`).

- **What a session is.** Synapse writes one row per (user, access token, address), with the
  device the token belonged to, in batches every 5 seconds, and refreshes a row at most every
  2 minutes. The sweep reads user, device and token from `user_ips` itself: a token rotated
  by `/refresh` is deleted, but its device lives on, and the device is the session (the
  refresh token that replaced it belongs to it too). So the device is logged out, and every
  token it was seen with is dropped from Synapse's token cache, which otherwise keeps a
  rotated token working until it expires. A row without a device (a puppet token minted by
  "login as user") is its token, deleted if it still exists. A row whose device and token
  are both gone was logged out already: skipped, so a revoked session is not counted again.
- **Once per session.** A session seen from several refused addresses, or through several
  rotated tokens, is revoked once. It is counted and audited once its logout succeeded. A
  logout that fails is retried at every sweep without counting a new refusal, and the sweep
  carries on with the other sessions.
- **Cannot decide is not refused.** A row whose decision means "cannot decide" (the GeoIP
  database is unreadable, an internal error) logs nobody out: a logged-out device without key
  backup loses its history for good. While it lasts the gate refuses the requests that need a
  lookup; the row is judged again at every sweep until a decision can be taken.
- **Progress.** Each sweep reads the rows seen since `since` (indexed on `last_seen`), with a
  margin for Synapse's batch, and never moves past a row it must read again: one it could not
  judge, or one whose session's logout failed.
- **User agents.** Synapse records no row for the user agent `sync-v3-proxy-` (exactly that
  string, 1.100 to 1.163): the sweep never sees those requests; the gate judges them.

Cost: one indexed range query per sweep returning the rows seen since the last one, and one
decision per distinct address (about 2 microseconds). With 10,000 users each active on two
devices within a sweep interval, that is about 20,000 rows: tens of milliseconds of database
time and about 40 ms of CPU every `sweep_interval`, on the background-tasks process only.
Plus one indexed query per session logged out, and, after a restart or a new GeoIP database,
one read of the whole table (kept `user_ips_max_age`: 3 days in homeserver.d).

Also here, at the end: which sessions are idle (`sessions.idle_timeout`), purely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from synapse_guard.verdict import ALLOW, Reason, Verdict, deny

# Rows reach the table up to 5 s after the request (Synapse's batch), so each sweep re-reads
# a margin before the newest row it has already seen.
OVERLAP_MS = 15_000

# Verdicts that say "could not decide", not "refused": never a reason to log anyone out.
UNDECIDED = frozenset({Reason.GEOIP_UNAVAILABLE, Reason.INTERNAL_ERROR})


@attrs.frozen(slots=True)
class Session:
    """What a logout deletes: a device (and every token of it), or a token without a device."""

    user_id: str = attrs.field(repr=False)
    device_id: str | None = attrs.field(repr=False)
    access_token: str | None = attrs.field(repr=False)  # only for a session without a device


@attrs.frozen(slots=True)
class SeenRow:
    """One `user_ips` row, and whether what it names still exists."""

    user_id: str = attrs.field(repr=False)
    access_token: str = attrs.field(repr=False)
    device_id: str | None = attrs.field(repr=False)
    ip: str = attrs.field(repr=False)
    last_seen: int
    device_exists: bool
    token_exists: bool

    @property
    def session(self) -> Session | None:
        """The session to log out for this row; None if it is logged out already."""
        if self.device_id is not None and self.device_exists:
            return Session(self.user_id, self.device_id, None)
        if self.token_exists:
            return Session(self.user_id, None, self.access_token)
        return None


@attrs.frozen(slots=True)
class Refusal:
    session: Session
    verdict: Verdict
    ip: str = attrs.field(repr=False)  # the refused address (audited as a pseudonym)
    oldest: int  # last_seen of its oldest row in this read: where to read again if it fails
    newest: int
    retry: bool  # its logout failed before: not a new refusal


@attrs.frozen(slots=True)
class SweepPlan:
    refusals: tuple[Refusal, ...]
    undecided: frozenset[Reason]  # why some sessions could not be judged (empty: none)
    undecided_sessions: int
    hold: int | None  # oldest last_seen of the rows that could not be judged
    newest: int  # newest last_seen read


def _decide_safely(decide: Callable[[str], Verdict], ip: str) -> Verdict:
    try:
        return decide(ip)
    except Exception:  # a decision that fails cannot decide: keep the row, judge it again
        return deny(Reason.INTERNAL_ERROR)


class SessionSweep:
    """What the sweep remembers between runs (in memory: a restart reads everything again).

    `since`: where the next read starts. `failing`: sessions whose logout failed, retried at
    every sweep and counted once. `revoked`: sessions logged out, with the newest row that
    refused them, so a row re-read in the overlap does not revoke a re-created device again.
    """

    def __init__(self) -> None:
        self.since = 0
        self.failing: set[Session] = set()
        self.revoked: dict[Session, int] = {}
        self.undecided: frozenset[Reason] = frozenset()  # the outage the last sweep met
        self.read_failing = False  # the last read of user_ips failed
        self._database: object = None

    def database_loaded(self, fingerprint: object) -> bool:
        """Tell the sweep which GeoIP database decides (None: none usable).

        A different database than the last usable one may place recorded addresses elsewhere:
        the next read starts from the beginning. Returns True when that happens. An outage
        (None) changes nothing: its rows are held and judged again anyway.
        """
        if fingerprint is None or fingerprint == self._database:
            return False
        first, self._database = self._database is None, fingerprint
        if first:
            return False  # the first sweep reads everything anyway
        self.since = 0
        return True

    def judge(self, rows: Iterable[SeenRow], decide: Callable[[str], Verdict]) -> SweepPlan:
        """Which sessions to log out now (new refusals and retries), and which wait."""
        verdicts: dict[str, Verdict] = {}  # one decision per distinct address
        refused: dict[Session, tuple[Verdict, str]] = {}
        oldest: dict[Session, int] = {}
        newest_of: dict[Session, int] = {}
        waiting: dict[Session, int] = {}  # sessions with a row that could not be judged
        reasons: dict[Session, set[Reason]] = {}
        newest = self.since
        for row in rows:
            newest = max(newest, row.last_seen)
            session = row.session
            if session is None or row.last_seen <= self.revoked.get(session, -1):
                continue  # logged out already (by us, or by the user)
            verdict = verdicts.get(row.ip)
            if verdict is None:
                verdict = verdicts[row.ip] = _decide_safely(decide, row.ip)
            if verdict.allowed:
                continue
            if verdict.reason in UNDECIDED:
                reasons.setdefault(session, set()).add(verdict.reason)
                waiting[session] = min(waiting.get(session, row.last_seen), row.last_seen)
            else:
                refused.setdefault(session, (verdict, row.ip))
                oldest[session] = min(oldest.get(session, row.last_seen), row.last_seen)
                newest_of[session] = max(newest_of.get(session, row.last_seen), row.last_seen)
        undecided = {s: seen for s, seen in waiting.items() if s not in refused}
        refusals = tuple(
            Refusal(s, verdict, ip, oldest[s], newest_of[s], s in self.failing)
            for s, (verdict, ip) in refused.items()
        )
        # A failing session no longer read (its rows left user_ips) is dropped.
        self.failing &= set(refused)
        return SweepPlan(
            refusals=refusals,
            undecided=frozenset(r for s in undecided for r in reasons[s]),
            undecided_sessions=len(undecided),
            hold=min(undecided.values()) if undecided else None,
            newest=newest,
        )

    def logged_out(self, refusal: Refusal) -> None:
        self.failing.discard(refusal.session)
        self.revoked[refusal.session] = refusal.newest

    def logout_failed(self, refusal: Refusal) -> bool:
        """Remember a failed logout; True if it is this session's first failure."""
        first = refusal.session not in self.failing
        self.failing.add(refusal.session)
        return first

    def outage(self, plan: SweepPlan) -> tuple[frozenset[Reason], bool]:
        """(reasons this sweep is the first to meet, whether an outage ended with it)."""
        new, ended = plan.undecided - self.undecided, bool(self.undecided) and not plan.undecided
        self.undecided = plan.undecided
        return new, ended

    def advance(self, plan: SweepPlan, failed: Iterable[Refusal]) -> int:
        """Move `since` past what is done, never past a row that must be read again."""
        candidates = [max(self.since, plan.newest - OVERLAP_MS)]
        if plan.hold is not None:
            candidates.append(plan.hold)
        candidates.extend(refusal.oldest for refusal in failed)
        self.since = min(candidates)
        self.revoked = {s: seen for s, seen in self.revoked.items() if seen >= self.since}
        return self.since


# The device and the token a row names, if they still exist. Indexed on every side:
# user_ips(last_seen), devices' primary key (user_id, device_id), access_tokens(token).
# Hidden devices (cross-signing keys) are no sessions, and Synapse never deletes them.
SEEN_SINCE_SQL = """
    SELECT u.user_id, u.access_token, u.device_id, u.ip, u.last_seen, d.device_id, t.token
    FROM user_ips AS u
    LEFT JOIN devices AS d
        ON d.user_id = u.user_id AND d.device_id = u.device_id AND d.hidden = ?
    LEFT JOIN access_tokens AS t ON t.token = u.access_token
    WHERE u.last_seen >= ?
"""


def select_seen_since(txn: Any, since: int) -> Sequence[SeenRow]:
    """Runs inside `ModuleApi.run_db_interaction` (SQLite and PostgreSQL alike)."""
    txn.execute(SEEN_SINCE_SQL, (False, since))
    return [
        SeenRow(
            user_id=str(user_id),
            access_token=str(token),
            device_id=None if device_id is None else str(device_id),
            ip=str(ip),
            last_seen=int(seen),
            device_exists=device is not None,
            token_exists=token_row is not None,
        )
        for user_id, token, device_id, ip, seen, device, token_row in txn.fetchall()
    ]


def select_session_tokens(txn: Any, session: Session) -> list[str]:
    """Every access token Synapse recorded for this session (indexed: user_id, device_id).

    Synapse deletes a token rotated by `/refresh` without dropping it from its token cache,
    so such a token keeps working (until it expires, 5 minutes by default) even after its
    device is logged out: the logout forgets them too.
    """
    if session.device_id is None:
        return [session.access_token] if session.access_token else []
    txn.execute(
        "SELECT DISTINCT access_token FROM user_ips WHERE user_id = ? AND device_id = ?",
        (session.user_id, session.device_id),
    )
    return [str(token) for (token,) in txn.fetchall()]


# -- idle sessions ---------------------------------------------------------------------------
#
# `sessions.idle_timeout`: a session nobody used for that long (a phone lost in a drawer, or
# seized and kept offline) is logged out, by a sweep on the background-tasks process.
#
# - **What "used" means.** A device's last use is the newer of `devices.last_seen` (Synapse
#   writes it from the same batches as `user_ips`, at most every few minutes per session,
#   and keeps it after `user_ips` rows expire) and the newest `last_validated` of its access
#   tokens (set when a token is created: at login and at each `/refresh`, which Synapse does
#   not record in `user_ips`). A device never used after its login is judged by its login.
# - **What a session is.** A device that holds an access token. Hidden devices
#   (cross-signing keys) and devices without a token (a dehydrated device, which holds keys
#   for its owner and cannot authenticate) are not sessions. A "login as" token without a
#   device has no last use Synapse keeps beyond `user_ips_max_age`: it is not judged here.
# - **Cost.** One query per sweep: a scan of `devices` (Synapse has no index on `last_seen`;
#   the guard adds none to Synapse's tables) with an indexed lookup into `access_tokens`
#   (user_id, device_id) for each device older than the cutoff, returning only idle ones, at
#   most `IDLE_BATCH` at a time. bench/bench_idle.py measures it at 10,000 users x 2 devices.

IDLE_BATCH = 500  # sessions read, and logged out, per query


@attrs.frozen(slots=True)
class DeviceUse:
    """What the database says of a device's last use (None: never written)."""

    user_id: str = attrs.field(repr=False)
    device_id: str = attrs.field(repr=False)
    last_seen: int | None
    token_validated: int | None  # the newest access token's `last_validated`

    @property
    def last_used(self) -> int:
        return max(self.last_seen or 0, self.token_validated or 0)


def idle_cutoff(now_ms: int, timeout_ms: int) -> int:
    """Sessions last used before this moment are idle."""
    return now_ms - timeout_ms


def decide_idle(use: DeviceUse, now_ms: int, timeout_ms: int) -> Verdict:
    """Idle (refused) if neither a request nor a token is newer than the timeout."""
    if use.last_used < idle_cutoff(now_ms, timeout_ms):
        return deny(Reason.IDLE)
    return ALLOW


def select_idle(uses: Iterable[DeviceUse], now_ms: int, timeout_ms: int) -> dict[str, list[str]]:
    """The idle devices of each user (the users in the order first met), to log out."""
    idle: dict[str, list[str]] = {}
    cutoff = idle_cutoff(now_ms, timeout_ms)
    for use in uses:
        if use.last_used < cutoff:
            idle.setdefault(use.user_id, []).append(use.device_id)
    return idle


# The query filters as `decide_idle` does, so that it returns only idle sessions; the pure
# decision is applied to what it returns all the same.
IDLE_SQL = """
    SELECT d.user_id, d.device_id, d.last_seen, MAX(t.last_validated)
    FROM devices AS d
    JOIN access_tokens AS t ON t.user_id = d.user_id AND t.device_id = d.device_id
    WHERE d.hidden = ? AND (d.last_seen IS NULL OR d.last_seen < ?)
    GROUP BY d.user_id, d.device_id, d.last_seen
    HAVING MAX(COALESCE(t.last_validated, 0)) < ?
    LIMIT ?
"""


def select_idle_candidates(txn: Any, cutoff: int, limit: int = IDLE_BATCH) -> list[DeviceUse]:
    """Runs inside `ModuleApi.run_db_interaction` (SQLite and PostgreSQL alike)."""
    txn.execute(IDLE_SQL, (False, cutoff, cutoff, limit))
    return [
        DeviceUse(
            user_id=str(user_id),
            device_id=str(device_id),
            last_seen=None if seen is None else int(seen),
            token_validated=None if validated is None else int(validated),
        )
        for user_id, device_id, seen, validated in txn.fetchall()
    ]
