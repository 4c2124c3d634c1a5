"""Tests for L{twistedmail.maildir.uidlist} and L{twistedmail.maildir.lock}:
the UID list format, locking between processes, and big folders."""

from __future__ import annotations

import os
import shutil

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.maildir_helpers import CountingOpener, make_store
from twistedmail.maildir.lock import FolderLock
from twistedmail.maildir.uidlist import (
    UNKNOWN_DATE,
    UIDEntry,
    UIDList,
    UIDListError,
    format_uidlist,
    parse_uidlist,
    read_dovecot_uidlist,
    read_uidlist,
    read_uidlist_token,
    save_uidlist,
    write_uidlist,
)

BASES = st.text(
    alphabet=st.sampled_from("abc0123456789.,=_- :"), min_size=1, max_size=20
)
DATES = st.integers(1, 2**40)


class FormatTests(SynchronousTestCase):
    """The version-1 on-disk format."""

    @given(
        st.integers(1, 2**32 - 1),
        st.lists(
            st.tuples(BASES, st.one_of(st.just(UNKNOWN_DATE), DATES)),
            unique_by=lambda row: row[0],
            max_size=20,
        ),
    )
    def test_round_trip(self, validity: int, rows: list[tuple[str, int]]) -> None:
        """parse(format(x)) == x, with known and unknown (0) dates."""
        ul = UIDList(validity)
        for i, (b, date) in enumerate(rows):
            ul.assign(b, date, i)
        self.assertEqual(parse_uidlist(format_uidlist(ul)), ul)

    def test_unknown_date_line(self) -> None:
        """An unknown internal date is written as 0, a date older parsers
        read (so they keep the list and its UIDVALIDITY)."""
        ul = UIDList(7, 1)
        ul.assign("a b", UNKNOWN_DATE, 3)
        ul.assign("c", 1_700_000_000, 4)
        data = format_uidlist(ul)
        self.assertEqual(
            data, b"twistedmail-uidlist 1 V7 N3\n1 0 3 a b\n2 1700000000 4 c\n"
        )
        self.assertEqual(UNKNOWN_DATE, 0)
        unknown = UIDList(7, 1)
        unknown.assign("a", UNKNOWN_DATE, 3)
        unknown.assign("b c", UNKNOWN_DATE, 4)
        self.assertEqual(
            format_uidlist(unknown),
            b"twistedmail-uidlist 1 V7 N3\n1 0 3 a\n2 0 4 b c\n",
        )
        back = parse_uidlist(data)
        self.assertEqual(back.dates, [UNKNOWN_DATE, 1_700_000_000])
        self.assertEqual(back.uidvalidity, 7)

    @given(
        st.lists(
            st.tuples(BASES, st.one_of(st.just(UNKNOWN_DATE), DATES)),
            unique_by=lambda row: row[0],
            min_size=1,
            max_size=12,
        ),
        st.integers(0, 12),
    )
    def test_appended_unknown_dates(
        self, rows: list[tuple[str, int]], cut: int
    ) -> None:
        """Rows with unknown dates appended to a written list read back the
        same, whole or as the appended part only."""
        folder = self.mktemp()
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        ul = UIDList(9)
        for i, (b, date) in enumerate(rows[:cut]):
            ul.assign(b, date, i)
        write_uidlist(folder, ul)
        known = read_uidlist(folder)
        assert known is not None
        grown = known.copy()
        for i, (b, date) in enumerate(rows[cut:]):
            grown.assign(b, date, i)
        save_uidlist(folder, grown)
        self.assertEqual(read_uidlist(folder, known), grown)
        self.assertEqual(read_uidlist(folder), grown)

    def test_layout(self) -> None:
        """The documented layout: header with version, then one line each."""
        ul = UIDList(77, 5, [UIDEntry(3, 100, 9, "a b")])
        self.assertEqual(
            format_uidlist(ul), b"twistedmail-uidlist 1 V77 N5\n3 100 9 a b\n"
        )
        ul.limit = 50
        ul.token = "ab"
        self.assertEqual(
            format_uidlist(ul),
            b"twistedmail-uidlist 1 V77 N50 Gab U5\n3 100 9 a b\n",
        )

    def test_token(self) -> None:
        """Each write gives the list a new token in its header, read back
        by parse and by read_uidlist_token (the header line only)."""
        folder = self.mktemp()
        os.mkdir(folder)
        self.assertIsNone(read_uidlist_token(folder))
        ul = UIDList(7)
        ul.assign("b", 5, 6)
        write_uidlist(folder, ul)
        first = ul.token
        self.assertEqual(len(first), 16)
        self.assertEqual(read_uidlist_token(folder), first)
        self.assertEqual(read_uidlist(folder), ul)
        write_uidlist(folder, ul)
        self.assertNotEqual(ul.token, first)
        self.assertEqual(read_uidlist_token(folder), ul.token)
        copy = ul.copy()
        copy.assign("c", 5, 6)
        self.assertEqual(ul.bases, ["b"])

    def test_future_header_fields_ignored(self) -> None:
        """Unknown header fields (a later minor addition) are ignored."""
        ul = parse_uidlist(b"twistedmail-uidlist 1 V7 N2 Xfoo\n1 5 6 b\n")
        self.assertEqual((ul.uidvalidity, ul.next_uid, ul.bases), (7, 2, ["b"]))

    def test_errors(self) -> None:
        """Malformed lists are refused, never half-read."""
        for data in (
            b"",
            b"twistedmail-uidlist 1 V7 N2",
            b"twistedmail-uidlist 2 V7 N2\n",
            b"other 1 V7 N2\n",
            b"twistedmail-uidlist 1 V7\n",
            b"twistedmail-uidlist 1 V7 N2\n1 5 b\n",
            b"twistedmail-uidlist 1 V7 N2\nx 5 6 b\n",
            b"twistedmail-uidlist 1 V7 N5\n2 5 6 b\n1 5 6 c\n",
            b"twistedmail-uidlist 1 V7 N2\n2 5 6 b\n",
            b"twistedmail-uidlist 1 V7 N2\n1 5 6 \xff\n",
        ):
            self.assertRaises(UIDListError, parse_uidlist, data)

    def test_split_and_regex_agree(self) -> None:
        """Lists whose base names have no space are split at spaces, others
        go through the line expression: both read the same columns, and a
        list mixing both kinds of names is read line by line."""
        spaceless = b"twistedmail-uidlist 1 V7 N9\n1 5 6 b\n3 7 8 c,S=8:x\n"
        ul = parse_uidlist(spaceless)
        self.assertEqual(
            (ul.uids, ul.dates, ul.sizes, ul.bases),
            ([1, 3], [5, 7], [6, 8], ["b", "c,S=8:x"]),
        )
        mixed = parse_uidlist(b"twistedmail-uidlist 1 V7 N9\n1 5 6 b b\n3 7 8 c\n")
        self.assertEqual(mixed.bases, ["b b", "c"])
        self.assertEqual(
            (mixed.uids, mixed.dates, mixed.sizes), ([1, 3], [5, 7], [6, 8])
        )

    def test_split_errors(self) -> None:
        """A list with as many spaces as well-formed lines would have, but
        a line short of a field and another with a space in its name, is
        refused (not read with its fields shifted); so are number fields
        that int() takes but the format does not (signs, underscores,
        other digits)."""
        for data in (
            b"twistedmail-uidlist 1 V7 N9\n1 2 3 x 5\n6 7 8\n",
            b"twistedmail-uidlist 1 V7 N9\n+1 5 6 b\n",
            b"twistedmail-uidlist 1 V7 N9\n1 5_0 6 b\n",
            "twistedmail-uidlist 1 V7 N9\n1 \u0665 6 b\n".encode(),
            b"twistedmail-uidlist 1 V7 N9\n1  6 b\n",
        ):
            self.assertRaises(UIDListError, parse_uidlist, data)

    def test_dovecot_v1(self) -> None:
        """Dovecot's old version-1 list is understood too."""
        folder = self.mktemp()
        os.mkdir(folder)
        with open(os.path.join(folder, "dovecot-uidlist"), "wb") as f:
            f.write(b"1 555 9\n3 123.abc:2,S\n")
        self.assertEqual(read_dovecot_uidlist(folder), (555, 9, {"123.abc": 3}))

    def test_dovecot_unknown(self) -> None:
        """An unknown Dovecot list version is not imported."""
        folder = self.mktemp()
        os.mkdir(folder)
        with open(os.path.join(folder, "dovecot-uidlist"), "wb") as f:
            f.write(b"9 whatever\n")
        self.assertIsNone(read_dovecot_uidlist(folder))
        self.assertIsNone(read_dovecot_uidlist(self.mktemp()))


def _child(body: object) -> int:
    """Fork; run C{body()} in the child and exit with its status (1 on an
    exception).  Returns the child's pid in the parent."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = body()  # type: ignore[operator]
        finally:
            os._exit(status)
    return pid


class LockTests(SynchronousTestCase):
    """FolderLock between processes and threads."""

    def test_other_process_excluded(self) -> None:
        """While another process holds the lock, it cannot be taken; after
        that process exits (without releasing), it can."""
        path = self.mktemp()
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()

        def hold() -> int:
            lock = FolderLock(path)
            lock.acquire()
            os.write(ready_w, b"x")
            os.read(go_r, 1)
            return 0  # exits holding the lock: the kernel drops it

        pid = _child(hold)
        self.assertEqual(os.read(ready_r, 1), b"x")
        lock = FolderLock(path)
        self.assertFalse(lock.acquire(blocking=False))
        os.write(go_w, b"x")
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertTrue(lock.acquire(blocking=False))
        self.assertTrue(lock.locked)
        lock.release()
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)

    def test_same_process_excluded(self) -> None:
        """Two lock objects in one process exclude each other too."""
        path = self.mktemp()
        with FolderLock(path):
            self.assertFalse(FolderLock(path).acquire(blocking=False))
        other = FolderLock(path)
        self.assertTrue(other.acquire(blocking=False))
        self.assertRaises(RuntimeError, other.acquire)
        other.release()

    def test_two_processes_appending(self) -> None:
        """Two processes adding to one folder at once: every message gets
        its own UID and the list holds them all."""
        root = os.path.abspath(self.mktemp())
        path = os.path.join(root, "m")
        make_store(root).open_mailbox(path)
        count = 40

        def add_many() -> int:
            box = make_store(root).open_mailbox(path)
            return 0 if len({box.add(b"child") for _ in range(count)}) == count else 3

        pid = _child(add_many)
        box = make_store(root).open_mailbox(path)
        mine = [box.add(b"parent") for _ in range(count)]
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        box.refresh(force=True)
        uids = [i.uid for i in box.messages()]
        self.assertEqual(uids, list(range(1, 2 * count + 1)))
        self.assertTrue(set(mine) <= set(uids))
        self.assertEqual(box.next_uid, 2 * count + 1)
        parent = {i.uid for i in box.messages() if box.read(i.uid) == b"parent"}
        self.assertEqual(parent, set(mine))

    def test_listed_by_another_before_assigned(self) -> None:
        """A message whose file another process listed (and numbered)
        before its adder took the lock keeps that one UID: the race that
        gave one message two UIDs when two processes added at once."""
        root = os.path.abspath(self.mktemp())
        path = os.path.join(root, "m")
        adder = make_store(root).open_mailbox(path)
        other = make_store(root).open_mailbox(path)
        base = adder.store.new_base(5)
        with open(os.path.join(path, "cur", base + ":2,S"), "wb") as f:
            f.write(b"hello")
        other.refresh(force=True)
        [listed] = [i.uid for i in other.messages()]
        self.assertEqual(adder._assign([(base, 0, 5)]), [listed])
        adder.refresh(force=True)
        self.assertEqual([i.uid for i in adder.messages()], [listed])
        self.assertEqual(adder.next_uid, listed + 1)


class BigFolderTests(SynchronousTestCase):
    """A folder of 100,000 messages opens without reading any of them."""

    def test_open_100k(self) -> None:
        """Open (first time: UIDs assigned), then again after a restart:
        no message file is opened, yet sizes, flags and dates are right."""
        root = os.path.abspath(self.mktemp())
        path = os.path.join(root, "big")
        opener = CountingOpener()
        make_store(root, opener=opener).open_mailbox(path)
        self.addCleanup(shutil.rmtree, root, True)
        cur = os.path.join(path, "cur")
        n = 100_000
        # Hard links to a few files (ext4 allows 65,000 links to one):
        # 100,000 names made fast, with no data written.
        original = os.path.join(path, "tmp", "original")
        link = os.link
        for i in range(n):
            if i % 25_000 == 0:
                with open(original, "wb") as f:
                    f.write(b"0123456789")
            name = f"{1_700_000_000 + i}.M{i}P1.host,S=10:2,{'S' if i % 2 else ''}"
            link(original, f"{cur}/{name}")
            if i % 25_000 == 24_999:
                os.unlink(original)
        box = make_store(root, opener=opener).open_mailbox(path)
        again = make_store(root, opener=opener).open_mailbox(path)
        self.assertEqual(opener.opened, [])
        infos = again.messages()
        self.assertEqual(len(infos), n)
        self.assertEqual(infos, box.messages())
        self.assertEqual(infos[-1].uid, n)
        self.assertEqual(infos[1].flags, {"S"})
        self.assertEqual(infos[2].flags, frozenset())
        self.assertEqual(sum(i.size for i in infos), 10 * n)
        self.assertEqual(again.read(n), b"0123456789")
        self.assertEqual(len(opener.opened), 1)
