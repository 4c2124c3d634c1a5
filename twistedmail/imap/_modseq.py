# -*- test-case-name: tests.test_imap_server_modseq -*-
"""Modification sequences for CONDSTORE and QRESYNC (RFC 7162), kept per
folder next to the Maildir store's UID list: the IMAP step of the flow.

The Maildir store knows flags but not when they changed, so IMAP keeps its
own small index, ``twistedmail-modseq.sqlite`` in the folder's directory
(beside ``twistedmail-uidlist``).  It survives restarts and is shared by
every session and process through SQLite's locking; each change is one
transaction, so a crash leaves the old or the new state.

On-disk format, version 1 (``PRAGMA user_version = 1``)::

    meta(key TEXT PRIMARY KEY, value INTEGER)
        'uidvalidity'  the folder's UIDVALIDITY the rows belong to
        'highest'      HIGHESTMODSEQ (never goes down)
        'digest'       a digest of the UIDs and signatures the rows hold
        'digest_highest'  HIGHESTMODSEQ when the digest was written
    msgs(uid INTEGER PRIMARY KEY, modseq INTEGER, sig TEXT)

``sig`` is the message's flag letters and keywords as last seen.  L{ModSeqIndex.sync}
compares the store's snapshot with the rows: a message that is new, or
whose flags differ from its ``sig`` (changed by this server or by any other
program on the Maildir), gets a new mod-sequence; all changes found by one
call share it (RFC 7162 §3.1: messages changed by one operation may).  An
expunge removes rows and raises HIGHESTMODSEQ too.  A new UIDVALIDITY drops
every row but keeps HIGHESTMODSEQ, which only grows.

A sync whose snapshot has the file's digest (and 'digest_highest' equals
'highest', so no writer that keeps no digest wrote since) reads no row:
the rows are read when a mod-sequence is first asked for.

Losing the file costs clients a full resync (every message gets a new,
higher mod-sequence), never a missed change.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import operator
import os
import sqlite3
import sys
from collections.abc import Iterable, Sequence

from twistedmail.maildir import MessageInfo
from twistedmail.maildir.store import gc_paused

__all__ = [
    "MODSEQ_NAME",
    "ModSeqIndex",
    "flag_signature",
    "signature_of",
    "signatures",
]

MODSEQ_NAME = "twistedmail-modseq.sqlite"
_VERSION = 1


def flag_signature(info: MessageInfo) -> str:
    """The flags and keywords of a message as one comparable string."""
    return signature_of(info.flags, info.keywords)


def signature_of(flags: frozenset[str], keywords: frozenset[str]) -> str:
    """The signature (L{flag_signature}) of these flag letters and keyword
    names."""
    letters = "".join(sorted(flags))
    if not keywords:
        return letters
    return letters + " " + " ".join(sorted(keywords))


_flags = operator.attrgetter("flags")
_keywords = operator.attrgetter("keywords")
_uid = operator.attrgetter("uid")


def signatures(infos: Sequence[MessageInfo]) -> list[str]:
    """L{flag_signature} of each message, computed once per distinct flag
    set and keyword set (a folder has a few dozen at most).  Every other
    step is a pass in C that makes no object per message (a tuple per
    message would wake the garbage collector over and over: at 100,000
    messages that cost more than everything else here)."""
    flags = list(map(_flags, infos))
    letters = {f: "".join(sorted(f)) for f in set(flags)}
    sigs = list(map(letters.__getitem__, flags))
    keywords = list(map(_keywords, infos))
    if any(keywords):
        joined: dict[tuple[str, frozenset[str]], str] = {}
        for i, names in enumerate(keywords):
            if names:
                key = (sigs[i], names)
                sig = joined.get(key)
                if sig is None:
                    sig = joined[key] = sys.intern(
                        sigs[i] + " " + " ".join(sorted(names))
                    )
                sigs[i] = sig
    return sigs


def _digest(uidvalidity: int, uids: list[int], sigs: list[str]) -> int:
    """A 63-bit digest of a snapshot's UIDs and signatures (an SQLite
    integer)."""
    h = hashlib.blake2b(b"%d\n" % uidvalidity, digest_size=8)
    h.update(array.array("q", uids).tobytes())
    h.update("\n".join(sigs).encode())
    return int.from_bytes(h.digest(), "big", signed=True)


class ModSeqIndex:
    """The mod-sequence index of one folder (blocking; use from one thread at
    a time, off the reactor thread).

    The rows are kept in memory column by column in UID order (UIDs,
    mod-sequences, signatures) and read with one query that concatenates
    each column, so that a SELECT of a big folder neither makes a Python
    object per row nor compares rows one by one when nothing changed.

    @param folder: the folder's directory (L{twistedmail.maildir.Mailbox.path}).
    """

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, MODSEQ_NAME)
        self._db: sqlite3.Connection | None = None
        self._uids: list[int] = []
        self._modseqs: list[int] = []
        self._sigs: list[str] = []
        self._version: int | None = None
        # The file's data_version when the last sync ended (None: unknown).
        self._synced_version: int | None = None
        # Whether the columns hold the rows (see _unchanged).
        self._loaded = False
        # The file's digest and the HIGHESTMODSEQ it was written with.
        self._digest: tuple[object, object] = (None, None)
        self.highest = 1
        self.uidvalidity = 0

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA busy_timeout = 30000")
            if db.execute("PRAGMA user_version").fetchone()[0] != _VERSION:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)"
                )
                db.execute(
                    "CREATE TABLE IF NOT EXISTS msgs "
                    "(uid INTEGER PRIMARY KEY, modseq INTEGER, sig TEXT)"
                )
                db.execute(f"PRAGMA user_version = {_VERSION}")
                db.execute("COMMIT")
            self._db = db
        return self._db

    def _load(self, db: sqlite3.Connection) -> None:
        """Read everything again when another connection changed the file."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version and self._loaded:
            return
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.highest = int(meta.get("highest", 1))
        self.uidvalidity = int(meta.get("uidvalidity", 0))
        self._digest = (meta.get("digest"), meta.get("digest_highest"))
        # One row of three long strings instead of a row per message (a
        # fifth of the time); signatures never hold a line break (flag
        # letters, and keywords, which are atoms).
        count, uids, modseqs, sigs = db.execute(
            "SELECT count(*), group_concat(uid), group_concat(modseq),"
            " group_concat(sig, char(10))"
            " FROM (SELECT uid, modseq, sig FROM msgs ORDER BY uid)"
        ).fetchone()
        if count:
            self._uids = list(map(int, uids.split(",")))
            self._modseqs = list(map(int, modseqs.split(",")))
            self._sigs = list(map(sys.intern, sigs.split("\n")))
            if self._uids != sorted(self._uids):
                # SQLite keeps the subquery's order in practice, but does
                # not promise it (before 3.44's ORDER BY in aggregates).
                rows = sorted(zip(self._uids, self._modseqs, self._sigs, strict=True))
                self._uids = [r[0] for r in rows]
                self._modseqs = [r[1] for r in rows]
                self._sigs = [r[2] for r in rows]
        else:
            self._uids, self._modseqs, self._sigs = [], [], []
        self._version = version
        self._loaded = True

    def _unchanged(self, db: sqlite3.Connection, uidvalidity: int, digest: int) -> bool:
        """Whether the file says it holds exactly this snapshot (the digest
        of the last sync, written with HIGHESTMODSEQ, matches), without
        reading the rows: a SELECT of an unchanged folder of 100,000
        messages then reads a few meta rows.  Rows are read later, and
        only when a mod-sequence is asked for (CONDSTORE)."""
        version = db.execute("PRAGMA data_version").fetchone()[0]
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        highest = int(meta.get("highest", 1))
        if (
            meta.get("digest") != digest
            or meta.get("digest_highest") != highest
            or meta.get("uidvalidity") != uidvalidity
        ):
            return False
        if self._version != version or self.highest != highest:
            # Rows read before (if any) are stale now.
            self._loaded = False
            self._uids, self._modseqs, self._sigs = [], [], []
        self.highest = highest
        self.uidvalidity = uidvalidity
        self._version = version
        return True

    def _write_digest(self, db: sqlite3.Connection, digest: int) -> None:
        """Record that the rows hold this snapshot (a file written before
        digests were kept gets one), unless another connection wrote
        meanwhile."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA data_version").fetchone()[0] == self._version:
                db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [("digest", digest), ("digest_highest", self.highest)],
                )
                self._digest = (digest, self.highest)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _rows(self) -> None:
        """Read the rows when only the digest was checked (blocking)."""
        if not self._loaded:
            self._version = None
            self._load(self._connect())

    def _differences(
        self, uidvalidity: int, uids: list[int], sigs: list[str]
    ) -> tuple[list[tuple[int, str]], list[int]]:
        if uidvalidity != self.uidvalidity:
            return list(zip(uids, sigs, strict=True)), list(self._uids)
        if uids == self._uids:
            # The usual case: no expunge, no delivery; C compares the lists.
            if sigs == self._sigs:
                return [], []
            return [
                (u, new)
                for u, new, old in zip(uids, sigs, self._sigs, strict=True)
                if new is not old and new != old
            ], []
        stored = dict(zip(self._uids, self._sigs, strict=True))
        changed = [
            (u, new) for u, new in zip(uids, sigs, strict=True) if stored.get(u) != new
        ]
        gone = list(stored.keys() - set(uids))
        return changed, gone

    def sync(self, uidvalidity: int, infos: Sequence[MessageInfo]) -> int:
        """Bring the index in line with the store's snapshot.

        @param uidvalidity: the folder's UIDVALIDITY.
        @param infos: every message of the folder (the snapshot), in UID
            order.
        @return: HIGHESTMODSEQ afterwards.
        """
        # A change to every message makes a tuple or two per message.
        with gc_paused():
            return self._sync(uidvalidity, list(map(_uid, infos)), signatures(infos))

    def sync_columns(self, uidvalidity: int, uids: list[int], sigs: list[str]) -> int:
        """L{sync} from columns: the snapshot's UIDs, ascending, and the
        L{flag_signature} of each message (no per-message object needed).

        @param uids: kept by the index (not to be changed afterwards).
        @return: HIGHESTMODSEQ afterwards.
        """
        with gc_paused():
            return self._sync(uidvalidity, uids, sigs)

    def _sync(self, uidvalidity: int, uids: list[int], sigs: list[str]) -> int:
        self._synced_version = None
        highest = self._sync_rows(uidvalidity, uids, sigs)
        self._synced_version = self._version
        return highest

    def _sync_rows(self, uidvalidity: int, uids: list[int], sigs: list[str]) -> int:
        digest = _digest(uidvalidity, uids, sigs)
        db = self._connect()
        if not self._loaded and self._unchanged(db, uidvalidity, digest):
            return self.highest
        self._load(db)
        changed, gone = self._differences(uidvalidity, uids, sigs)
        if not changed and not gone and uidvalidity == self.uidvalidity:
            if self._digest != (digest, self.highest):
                self._write_digest(db, digest)
            return self.highest
        db.execute("BEGIN IMMEDIATE")
        try:
            self._version = None
            self._load(db)
            changed, gone = self._differences(uidvalidity, uids, sigs)
            if changed or gone or uidvalidity != self.uidvalidity:
                modseq = self.highest + 1
                if uidvalidity != self.uidvalidity:
                    db.execute("DELETE FROM msgs")
                    gone = []
                    kept = {}
                else:
                    kept = dict(zip(self._uids, self._modseqs, strict=True))
                if gone:
                    db.executemany(
                        "DELETE FROM msgs WHERE uid = ?", [(u,) for u in gone]
                    )
                db.executemany(
                    "INSERT OR REPLACE INTO msgs (uid, modseq, sig) VALUES (?, ?, ?)",
                    [(uid, modseq, sig) for uid, sig in changed],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("highest", modseq),
                        ("uidvalidity", uidvalidity),
                        ("digest", digest),
                        ("digest_highest", modseq),
                    ],
                )
                for uid, _ in changed:
                    kept[uid] = modseq
                # The rows now hold exactly the snapshot's messages.
                self._modseqs = list(map(kept.__getitem__, uids))
                self._uids = uids
                self._sigs = sigs
                self.highest = modseq
                self.uidvalidity = uidvalidity
                self._digest = (digest, modseq)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._version = None
            raise
        self._version = db.execute("PRAGMA data_version").fetchone()[0]
        return self.highest

    def unchanged_since_sync(self) -> bool:
        """Whether no other connection wrote to the file since this index
        last synced (one query; blocking), so that a L{sync} of the
        snapshot it last synced would change nothing.  False when it cannot
        tell (not synced yet, the last sync failed, or closed)."""
        if self._db is None or self._synced_version is None:
            return False
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        return bool(version == self._synced_version)

    def modseq(self, uid: int) -> int:
        """A message's mod-sequence as of the last L{sync} (1 if unknown).

        Blocking the first time after a L{sync} that found the file
        unchanged (the rows are read then)."""
        self._rows()
        uids = self._uids
        i = bisect.bisect_left(uids, uid)
        if i < len(uids) and uids[i] == uid:
            return self._modseqs[i]
        return 1

    def changed_since(self, modseq: int, uids: Iterable[int]) -> list[int]:
        """Those of C{uids} whose mod-sequence is above C{modseq}."""
        self._rows()
        above = {
            u for u, m in zip(self._uids, self._modseqs, strict=True) if m > modseq
        }
        return [u for u in uids if u in above]

    def close(self) -> None:
        """Close the database connection."""
        db, self._db = self._db, None
        self._version = None
        self._synced_version = None
        self._loaded = False
        if db is not None:
            db.close()
