# -*- test-case-name: tests.test_maildir_store -*-
"""A per-message cache of parsed data that lasts across restarts (the
Maildir step of the flow).

IMAP computes ENVELOPE and BODYSTRUCTURE (and anything else worth keeping)
once per message and stores the result here, keyed by the message's base
name and a key of the caller's choice; the value is opaque bytes.  The cache
is an SQLite database, ``twistedmail-cache.sqlite`` in the folder, created
on first write: SQLite gives atomic updates and locking between processes.
Entries of expunged messages are removed with them, also when another
program removed the files (the next refresh that notices forgets them), and
when the UID list was lost every entry of a message no longer there goes.  Losing the file only
costs a recomputation.

Beside each message's values, the cache keeps an index of the header
fields IMAP SEARCH looks at most (L{INDEXED_FIELDS}; IMAP stores their
values decoded and case-folded): one short row per message, so that a
search over a whole folder is one query (L{MessageCache.match}) that
reads no message's entries.  A message with no row is not indexed (the
caller looks at it the slow way); a NULL value says the message has no
such field.  What the values hold is the caller's format: a change to it
takes a new format version here.

On-disk format: table ``cache(base TEXT, key TEXT, value BLOB)`` with a
unique index on ``(base, key)``; table ``fields(base TEXT PRIMARY KEY,
h_subject BLOB, h_from BLOB, h_to BLOB, h_cc BLOB, h_bcc BLOB)``, ``WITHOUT
ROWID`` (a row per message: a row per message and field, kept in field
order for the search, made each cached structure dirty five more pages and
its put twice as slow); and ``PRAGMA user_version`` = 3 (the format version), in write-ahead-log mode
(``-wal`` and ``-shm`` files beside it while open); commits are not
fsynced, since a lost entry is only recomputed.  Version 1 kept the rows
in a ``WITHOUT ROWID`` table keyed by ``(base, key)``; its entries (a
kilobyte or more each) made that table three times the size of its data
and batched reads twice as slow, so the first open of a version 1 file
copies its entries into the new table.  Version 2 had no ``fields``
table: the first open adds it, empty (the caller indexes the messages
again as it meets them).
NFS caveat: SQLite's locking is unreliable over some NFS setups; a shared
folder then needs the cache disabled or local.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["CACHE_NAME", "INDEXED_FIELDS", "Fields", "MessageCache"]

CACHE_NAME = "twistedmail-cache.sqlite"
_VERSION = 3

#: The (lower-cased) header fields of the index: those of SEARCH's own keys.
INDEXED_FIELDS = ("subject", "from", "to", "cc", "bcc")
_COLUMNS = {name: f"h_{name}" for name in INDEXED_FIELDS}

#: A message's indexed fields by name: the value of each (None or left out:
#: the message has no such field).
Fields = Mapping[str, "bytes | None"]


def _upgrade(db: sqlite3.Connection) -> None:
    """Make the current format (in a transaction): version 1's and 2's
    entries are kept; a file of no or an unknown version starts empty."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == _VERSION:
        return
    if version == 2:
        db.execute("DROP TABLE IF EXISTS fields")
        _create_fields(db)
        db.execute(f"PRAGMA user_version = {_VERSION}")
        return
    if version == 1:
        db.execute("ALTER TABLE cache RENAME TO cache_v1")
    else:
        db.execute("DROP TABLE IF EXISTS cache")
        db.execute("DROP TABLE IF EXISTS fields")
    db.execute(
        "CREATE TABLE cache (base TEXT NOT NULL, key TEXT NOT NULL,"
        " value BLOB NOT NULL)"
    )
    db.execute("CREATE UNIQUE INDEX cache_entry ON cache (base, key)")
    if version == 1:
        db.execute(
            "INSERT INTO cache (base, key, value)"
            " SELECT base, key, value FROM cache_v1 ORDER BY base"
        )
        db.execute("DROP TABLE cache_v1")
    _create_fields(db)
    db.execute(f"PRAGMA user_version = {_VERSION}")


def _create_fields(db: sqlite3.Connection) -> None:
    columns = "".join(f", {c} BLOB" for c in _COLUMNS.values())
    db.execute(
        f"CREATE TABLE fields (base TEXT PRIMARY KEY NOT NULL{columns}) WITHOUT ROWID"
    )


_INSERT_FIELDS = (
    f"INSERT OR REPLACE INTO fields (base, {', '.join(_COLUMNS.values())})"
    f" VALUES (?{', ?' * len(_COLUMNS)})"
)


def _field_row(base: str, fields: Fields) -> tuple[str | bytes | None, ...]:
    return (base, *(fields.get(name) for name in INDEXED_FIELDS))


def _split(joined: str | None) -> set[str]:
    return set(joined.split("/")) if joined else set()


def _unindexed(indexed: str, bases: Sequence[str]) -> list[str]:
    """Those of C{bases} not among the C{indexed} ones (joined by "/", in
    the order of the index: by name).  The index usually holds exactly the
    folder's messages, and their UIDs usually follow their names: then one
    comparison of two strings says so, without a set of 100,000 names."""
    if indexed == "/".join(bases) or indexed == "/".join(sorted(bases)):
        return []
    known = _split(indexed)
    return [b for b in bases if b not in known]


class MessageCache:
    """The cache of one folder.

    @param folder: the folder's directory (the Maildir or a ``.Name`` in it).
    """

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, CACHE_NAME)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if not create and not os.path.exists(self.path):
            return None
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        # A write-ahead log without an fsync per commit: a cache entry lost
        # to a power failure is only recomputed, and an fsync per entry made
        # the first FETCH ENVELOPE of 10,000 messages take minutes.
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        if db.execute("PRAGMA user_version").fetchone()[0] != _VERSION:
            db.execute("BEGIN IMMEDIATE")
            _upgrade(db)
            db.commit()
        self._db = db
        return db

    def get(self, base: str, key: str) -> bytes | None:
        """The cached value, or None when there is none."""
        with self._lock:
            db = self._connect(False)
            if db is None:
                return None
            row = db.execute(
                "SELECT value FROM cache WHERE base = ? AND key = ?", (base, key)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def get_many(self, bases: Sequence[str], key: str) -> dict[str, bytes]:
        """The cached values of many messages (those that have one), by
        base name: one query per 500 messages instead of one each."""
        found: dict[str, bytes] = {}
        with self._lock:
            db = self._connect(False)
            if db is None:
                return found
            for i in range(0, len(bases), 500):
                chunk = bases[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for base, value in db.execute(
                    f"SELECT base, value FROM cache WHERE key = ? AND base IN ({marks})",
                    (key, *chunk),
                ):
                    found[base] = bytes(value)
        return found

    def put(
        self, base: str, key: str, value: bytes, fields: Fields | None = None
    ) -> None:
        """Store a value (replacing any earlier one), and index the
        message's C{fields} in the same transaction when given."""
        with self._lock:
            db = self._connect(True)
            assert db is not None
            db.execute(
                "INSERT OR REPLACE INTO cache (base, key, value) VALUES (?, ?, ?)",
                (base, key, value),
            )
            if fields is not None:
                db.execute(_INSERT_FIELDS, _field_row(base, fields))
            db.commit()

    def put_fields(self, entries: Iterable[tuple[str, Fields]]) -> None:
        """Index the fields of many messages (by base name) in one
        transaction, replacing any earlier values."""
        with self._lock:
            db = self._connect(True)
            assert db is not None
            db.executemany(_INSERT_FIELDS, [_field_row(b, f) for b, f in entries])
            db.commit()

    def match(
        self, field: str, needle: bytes, bases: Sequence[str]
    ) -> tuple[set[str], list[str]]:
        """Which indexed messages have a value of C{field} containing
        C{needle} (octet for octet), and which of C{bases} are not indexed:
        C{(matching, unindexed)}, by base name.  A message with no such
        field is indexed and does not match; an empty C{needle} matches
        every message that has the field.

        @param bases: the messages searched (matching may name others).
        @raise KeyError: for a field not in L{INDEXED_FIELDS}."""
        column = _COLUMNS[field]
        with self._lock:
            db = self._connect(False)
            if db is None:
                return set(), list(bases)
            # One row with two long strings rather than a row per message:
            # a Python object per row made this several times slower.  A
            # base name has no "/" (it is a file name); instr() of two
            # BLOBs compares octets; NULL is no such field.
            indexed, matching = db.execute(
                "SELECT group_concat(base, '/'), group_concat(CASE WHEN"
                f" {column} IS NOT NULL AND instr({column}, ?) > 0 THEN base END,"
                " '/') FROM fields",
                (needle,),
            ).fetchone()
        return _split(matching), _unindexed(indexed or "", bases)

    def forget(self, bases: Iterable[str]) -> None:
        """Remove every entry of these messages."""
        with self._lock:
            db = self._connect(False)
            if db is None:
                return
            rows = [(b,) for b in bases]
            db.executemany("DELETE FROM cache WHERE base = ?", rows)
            db.executemany("DELETE FROM fields WHERE base = ?", rows)
            db.commit()

    def retain(self, bases: Iterable[str]) -> None:
        """Remove the entries of every message not among these (after the
        UID list was lost, expunges it knew of are unknown)."""
        with self._lock:
            db = self._connect(False)
            if db is None:
                return
            db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS keep (base TEXT PRIMARY KEY)"
                " WITHOUT ROWID"
            )
            db.execute("DELETE FROM keep")
            db.executemany(
                "INSERT OR IGNORE INTO keep (base) VALUES (?)", [(b,) for b in bases]
            )
            db.execute("DELETE FROM cache WHERE base NOT IN (SELECT base FROM keep)")
            db.execute("DELETE FROM fields WHERE base NOT IN (SELECT base FROM keep)")
            db.execute("DELETE FROM keep")
            db.commit()

    def close(self) -> None:
        """Close the database (it reopens on next use)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
