"""Retention that really deletes: expired messages and media leave the server, not just the view.

On a real Synapse, on SQLite and on PostgreSQL, with lifetimes of a few seconds set in the test
configuration only: the guard gives the room `m.room.retention` with `max_lifetime` = its
`default_lifetime` (6 s), Synapse's `retention:` runs a purge job every second (its default
policy is one minute, so the 6 s can only come from the room's own event), and Synapse's
`media_retention:` expires local media after 6 s.

One story per database, observed at three moments:

1. *before*: a member writes into the room (text, file, image, edit, reaction, thread reply, a
   message she then redacts, an `m.room.encrypted` event, a topic; all but one in clear, the
   worst case for the database, so the guard's `rooms.encryption` is off here); a second
   member reads and reports a message; a to-device message waits for a device that never
   syncs. The APIs and the tables show all of it, which proves that the checks below can see
   what they look for.
2. *after*: the lifetime has passed and the purge job has run (several times). The messages
   are gone from `/messages`, `/search`, the admin API and the database: `events`,
   `event_json`, `event_search`, and every other table (each is scanned for the message text).
   Synapse keeps the room's newest event, expired too (hidden from members, not from admins),
   state events, and event IDs in a few metadata tables; the tests pin down exactly which.
3. *later*: a new message is sent, and the next purge deletes the event kept at (2).

Media: Synapse's own `media_retention` job deletes the uploads and their thumbnails from the
media store. Synapse runs that job on a fixed one-hour period (`MEDIA_RETENTION_CHECK_PERIOD`
in `synapse/media/media_repository.py`, not a setting; first run one hour after start-up), so
the test loads `synapse_modules/guard_test_media_retention_period.py`, which sets that period to
one second before Synapse builds its media repository. The job, its `media_retention:` settings
and the deletion are Synapse's own; the admin API `POST /_synapse/admin/v1/media/delete` is
deliberately not used.

Finally, with Synapse stopped: the deleted rows were still in the database files, and a rewrite
(PostgreSQL `VACUUM FULL`, SQLite `VACUUM`) removes them; PostgreSQL's WAL still holds them.

`docs/retention.md` explains all of this to operators.
"""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import SynapseFactory
from tests.integration.db_inspect import Inspector, PostgresInspector, inspector_for
from tests.integration.harness import PostgresCluster, SynapseServer

LIFETIME_S = 6
LIFETIME = f"{LIFETIME_S}s"

# Synapse's retention, in the test's override file. Synapse merges config files shallowly, so
# these replace homeserver.d's `retention:` and `media_retention:` sections as a whole.
SYNAPSE_RETENTION: dict[str, Any] = {
    "retention": {
        "enabled": True,
        # Only for rooms without m.room.retention; every guarded room has one (6 s).
        "default_policy": {"max_lifetime": "1m"},
        "allowed_lifetime_min": "1s",
        "allowed_lifetime_max": "1m",
        "purge_jobs": [{"interval": "1s"}],
    },
    "media_retention": {"local_media_lifetime": LIFETIME, "remote_media_lifetime": LIFETIME},
    # Synapse's other timers, within the guard's max_lifetime as the guard requires.
    "redaction_retention_period": "1m",
    "forgotten_room_retention_period": "1m",
    "user_ips_max_age": "1m",
}
GUARD_RETENTION = {
    "retention": {"max_lifetime": "1m", "default_lifetime": LIFETIME},
    # The worst case for what the database holds: plain messages in the (still encrypted)
    # room. With `encryption: required` the guard refuses them, and ciphertext is not indexed
    # for search: only with the rule off can the purge be seen clearing the search index.
    "rooms": {"encryption": "off"},
}
MEDIA_RETENTION_EVERY_SECOND = {
    "module": "guard_test_media_retention_period.MediaRetentionPeriod",
    "config": {"period_ms": 1000},
}

# Log lines of Synapse's two jobs (synapse/handlers/pagination.py, media/media_repository.py).
PURGE_JOB_LOG = "[purge] Running retention purge job"
MEDIA_JOB_LOG = "Purging local media last accessed before"

# Tables that still name purged events after the purge: IDs, positions and timestamps, no
# message content (the message text is asserted absent from every table). Observed on Synapse
# 1.100, 1.153 and 1.163; docs/retention.md says what each is.
ID_ONLY_TABLES = {
    "event_json",  # the kept events' own JSON lists purged events as prev_events
    "event_edges",  # kept event -> purged predecessor
    "stream_ordering_to_exterm",  # forward extremities by position; pruned after a month
    "receipts_linearized",  # read receipts point at the last event a member read
    "receipts_graph",
    "room_account_data",  # m.fully_read marker
    "threads",  # thread root and latest reply
    "event_reports",  # reported event (and the reporter's reason, see below)
}
# The purged predecessor of the oldest kept event becomes the history's edge; Synapse < 1.143
# empties the table again at its next purge run that finds nothing to purge.
ID_ONLY_TABLES_SOMETIMES = {"event_backward_extremities"}
ID_ONLY_TABLES_POSTGRES = {
    "cache_invalidation_stream_by_instance",  # cache keys; pruned after 7 days
}
# Where the kept (latest expired) event's text remains until a newer event expires.
KEPT_TEXT_TABLES = {"event_json", "event_search", "event_search_content"}


def marker(prefix: str) -> str:
    """A word no stemmer or tokenizer changes (lowercase, with digits), unique to this run."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting until {what}")
        time.sleep(0.25)


def png(size: int = 96) -> bytes:
    from PIL import Image  # a Synapse dependency (it makes the thumbnails)

    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Upload:
    media_id: str
    mxc: str
    file: Path
    thumbnails: Path

    def files(self) -> list[Path]:
        found = [self.file] if self.file.exists() else []
        if self.thumbnails.exists():
            found += sorted(p for p in self.thumbnails.rglob("*") if p.is_file())
        return found


@dataclass
class Snapshot:
    """What the APIs and the database show at one moment."""

    client_event_ids: set[str]
    """The room's timeline (`/messages`) as both members see it."""
    client_text: str
    client_state_ids: set[str]
    """The room's current state (`/state`)."""
    search_hits: int
    admin_event_ids: set[str]
    admin_lookups: dict[str, dict[str, int]]
    """Per event: HTTP status of the admin `context` and `fetch_event` lookups."""
    core_rows: dict[str, set[str]]
    """Per core table (events, event_json, event_search): the room's events it holds."""
    tables: dict[str, set[str]]
    """Per table: which watched strings (text markers, event IDs, media IDs) it holds."""
    media_files: dict[str, list[Path]]
    admin_media_ids: set[str]

    def holding(self, *needles: str) -> set[str]:
        return {table for table, found in self.tables.items() if found & set(needles)}


class Story:
    """One guarded room, its members, and what they leave on the server."""

    def __init__(self, server: SynapseServer, db: Inspector) -> None:
        self.server = server
        self.db = db
        self.marks = {
            name: marker(prefix)
            for name, prefix in (
                ("message", "zqm"),  # in every message that must be purged
                ("kept", "zqk"),  # the room's last message before the purge
                ("fresh", "zqf"),  # a message sent after the purge
                ("topic", "zqt"),  # a state event
                ("report", "zqr"),  # a member's report reason
                ("to_device", "zqd"),  # a to-device message (not a room event)
                ("filename", "zqu"),  # the uploads' file names
            )
        }
        _, self.admin = server.new_user("admin", admin=True)
        self.alice_id, self.alice = server.new_user("alice")
        self.bob_id, self.bob = server.new_user("bob")
        self.room_id = self.alice.room_id(invite=[self.bob_id])
        assert self.bob.join(self.room_id)[0] == 200
        self.purged: dict[str, str] = {}
        """Event IDs of everything the purge must delete, by what it is."""
        self.topic_event = ""
        self.kept = ""
        self.kept_at = 0.0
        self.fresh = ""
        self.uploads: dict[str, Upload] = {}

    # -- what the members do ---------------------------------------------------------------

    def send(self, content: dict[str, Any], event_type: str = "m.room.message") -> str:
        status, body = self.alice.send(self.room_id, content, event_type)
        assert status == 200, body
        return str(body["event_id"])

    def upload(self, name: str, data: bytes, kind: str) -> Upload:
        response = requests.post(
            f"{self.server.url}/_matrix/media/v3/upload",
            params={"filename": f"{self.marks['filename']}-{name}"},
            data=data,
            headers={"Authorization": f"Bearer {self.alice.token}", "Content-Type": kind},
            timeout=30,
        )
        assert response.ok, response.text
        mxc = str(response.json()["content_uri"])
        media_id = mxc.rsplit("/", 1)[1]
        # Synapse's media store layout (synapse/media/filepath.py).
        parts = (media_id[0:2], media_id[2:4], media_id[4:])
        store = self.server.workdir / "media"
        self.uploads[name] = Upload(
            media_id,
            mxc,
            store.joinpath("local_content", *parts),
            store.joinpath("local_thumbnails", *parts),
        )
        return self.uploads[name]

    def write(self) -> None:
        """A room's history, every message carrying the message marker."""
        text = self.marks["message"]
        status, body = self.alice.put_state(
            self.room_id, "m.room.topic", {"topic": self.marks["topic"]}
        )
        assert status == 200, body
        self.topic_event = str(body["event_id"])

        # An E2EE attachment is opaque bytes; an image also gets thumbnails.
        attachment = self.upload(
            "attachment", f"{text} attachment".encode(), "application/octet-stream"
        )
        image = self.upload("image", png(), "image/png")

        # Plain events, which a raw client may send into an encrypted room and, with the
        # guard's `rooms.encryption: off` (GUARD_RETENTION), the server stores as they are.
        root = self.send({"msgtype": "m.text", "body": f"{text} plain message"})
        self.purged["message"] = root
        self.purged["encrypted"] = self.send(
            {
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": f"{text}ciphertext",
                "device_id": "DEVICE",
                "sender_key": "key",
                "session_id": "session",
            },
            "m.room.encrypted",
        )
        self.purged["file"] = self.send(
            {"msgtype": "m.file", "body": f"{text} file", "url": attachment.mxc}
        )
        self.purged["image"] = self.send(
            {"msgtype": "m.image", "body": f"{text} image", "url": image.mxc}
        )
        self.purged["edit"] = self.send(
            {
                "msgtype": "m.text",
                "body": f"* {text} edited",
                "m.new_content": {"msgtype": "m.text", "body": f"{text} edited"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": root},
            }
        )
        self.purged["reaction"] = self.send(
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": text}},
            "m.reaction",
        )
        self.purged["thread_reply"] = self.send(
            {
                "msgtype": "m.text",
                "body": f"{text} thread reply",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root},
            }
        )
        self.purged["redacted"] = self.send({"msgtype": "m.text", "body": f"{text} redacted"})
        status, body = self.alice.redact(self.room_id, self.purged["redacted"])
        assert status == 200, body
        self.purged["redaction"] = str(body["event_id"])

        # Bob reads up to the thread reply and reports the first message.
        room = quoted(self.room_id)
        read = self.purged["thread_reply"]
        status, body = self.bob.request(
            "POST",
            f"/_matrix/client/v3/rooms/{room}/read_markers",
            {"m.fully_read": read, "m.read": read},
        )
        assert status == 200, body
        status, body = self.bob.request(
            "POST",
            f"/_matrix/client/v3/rooms/{room}/report/{quoted(root)}",
            {"reason": self.marks["report"], "score": -100},
        )
        assert status == 200, body
        # A to-device message (how E2EE room keys travel) that Bob's device never collects.
        status, body = self.alice.request(
            "PUT",
            f"/_matrix/client/v3/sendToDevice/m.test.marker/{uuid.uuid4().hex}",
            {"messages": {self.bob_id: {"*": {"body": self.marks["to_device"]}}}},
        )
        assert status == 200, body

        # The room's last message for now.
        self.kept = self.send({"msgtype": "m.text", "body": f"{self.marks['kept']} last words"})
        self.kept_at = time.time()

    # -- what the server shows -------------------------------------------------------------

    def events(self) -> set[str]:
        return {*self.purged.values(), self.topic_event, self.kept} | (
            {self.fresh} if self.fresh else set()
        )

    def watched(self) -> set[str]:
        media = {u.media_id for u in self.uploads.values()}
        return self.events() | set(self.marks.values()) | media

    def room_event_ids(self, table: str) -> set[str]:
        rows = self.db.rows(f"SELECT event_id FROM {table} WHERE room_id = ?", self.room_id)
        return {event_id for (event_id,) in rows}

    def search_hits(self) -> int:
        status, body = self.alice.request(
            "POST",
            "/_matrix/client/v3/search",
            {"search_categories": {"room_events": {"search_term": self.marks["message"]}}},
        )
        assert status == 200, body
        return int(body["search_categories"]["room_events"].get("count") or 0)

    def snapshot(self) -> Snapshot:
        room = quoted(self.room_id)
        client_events = self.alice.messages(self.room_id) + self.bob.messages(self.room_id)
        status, admin_messages = self.admin.request(
            "GET",
            f"/_synapse/admin/v1/rooms/{room}/messages",
            params={"dir": "b", "limit": "1000"},
        )
        assert status == 200, admin_messages
        lookups = {
            event_id: {
                # Every version: the event and its neighbours, whatever their visibility.
                "context": self.admin.request(
                    "GET", f"/_synapse/admin/v1/rooms/{room}/context/{quoted(event_id)}"
                )[0],
                # Synapse >= 1.140 (absent before: 404 there too): the raw event.
                "fetch_event": self.admin.request(
                    "GET", f"/_synapse/admin/v1/fetch_event/{quoted(event_id)}"
                )[0],
            }
            for event_id in self.events()
        }
        status, media = self.admin.request(
            "GET", f"/_synapse/admin/v1/users/{quoted(self.alice_id)}/media"
        )
        assert status == 200, media
        return Snapshot(
            client_event_ids={e["event_id"] for e in client_events},
            client_text=json.dumps(client_events),
            client_state_ids={e["event_id"] for e in self.alice.state(self.room_id).values()},
            search_hits=self.search_hits(),
            admin_event_ids={e["event_id"] for e in admin_messages["chunk"]},
            admin_lookups=lookups,
            core_rows={
                table: self.room_event_ids(table) & self.events()
                for table in ("events", "event_json", "event_search")
            },
            tables=self.db.tables_containing(self.watched()),
            media_files={name: u.files() for name, u in self.uploads.items()},
            admin_media_ids={m["media_id"] for m in media["media"]},
        )


@dataclass
class Result:
    story: Story
    before: Snapshot
    after: Snapshot
    later: Snapshot
    on_disk_after: set[str]
    """Watched strings in the database files right after the purge."""
    on_disk_rewritten: set[str]
    """... and after a rewrite (VACUUM FULL / VACUUM), Synapse stopped."""
    in_wal: set[str] | None
    """PostgreSQL only: watched strings in the write-ahead log after the rewrite."""
    log: str


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def result(request: pytest.FixtureRequest, synapse_factory: SynapseFactory) -> Result:
    cluster: PostgresCluster | None = None
    if request.param == "postgres":
        cluster = request.getfixturevalue("postgres")
    server = synapse_factory(
        database=cluster.create_database() if cluster else None,
        extra=SYNAPSE_RETENTION,
        guard=GUARD_RETENTION,
        extra_modules=[MEDIA_RETENTION_EVERY_SECOND],
    ).start()
    story = Story(server, inspector_for(server, cluster))
    assert story.alice.state_content(story.room_id, "m.room.retention") == {
        "max_lifetime": LIFETIME_S * 1000
    }

    started = time.monotonic()
    story.write()
    before = story.snapshot()
    took = time.monotonic() - started
    if took > LIFETIME_S - 1:
        pytest.fail(f"writing and observing took {took:.1f}s: too slow for a {LIFETIME} lifetime")

    # The purge job deletes the expired messages...
    purged = set(story.purged.values())
    wait_until(
        lambda: not story.room_event_ids("events") & purged,
        LIFETIME_S + 20,
        "the purge job deleted the expired messages",
    )
    # ... but not the room's newest event: let it expire and the job run twice more.
    time.sleep(max(0.0, story.kept_at + LIFETIME_S + 2.5 - time.time()))
    wait_until(
        lambda: not any(u.files() for u in story.uploads.values()),
        20,
        "the media retention job deleted the uploads",
    )
    after = story.snapshot()
    on_disk_after = story.db.on_disk(story.watched())

    # A new message: the next purge takes the event kept so far.
    story.fresh = story.send({"msgtype": "m.text", "body": f"{story.marks['fresh']} new"})
    fresh_at = time.time()
    wait_until(
        lambda: story.kept not in story.room_event_ids("events"),
        LIFETIME_S + 20,
        "the purge job deleted the event it had kept",
    )
    later = story.snapshot()
    if time.time() - fresh_at > LIFETIME_S - 1:
        pytest.fail("observing took too long: the new message expired in the meantime")
    log = server.log_file.read_text()

    # An operator's maintenance window: Synapse stopped, the database rewritten.
    server.stop()
    story.db.rewrite()
    on_disk_rewritten = story.db.on_disk(story.watched())
    in_wal = None
    if isinstance(story.db, PostgresInspector):
        in_wal = story.db.wal_contains(story.watched())
    return Result(story, before, after, later, on_disk_after, on_disk_rewritten, in_wal, log)


def names(result: Result, found: set[str]) -> list[str]:
    """Readable assertion messages: event and marker names instead of random IDs."""
    story = result.story
    known = {v: f"mark:{k}" for k, v in story.marks.items()}
    known |= {v: f"event:{k}" for k, v in story.purged.items()}
    known |= {story.kept: "event:kept", story.fresh: "event:fresh"}
    known |= {story.topic_event: "event:topic"}
    known |= {u.media_id: f"media:{k}" for k, u in story.uploads.items()}
    return sorted(known.get(x, x) for x in found)


# -- 1. before the lifetime ends ------------------------------------------------------------


def test_everything_is_visible_and_stored_before_the_lifetime_ends(result: Result) -> None:
    story, before = result.story, result.before
    written = set(story.purged.values()) | {story.kept}
    assert written <= before.client_event_ids
    assert story.marks["message"] in before.client_text
    assert before.search_hits >= 1
    assert written <= before.admin_event_ids
    assert all(before.admin_lookups[e]["context"] == 200 for e in written)

    assert written <= before.core_rows["events"]
    assert written <= before.core_rows["event_json"]
    # Every event with a text body is in the search index; a redaction does not take the
    # redacted message out of it (only its purge does).
    with_body = {"message", "file", "image", "edit", "thread_reply", "redacted"}
    assert {story.purged[k] for k in with_body} <= before.core_rows["event_search"]
    # The scan sees message text wherever it is.
    assert {"event_json", "event_search", "event_relations"} <= before.holding(
        story.marks["message"]
    )

    for name, files in before.media_files.items():
        assert story.uploads[name].file in files, f"{name} is not in the media store"
    assert len(before.media_files["image"]) >= 2, "the image has no thumbnails"
    assert {u.media_id for u in story.uploads.values()} <= before.admin_media_ids


# -- 2. after the purge ---------------------------------------------------------------------


def test_expired_messages_disappear_from_the_client_api(result: Result) -> None:
    story, after = result.story, result.after
    assert not after.client_event_ids & set(story.purged.values())
    assert story.marks["message"] not in after.client_text
    assert after.search_hits == 0
    # What members send afterwards is there as usual.
    assert story.fresh in result.later.client_event_ids


def test_expired_messages_disappear_from_the_admin_api(result: Result) -> None:
    story, after = result.story, result.after
    assert not after.admin_event_ids & set(story.purged.values())
    for event_id in story.purged.values():
        assert after.admin_lookups[event_id] == {"context": 404, "fetch_event": 404}


def test_expired_messages_are_deleted_from_every_table(result: Result) -> None:
    story, after = result.story, result.after
    purged = set(story.purged.values())
    for table, rows in after.core_rows.items():
        assert not rows & purged, f"{table} still holds {names(result, rows & purged)}"
    # No table holds their text any more: not the search index, not relations (edits,
    # reaction keys), not push actions.
    assert after.holding(story.marks["message"]) == set()


def test_purged_events_are_still_named_in_a_few_metadata_tables(result: Result) -> None:
    story, after = result.story, result.after
    expected = ID_ONLY_TABLES | (
        ID_ONLY_TABLES_POSTGRES if story.db.backend == "postgres" else set()
    )
    holding = after.holding(*story.purged.values())
    assert expected <= holding <= expected | ID_ONLY_TABLES_SOMETIMES
    # event_json names them only inside the kept events' JSON (prev_events / auth_events):
    # their own rows are gone (previous test).
    assert story.marks["report"] in after.tables["event_reports"]


def test_the_newest_expired_event_is_kept_hidden_until_the_room_moves_on(
    result: Result,
) -> None:
    story, after, later = result.story, result.after, result.later
    kept = story.kept
    # After the purge: expired, so members no longer see it, but it is still stored and
    # the admin API still serves it.
    assert kept not in after.client_event_ids
    assert kept in after.core_rows["events"]
    assert kept in after.core_rows["event_json"]
    assert kept in after.core_rows["event_search"]
    assert after.holding(story.marks["kept"]) <= KEPT_TEXT_TABLES
    assert kept in after.admin_event_ids
    assert after.admin_lookups[kept]["context"] == 200
    # A new message in the room: the next purge takes the kept event, even though the new
    # message has not expired (here it is the first event the server received after the
    # cut; see docs/retention.md for the general rule).
    for table, rows in later.core_rows.items():
        assert kept not in rows, table
    assert later.holding(story.marks["kept"]) == set()
    assert later.admin_lookups[kept] == {"context": 404, "fetch_event": 404}
    assert story.fresh in later.core_rows["events"]
    assert story.fresh in later.client_event_ids


def test_state_events_are_never_purged(result: Result) -> None:
    story, later = result.story, result.later
    topic = story.topic_event
    for table in ("events", "event_json", "event_search"):
        assert topic in later.core_rows[table], table
    assert later.admin_lookups[topic]["context"] == 200
    # Still the room's topic; no longer in the timeline (the purge marks the state events
    # before its cut as outliers, which /messages does not return).
    assert topic in later.client_state_ids
    assert topic not in later.client_event_ids
    # The topic's text, in the event, the search index and the room statistics.
    assert {"event_json", "event_search", "room_stats_state"} <= later.holding(story.marks["topic"])


def test_reports_and_undelivered_to_device_messages_are_outside_retention(
    result: Result,
) -> None:
    story, later = result.story, result.later
    assert later.holding(story.marks["report"]) == {"event_reports"}
    assert later.holding(story.marks["to_device"]) == {"device_inbox"}


def test_expired_local_media_is_deleted_by_the_media_retention_job(result: Result) -> None:
    story, after = result.story, result.after
    assert after.media_files == {name: [] for name in story.uploads}
    media_ids = {u.media_id for u in story.uploads.values()}
    assert not after.admin_media_ids & media_ids
    # No table names them or their file names any more (local_media_repository, thumbnails).
    assert after.holding(*media_ids, story.marks["filename"]) == set()
    # Synapse's job did it, and the purge job ran every second.
    assert MEDIA_JOB_LOG in result.log
    assert result.log.count(PURGE_JOB_LOG) >= 3


# -- the database files ---------------------------------------------------------------------


def test_deleted_rows_linger_in_the_database_files_until_they_are_rewritten(
    result: Result,
) -> None:
    story = result.story
    gone = story.marks["message"]
    assert gone in result.on_disk_after, "the purged text was no longer in the files"
    assert gone not in result.on_disk_rewritten
    assert story.marks["kept"] not in result.on_disk_rewritten
    # The check sees live rows (the topic is state, never purged).
    assert story.marks["topic"] in result.on_disk_rewritten
    if result.in_wal is not None:
        # PostgreSQL's write-ahead log (and so WAL archives and replicas) keeps it anyway.
        assert gone in result.in_wal
