"""Tests for twistedmail.imap.server in the selected state: SELECT and
EXAMINE, FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT, CHECK
and APPEND, each on a fake transport with its replies and errors."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.imap_server_helpers import Client, World, make_message, make_world
from twistedmail.imap.server import PRE_AUTH_MAX_LITERAL

#: A two-part message (text/plain, text/html) with a preamble.
MULTIPART = (
    b"From: a@example.test\r\n"
    b"Subject: parts\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=XX\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"first part\r\n"
    b"--XX\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>second</p>\r\n"
    b"--XX--\r\n"
)

#: The third message of L{three_messages}.
THIRD = make_message(3, subject="third", body=b"needle in body\r\n")

#: A message APPENDed with a known internal date.
APPENDED = b"Subject: appended\r\n\r\nhello\r\n"


def three_messages(world: World) -> None:
    """Deliver message 1, the multipart message, and message 3 (UIDs 1-3)."""
    world.deliver(make_message(1))
    world.deliver(MULTIPART)
    world.deliver(THIRD)


class SelectTests(SynchronousTestCase):
    """SELECT, EXAMINE, CLOSE, UNSELECT, CHECK."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        three_messages(self.world)
        self.client = self.world.logged_in()

    def test_select(self) -> None:
        """SELECT: FLAGS, PERMANENTFLAGS, EXISTS, RECENT, UNSEEN,
        UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, then READ-WRITE."""
        lines = self.client.cmd("SELECT INBOX")
        self.assertEqual(
            lines[:5],
            [
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)",
                b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen "
                b"\\Draft $Forwarded \\*)] Flags permitted",
                b"* 3 EXISTS",
                b"* 3 RECENT",
                b"* OK [UNSEEN 1] First unseen",
            ],
        )
        self.assertRegex(lines[5], rb"^\* OK \[UIDVALIDITY \d+\] UIDs valid$")
        self.assertEqual(lines[6], b"* OK [UIDNEXT 4] Predicted next UID")
        self.assertRegex(lines[7], rb"^\* OK \[HIGHESTMODSEQ \d+\] Highest$")
        self.assertEqual(lines[8], b"a1 OK [READ-WRITE] SELECT completed")

    def test_select_lower_case_inbox(self) -> None:
        """INBOX is case-insensitive."""
        lines = self.client.cmd("SELECT inbox")
        self.assertEqual(lines[-1], b"a1 OK [READ-WRITE] SELECT completed")

    def test_select_keywords_in_flags(self) -> None:
        """Keywords in use are listed in FLAGS."""
        self.client.ok("SELECT INBOX")
        self.client.ok("STORE 1 +FLAGS ($Junk)")
        lines = self.client.ok("SELECT INBOX")
        self.assertEqual(
            lines[1],
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Junk)",
        )

    def test_examine(self) -> None:
        """EXAMINE: READ-ONLY, no PERMANENTFLAGS, \\Recent not taken."""
        lines = self.client.cmd("EXAMINE INBOX")
        self.assertIn(b"* OK [PERMANENTFLAGS ()] Flags permitted", lines)
        self.assertIn(b"* 0 RECENT", lines)
        self.assertEqual(lines[-1], b"a1 OK [READ-ONLY] EXAMINE completed")
        lines = self.client.cmd("SELECT INBOX")
        self.assertEqual(lines[0], b"* OK [CLOSED] Previous mailbox closed")
        self.assertIn(b"* 3 RECENT", lines)

    def test_examine_read_only(self) -> None:
        """After EXAMINE, STORE, EXPUNGE and MOVE get NO [READ-ONLY]; a
        non-peek FETCH does not set \\Seen; COPY works."""
        self.client.ok("EXAMINE INBOX")
        for command in ("STORE 1 +FLAGS (\\Seen)", "EXPUNGE", "MOVE 1 Trash"):
            lines = self.client.cmd(command)
            self.assertRegex(lines[-1], rb"^a\d+ NO \[READ-ONLY\] ")
        lines = self.client.ok("FETCH 1 (BODY[TEXT])")
        self.assertEqual(
            lines, [b"* 1 FETCH (BODY[TEXT] {19}", b"body of message 1", b")"]
        )
        self.client.ok("COPY 1 Trash")

    def test_select_missing(self) -> None:
        """SELECT of a missing mailbox: NO, and nothing is selected (even
        the mailbox selected before)."""
        self.client.ok("SELECT INBOX")
        lines = self.client.cmd("SELECT Nowhere")
        self.assertEqual(
            lines,
            [
                b"* OK [CLOSED] Previous mailbox closed",
                b"a2 NO [NONEXISTENT] no folder 'Nowhere'",
            ],
        )
        self.assertRegex(self.client.cmd("FETCH 1 FLAGS")[0], rb"^a3 BAD ")

    def test_select_bad_names(self) -> None:
        """Names that would leave the Maildir: NO [CANNOT]."""
        for name in ('"../x"', '"/etc"', '"."', '"a..b"', '".a"', '"Sent/../x"'):
            lines = self.client.cmd("SELECT " + name)
            self.assertRegex(lines[-1], rb"^a\d+ NO \[CANNOT\] folder names may not")

    def test_close_expunges_silently(self) -> None:
        """CLOSE removes \\Deleted messages without EXPUNGE responses."""
        self.client.ok("SELECT INBOX")
        self.client.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.client.ok("CLOSE"), [])
        self.assertIn(b"(MESSAGES 2)", self.client.ok("STATUS INBOX (MESSAGES)")[0])
        self.assertRegex(self.client.cmd("FETCH 1 FLAGS")[0], rb"^a\d+ BAD ")

    def test_close_after_examine_keeps(self) -> None:
        """CLOSE of an EXAMINEd mailbox expunges nothing."""
        self.client.ok("SELECT INBOX")
        self.client.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.client.ok("EXAMINE INBOX")
        self.client.ok("CLOSE")
        self.assertIn(b"(MESSAGES 3)", self.client.ok("STATUS INBOX (MESSAGES)")[0])

    def test_unselect_keeps(self) -> None:
        """UNSELECT leaves \\Deleted messages in place."""
        self.client.ok("SELECT INBOX")
        self.client.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.client.ok("UNSELECT"), [])
        self.assertIn(b"(MESSAGES 3)", self.client.ok("STATUS INBOX (MESSAGES)")[0])
        self.assertRegex(self.client.cmd("UNSELECT")[0], rb"^a\d+ BAD ")

    def test_check(self) -> None:
        """CHECK: OK, with news of the mailbox."""
        self.client.ok("SELECT INBOX")
        self.world.deliver(make_message(4))
        self.assertEqual(self.client.ok("CHECK"), [b"* 4 EXISTS", b"* 4 RECENT"])

    def test_enable_after_select_is_bad(self) -> None:
        """ENABLE is for the authenticated state only (RFC 5161 §3.1)."""
        self.client.ok("SELECT INBOX")
        self.assertRegex(self.client.cmd("ENABLE CONDSTORE")[0], rb"^a\d+ BAD ")


class FetchTests(SynchronousTestCase):
    """FETCH and UID FETCH items, sections and partials, \\Seen."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        three_messages(self.world)
        self.client = self.world.logged_in()
        self.client.ok("SELECT INBOX")

    def test_flags_uid_size(self) -> None:
        """FLAGS, UID and RFC822.SIZE over a range with ``*``."""
        lines = self.client.ok("FETCH 2:* (UID FLAGS RFC822.SIZE)")
        self.assertEqual(
            lines,
            [
                b"* 2 FETCH (UID 2 FLAGS (\\Recent) RFC822.SIZE %d)" % len(MULTIPART),
                b"* 3 FETCH (UID 3 FLAGS (\\Recent) RFC822.SIZE %d)" % len(THIRD),
            ],
        )

    def test_uid_fetch(self) -> None:
        """UID FETCH names messages by UID, adds UID, skips missing UIDs."""
        lines = self.client.ok("UID FETCH 3,7:9 FLAGS")
        self.assertEqual(lines, [b"* 3 FETCH (UID 3 FLAGS (\\Recent))"])
        self.assertEqual(self.client.ok("UID FETCH 10:20 FLAGS"), [])

    def test_macros(self) -> None:
        """FAST, ALL and FULL expand as RFC 3501 §6.4.5 says."""
        fast = self.client.ok("FETCH 1 FAST")[0]
        self.assertRegex(
            fast,
            rb'^\* 1 FETCH \(FLAGS \(\\Recent\) INTERNALDATE "[^"]+" '
            rb"RFC822.SIZE 169\)$",
        )
        full = self.client.ok("FETCH 1 FULL")[0]
        self.assertIn(b" ENVELOPE (", full)
        self.assertTrue(
            full.endswith(
                b'BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 19 1))'
            )
        )
        everything = self.client.ok("FETCH 1 ALL")[0]
        self.assertIn(b" ENVELOPE (", everything)
        self.assertNotIn(b" BODY ", everything)

    def test_envelope(self) -> None:
        """ENVELOPE from the header."""
        lines = self.client.ok("FETCH 1 ENVELOPE")
        self.assertEqual(
            lines,
            [
                b'* 1 FETCH (ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "message 1" '
                b'(("Sender" NIL "sender" "example.test")) '
                b'(("Sender" NIL "sender" "example.test")) '
                b'(("Sender" NIL "sender" "example.test")) '
                b'((NIL NIL "alice" "example.test")) NIL NIL NIL "<1@example.test>"))'
            ],
        )

    def test_body_and_bodystructure(self) -> None:
        """BODY and BODYSTRUCTURE (with extension data) of a multipart;
        the second FETCH comes from the structure cache, the same."""
        body = (
            b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 10 1)'
            b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 13 1) "MIXED")'
        )
        self.assertEqual(
            self.client.ok("FETCH 2 BODY"), [b"* 2 FETCH (BODY " + body + b")"]
        )
        structure = (
            b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)'
            b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 13 1 NIL NIL NIL NIL)'
            b' "MIXED" ("BOUNDARY" "XX") NIL NIL NIL)'
        )
        expected = [b"* 2 FETCH (BODYSTRUCTURE " + structure + b")"]
        self.assertEqual(self.client.ok("FETCH 2 BODYSTRUCTURE"), expected)
        self.assertEqual(self.client.ok("FETCH 2 BODYSTRUCTURE"), expected)

    def test_sections(self) -> None:
        """Numbered parts, MIME, HEADER.FIELDS(.NOT), TEXT, partials, and an
        empty section for a part that does not exist."""
        out = self.client.raw(
            b"a FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[2]<1.3> "
            b"BODY.PEEK[HEADER.FIELDS (Subject)] "
            b"BODY.PEEK[HEADER.FIELDS.NOT (From Subject MIME-Version)] "
            b"BODY.PEEK[3])\r\n"
        )
        self.assertEqual(
            out,
            b"* 2 FETCH (BODY[1] {10}\r\nfirst part"
            b" BODY[2.MIME] {42}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            b" BODY[2]<1> {3}\r\np>s"
            b" BODY[HEADER.FIELDS (Subject)] {18}\r\nSubject: parts\r\n\r\n"
            b" BODY[HEADER.FIELDS.NOT (From Subject MIME-Version)] {46}\r\n"
            b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
            b" BODY[3] {0}\r\n)\r\n"
            b"a OK FETCH completed\r\n",
        )

    def test_peek_does_not_set_seen(self) -> None:
        """BODY.PEEK leaves \\Seen alone."""
        self.client.ok("FETCH 1 BODY.PEEK[]")
        self.assertEqual(
            self.client.ok("FETCH 1 FLAGS"), [b"* 1 FETCH (FLAGS (\\Recent))"]
        )

    def test_body_sets_seen(self) -> None:
        """BODY[...] sets \\Seen and reports the new FLAGS in the same
        response; a second fetch does not repeat FLAGS."""
        out = self.client.raw(b"a FETCH 1 BODY[]<100.20>\r\n")
        self.assertEqual(
            out,
            b"* 1 FETCH (BODY[]<100> {20}\r\n4 21:52:25 -0800\r\nMe"
            b" FLAGS (\\Seen \\Recent))\r\na OK FETCH completed\r\n",
        )
        out = self.client.raw(b"b FETCH 1 BODY[]<0.4>\r\n")
        self.assertEqual(
            out, b"* 1 FETCH (BODY[]<0> {4}\r\nFrom)\r\nb OK FETCH completed\r\n"
        )

    def test_rfc822_items(self) -> None:
        """RFC822 and RFC822.TEXT set \\Seen; RFC822.HEADER does not."""
        out = self.client.raw(b"a FETCH 3 (RFC822.HEADER)\r\n")
        header = THIRD.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        self.assertEqual(
            out,
            b"* 3 FETCH (RFC822.HEADER {%d}\r\n" % len(header)
            + header
            + b")\r\na OK FETCH completed\r\n",
        )
        out = self.client.raw(b"b FETCH 3 RFC822.TEXT\r\n")
        self.assertEqual(
            out,
            b"* 3 FETCH (RFC822.TEXT {16}\r\nneedle in body\r\n"
            b" FLAGS (\\Seen \\Recent))\r\nb OK FETCH completed\r\n",
        )
        out = self.client.raw(b"c FETCH 1 RFC822\r\n")
        self.assertEqual(
            out,
            b"* 1 FETCH (RFC822 {169}\r\n"
            + make_message(1)
            + b" FLAGS (\\Seen \\Recent))\r\nc OK FETCH completed\r\n",
        )

    def test_bad_sequence_numbers(self) -> None:
        """Sequence numbers past the end, 0 and garbage: BAD."""
        for command in ("FETCH 4 FLAGS", "FETCH 0 FLAGS", "FETCH x FLAGS", "FETCH 1:"):
            lines = self.client.cmd(command)
            self.assertEqual(len(lines), 1)
            self.assertRegex(lines[0], rb"^a\d+ BAD ")

    def test_bad_fetch_items(self) -> None:
        """Unknown items and bad sections: BAD."""
        for command in (
            "FETCH 1 (FLAGS BOGUS)",
            "FETCH 1 BODY[0]",
            "FETCH 1 BODY[TEXT",
        ):
            lines = self.client.cmd(command)
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], rb"^a\d+ BAD ")

    def test_fetch_of_gone_message(self) -> None:
        """A message whose file vanished: NO [EXPUNGEISSUED], the others are
        answered."""
        maildir = self.world.maildir()
        # SELECT took \Recent: the files are in cur/ now.
        for name in os.listdir(os.path.join(maildir, "cur")):
            if f",S={len(MULTIPART)}:" in name:
                os.unlink(os.path.join(maildir, "cur", name))
        out = self.client.raw(b"a FETCH 1:2 BODY.PEEK[TEXT]\r\n")
        self.assertEqual(
            out,
            b"* 1 FETCH (BODY[TEXT] {19}\r\nbody of message 1\r\n)\r\n"
            b"a NO [EXPUNGEISSUED] Some messages were expunged meanwhile\r\n",
        )


class StoreTests(SynchronousTestCase):
    """STORE and UID STORE: FLAGS, +FLAGS, -FLAGS, .SILENT."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        three_messages(self.world)
        self.client = self.world.logged_in()
        self.client.ok("SELECT INBOX")

    def test_add_remove_replace(self) -> None:
        """+FLAGS adds, -FLAGS removes, FLAGS replaces; \\Recent stays."""
        self.assertEqual(
            self.client.ok("STORE 1:2 +FLAGS (\\Seen \\Flagged)"),
            [
                b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))",
                b"* 2 FETCH (FLAGS (\\Flagged \\Seen \\Recent))",
            ],
        )
        self.assertEqual(
            self.client.ok("STORE 1 -FLAGS (\\Seen)"),
            [b"* 1 FETCH (FLAGS (\\Flagged \\Recent))"],
        )
        self.assertEqual(
            self.client.ok("STORE 1 FLAGS (\\Answered \\Draft $Label1)"),
            [b"* 1 FETCH (FLAGS (\\Draft \\Answered $Label1 \\Recent))"],
        )
        self.assertEqual(
            self.client.ok("STORE 1 FLAGS ()"), [b"* 1 FETCH (FLAGS (\\Recent))"]
        )

    def test_silent(self) -> None:
        """.SILENT sends no FETCH; the flags are stored."""
        self.assertEqual(self.client.ok("STORE 3 +FLAGS.SILENT (\\Deleted)"), [])
        self.assertEqual(self.client.ok("STORE 3 -FLAGS.SILENT (\\Deleted)"), [])
        self.assertEqual(self.client.ok("STORE 3 FLAGS.SILENT (\\Answered)"), [])
        self.assertEqual(
            self.client.ok("FETCH 3 FLAGS"),
            [b"* 3 FETCH (FLAGS (\\Answered \\Recent))"],
        )

    def test_uid_store(self) -> None:
        """UID STORE adds UID to the responses."""
        self.assertEqual(
            self.client.ok("UID STORE 2 +FLAGS ($Forwarded)"),
            [b"* 2 FETCH (UID 2 FLAGS ($Forwarded \\Recent))"],
        )

    def test_flags_on_disk(self) -> None:
        """System flags become Maildir info letters."""
        self.client.ok("STORE 1 +FLAGS.SILENT (\\Seen \\Answered)")
        names = os.listdir(os.path.join(self.world.maildir(), "cur"))
        self.assertTrue(any(n.endswith(":2,RS") for n in names), names)

    def test_recent_cannot_be_set(self) -> None:
        """\\Recent in a STORE is ignored (RFC 3501 §2.3.2)."""
        self.client.ok("STORE 1 -FLAGS.SILENT (\\Recent)")
        self.assertEqual(
            self.client.ok("FETCH 1 FLAGS"), [b"* 1 FETCH (FLAGS (\\Recent))"]
        )

    def test_keyword_limit(self) -> None:
        """A folder holds at most 26 keywords (Maildir letters a-z): the
        27th gets NO [LIMIT] and nothing changes."""
        first = " ".join(f"$k{n}" for n in range(26))
        self.client.ok(f"STORE 1 +FLAGS.SILENT ({first})")
        lines = self.client.cmd("STORE 2 +FLAGS ($one-too-many)")
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], rb"^a3 NO \[LIMIT\] ")
        self.assertEqual(
            self.client.ok("FETCH 2 FLAGS"), [b"* 2 FETCH (FLAGS (\\Recent))"]
        )

    def test_bad_store(self) -> None:
        """Bad item names, bad flags and bad sets: BAD."""
        for command in (
            "STORE 1 FLAGZ (\\Seen)",
            "STORE 1 +FLAGS (\\Bogus",
            "STORE 9 +FLAGS (\\Seen)",
            "STORE * +FLAGS",
        ):
            lines = self.client.cmd(command)
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], rb"^a\d+ BAD ")


class SearchTests(SynchronousTestCase):
    """SEARCH, UID SEARCH, CHARSET, ESEARCH."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        three_messages(self.world)
        self.client = self.world.logged_in()
        self.client.ok("SELECT INBOX")

    def test_keys(self) -> None:
        """Flag, header, body, text and boolean keys."""
        self.client.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
        cases = {
            "SEARCH ALL": b"* SEARCH 1 2 3",
            "SEARCH FLAGGED": b"* SEARCH 2",
            "SEARCH UNFLAGGED RECENT": b"* SEARCH 1 3",
            "SEARCH SUBJECT third": b"* SEARCH 3",
            "SEARCH BODY needle": b"* SEARCH 3",
            "SEARCH TEXT parts": b"* SEARCH 2",
            'SEARCH HEADER Message-ID "<1@"': b"* SEARCH 1",
            "SEARCH OR FLAGGED SUBJECT third": b"* SEARCH 2 3",
            "SEARCH NOT FROM sender": b"* SEARCH 2",
            "SEARCH LARGER 200": b"* SEARCH 2",
            "SEARCH SENTBEFORE 1-Jan-2000": b"* SEARCH 1 3",
            "SEARCH 2:3 UID 1:2": b"* SEARCH 2",
            "SEARCH KEYWORD $Junk": b"* SEARCH",
        }
        for command, expected in cases.items():
            self.assertEqual(self.client.ok(command), [expected], command)

    def test_uid_search(self) -> None:
        """UID SEARCH answers with UIDs."""
        self.client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.client.ok("EXPUNGE")
        self.assertEqual(self.client.ok("SEARCH ALL"), [b"* SEARCH 1 2"])
        self.assertEqual(self.client.ok("UID SEARCH ALL"), [b"* SEARCH 2 3"])

    def test_charset(self) -> None:
        """CHARSET UTF-8 and US-ASCII work; others get NO [BADCHARSET]."""
        self.assertEqual(
            self.client.ok('SEARCH CHARSET UTF-8 SUBJECT "third"'), [b"* SEARCH 3"]
        )
        self.assertEqual(
            self.client.ok("SEARCH CHARSET US-ASCII BODY needle"), [b"* SEARCH 3"]
        )
        self.assertEqual(
            self.client.cmd("SEARCH CHARSET KOI8-R BODY x"),
            [b"a4 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset"],
        )

    def test_utf8_literal(self) -> None:
        """A UTF-8 search string in a literal."""
        self.world.deliver(b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nhallo\r\n")
        self.client.ok("NOOP")
        needle = "grüße".encode()
        out = self.client.raw(
            b"a SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n" % len(needle) + needle + b"\r\n"
        )
        self.assertEqual(out, b"* SEARCH 4\r\na OK SEARCH completed\r\n")

    def test_esearch(self) -> None:
        """RETURN (MIN MAX COUNT ALL), and RETURN () meaning ALL."""
        self.assertEqual(
            self.client.ok("SEARCH RETURN (MIN MAX COUNT) ALL"),
            [b'* ESEARCH (TAG "a2") MIN 1 MAX 3 COUNT 3'],
        )
        self.assertEqual(
            self.client.ok("UID SEARCH RETURN () 2:3"),
            [b'* ESEARCH (TAG "a3") UID ALL 2:3'],
        )
        self.assertEqual(
            self.client.ok("SEARCH RETURN (COUNT) KEYWORD nothing"),
            [b'* ESEARCH (TAG "a4") COUNT 0'],
        )

    def test_bad_search(self) -> None:
        """Unknown keys and bad dates: BAD."""
        for command in ("SEARCH BOGUS", "SEARCH BEFORE 32-Foo-2020", "SEARCH OR ALL"):
            lines = self.client.cmd(command)
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], rb"^a\d+ BAD ")


class CopyMoveExpungeTests(SynchronousTestCase):
    """COPY, MOVE, EXPUNGE and their UID forms (UIDPLUS, MOVE)."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        three_messages(self.world)
        self.client = self.world.logged_in()
        lines = self.client.ok("SELECT INBOX")
        self.validity = [line for line in lines if b"UIDVALIDITY" in line][0].split()[3]

    def trash_validity(self) -> bytes:
        line = self.client.ok("STATUS Trash (UIDVALIDITY)")[0]
        return line.split()[-1].rstrip(b")")

    def test_copy(self) -> None:
        """COPY: OK [COPYUID validity old new]; the source is unchanged."""
        validity = self.trash_validity()
        lines = self.client.cmd("COPY 1,3 Trash")
        self.assertEqual(
            lines, [b"a3 OK [COPYUID " + validity + b" 1,3 1:2] COPY completed"]
        )
        self.assertIn(b"(MESSAGES 2)", self.client.ok("STATUS Trash (MESSAGES)")[0])
        self.assertEqual(self.client.ok("SEARCH ALL"), [b"* SEARCH 1 2 3"])

    def test_uid_copy(self) -> None:
        """UID COPY names UIDs; copied flags go along, and the copies are
        \\Recent for the next session to select the target (RFC 3501
        §6.4.7)."""
        self.client.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
        validity = self.trash_validity()
        lines = self.client.cmd("UID COPY 2:9 Trash")
        self.assertEqual(
            lines, [b"a4 OK [COPYUID " + validity + b" 2:3 1:2] COPY completed"]
        )
        self.client.ok("SELECT Trash")
        self.assertEqual(
            self.client.ok("FETCH 1:2 FLAGS"),
            [
                b"* 1 FETCH (FLAGS (\\Flagged \\Recent))",
                b"* 2 FETCH (FLAGS (\\Recent))",
            ],
        )

    def test_copy_to_missing(self) -> None:
        """COPY to a missing mailbox: NO [TRYCREATE]."""
        self.assertEqual(
            self.client.cmd("COPY 1 Nowhere"), [b"a2 NO [TRYCREATE] No such mailbox"]
        )
        self.assertEqual(
            self.client.cmd("MOVE 1 Nowhere"), [b"a3 NO [TRYCREATE] No such mailbox"]
        )

    def test_copy_bad_name(self) -> None:
        """COPY to a name that would leave the Maildir: NO [CANNOT]."""
        lines = self.client.cmd('COPY 1 "../x"')
        self.assertRegex(lines[0], rb"^a2 NO \[CANNOT\] ")

    def test_move(self) -> None:
        """MOVE: untagged OK [COPYUID], EXPUNGE, then OK (RFC 6851 §4.3)."""
        validity = self.trash_validity()
        lines = self.client.cmd("MOVE 2:3 Trash")
        self.assertEqual(
            lines,
            [
                b"* OK [COPYUID " + validity + b" 2:3 1:2] Moved",
                b"* 3 EXPUNGE",
                b"* 2 EXPUNGE",
                b"a3 OK MOVE completed",
            ],
        )
        self.assertEqual(self.client.ok("UID SEARCH ALL"), [b"* SEARCH 1"])

    def test_uid_move(self) -> None:
        """UID MOVE."""
        validity = self.trash_validity()
        lines = self.client.cmd("UID MOVE 1 Trash")
        self.assertEqual(
            lines,
            [
                b"* OK [COPYUID " + validity + b" 1 1] Moved",
                b"* 1 EXPUNGE",
                b"a3 OK MOVE completed",
            ],
        )

    def test_expunge(self) -> None:
        """EXPUNGE removes \\Deleted messages, highest number first."""
        self.client.ok("STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.client.ok("EXPUNGE"), [b"* 3 EXPUNGE", b"* 1 EXPUNGE"])
        self.assertEqual(self.client.ok("UID SEARCH ALL"), [b"* SEARCH 2"])
        self.assertEqual(self.client.ok("EXPUNGE"), [])

    def test_uid_expunge(self) -> None:
        """UID EXPUNGE removes only the named \\Deleted messages (RFC 4315)."""
        self.client.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(
            self.client.ok("UID EXPUNGE 2:3"), [b"* 3 EXPUNGE", b"* 2 EXPUNGE"]
        )
        self.assertEqual(self.client.ok("UID SEARCH ALL"), [b"* SEARCH 1"])

    def test_uid_expunge_needs_set(self) -> None:
        """UID EXPUNGE without a set: BAD."""
        self.assertRegex(self.client.cmd("UID EXPUNGE")[0], rb"^a2 BAD ")


class AppendTests(SynchronousTestCase):
    """APPEND with flags, internal date, synchronising and LITERAL+ literals."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        self.client: Client = self.world.logged_in()

    def test_append_sync_literal(self) -> None:
        """A synchronising literal gets a continuation; flags and the date
        are kept; APPENDUID names the new message, \\Recent in the next
        session to select the mailbox."""
        out = self.client.raw(
            b'a APPEND Drafts (\\Draft $Work) "14-Jul-2025 02:44:25 -0700" {%d}\r\n'
            % len(APPENDED)
        )
        self.assertEqual(out, b"+ Ready for literal\r\n")
        out = self.client.raw(APPENDED + b"\r\n")
        self.assertRegex(out, rb"^a OK \[APPENDUID \d+ 1\] APPEND completed\r\n$")
        self.client.ok("SELECT Drafts")
        self.assertEqual(
            self.client.ok("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"),
            [
                b"* 1 FETCH (FLAGS (\\Draft $Work \\Recent) INTERNALDATE"
                b' "14-Jul-2025 09:44:25 +0000" RFC822.SIZE 28 BODY[] {28}',
                b"Subject: appended",
                b"",
                b"hello",
                b")",
            ],
        )

    def test_append_literal_plus(self) -> None:
        """A LITERAL+ literal needs no continuation."""
        out = self.client.raw(
            b"a APPEND INBOX {%d+}\r\n" % len(APPENDED) + APPENDED + b"\r\n"
        )
        self.assertRegex(out, rb"^a OK \[APPENDUID \d+ 1\] APPEND completed\r\n$")

    def test_append_to_selected(self) -> None:
        """APPEND to the selected mailbox reports EXISTS before its OK;
        the message is \\Recent in this session, not in a later one."""
        self.client.ok("SELECT INBOX")
        out = self.client.raw(
            b"a APPEND INBOX {%d+}\r\n" % len(APPENDED) + APPENDED + b"\r\n"
        )
        self.assertRegex(
            out, rb"^\* 1 EXISTS\r\n\* 1 RECENT\r\na OK \[APPENDUID \d+ 1\] "
        )
        self.assertEqual(
            self.client.ok("FETCH 1 FLAGS"), [b"* 1 FETCH (FLAGS (\\Recent))"]
        )
        other = self.world.logged_in()
        self.assertIn(b"* 0 RECENT", other.ok("SELECT INBOX"))

    def test_append_missing_mailbox(self) -> None:
        """APPEND to a missing mailbox: NO [TRYCREATE]; bad names: NO
        [CANNOT]."""
        out = self.client.raw(b"a APPEND Nowhere {1+}\r\nx\r\n")
        self.assertEqual(out, b"a NO [TRYCREATE] No such mailbox\r\n")
        out = self.client.raw(b'b APPEND "../../x" {1+}\r\nx\r\n')
        self.assertRegex(out, rb"^b NO \[CANNOT\] ")

    def test_append_bad_date(self) -> None:
        """A malformed date-time is BAD."""
        out = self.client.raw(
            b'a APPEND INBOX "31-Feb-2025 00:00:00 +0000" {1+}\r\nx\r\n'
        )
        self.assertRegex(out, rb"^a BAD ")

    def test_append_needs_login(self) -> None:
        """Before login a message-sized literal is refused without a
        continuation; a small one is read, then the command is BAD."""
        client = self.world.connect()
        out = client.raw(b"a APPEND INBOX {%d}\r\n" % (PRE_AUTH_MAX_LITERAL + 1))
        self.assertEqual(
            out,
            b"a NO [TOOBIG] Literal of %d octets is too large\r\n"
            % (PRE_AUTH_MAX_LITERAL + 1),
        )
        self.assertEqual(
            client.raw(b"b APPEND INBOX {5}\r\n"), b"+ Ready for literal\r\n"
        )
        out = client.raw(b"hello\r\n")
        self.assertEqual(
            out, b"b BAD APPEND is not allowed in the not authenticated state\r\n"
        )


class UnknownDateTests(SynchronousTestCase):
    """A folder met for the first time is indexed without its files' dates
    (L{twistedmail.maildir.uidlist.UNKNOWN_DATE}, 0); no client ever sees
    that 0 as 1970: FETCH INTERNALDATE, SEARCH BEFORE/ON/SINCE (and SENT*
    without a Date field) and COPY get the files' mtimes."""

    #: 2020-09-13 12:26:40 UTC and a day later.
    MTIMES = (1_600_000_000, 1_600_086_400)

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        cur = os.path.join(self.world.maildir(), "cur")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.world.maildir(), sub))
        bodies = (make_message(1), b"Subject: no date field\r\n\r\nx\r\n")
        for i, (mtime, body) in enumerate(zip(self.MTIMES, bodies, strict=True)):
            name = os.path.join(cur, f"17000000{i}0.M{i}P1.host,S={len(body)}:2,S")
            with open(name, "wb") as f:
                f.write(body)
            os.utime(name, (mtime, mtime))
        self.client = self.world.logged_in()
        self.client.ok("SELECT INBOX")

    def assertNo1970(self, lines: list[bytes]) -> None:
        for line in lines:
            self.assertNotIn(b"1970", line)

    def test_fetch(self) -> None:
        """FETCH INTERNALDATE, the first and the next time."""
        for _ in range(2):
            lines = self.client.ok("FETCH 1:* (UID INTERNALDATE)")
            self.assertEqual(
                lines,
                [
                    b'* 1 FETCH (UID 1 INTERNALDATE "13-Sep-2020 12:26:40 +0000")',
                    b'* 2 FETCH (UID 2 INTERNALDATE "14-Sep-2020 12:26:40 +0000")',
                ],
            )

    def test_fetch_one_then_all(self) -> None:
        """Asking for one message's date first, then another's, in another
        session too."""
        self.assertEqual(
            self.client.ok("UID FETCH 2 INTERNALDATE"),
            [b'* 2 FETCH (UID 2 INTERNALDATE "14-Sep-2020 12:26:40 +0000")'],
        )
        other = self.world.logged_in()
        other.ok("EXAMINE INBOX")
        self.assertEqual(
            other.ok("FETCH 1 INTERNALDATE"),
            [b'* 1 FETCH (INTERNALDATE "13-Sep-2020 12:26:40 +0000")'],
        )

    def test_search(self) -> None:
        """SEARCH compares the files' dates, never 1970."""
        cases = {
            "SEARCH BEFORE 1-Jan-1971": b"* SEARCH",
            "SEARCH ON 13-Sep-2020": b"* SEARCH 1",
            "SEARCH SINCE 14-Sep-2020": b"* SEARCH 2",
            "SEARCH NOT SINCE 1-Jan-2000": b"* SEARCH",
            "SEARCH SENTBEFORE 1-Jan-1971": b"* SEARCH",
            "SEARCH SENTON 14-Sep-2020": b"* SEARCH 2",
        }
        for command, expected in cases.items():
            self.assertEqual(self.client.ok(command), [expected], command)

    def test_copy(self) -> None:
        """A copy keeps the file's date."""
        self.client.ok("COPY 1:2 Archive")
        self.client.ok("SELECT Archive")
        lines = self.client.ok("FETCH 1:* INTERNALDATE")
        self.assertNo1970(lines)
        self.assertEqual(len(lines), 2)
        self.assertIn(b"13-Sep-2020 12:26:40", lines[0])

    def test_no_1970_anywhere(self) -> None:
        """Every item that could show the date, in one go."""
        lines = self.client.ok("FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)")
        self.assertEqual(len(lines), 2)
        self.assertNo1970(lines)
