"""Tests for CONDSTORE and QRESYNC (RFC 7162) in twistedmail.imap.server:
MODSEQ in FETCH, STORE and SEARCH, CHANGEDSINCE, UNCHANGEDSINCE, VANISHED,
SELECT (QRESYNC ...), and mod-sequences that survive a restart."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from tests.imap_server_helpers import Client, make_message, make_world


def highest(lines: list[bytes]) -> int:
    """The HIGHESTMODSEQ of SELECT's responses."""
    for line in lines:
        found = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", line)
        if found:
            return int(found.group(1))
    raise AssertionError(lines)


class CondStoreTests(SynchronousTestCase):
    """CONDSTORE."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.world = make_world(self.root)
        for n in (1, 2, 3):
            self.world.deliver(make_message(n))
        self.client = self.world.logged_in()
        self.start = highest(self.client.ok("SELECT INBOX (CONDSTORE)"))

    def test_fetch_modseq(self) -> None:
        """FETCH MODSEQ; after a STORE the changed message has a higher one
        and, CONDSTORE being on, the STORE response carries it."""
        lines = self.client.ok("FETCH 1:* (MODSEQ)")
        self.assertEqual(
            lines, [b"* %d FETCH (MODSEQ (%d))" % (n, self.start) for n in (1, 2, 3)]
        )
        lines = self.client.ok("STORE 2 +FLAGS (\\Flagged)")
        self.assertEqual(
            lines,
            [b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % (self.start + 1)],
        )
        lines = self.client.ok("STORE 3 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(lines, [b"* 3 FETCH (MODSEQ (%d))" % (self.start + 2)])

    def test_changedsince(self) -> None:
        """FETCH (CHANGEDSINCE n) names only messages changed after n, with
        MODSEQ added."""
        self.client.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
        lines = self.client.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {self.start})")
        self.assertEqual(
            lines,
            [b"* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (%d))" % (self.start + 1)],
        )
        lines = self.client.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {self.start})")
        self.assertEqual(
            lines,
            [
                b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (%d))"
                % (self.start + 1)
            ],
        )

    def test_unchangedsince(self) -> None:
        """STORE (UNCHANGEDSINCE n) fails for messages changed after n:
        OK [MODIFIED set], the others are changed."""
        self.client.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
        lines = self.client.cmd(
            f"STORE 1:3 (UNCHANGEDSINCE {self.start}) +FLAGS.SILENT (\\Flagged)"
        )
        self.assertEqual(
            lines,
            [
                b"* 1 FETCH (MODSEQ (%d))" % (self.start + 2),
                b"* 3 FETCH (MODSEQ (%d))" % (self.start + 2),
                b"a3 OK [MODIFIED 2] Conditional STORE failed",
            ],
        )
        lines = self.client.cmd(f"UID STORE 2 (UNCHANGEDSINCE {self.start}) FLAGS ()")
        self.assertEqual(lines, [b"a4 OK [MODIFIED 2] Conditional STORE failed"])

    def test_search_modseq(self) -> None:
        """SEARCH MODSEQ answers with the highest mod-sequence of the
        matches."""
        self.client.ok("STORE 3 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(
            self.client.ok(f"SEARCH MODSEQ {self.start + 1}"),
            [b"* SEARCH 3 (MODSEQ %d)" % (self.start + 1)],
        )
        self.assertEqual(
            self.client.ok(f"SEARCH MODSEQ {self.start + 5}"), [b"* SEARCH"]
        )
        self.assertEqual(
            self.client.ok("SEARCH RETURN (COUNT) MODSEQ 1"),
            [b'* ESEARCH (TAG "a5") COUNT 3 MODSEQ %d' % (self.start + 1)],
        )

    def test_status_highestmodseq(self) -> None:
        """STATUS HIGHESTMODSEQ follows changes."""
        self.client.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(
            self.client.ok("STATUS INBOX (HIGHESTMODSEQ)"),
            [b"* STATUS INBOX (HIGHESTMODSEQ %d)" % (self.start + 1)],
        )

    def test_modseqs_survive_restart(self) -> None:
        """A new store on the same directories (a restart) has the same
        mod-sequences, and later changes get higher ones."""
        self.client.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
        before = self.client.ok("FETCH 1:* (MODSEQ)")
        self.client.ok("LOGOUT")
        world = make_world(self.root)
        client = world.logged_in()
        self.assertEqual(highest(client.ok("SELECT INBOX")), self.start + 1)
        self.assertEqual(client.ok("FETCH 1:* (MODSEQ)"), before)
        client.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(
            client.ok("FETCH 1 (MODSEQ)"),
            [b"* 1 FETCH (MODSEQ (%d))" % (self.start + 2)],
        )


class QResyncTests(SynchronousTestCase):
    """QRESYNC."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        for n in (1, 2, 3, 4):
            self.world.deliver(make_message(n))
        self.client: Client = self.world.logged_in()

    def test_select_qresync_needs_enable(self) -> None:
        """SELECT (QRESYNC ...) before ENABLE QRESYNC is BAD."""
        lines = self.client.cmd("SELECT INBOX (QRESYNC (1 1))")
        self.assertEqual(lines, [b"a1 BAD QRESYNC must be enabled first"])

    def test_vanished_instead_of_expunge(self) -> None:
        """With QRESYNC, expunges are told as VANISHED, and STORE responses
        carry UID."""
        self.client.ok("ENABLE QRESYNC")
        self.client.ok("SELECT INBOX")
        self.assertEqual(
            self.client.ok("STORE 2:3 +FLAGS (\\Deleted)")[0][:23],
            b"* 2 FETCH (UID 2 FLAGS ",
        )
        self.assertEqual(self.client.ok("EXPUNGE"), [b"* VANISHED 2:3"])

    def test_select_qresync(self) -> None:
        """SELECT (QRESYNC (validity modseq known-uids)): VANISHED (EARLIER)
        for the known UIDs that are gone, then FETCH for messages changed
        since the client's mod-sequence."""
        self.client.ok("ENABLE QRESYNC")
        lines = self.client.ok("SELECT INBOX")
        validity = int(
            [line for line in lines if b"UIDVALIDITY" in line][0]
            .split()[3]
            .rstrip(b"]")
        )
        known = highest(lines)
        # The last message goes too: still reported.
        self.client.ok("STORE 1,4 +FLAGS.SILENT (\\Deleted)")
        self.client.ok("EXPUNGE")
        self.client.ok("UID STORE 3 +FLAGS.SILENT (\\Flagged)")
        self.client.ok("UNSELECT")
        lines = self.client.ok(f"SELECT INBOX (QRESYNC ({validity} {known} 1:4))")
        tail = lines[-2:]
        self.assertEqual(tail[0], b"* VANISHED (EARLIER) 1,4")
        self.assertRegex(
            tail[1], rb"^\* 2 FETCH \(UID 3 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)$"
        )
        # Another UIDVALIDITY: no resync data.
        lines = self.client.ok(f"SELECT INBOX (QRESYNC ({validity + 1} {known}))")
        self.assertFalse(any(b"VANISHED" in line for line in lines))

    def test_uid_fetch_vanished(self) -> None:
        """UID FETCH (CHANGEDSINCE n VANISHED) lists the UIDs that are gone."""
        self.client.ok("ENABLE QRESYNC")
        known = highest(self.client.ok("SELECT INBOX"))
        self.client.ok("STORE 4 +FLAGS.SILENT (\\Deleted)")
        self.client.ok("EXPUNGE")
        lines = self.client.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known} VANISHED)")
        self.assertEqual(lines, [b"* VANISHED (EARLIER) 4"])
        lines = self.client.cmd("FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], rb"^a6 BAD VANISHED needs ")
