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
    msgs(uid INTEGER PRIMARY KEY, modseq INTEGER, sig TEXT)

``sig`` is the message's flag letters and keywords as last seen.  L{ModSeqIndex.sync}
compares the store's snapshot with the rows: a message that is new, or
whose flags differ from its ``sig`` (changed by this server or by any other
program on the Maildir), gets a new mod-sequence; all changes found by one
call share it (RFC 7162 §3.1: messages changed by one operation may).  An
expunge removes rows and raises HIGHESTMODSEQ too.  A new UIDVALIDITY drops
every row but keeps HIGHESTMODSEQ, which only grows.

Losing the file costs clients a full resync (every message gets a new,
higher mod-sequence), never a missed change.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence

from twistedmail.maildir import MessageInfo

__all__ = ["MODSEQ_NAME", "ModSeqIndex", "flag_signature"]

MODSEQ_NAME = "twistedmail-modseq.sqlite"
_VERSION = 1


def flag_signature(info: MessageInfo) -> str:
    """The flags and keywords of a message as one comparable string."""
    letters = "".join(sorted(info.flags))
    if not info.keywords:
        return letters
    return letters + " " + " ".join(sorted(info.keywords))


class ModSeqIndex:
    """The mod-sequence index of one folder (blocking; use from one thread at
    a time, off the reactor thread).

    @param folder: the folder's directory (L{twistedmail.maildir.Mailbox.path}).
    """

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, MODSEQ_NAME)
        self._db: sqlite3.Connection | None = None
        self._rows: dict[int, tuple[int, str]] = {}
        self._version: int | None = None
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
        if version == self._version:
            return
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.highest = int(meta.get("highest", 1))
        self.uidvalidity = int(meta.get("uidvalidity", 0))
        self._rows = {
            uid: (modseq, sig)
            for uid, modseq, sig in db.execute("SELECT uid, modseq, sig FROM msgs")
        }
        self._version = version

    def _differences(
        self, uidvalidity: int, infos: Sequence[MessageInfo]
    ) -> tuple[list[tuple[int, str]], list[int]]:
        if uidvalidity != self.uidvalidity:
            return [(i.uid, flag_signature(i)) for i in infos], list(self._rows)
        rows = self._rows
        changed = []
        fresh = 0
        for info in infos:
            row = rows.get(info.uid)
            sig = flag_signature(info)
            if row is None:
                fresh += 1
                changed.append((info.uid, sig))
            elif row[1] != sig:
                changed.append((info.uid, sig))
        gone: list[int] = []
        if len(rows) > len(infos) - fresh:
            present = {i.uid for i in infos}
            gone = [uid for uid in rows if uid not in present]
        return changed, gone

    def sync(self, uidvalidity: int, infos: Sequence[MessageInfo]) -> int:
        """Bring the index in line with the store's snapshot.

        @param uidvalidity: the folder's UIDVALIDITY.
        @param infos: every message of the folder (the snapshot).
        @return: HIGHESTMODSEQ afterwards.
        """
        db = self._connect()
        self._load(db)
        changed, gone = self._differences(uidvalidity, infos)
        if not changed and not gone and uidvalidity == self.uidvalidity:
            return self.highest
        db.execute("BEGIN IMMEDIATE")
        try:
            self._version = None
            self._load(db)
            changed, gone = self._differences(uidvalidity, infos)
            if changed or gone or uidvalidity != self.uidvalidity:
                modseq = self.highest + 1
                if uidvalidity != self.uidvalidity:
                    db.execute("DELETE FROM msgs")
                    self._rows = {}
                    gone = []
                if gone:
                    db.executemany(
                        "DELETE FROM msgs WHERE uid = ?", [(u,) for u in gone]
                    )
                    for uid in gone:
                        del self._rows[uid]
                db.executemany(
                    "INSERT OR REPLACE INTO msgs (uid, modseq, sig) VALUES (?, ?, ?)",
                    [(uid, modseq, sig) for uid, sig in changed],
                )
                for uid, sig in changed:
                    self._rows[uid] = (modseq, sig)
                db.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [("highest", modseq), ("uidvalidity", uidvalidity)],
                )
                self.highest = modseq
                self.uidvalidity = uidvalidity
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._version = None
            raise
        self._version = db.execute("PRAGMA data_version").fetchone()[0]
        return self.highest

    def modseq(self, uid: int) -> int:
        """A message's mod-sequence as of the last L{sync} (1 if unknown)."""
        row = self._rows.get(uid)
        return row[0] if row is not None else 1

    def changed_since(self, modseq: int, uids: Iterable[int]) -> list[int]:
        """Those of C{uids} whose mod-sequence is above C{modseq}."""
        rows = self._rows
        return [u for u in uids if u in rows and rows[u][0] > modseq]

    def close(self) -> None:
        """Close the database connection."""
        db, self._db = self._db, None
        self._version = None
        if db is not None:
            db.close()
