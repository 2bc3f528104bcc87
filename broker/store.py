"""The broker's persistent store: sessions, subscriptions, queued and in-flight messages, retained messages.

One SQLite database in WAL mode (the stdlib's sqlite3; bench/store_choice.py measured it against LMDB,
docs/persistence.md says why it won). The broker changes its state in memory as before and tells the
store what changed; the store keeps those changes, folded (a message queued and acknowledged before
the next commit never reaches the disk), and writes them in one transaction per commit:

- `always`: before the broker writes any packet, so a PUBACK or PUBREC leaves only after the message
  is durable; one commit (one fsync) covers everything acknowledged in that event-loop turn;
- `interval`: every `sync_interval` milliseconds;
- `never`: at shutdown.

Times are stored as wall-clock seconds, so a session's expiry counts the time the broker was down.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.message import Message
from fleet.errors import StoreError
from fleet.mqtt.properties import EMPTY, decode_properties, encode_properties

if TYPE_CHECKING:
    from broker.session import Entry, Session, Subscription

__all__ = ["FILENAME", "SCHEMA_VERSION", "Store", "StoredEntry", "StoredSession"]

log = logging.getLogger("broker")

FILENAME = "broker.sqlite3"
# Version 1: sessions (MQTT 3.1.1 and 5), subscriptions with their MQTT 5 options, QoS 1/2 messages
# queued and in flight (QoS 2 state both ways), retained messages with their expiry.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    expiry INTEGER NOT NULL,
    username TEXT,
    disconnected REAL
);
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    retain_handling INTEGER NOT NULL,
    identifier INTEGER,
    shared INTEGER NOT NULL,
    PRIMARY KEY (client_id, filter)
);
CREATE TABLE entries (
    key INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    packet_id INTEGER,
    released INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    sub_ids TEXT NOT NULL,
    share TEXT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    message_qos INTEGER NOT NULL,
    properties BLOB NOT NULL,
    expires REAL,
    sender TEXT
);
CREATE INDEX entries_client ON entries (client_id);
CREATE TABLE incoming (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
);
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties BLOB NOT NULL,
    expires REAL,
    sender TEXT
);
"""

# Upgrades from each older schema version to the next; none yet, since version 1 is the first.
_MIGRATIONS: dict[int, str] = {}


@dataclass(frozen=True, slots=True)
class _Changes:
    """The changes of one commit, taken from the store (which then collects new ones)."""

    dropped: set[str]
    sessions: dict[str, tuple[str, int, str | None, float | None]]
    subscribed: dict[tuple[str, str], tuple[object, ...] | None]
    new: dict[int, tuple[object, ...]]
    updates: dict[int, tuple[int | None, int]]
    deleted: set[int]
    incoming: dict[tuple[str, int], bool]
    retained: dict[str, tuple[object, ...] | None]


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A queued (packet_id None) or in-flight message of a stored session."""

    key: int
    packet_id: int | None
    released: bool
    qos: int
    retain: bool
    sub_ids: tuple[int, ...]
    share: tuple[str, str] | None
    message: Message


@dataclass(frozen=True, slots=True)
class StoredSession:
    client_id: str
    expiry: int
    username: str | None
    # Seconds it has been offline, counting the time the broker was down.
    offline: float
    # (filter, options, whether it is an MQTT 5 shared subscription)
    subscriptions: tuple[tuple[str, Subscription, bool], ...]
    entries: tuple[StoredEntry, ...]
    incoming: frozenset[int]


class Store:
    """The open store of one broker; the broker holds the only connection (exclusive locking)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILENAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from None
        self._next_key = 1
        self._sessions: dict[str, tuple[str, int, str | None, float | None]] = {}
        self._dropped: set[str] = set()
        self._subscribed: dict[tuple[str, str], tuple[object, ...] | None] = {}
        # Entries added since the last commit: [client id, entry, packet id]; their rows are made only
        # at commit time, so an entry acknowledged before the commit costs no row at all.
        self._new: dict[int, list[Any]] = {}
        self._updates: dict[int, tuple[int | None, int]] = {}
        self._deleted: set[int] = set()
        self._incoming: dict[tuple[str, int], bool] = {}
        self._retained: dict[str, tuple[object, ...] | None] = {}
        self.pending = False
        self._writing = threading.Lock()
        try:
            self._open()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"{self.path}: not a usable store: {exc}") from None

    def _open(self) -> None:
        db = self._db
        # One broker per store: a second one fails at once instead of sharing it.
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise sqlite3.DatabaseError("cannot switch to WAL mode")
        db.execute("PRAGMA synchronous = FULL")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            # executescript() runs the whole script as given: the schema goes in in one transaction.
            db.executescript(
                f"BEGIN; {_SCHEMA} INSERT INTO meta VALUES ('schema', '{SCHEMA_VERSION}'); COMMIT;"
            )
            return
        if "meta" not in tables:
            raise sqlite3.DatabaseError("an SQLite database, but not a broker store (no meta table)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        version = int(row[0]) if row is not None else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this broker's {SCHEMA_VERSION}; "
                "run the mqtt-fleet that wrote it, or move the store away"
            )
        while version < SCHEMA_VERSION:
            step = _MIGRATIONS.get(version)
            if step is None:
                raise StoreError(f"{self.path}: schema version {version} cannot be migrated")
            version += 1
            db.executescript(
                f"BEGIN; {step} UPDATE meta SET value = '{version}' WHERE key = 'schema'; COMMIT;"
            )
            log.info("migrated the store %s to schema version %d", self.path, version)

    # Loading

    def load(self) -> tuple[list[StoredSession], list[Message]]:
        """Everything stored, with times made relative to now (monotonic, as the broker keeps them)."""
        try:
            return self._load()
        except (sqlite3.Error, ValueError, IndexError) as exc:
            raise StoreError(f"{self.path}: cannot read the store: {exc}") from None

    def _load(self) -> tuple[list[StoredSession], list[Message]]:
        from broker.session import Subscription

        db = self._db
        wall = time.time()
        mono = time.monotonic()
        row = db.execute("SELECT value FROM meta WHERE key = 'saved'").fetchone()
        saved = float(row[0]) if row is not None else wall
        subscriptions: dict[str, list[tuple[str, Subscription, bool]]] = {}
        for client_id, topic_filter, qos, no_local, rap, handling, identifier, shared in db.execute(
            "SELECT * FROM subscriptions ORDER BY rowid"
        ):
            sub = Subscription(qos, bool(no_local), bool(rap), handling, identifier)
            subscriptions.setdefault(client_id, []).append((topic_filter, sub, bool(shared)))
        entries: dict[str, list[StoredEntry]] = {}
        for key, client_id, packet_id, released, qos, retain, sub_ids, share, *message in db.execute(
            "SELECT * FROM entries ORDER BY key"
        ):
            group, _, inner = share.partition("/") if share is not None else ("", "", "")
            entries.setdefault(client_id, []).append(
                StoredEntry(
                    key,
                    packet_id,
                    bool(released),
                    qos,
                    bool(retain),
                    tuple(int(i) for i in sub_ids.split(",") if i),
                    (group, inner) if share is not None else None,
                    _message(*message, retain=False, wall=wall, mono=mono),
                )
            )
            self._next_key = key + 1
        incoming: dict[str, set[int]] = {}
        for client_id, packet_id in db.execute("SELECT * FROM incoming"):
            incoming.setdefault(client_id, set()).add(packet_id)
        sessions = [
            StoredSession(
                client_id,
                expiry,
                username,
                max(0.0, wall - (saved if disconnected is None else disconnected)),
                tuple(subscriptions.get(client_id, ())),
                tuple(entries.get(client_id, ())),
                frozenset(incoming.get(client_id, ())),
            )
            for client_id, expiry, username, disconnected in db.execute("SELECT * FROM sessions")
        ]
        retained = [
            _message(topic, payload, qos, properties, expires, sender, retain=True, wall=wall, mono=mono)
            for topic, payload, qos, properties, expires, sender in db.execute("SELECT * FROM retained")
        ]
        return sessions, retained

    # Changes, kept until the next commit

    def session_saved(self, session: Session, *, offline: bool) -> None:
        """The session exists (or changed its expiry, user or connection state)."""
        self.pending = True
        self._sessions[session.client_id] = (
            session.client_id,
            session.expiry,
            session.username,
            time.time() if offline else None,
        )

    def session_dropped(self, client_id: str) -> None:
        """The session ended: it and everything it held go."""
        self.pending = True
        self._dropped.add(client_id)
        self._sessions.pop(client_id, None)
        for key in [k for k in self._subscribed if k[0] == client_id]:
            del self._subscribed[key]
        for new in [k for k, row in self._new.items() if row[0] == client_id]:
            del self._new[new]
        for pair in [k for k in self._incoming if k[0] == client_id]:
            del self._incoming[pair]

    def subscribed(self, client_id: str, topic_filter: str, sub: Subscription, *, shared: bool) -> None:
        self.pending = True
        self._subscribed[(client_id, topic_filter)] = (
            client_id,
            topic_filter,
            sub.qos,
            sub.no_local,
            sub.retain_as_published,
            sub.retain_handling,
            sub.identifier,
            shared,
        )

    def unsubscribed(self, client_id: str, topic_filter: str) -> None:
        self.pending = True
        self._subscribed[(client_id, topic_filter)] = None

    def entry_added(self, client_id: str, entry: Entry) -> None:
        """A QoS 1/2 message was queued for (or sent to) a stored session: it gets a key."""
        self.pending = True
        key = entry.key = self._next_key
        self._next_key = key + 1
        self._new[key] = [client_id, entry, None]

    def entry_changed(self, entry: Entry, packet_id: int | None) -> None:
        """The entry went in flight under `packet_id`, or was released (PUBREC received)."""
        key = entry.key
        new = self._new.get(key)
        if new is not None:
            new[2] = packet_id
            return
        self.pending = True
        self._updates[key] = (packet_id, int(entry.released))

    def entry_done(self, entry: Entry) -> None:
        """The entry was acknowledged, expired or dropped."""
        key = entry.key
        if self._new.pop(key, None) is not None:
            return
        self.pending = True
        self._updates.pop(key, None)
        self._deleted.add(key)

    def incoming(self, client_id: str, packet_id: int, *, held: bool) -> None:
        """A QoS 2 message from the client awaits its PUBREL (held), or was released."""
        pair = (client_id, packet_id)
        if not held and self._incoming.get(pair):
            del self._incoming[pair]
            return
        self.pending = True
        self._incoming[pair] = held

    def retained(self, message: Message) -> None:
        """A retained message was stored, or cleared (empty payload)."""
        self.pending = True
        if not message.payload:
            self._retained[message.topic] = None
            return
        self._retained[message.topic] = (
            message.topic,
            message.payload,
            message.qos,
            encode_properties(message.properties),
            _wall(message.expires),
            message.sender,
        )

    # Writing

    def commit(self) -> None:
        """Write every change since the last commit in one durable transaction, on this thread."""
        changes = self.take()
        if changes is not None:
            self.write(changes)

    def take(self) -> _Changes | None:
        """The changes since the last commit, for `write`; from now on changes collect afresh."""
        if not self.pending:
            return None
        changes = _Changes(
            self._dropped,
            self._sessions,
            self._subscribed,
            {key: _entry_row(key, *new) for key, new in self._new.items()},
            self._updates,
            self._deleted,
            self._incoming,
            self._retained,
        )
        self._dropped = set()
        self._sessions = {}
        self._subscribed = {}
        self._new = {}
        self._updates = {}
        self._deleted = set()
        self._incoming = {}
        self._retained = {}
        self.pending = False
        return changes

    def write(self, changes: _Changes) -> None:
        """Write `changes` in one durable transaction. Thread-safe: with sync "interval" the broker
        writes from a worker thread while its event loop goes on; writes happen one at a time, in the
        order they were taken."""
        with self._writing:
            started = time.perf_counter()
            try:
                self._write(changes)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot write the store: {exc}") from None
            elapsed = time.perf_counter() - started
        if elapsed > 0.5:
            log.warning("a commit to the store %s took %.2fs", self.path, elapsed)

    def _write(self, changes: _Changes) -> None:
        db = self._db
        db.execute("BEGIN")
        for client_id in changes.dropped:
            for table in ("sessions", "subscriptions", "entries", "incoming"):
                db.execute(f"DELETE FROM {table} WHERE client_id = ?", (client_id,))
        db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)", changes.sessions.values())
        for pair, row in changes.subscribed.items():
            if row is None:
                db.execute("DELETE FROM subscriptions WHERE client_id = ? AND filter = ?", pair)
            else:
                db.execute("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        db.executemany(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", changes.new.values()
        )
        db.executemany(
            "UPDATE entries SET packet_id = ?, released = ? WHERE key = ?",
            ((pid, released, key) for key, (pid, released) in changes.updates.items()),
        )
        db.executemany("DELETE FROM entries WHERE key = ?", ((key,) for key in changes.deleted))
        for held_pair, held in changes.incoming.items():
            if held:
                db.execute("INSERT OR IGNORE INTO incoming VALUES (?, ?)", held_pair)
            else:
                db.execute("DELETE FROM incoming WHERE client_id = ? AND packet_id = ?", held_pair)
        for topic, retained in changes.retained.items():
            if retained is None:
                db.execute("DELETE FROM retained WHERE topic = ?", (topic,))
            else:
                db.execute("INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?, ?)", retained)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('saved', ?)", (repr(time.time()),))
        db.execute("COMMIT")

    def close(self) -> None:
        """Write what is left and close; a write still running on a worker thread finishes first."""
        try:
            with self._writing:
                pass
            self.commit()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()


def _entry_row(key: int, client_id: str, entry: Entry, packet_id: int | None) -> tuple[object, ...]:
    """The `entries` row of an entry, made on the event loop's thread when the changes are taken."""
    message = entry.message
    group = entry.group
    return (
        key,
        client_id,
        packet_id,
        int(entry.released),
        entry.qos,
        entry.retain,
        ",".join(map(str, entry.sub_ids)),
        None if group is None else f"{group.name}/{group.topic_filter}",
        message.topic,
        message.payload,
        message.qos,
        encode_properties(message.properties),
        _wall(message.expires),
        message.sender,
    )


def _wall(expires: float | None) -> float | None:
    """A monotonic deadline as wall-clock time, so it survives a restart."""
    return None if expires is None else time.time() + (expires - time.monotonic())


def _message(
    topic: str,
    payload: bytes,
    qos: int,
    properties: bytes,
    expires: float | None,
    sender: str | None,
    *,
    retain: bool,
    wall: float,
    mono: float,
) -> Message:
    decoded = decode_properties(properties, 0, 3)[0] if properties != b"\x00" else EMPTY
    return Message(
        topic, payload, qos, retain, decoded, None if expires is None else mono + (expires - wall), sender
    )
