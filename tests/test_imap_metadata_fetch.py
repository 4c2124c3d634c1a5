"""Tests for the column-by-column FETCH of message metadata (UID, FLAGS,
INTERNALDATE, RFC822.SIZE, MODSEQ): L{MailboxView.metadata_lines} and
L{format_date_times} against the item-by-item way of the general FETCH
path, over many flag sets, keywords, \\Recent marks, dates and sequence
sets."""

from __future__ import annotations

import datetime
import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.imap_server_helpers import Client, World, make_message, make_world
from twistedmail.imap._format import format_date_time, format_date_times
from twistedmail.imap._mailbox_view import METADATA_ITEMS, MailboxView, MetadataLines
from twistedmail.imap._types import FetchItem

#: The POSIX times of the first and last second datetime can show.
_FIRST = -62_135_596_800
_LAST = 253_402_300_799

#: An item whose presence sends a FETCH down the general path (it reads
#: the header from the structure cache), and what it adds to each line
#: (then CRLF CRLF: the two octets of the literal).
_GENERAL = "BODY.PEEK[HEADER.FIELDS (X-NONE)]"
_GENERAL_TAIL = b" BODY[HEADER.FIELDS (X-NONE)] {2}"

_NAMES = {
    FetchItem.UID: "UID",
    FetchItem.FLAGS: "FLAGS",
    FetchItem.INTERNALDATE: "INTERNALDATE",
    FetchItem.RFC822_SIZE: "RFC822.SIZE",
    FetchItem.MODSEQ: "MODSEQ",
}

#: Dates for APPEND: before 1970, around the epoch, a leap day, year ends,
#: and zones that move the UTC time to another day.
_DATES = [
    "01-Jan-1902 00:00:00 +0000",
    "31-Dec-1969 23:59:59 +0000",
    " 1-Jan-1970 00:00:00 +0000",
    " 1-Jan-1970 00:00:01 +0000",
    "29-Feb-2024 12:34:56 +0000",
    "31-Dec-2025 23:59:59 -1200",
    " 1-Jan-2026 00:00:00 +1400",
    "14-Jul-2025 02:44:25 -0700",
    " 9-Sep-2001 01:46:40 +0530",
    "28-Feb-2100 23:00:00 -0100",
    "31-Dec-2399 23:59:59 +0000",
]
_SYSTEM = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Forwarded"]
_KEYWORDS = ["$Junk", "$NotJunk", "Work", "later", "$MDNSent", "x_y"]


def _fill(world: World, count: int) -> None:
    """APPEND C{count} messages with varied flags, keywords and dates (a
    fixed seed), then deliver a few more (\\Recent for the next SELECT)."""
    rng = random.Random(7)
    client = world.logged_in()
    for n in range(count):
        flags = [f for f in _SYSTEM + _KEYWORDS if n % 7 and rng.random() < 0.3]
        body = make_message(n, body=b"x" * rng.randrange(0, 400))
        date = rng.choice(_DATES)
        out = client.raw(
            b'a APPEND INBOX (%s) "%s" {%d+}\r\n%s\r\n'
            % (" ".join(flags).encode(), date.encode(), len(body), body)
        )
        assert out.startswith(b"a OK "), out
    # A session claims them as recent: only the next five are \\Recent.
    client.ok("SELECT INBOX")
    client.ok("LOGOUT")
    for n in range(5):
        world.deliver(make_message(1000 + n))


def _fetch_both(
    client: Client, command: str, items: str, modifiers: str = ""
) -> tuple[bytes, bytes]:
    """The response of a metadata FETCH (fast path) and of the same FETCH
    with one more item (general path) with that item cut out again, both
    with the tag cut from the tagged response."""
    fast = client.raw(
        b"f %s (%s)%s\r\n" % (command.encode(), items.encode(), modifiers.encode())
    )
    general = client.raw(
        b"f %s (%s %s)%s\r\n"
        % (command.encode(), items.encode(), _GENERAL.encode(), modifiers.encode())
    )
    general = general.replace(_GENERAL_TAIL + b"\r\n\r\n", b"")
    return fast, general


class FormatDateTimesTests(SynchronousTestCase):
    """L{format_date_times} gives L{format_date_time}'s octets."""

    @given(st.lists(st.integers(min_value=_FIRST, max_value=_LAST), max_size=50))
    def test_same_as_one_by_one(self, seconds: list[int]) -> None:
        """Any times datetime can show, one list at a time."""
        self.assertEqual(
            format_date_times(seconds),
            [
                format_date_time(datetime.datetime.fromtimestamp(s, datetime.UTC))
                for s in seconds
            ],
        )

    def test_edges(self) -> None:
        """Around the epoch, day ends, and the first and last seconds."""
        seconds = [0, -1, 1, 86_399, 86_400, -86_400, -86_401, _FIRST, _LAST]
        self.assertEqual(
            format_date_times(seconds),
            [
                b'" 1-Jan-1970 00:00:00 +0000"',
                b'"31-Dec-1969 23:59:59 +0000"',
                b'" 1-Jan-1970 00:00:01 +0000"',
                b'" 1-Jan-1970 23:59:59 +0000"',
                b'" 2-Jan-1970 00:00:00 +0000"',
                b'"31-Dec-1969 00:00:00 +0000"',
                b'"30-Dec-1969 23:59:59 +0000"',
                b'" 1-Jan-0001 00:00:00 +0000"',
                b'"31-Dec-9999 23:59:59 +0000"',
            ],
        )

    def test_out_of_range(self) -> None:
        """A time datetime cannot show raises ValueError, as it does."""
        for seconds in (_LAST + 1, _FIRST - 1):
            with self.assertRaises(ValueError):
                format_date_times([1, seconds])
            with self.assertRaises(ValueError):
                datetime.datetime.fromtimestamp(seconds, datetime.UTC)


_items = st.lists(st.sampled_from(sorted(METADATA_ITEMS)), min_size=1, max_size=6)
_numbers = st.integers(min_value=1, max_value=70)
_sets = st.one_of(
    st.just("1:*"),
    st.lists(
        st.tuples(_numbers, st.one_of(_numbers, st.just("*"))),
        min_size=1,
        max_size=4,
    ).map(lambda spans: ",".join(f"{a}:{b}" for a, b in spans)),
)


class MetadataFetchTests(SynchronousTestCase):
    """A metadata FETCH gives what the general path gives, byte for byte."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        _fill(self.world, 60)
        self.client = self.world.logged_in()
        self.client.ok("SELECT INBOX")

    @settings(max_examples=60, deadline=None)
    @given(_items, _sets, st.booleans())
    def test_same_as_general_path(
        self, items: list[FetchItem], sequence_set: str, uid: bool
    ) -> None:
        """Any metadata items (repeated too, any order), any sequence set,
        FETCH and UID FETCH."""
        command = ("UID FETCH " if uid else "FETCH ") + sequence_set
        fast, general = _fetch_both(
            self.client, command, " ".join(_NAMES[i] for i in items)
        )
        self.assertEqual(fast, general)
        self.assertRegex(fast, rb"(^|\r\n)f (OK|BAD) [^\r\n]*\r\n$")

    def test_variety(self) -> None:
        """The folder has what the comparison needs: \\Recent and
        unmarked messages, keywords, dates before 1970, many flag sets."""
        fast, general = _fetch_both(self.client, "FETCH 1:*", "FLAGS INTERNALDATE")
        self.assertEqual(fast, general)
        lines = fast.split(b"\r\n")[:-2]
        self.assertEqual(len(lines), 65)
        self.assertEqual(sum(b"\\Recent" in line for line in lines), 5)
        self.assertIn(b"FLAGS ()", fast)
        self.assertIn(b"$Junk", fast)
        self.assertIn(b"$Forwarded", fast)
        self.assertIn(b"1969", fast)
        self.assertIn(b'"31-Dec-2399 23:59:59 +0000"', fast)
        self.assertGreater(len(set(line.split(b"FLAGS ")[1] for line in lines)), 20)

    def test_changedsince(self) -> None:
        """CHANGEDSINCE adds MODSEQ and keeps only changed messages, both
        ways alike."""
        highest = max(
            int(line.rpartition(b"MODSEQ (")[2][:-2])
            for line in self.client.ok("FETCH 1:* (MODSEQ)")
        )
        self.client.ok("STORE 3:7 +FLAGS (Fresh)")
        fast, general = _fetch_both(
            self.client, "FETCH 1:*", "UID FLAGS", f" (CHANGEDSINCE {highest})"
        )
        self.assertEqual(fast, general)
        self.assertEqual(len(fast.split(b"\r\n")[:-2]), 5)
        self.assertIn(b" MODSEQ (", fast)

    def test_first_command_after_select(self) -> None:
        """The first FETCH after SELECT (the view's messages not made yet)
        gives what a session that already made them gives."""
        first = self.world.logged_in()
        first.ok("EXAMINE INBOX")
        fast = first.raw(b"f FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE)\r\n")
        other = self.world.logged_in()
        other.ok("EXAMINE INBOX")
        other.ok("SEARCH ALL")
        again = other.raw(b"f FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE)\r\n")
        self.assertEqual(fast, again)
        _, general = _fetch_both(
            other, "FETCH 1:*", "UID RFC822.SIZE FLAGS INTERNALDATE"
        )
        self.assertEqual(fast, general)


def _write_many(world: World, count: int) -> None:
    """Write C{count} messages straight into the user's C{cur/} (no
    delivery: fast), with varied flags and file times."""
    client = world.logged_in()
    client.ok("LOGOUT")
    cur = os.path.join(world.maildir(), "cur")
    rng = random.Random(11)
    for n in range(count):
        body = make_message(n, body=b"y" * rng.randrange(0, 50))
        flags = rng.choice(["", "S", "FS", "RS", "DFPRST", "T"])
        name = f"{1_700_000_000 + n}.M{n}P1.test,S={len(body)}:2,{flags}"
        path = os.path.join(cur, name)
        with open(path, "wb") as f:
            f.write(body)
        when = rng.randrange(-86_400 * 400, 2_000_000_000)
        os.utime(path, (when, when))


class LargeMetadataFetchTests(SynchronousTestCase):
    """A metadata FETCH of more than a thousand messages (made in a
    thread, sent part by part: parts of 300 here)."""

    def test_same_as_general_path(self) -> None:
        """The first FETCH after SELECT, then the same in the other order,
        and a UID FETCH of a part, each as the general path gives it."""
        world = make_world(self.mktemp())
        _write_many(world, 1100)
        client = world.logged_in()
        client.proto.fetch_part = 300
        client.ok("SELECT INBOX")
        for command, items in [
            ("FETCH 1:*", "UID FLAGS RFC822.SIZE INTERNALDATE"),
            ("FETCH 1:*", "INTERNALDATE MODSEQ FLAGS RFC822.SIZE"),
            ("UID FETCH 40:1090", "FLAGS"),
        ]:
            fast, general = _fetch_both(client, command, items)
            self.assertEqual(fast, general)
            self.assertGreater(fast.count(b"\r\n"), 1000)


class MetadataLinesTests(SynchronousTestCase):
    """L{MailboxView.metadata_lines} on its own."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        _fill(self.world, 5)
        mailbox = self.world.store.open_mailbox(self.world.maildir())
        self.view = MailboxView(mailbox, read_only=True)
        self.view.open()
        self.addCleanup(self.view.close)

    def test_no_messages(self) -> None:
        """No UIDs, no lines."""
        self.assertEqual(self.view.metadata_lines([], [FetchItem.UID]), [])

    def test_only_metadata(self) -> None:
        """Another item is a ValueError."""
        with self.assertRaises(ValueError):
            self.view.metadata_lines([1], [FetchItem.UID, FetchItem.ENVELOPE])

    @given(st.lists(st.integers(min_value=0, max_value=6), max_size=4), st.booleans())
    def test_parts(self, cuts: list[int], every: bool) -> None:
        """Lines made part by part, cut anywhere, are the lines made at
        once, for all the view's UIDs or some."""
        uids = self.view.uids if every else self.view.uids[1::2]
        items = [FetchItem.UID, FetchItem.FLAGS, FetchItem.INTERNALDATE]
        whole = MetadataLines(self.view, uids, items).lines(0, len(uids))
        self.assertEqual(whole, self.view.metadata_lines(uids, items))
        self.assertEqual(len(whole), len(uids))
        fetch = MetadataLines(self.view, uids, items)
        bounds = [0, *sorted(cuts), len(uids) + 1]
        parts = [fetch.lines(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
        self.assertEqual([line for part in parts for line in part], whole)

    def test_sequence_numbers(self) -> None:
        """Lines carry the sequence numbers of the UIDs asked for."""
        uids = self.view.uids
        self.assertEqual(
            self.view.metadata_lines([uids[1], uids[3]], [FetchItem.UID]),
            [
                b"* 2 FETCH (UID %d)\r\n" % uids[1],
                b"* 4 FETCH (UID %d)\r\n" % uids[3],
            ],
        )
