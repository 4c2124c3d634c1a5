"""Tests for the IMAP server's fast paths on big folders: batched flag
changes (L{twistedmail.maildir.Mailbox.set_flags_many}), the column-wise
mod-sequence index (L{twistedmail.imap._modseq}), a LOGIN that does not
read the INBOX, and header SEARCH through batched cache reads
(L{twistedmail.imap._message.BatchedHeaders}) and one field's values
(L{twistedmail.imap._message.field_values})."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.imap_server_helpers import make_message, make_world, run_now
from tests.maildir_helpers import make_store
from twistedmail.imap._mailbox_view import MailboxView, Snapshot
from twistedmail.imap._message import (
    CACHE_KEY,
    BatchedHeaders,
    Structure,
    _decode_header,
    _decode_structure,
    _encode_structure,
    cached_structure,
    field_pattern,
    field_values,
    header_block,
    header_fields,
)
from twistedmail.imap._modseq import (
    MODSEQ_NAME,
    ModSeqIndex,
    flag_signature,
    signature_of,
    signatures,
)
from twistedmail.maildir import Mailbox, MaildirStore
from twistedmail.maildir.cache import CACHE_NAME, MessageCache
from twistedmail.maildir.uidlist import UIDLIST_NAME


def filled_store(
    case: SynchronousTestCase, messages: list[bytes]
) -> tuple[MaildirStore, str]:
    """A store on a fake clock in 2026 and alice's INBOX path, with
    C{messages} delivered into it."""
    root = os.path.abspath(case.mktemp())
    clock = Clock()
    clock.advance(1_790_000_000)
    store = make_store(root, clock)
    path = os.path.join(root, "example.test", "alice")
    for i, message in enumerate(messages):
        case.successResultOf(store.deliver(path, message, f"Q{i}"))
    return store, path


class SetFlagsManyTests(SynchronousTestCase):
    """L{Mailbox.set_flags_many}."""

    def setUp(self) -> None:
        self.store, self.path = filled_store(self, [b"m%d" % i for i in range(4)])
        self.mailbox: Mailbox = self.store.open_mailbox(self.path)
        self.heard: list[None] = []
        self.store.subscribe(self.path, "INBOX", lambda: self.heard.append(None))

    def test_one_notification(self) -> None:
        """Many changes, one notification; the results come in the order
        given and the files carry the flags."""
        done = self.mailbox.set_flags_many(
            [(3, {"S"}, ()), (1, {"F", "S"}, {"$Work"}), (2, (), ())]
        )
        self.assertEqual([i.uid for i in done], [3, 1, 2])
        self.assertEqual(done[1].flags, frozenset("FS"))
        self.assertEqual(done[1].keywords, frozenset({"$Work"}))
        self.assertEqual(len(self.heard), 1)
        again = self.store.open_mailbox(self.path)
        self.assertEqual(again.get(3).flags, frozenset("S"))
        self.assertEqual(again.get(1).keywords, frozenset({"$Work"}))
        self.assertTrue(again.get(2).filename.startswith("cur/"))

    def test_gone_left_out(self) -> None:
        """A message whose file another program removed is left out; the
        others are changed."""
        os.unlink(os.path.join(self.path, self.mailbox.get(2).filename))
        done = self.mailbox.set_flags_many([(1, {"S"}, ()), (2, {"S"}, ())])
        self.assertEqual([i.uid for i in done], [1])
        self.assertEqual(len(self.heard), 1)

    def test_nothing_no_notification(self) -> None:
        """No change, no notification."""
        self.assertEqual(self.mailbox.set_flags_many([]), [])
        self.assertEqual(self.heard, [])


class ModSeqIndexTests(SynchronousTestCase):
    """The column-wise L{ModSeqIndex}."""

    def setUp(self) -> None:
        self.store, self.path = filled_store(self, [b"m%d" % i for i in range(5)])
        self.mailbox = self.store.open_mailbox(self.path)
        self.index = ModSeqIndex(self.mailbox.path)
        self.addCleanup(self.index.close)

    def sync(self, index: ModSeqIndex | None = None) -> int:
        self.mailbox.refresh()
        return (index or self.index).sync(
            self.mailbox.uidvalidity, self.mailbox.messages()
        )

    def test_signatures(self) -> None:
        """L{signatures} gives each message's L{flag_signature}."""
        self.mailbox.set_flags(2, {"S", "F"}, {"$b", "$a"})
        self.mailbox.set_flags(4, {"S"})
        infos = self.mailbox.messages()
        self.assertEqual(signatures(infos), [flag_signature(i) for i in infos])
        self.assertEqual(signatures(infos)[1], "FS $a $b")

    def test_sync_columns(self) -> None:
        """sync_columns, from UIDs and signatures, agrees with sync from
        the messages: an unchanged snapshot keeps HIGHESTMODSEQ either
        way, and a change found by one is not found again by the other."""
        self.mailbox.set_flags(2, {"S", "F"}, {"$b", "$a"})
        first = self.sync()
        infos = self.mailbox.messages()
        uids = [i.uid for i in infos]
        sigs = [signature_of(i.flags, i.keywords) for i in infos]
        self.assertEqual(sigs, signatures(infos))
        other = ModSeqIndex(self.mailbox.path)
        self.addCleanup(other.close)
        self.assertEqual(
            other.sync_columns(self.mailbox.uidvalidity, uids, sigs), first
        )
        self.mailbox.set_flags(3, {"S"})
        sigs[2] = "S"
        second = other.sync_columns(self.mailbox.uidvalidity, list(uids), sigs)
        self.assertEqual(second, first + 1)
        self.assertEqual(other.modseq(3), second)
        self.assertEqual(self.sync(), second)

    def test_unchanged_no_new_modseq(self) -> None:
        """Syncing an unchanged snapshot again keeps HIGHESTMODSEQ."""
        first = self.sync()
        self.assertEqual(self.sync(), first)
        self.assertEqual([self.index.modseq(u) for u in range(1, 6)], [first] * 5)

    def test_changes_and_reload(self) -> None:
        """A flag change gives that message a new mod-sequence; an expunge
        drops its row; a second index on the file (another session, or
        after a restart) reads the same values."""
        first = self.sync()
        self.mailbox.set_flags(3, {"S"})
        second = self.sync()
        self.assertEqual(second, first + 1)
        self.assertEqual(self.index.modseq(3), second)
        self.assertEqual(self.index.modseq(2), first)
        self.assertEqual(self.index.changed_since(first, [1, 2, 3, 4, 5]), [3])
        self.mailbox.expunge([4])
        third = self.sync()
        self.assertEqual(third, second + 1)
        self.assertEqual(self.index.modseq(4), 1)
        other = ModSeqIndex(self.mailbox.path)
        self.addCleanup(other.close)
        self.assertEqual(self.sync(other), third)
        self.assertEqual(
            [other.modseq(u) for u in (1, 2, 3, 5)], [first, first, second, first]
        )
        db = sqlite3.connect(os.path.join(self.mailbox.path, MODSEQ_NAME))
        self.addCleanup(db.close)
        self.assertEqual(
            db.execute("SELECT uid, modseq, sig FROM msgs ORDER BY uid").fetchall(),
            [(1, first, ""), (2, first, ""), (3, second, "S"), (5, first, "")],
        )

    def test_other_connection_change_seen(self) -> None:
        """A change synced by another index (another session) is seen
        without a new mod-sequence of its own."""
        self.sync()
        other = ModSeqIndex(self.mailbox.path)
        self.addCleanup(other.close)
        self.mailbox.set_flags(1, {"F"})
        changed = self.sync(other)
        self.assertEqual(self.sync(), changed)
        self.assertEqual(self.index.modseq(1), changed)

    def test_empty_folder(self) -> None:
        """An empty folder has no rows; a new UIDVALIDITY drops the rows but
        HIGHESTMODSEQ keeps growing."""
        first = self.sync()
        self.mailbox.expunge([1, 2, 3, 4, 5])
        second = self.sync()
        other = ModSeqIndex(self.mailbox.path)
        self.addCleanup(other.close)
        self.assertEqual(other.sync(self.mailbox.uidvalidity, []), second)
        self.assertEqual(other.sync(self.mailbox.uidvalidity + 1, []), second + 1)
        self.assertGreater(second, first)


class LoginTests(SynchronousTestCase):
    """LOGIN prepares the account without reading the INBOX."""

    def test_login_does_not_open_inbox(self) -> None:
        """After LOGIN the INBOX exists but its UID list was not read or
        made; SELECT makes it."""
        world = make_world(self.mktemp())
        client = world.logged_in()
        inbox = world.maildir()
        self.assertTrue(os.path.isdir(os.path.join(inbox, "cur")))
        self.assertFalse(os.path.exists(os.path.join(inbox, UIDLIST_NAME)))
        world.deliver(make_message(1))
        lines = client.ok("SELECT INBOX")
        self.assertIn(b"* 1 EXISTS", lines)


class StoreManyTests(SynchronousTestCase):
    """STORE on many messages: one batch of renames, every response."""

    def test_store_all(self) -> None:
        """STORE 1:* answers for every message in order, including those
        already flagged; another session hears of every change."""
        world = make_world(self.mktemp())
        for n in range(1, 7):
            world.deliver(make_message(n))
        client = world.logged_in()
        other = world.logged_in()
        client.ok("SELECT INBOX")
        other.ok("SELECT INBOX")
        client.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
        lines = client.ok("STORE 1:* +FLAGS (\\Flagged)")
        self.assertEqual(
            lines,
            [b"* %d FETCH (FLAGS (\\Flagged \\Recent))" % n for n in range(1, 7)],
        )
        lines = other.ok("NOOP")
        self.assertEqual(
            lines, [b"* %d FETCH (FLAGS (\\Flagged))" % n for n in range(1, 7)]
        )


#: Header lines: fields of a few names in any case, folds, spaces before
#: the colon, bare LF, a continuation line first, and lines that are not
#: fields (which end the header).
HEADER_PIECES = [
    b"Subject: a\r\n",
    b"SUBJECT : b =?utf-8?q?c?=\r\n",
    b"subject:\r\n",
    b"Subject:x\n",
    b"Subject-X: no\r\n",
    b"X-Subject: no\r\n",
    b"From: d\r\n",
    b" folded\r\n",
    b"\tfolded more\r\n",
    b"no colon here\r\n",
    b"Subject:: e\r\n",
    b"Subject: f\r\r\n",
    b"\r\n",
]


class FieldValuesTests(SynchronousTestCase):
    """L{field_values} finds what L{header_fields} finds."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from(HEADER_PIECES), max_size=10).map(b"".join),
        st.sampled_from(["subject", "from", "x-subject", "SUBJECT"]),
    )
    def test_same_values(self, text: bytes, name: str) -> None:
        """For any header, the values of one field are those of
        L{header_fields} with that name, in order."""
        header = header_block(text + b"\r\nbody\r\n")
        pattern = field_pattern(name)
        assert pattern is not None
        expected = [v for n, v in header_fields(header) if n == name.lower().encode()]
        self.assertEqual(field_values(header, pattern), expected)

    def test_impossible_names(self) -> None:
        """Names no field can have give no pattern."""
        self.assertIsNone(field_pattern("a b"))
        self.assertIsNone(field_pattern("a:b"))
        self.assertIsNone(field_pattern("sübject"))
        self.assertIsNone(field_pattern(""))


class BatchedHeadersTests(SynchronousTestCase):
    """L{BatchedHeaders} reads the structure cache a batch at a time."""

    def setUp(self) -> None:
        self.store, self.path = filled_store(
            self, [b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(5)]
        )
        self.mailbox = self.store.open_mailbox(self.path)
        self.infos = self.mailbox.messages()
        self.reads: list[int] = []

    def read(self, uid: int) -> bytes:
        self.reads.append(uid)
        return self.mailbox.read(uid)

    def headers(self) -> BatchedHeaders:
        return BatchedHeaders(
            self.mailbox,
            [i.uid for i in self.infos],
            [i.base for i in self.infos],
            self.read,
        )

    def test_cached_and_not(self) -> None:
        """Messages cached already are not read; the others are read once,
        parsed and cached, so a later search reads none."""
        cached_structure(self.mailbox, self.infos[1].base, lambda: self.mailbox.read(2))
        headers = self.headers()
        self.assertEqual(
            [headers(u) for u in (1, 2, 3, 4, 5)],
            [b"Subject: m%d\r\n\r\n" % i for i in range(5)],
        )
        self.assertEqual(self.reads, [1, 3, 4, 5])
        again = self.headers()
        self.assertEqual(again(4), b"Subject: m3\r\n\r\n")
        self.assertEqual(self.reads, [1, 3, 4, 5])
        bases = [i.base for i in self.infos]
        self.assertEqual(
            sorted(self.mailbox.cache_get_many(bases, CACHE_KEY)), sorted(bases)
        )

    def test_small_batches(self) -> None:
        """Batches smaller than the folder, and UIDs asked out of order or
        twice, give the same headers."""
        for i in self.infos:
            cached_structure(self.mailbox, i.base, lambda: b"")
        headers = self.headers()
        headers.BATCH = 2
        self.reads.clear()
        got = [headers(u) for u in (5, 1, 2, 3, 3, 4)]
        self.assertEqual(got, [b""] * 6)
        self.assertEqual(self.reads, [])

    def test_unknown_uid(self) -> None:
        """A UID that is not among the messages raises KeyError."""
        self.assertRaises(KeyError, self.headers(), 9)

    def test_no_cache_file(self) -> None:
        """Without a cache file, get_many finds nothing."""
        self.assertEqual(self.mailbox.cache_get_many(["x"], CACHE_KEY), {})


class UnseenTests(SynchronousTestCase):
    """SELECT's UNSEEN, found when the folder is opened."""

    def test_first_unseen(self) -> None:
        """UNSEEN names the first message without \\Seen; with every message
        seen there is no UNSEEN line."""
        world = make_world(self.mktemp())
        for n in range(1, 5):
            world.deliver(make_message(n))
        client = world.logged_in()
        client.ok("SELECT INBOX")
        client.ok("STORE 1,2,4 +FLAGS.SILENT (\\Seen)")
        lines = world.logged_in().ok("SELECT INBOX")
        self.assertIn(b"* OK [UNSEEN 3] First unseen", lines)
        client.ok("STORE 3 +FLAGS.SILENT (\\Seen)")
        lines = world.logged_in().ok("SELECT INBOX")
        self.assertEqual([line for line in lines if b"UNSEEN" in line], [])


class CacheFormatTests(SynchronousTestCase):
    """The structure cache's format 2 (a rowid table with a unique index),
    and the copy of a format 1 file's entries."""

    def test_version_1_copied(self) -> None:
        """A format 1 file's entries are kept when it is first opened; the
        file is then format 2."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        old = sqlite3.connect(os.path.join(folder, CACHE_NAME))
        old.execute(
            "CREATE TABLE cache (base TEXT NOT NULL, key TEXT NOT NULL,"
            " value BLOB NOT NULL, PRIMARY KEY (base, key)) WITHOUT ROWID"
        )
        old.executemany(
            "INSERT INTO cache VALUES (?, ?, ?)",
            [("b1", "k", b"one"), ("b2", "k", b"two"), ("b1", "j", b"other")],
        )
        old.execute("PRAGMA user_version = 1")
        old.commit()
        old.close()
        cache = MessageCache(folder)
        self.addCleanup(cache.close)
        self.assertEqual(cache.get("b1", "k"), b"one")
        self.assertEqual(
            cache.get_many(["b1", "b2", "b3"], "k"), {"b1": b"one", "b2": b"two"}
        )
        cache.put("b1", "k", b"new")
        self.assertEqual(cache.get("b1", "k"), b"new")
        cache.forget(["b2"])
        self.assertEqual(cache.get_many(["b1", "b2"], "k"), {"b1": b"new"})
        db = sqlite3.connect(os.path.join(folder, CACHE_NAME))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], 3)
        tables = [
            r[0]
            for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        self.assertEqual(sorted(tables), ["cache", "fields"])

    def test_unknown_version_starts_empty(self) -> None:
        """A file of another version starts empty (a cache loses nothing
        that cannot be recomputed)."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        old = sqlite3.connect(os.path.join(folder, CACHE_NAME))
        old.execute("CREATE TABLE cache (x)")
        old.execute("PRAGMA user_version = 7")
        old.commit()
        old.close()
        cache = MessageCache(folder)
        self.addCleanup(cache.close)
        self.assertIsNone(cache.get("b1", "k"))
        cache.put("b1", "k", b"v")
        self.assertEqual(cache.get("b1", "k"), b"v")


class ModSeqDigestTests(SynchronousTestCase):
    """The digest that lets a sync of an unchanged folder skip the rows."""

    def setUp(self) -> None:
        self.store, self.path = filled_store(self, [b"m%d" % i for i in range(4)])
        self.mailbox = self.store.open_mailbox(self.path)
        self.db = sqlite3.connect(os.path.join(self.mailbox.path, MODSEQ_NAME))
        self.addCleanup(self.db.close)

    def index(self) -> ModSeqIndex:
        index = ModSeqIndex(self.mailbox.path)
        self.addCleanup(index.close)
        return index

    def sync(self, index: ModSeqIndex) -> int:
        self.mailbox.refresh()
        return index.sync(self.mailbox.uidvalidity, self.mailbox.messages())

    def meta(self) -> dict[str, int]:
        self.db.commit()
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def test_unchanged_then_rows_on_demand(self) -> None:
        """A new index on an unchanged folder gives HIGHESTMODSEQ from the
        digest, and the right mod-sequences when asked."""
        first = self.index()
        self.sync(first)
        self.mailbox.set_flags(2, {"S"})
        highest = self.sync(first)
        second = self.index()
        self.assertEqual(self.sync(second), highest)
        self.assertEqual([second.modseq(u) for u in (1, 2)], [highest - 1, highest])
        self.assertEqual(second.changed_since(highest - 1, [1, 2, 3, 4]), [2])

    def test_change_after_digest(self) -> None:
        """A change after a digest-only sync is found (the rows are read
        then) and gets a new mod-sequence."""
        highest = self.sync(self.index())
        second = self.index()
        self.assertEqual(self.sync(second), highest)
        self.mailbox.set_flags(3, {"F"})
        self.assertEqual(self.sync(second), highest + 1)
        self.assertEqual(second.modseq(3), highest + 1)
        self.assertEqual(second.modseq(1), highest)

    def test_file_without_digest_gets_one(self) -> None:
        """A file written without digests (older versions) gets one at the
        next sync that finds nothing changed."""
        highest = self.sync(self.index())
        self.db.execute("DELETE FROM meta WHERE key LIKE 'digest%'")
        self.db.commit()
        self.assertEqual(self.sync(self.index()), highest)
        self.assertEqual(self.meta()["digest_highest"], highest)

    def test_writer_without_digest(self) -> None:
        """A writer that changes rows and HIGHESTMODSEQ but not the digest
        (an older version) is not trusted: the rows are compared."""
        highest = self.sync(self.index())
        self.db.execute(
            "UPDATE msgs SET sig = 'X', modseq = ? WHERE uid = 1", (highest + 1,)
        )
        self.db.execute(
            "UPDATE meta SET value = ? WHERE key = 'highest'", (highest + 1,)
        )
        self.db.commit()
        index = self.index()
        # The snapshot differs from the rows (uid 1 has no flags): a change.
        self.assertEqual(self.sync(index), highest + 2)
        self.assertEqual(index.modseq(1), highest + 2)


class DecodeHeaderTests(SynchronousTestCase):
    """The header-only decoding of a cached structure agrees with the full
    one."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.tuples(
            st.binary(max_size=8),
            st.binary(max_size=8),
            st.binary(max_size=8),
            st.binary(max_size=8),
        ),
        st.binary(max_size=6),
        st.integers(0, 40),
    )
    def test_same_as_full(
        self, parts: tuple[bytes, bytes, bytes, bytes], junk: bytes, cut: int
    ) -> None:
        """For encodings, damaged ones (cut short, junk added) and random
        octets, the header is the full decoding's header, or both fail."""
        value = _encode_structure(Structure(*parts))
        for candidate in (value, value[:cut], value + junk, junk, junk + value):
            full = _decode_structure(candidate)
            self.assertEqual(
                _decode_header(candidate), None if full is None else full.header
            )


class InfosInThreadTests(SynchronousTestCase):
    """After SELECT, the first command that needs the session's messages
    has them made by the thread runner, not on the reactor thread."""

    def _selected(self) -> tuple[Any, list[str]]:
        made: list[str] = []
        holder: list[Any] = []

        def runner(f: Callable[[], Any]) -> Deferred[Any]:
            view = holder[0].proto._view if holder else None
            before = view is not None and view.infos_made
            d = run_now(f)
            if view is not None and not before and view.infos_made:
                made.append("thread")
            return d

        world = make_world(self.mktemp(), run_in_thread=runner)
        for n in range(3):
            world.deliver(make_message(n))
        client = world.logged_in()
        holder.append(client)
        # The first SELECT moves the new messages to cur/, so the folder
        # changed after its snapshot and it looks again before its OK; the
        # second finds nothing to look at.
        client.ok("SELECT INBOX")
        client.ok("SELECT INBOX")
        made.clear()
        self.assertFalse(client.proto._view.infos_made)
        return client, made

    def test_search(self) -> None:
        """SEARCH ALL."""
        client, made = self._selected()
        self.assertIn(b"* SEARCH 1 2 3", client.ok("SEARCH ALL"))
        self.assertEqual(made, ["thread"])

    def test_expunge(self) -> None:
        """EXPUNGE with nothing deleted."""
        client, made = self._selected()
        client.ok("EXPUNGE")
        self.assertEqual(made, ["thread"])

    def test_close(self) -> None:
        """CLOSE (the view is gone afterwards)."""
        client, made = self._selected()
        client.ok("CLOSE")
        self.assertEqual(made, ["thread"])


#: A directory time with a part below the millisecond (a file system with
#: fine time stamps), a hundred seconds after the test clocks' start.
WINDOW_TIME = 1_790_000_100_123_456_789


def into_window(folder: str, clock: Clock) -> None:
    """Make a folder look changed 50 ms ago: too recent for the store to
    trust its listing (another change in the same timestamp tick would not
    change the directory's time)."""
    for sub in ("new", "cur"):
        os.utime(os.path.join(folder, sub), ns=(WINDOW_TIME, WINDOW_TIME))
    clock.advance(WINDOW_TIME / 1e9 + 0.05 - clock.seconds())


def flag_in_same_tick(folder: str) -> str:
    """Another program sets \\Seen on the first message in cur/ by name,
    and the directory keeps its time (as within one timestamp tick).
    Returns the message's base name."""
    cur = os.path.join(folder, "cur")
    name = sorted(os.listdir(cur))[0]
    base, _, info = name.partition(":")
    os.rename(os.path.join(cur, name), os.path.join(cur, f"{base}:2,S"))
    os.utime(cur, ns=(WINDOW_TIME, WINDOW_TIME))
    return base


class QuickPollTests(SynchronousTestCase):
    """L{MailboxView.poll} when the store's snapshot is still the one the
    view took: an unchanged snapshot, with no per-message object made and
    no sync of the mod-sequence index; any change goes the full way."""

    def setUp(self) -> None:
        root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1_790_000_000)
        self.store = make_store(root, self.clock)
        self.path = os.path.join(root, "example.test", "alice")
        for n in range(1, 4):
            self.successResultOf(
                self.store.deliver(self.path, make_message(n), f"Q{n}")
            )
        mailbox = self.store.open_mailbox(self.path)
        mailbox.take_recent()
        mailbox.close()
        into_window(self.path, self.clock)
        self.view = MailboxView(self.store.open_mailbox(self.path), False)
        self.addCleanup(self.view.close)
        self.view.open()

    def apply(self, snap: Snapshot, allow_expunge: bool = True) -> list[bytes]:
        return self.view.apply(
            snap, allow_expunge=allow_expunge, condstore=False, qresync=False
        )

    def test_unchanged(self) -> None:
        """Within the window the store cannot tell that nothing changed,
        so the session polls; finding nothing, the poll makes nothing."""
        self.assertTrue(self.view.mailbox.changed_on_disk())
        highest = self.view.highest_modseq
        snap = self.view.poll()
        self.assertTrue(snap.unchanged)
        self.assertFalse(self.view.infos_made)
        self.assertEqual(self.apply(snap), [])
        self.assertEqual(self.view.highest_modseq, highest)
        self.assertEqual(self.view.uids, [1, 2, 3])

    def test_same_tick_change_seen(self) -> None:
        """A flag change by another program that keeps the directory's time
        is found and told."""
        base = flag_in_same_tick(self.path)
        highest = self.view.highest_modseq
        snap = self.view.poll()
        self.assertFalse(snap.unchanged)
        [uid] = [i.uid for i in snap.infos if i.base == base]
        self.assertEqual(self.apply(snap), [b"* %d FETCH (FLAGS (\\Seen))\r\n" % uid])
        self.assertEqual(self.view.highest_modseq, highest + 1)
        self.assertTrue(self.view.poll().unchanged)

    def test_held_expunge(self) -> None:
        """An expunge held back (during FETCH, STORE or SEARCH) is told by a
        later poll that finds nothing else, as the full way would."""
        other = self.store.open_mailbox(self.path)
        self.addCleanup(other.close)
        other.expunge([2])
        snap = self.view.poll()
        self.assertFalse(snap.unchanged)
        self.assertEqual(self.apply(snap, allow_expunge=False), [])
        snap = self.view.poll()
        self.assertTrue(snap.unchanged)
        self.assertEqual(self.apply(snap, allow_expunge=False), [])
        self.assertEqual(self.apply(self.view.poll()), [b"* 2 EXPUNGE\r\n"])
        self.assertEqual(self.view.uids, [1, 3])

    def test_same_as_full_way(self) -> None:
        """An unchanged snapshot leaves a view as the full way leaves
        another view of the same folder: the same responses (a held
        expunge), UIDs, flags and HIGHESTMODSEQ."""
        full = MailboxView(self.store.open_mailbox(self.path), False)
        self.addCleanup(full.close)
        full.open()
        self.view.mailbox.set_flags(3, {"F"})
        other = self.store.open_mailbox(self.path)
        self.addCleanup(other.close)
        other.expunge([2])
        for view in (self.view, full):
            snap = view.poll()
            self.assertFalse(snap.unchanged)
            view.apply(snap, allow_expunge=False, condstore=False, qresync=False)
        quick = self.view.poll()
        self.assertTrue(quick.unchanged)
        # A write by another connection sends the other view the full way.
        db = sqlite3.connect(os.path.join(self.path, MODSEQ_NAME))
        self.addCleanup(db.close)
        db.execute("DELETE FROM meta WHERE key = 'digest'")
        db.commit()
        slow = full.poll()
        self.assertFalse(slow.unchanged)
        self.assertEqual(
            self.apply(quick),
            full.apply(slow, allow_expunge=True, condstore=False, qresync=False),
        )
        self.assertEqual(self.view.uids, full.uids)
        self.assertEqual(self.view.highest_modseq, full.highest_modseq)
        self.assertEqual(
            [self.view.flags_of(u) for u in self.view.uids],
            [full.flags_of(u) for u in full.uids],
        )
        self.assertEqual(full.uids, [1, 3])
        self.assertEqual(full.flags_of(3), ["\\Flagged"])

    def test_own_change_goes_full_way(self) -> None:
        """After a change made through the session's own mailbox the next
        poll goes the full way (the store snapshot moved on)."""
        self.view.mailbox.set_flags(1, {"F"})
        self.assertFalse(self.view.poll().unchanged)

    def test_index_written_elsewhere(self) -> None:
        """When another connection wrote to the mod-sequence index, the
        poll syncs it (HIGHESTMODSEQ comes from the file)."""
        mailbox = self.store.open_mailbox(self.path)
        self.addCleanup(mailbox.close)
        other = ModSeqIndex(self.path)
        self.addCleanup(other.close)
        flagged = [i._replace(flags=frozenset("F")) for i in mailbox.messages()]
        written = other.sync(mailbox.uidvalidity, flagged)
        snap = self.view.poll()
        self.assertFalse(snap.unchanged)
        self.apply(snap)
        self.assertEqual(self.view.highest_modseq, written + 1)

    def test_unchanged_since_sync(self) -> None:
        """L{ModSeqIndex.unchanged_since_sync}: False before a sync and
        after another connection wrote, True after this index synced."""
        index = ModSeqIndex(self.path)
        self.assertFalse(index.unchanged_since_sync())
        infos = self.view.mailbox.messages()
        index.sync(self.view.mailbox.uidvalidity, infos)
        self.assertTrue(index.unchanged_since_sync())
        other = ModSeqIndex(self.path)
        self.addCleanup(other.close)
        flagged = [i._replace(flags=frozenset("F")) for i in infos]
        other.sync(self.view.mailbox.uidvalidity, flagged)
        self.assertFalse(index.unchanged_since_sync())
        index.sync(self.view.mailbox.uidvalidity, infos)
        self.assertTrue(index.unchanged_since_sync())
        index.close()
        self.assertFalse(index.unchanged_since_sync())
        # Rows read after a write elsewhere do not count as a sync.
        fresh = ModSeqIndex(self.path)
        self.addCleanup(fresh.close)
        fresh.sync(self.view.mailbox.uidvalidity, infos)
        self.assertTrue(fresh.unchanged_since_sync())
        other.sync(self.view.mailbox.uidvalidity, flagged)
        fresh.modseq(1)
        self.assertFalse(fresh.unchanged_since_sync())


class SelectInWindowTests(SynchronousTestCase):
    """SELECT of a folder changed within the last moments (too recent for
    the store to trust its listing) answers as any other SELECT, and a
    change made meanwhile within the same timestamp tick is told before
    SELECT's OK."""

    def setUp(self) -> None:
        self.armed: list[bool] = []

        def runner(f: Callable[[], Any]) -> Deferred[Any]:
            d = run_now(f)
            if self.armed:
                # Right after SELECT opened the folder.
                self.armed.clear()
                self.changed.append(flag_in_same_tick(self.world.maildir()))
            return d

        self.changed: list[str] = []
        self.world = make_world(self.mktemp(), run_in_thread=runner)
        for n in range(1, 4):
            self.world.deliver(make_message(n))
        self.client = self.world.logged_in()
        # The first SELECT claims the messages as recent (moving them).
        self.client.ok("SELECT INBOX")
        self.client.ok("UNSELECT")
        self.expected = self.client.ok("SELECT INBOX")
        self.client.ok("UNSELECT")

    def test_same_answer(self) -> None:
        """The same lines as outside the window; the session's messages are
        not made."""
        into_window(self.world.maildir(), self.world.clock)
        self.assertEqual(self.client.ok("SELECT INBOX"), self.expected)
        view = self.client.proto._view
        # The session looked again before the OK, and stopped early.
        self.assertTrue(view.mailbox.changed_on_disk())
        self.assertFalse(view.infos_made)

    def test_same_tick_change_told(self) -> None:
        """A flag change by another program while SELECT opens the folder,
        with the directory's time unchanged, is told before the OK."""
        into_window(self.world.maildir(), self.world.clock)
        self.armed.append(True)
        lines = self.client.ok("SELECT INBOX")
        self.assertEqual(len(self.changed), 1)
        self.assertEqual(lines[: len(self.expected)], self.expected)
        self.assertEqual(len(lines), len(self.expected) + 1)
        self.assertRegex(lines[-1], rb"^\* [1-3] FETCH \(FLAGS \(\\Seen\)\)$")
