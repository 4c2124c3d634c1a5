"""Tests for twistedmail.imap.server under bad input: huge literal
announcements, never-ending lines, names that try to leave the Maildir,
internal errors; each answered with BAD, NO or BYE, memory flat, other
sessions unaffected."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from tests.imap_server_helpers import Client, make_message, make_world
from twistedmail.imap._modseq import MODSEQ_NAME
from twistedmail.imap.server import PRE_AUTH_MAX_LITERAL

TWO_GB = 2 * 1024**3


class LiteralLimitTests(SynchronousTestCase):
    """Literal announcements over [imap] max_literal."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp(), max_literal=1000)
        self.client = self.world.logged_in()

    def test_two_gigabytes_synchronising(self) -> None:
        """A 2 GB synchronising literal: a tagged NO [TOOBIG] at once (RFC
        7889), no continuation; the session goes on."""
        out = self.client.raw(b"a APPEND INBOX {%d}\r\n" % TWO_GB)
        self.assertEqual(
            out, b"a NO [TOOBIG] Literal of %d octets is too large\r\n" % TWO_GB
        )
        self.assertEqual(self.client.ok("NOOP"), [])

    def test_just_over_synchronising(self) -> None:
        """One octet over the limit: NO [TOOBIG]; a following APPEND that
        fits works, and NO does not count towards max_errors."""
        world = make_world(self.mktemp(), max_literal=1000, max_errors=2)
        client = world.logged_in()
        for _ in range(3):
            out = client.raw(b"a APPEND INBOX (\\Seen) {1001}\r\n")
            self.assertEqual(
                out, b"a NO [TOOBIG] Literal of 1001 octets is too large\r\n"
            )
        self.assertEqual(
            client.raw(b"b APPEND INBOX {6}\r\n"), b"+ Ready for literal\r\n"
        )
        self.assertRegex(client.raw(b"x: y\r\n\r\n"), rb"^b OK \[APPENDUID \d+ 1\] ")
        self.assertFalse(client.transport.disconnecting)

    def test_untagged_synchronising(self) -> None:
        """Without a readable tag the refusal is an untagged BAD."""
        out = self.client.raw(b"* APPEND INBOX {1001}\r\n")
        self.assertEqual(out, b"* BAD [TOOBIG] Literal of 1001 octets is too large\r\n")

    def test_two_gigabytes_default_limit(self) -> None:
        """The same with the default limit (35 MiB)."""
        world = make_world(self.mktemp())
        client = world.logged_in()
        out = client.raw(b"a APPEND INBOX (\\Seen) {%d}\r\n" % TWO_GB)
        self.assertEqual(
            out, b"a NO [TOOBIG] Literal of %d octets is too large\r\n" % TWO_GB
        )
        parser = client.proto._parser
        assert parser is not None
        self.assertEqual(parser.buffered_size, 0)

    def test_non_synchronising_skipped(self) -> None:
        """A too-large LITERAL+ literal: BAD [TOOBIG]; its octets and the
        rest of its command are skipped, and the next command runs."""
        out = self.client.raw(b"a APPEND INBOX {1001+}\r\n")
        self.assertEqual(out, b"a BAD [TOOBIG] Literal of 1001 octets is too large\r\n")
        out = self.client.raw(b"x" * 1001 + b" more\r\nb NOOP\r\n")
        self.assertEqual(out, b"b OK NOOP completed\r\n")

    def test_non_synchronising_two_gigabytes(self) -> None:
        """A 2 GB LITERAL+ literal is past what is worth skipping: BAD
        [TOOBIG], BYE, the connection closes, memory flat; other sessions
        go on."""
        other = self.world.logged_in()
        out = self.client.raw(b"a APPEND INBOX {%d+}\r\n" % TWO_GB + b"x" * 65536)
        self.assertEqual(
            out,
            b"a BAD [TOOBIG] Literal of %d octets is too large\r\n" % TWO_GB
            + b"* BYE Literal too large to skip\r\n",
        )
        self.assertTrue(self.client.transport.disconnecting)
        parser = self.client.proto._parser
        assert parser is not None
        self.assertEqual(self.client.raw(b"x" * 65536 + b"\r\nb NOOP\r\n"), b"")
        self.assertEqual(parser.buffered_size, 0)
        self.assertEqual(other.ok("NOOP"), [])

    def test_non_synchronising_before_login(self) -> None:
        """Before login the limits are PRE_AUTH_MAX_LITERAL: a {n+} beyond
        four times that closes the connection."""
        client = self.world.connect()
        out = client.raw(b"a LOGIN {%d+}\r\n" % (4 * PRE_AUTH_MAX_LITERAL + 1))
        self.assertTrue(out.endswith(b"* BYE Literal too large to skip\r\n"), out)
        self.assertTrue(client.transport.disconnecting)

    def test_total_of_literals(self) -> None:
        """The limit counts all literals of one command."""
        out = self.client.raw(b"a LOGIN {600+}\r\n" + b"u" * 600 + b" {600}\r\n")
        self.assertEqual(out, b"a NO [TOOBIG] Literal of 600 octets is too large\r\n")

    def test_at_the_limit(self) -> None:
        """A literal of exactly max_literal octets is taken."""
        message = b"Subject: x\r\n\r\n" + b"y" * 986
        self.assertEqual(len(message), 1000)
        out = self.client.raw(b"a APPEND INBOX {1000}\r\n")
        self.assertEqual(out, b"+ Ready for literal\r\n")
        out = self.client.raw(message + b"\r\n")
        self.assertRegex(out, rb"^a OK \[APPENDUID \d+ 1\] APPEND completed")


class HeldRunner:
    """A thread runner for the store whose calls wait, while C{hold} is
    set, until L{release} (so that a command stays in progress)."""

    def __init__(self) -> None:
        self.hold = False
        self.held: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, f: Callable[[], Any]) -> Deferred[Any]:
        """Run C{f} now, or hold it."""
        if not self.hold:
            return maybeDeferred(f)
        d: Deferred[Any] = Deferred()
        self.held.append((f, d))
        return d

    def release(self) -> None:
        """Stop holding and run what was held, in order."""
        self.hold = False
        while self.held:
            f, d = self.held.pop(0)
            maybeDeferred(f).chainDeferred(d)


class PipelineLimitTests(SynchronousTestCase):
    """Commands pipelined behind one in progress."""

    def test_pipelined_appends_pause_reading(self) -> None:
        """LITERAL+ APPENDs sent behind one in progress: once they carry
        more octets than one command may, the server stops reading from
        the socket (memory stays near one command's limits), and reads
        again when they have run; every one is stored."""
        runner = HeldRunner()
        world = make_world(
            self.mktemp(), run_in_thread=runner, max_literal=1000, max_line=1024
        )
        client = world.logged_in()
        runner.hold = True
        message = b"Subject: x\r\n\r\n" + b"y" * 886
        self.assertEqual(len(message), 900)
        append = b"%s APPEND INBOX {900+}\r\n" + message + b"\r\n"
        self.assertEqual(client.raw(append % b"a"), b"")
        for tag in (b"b", b"c"):
            client.raw(append % tag)
            self.assertEqual(client.transport.producerState, "producing")
        client.raw(append % b"d")
        self.assertEqual(client.transport.producerState, "paused")
        runner.release()
        out = client.take()
        self.assertEqual(out.count(b" OK [APPENDUID "), 4, out)
        self.assertEqual(client.transport.producerState, "producing")
        self.assertIn(b"* 4 EXISTS", client.ok("SELECT INBOX"))


class LineLimitTests(SynchronousTestCase):
    """Command lines over [imap] max_line."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp(), max_line=1024)

    def test_never_ending_line(self) -> None:
        """Megabytes without a line end: one BAD [TOOBIG], memory stays
        within the line limit, and the session resynchronises at the next
        line end."""
        client = self.world.logged_in()
        parser = client.proto._parser
        assert parser is not None
        out = client.raw(b"a NOOP ")
        chunk = b"x" * 65536
        for _ in range(160):
            out += client.raw(chunk)
            self.assertLess(parser.buffered_size, 2048)
        self.assertEqual(out, b"a BAD [TOOBIG] Command line too long\r\n")
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(client.raw(b"\r\nb NOOP\r\n"), b"b OK NOOP completed\r\n")

    def test_long_line_before_login(self) -> None:
        """The same before login."""
        client = self.world.connect()
        out = client.raw(b"a LOGIN " + b"x" * 5000)
        self.assertEqual(out, b"a BAD [TOOBIG] Command line too long\r\n")
        self.assertEqual(client.raw(b"\r\nb NOOP\r\n"), b"b OK NOOP completed\r\n")

    def test_other_sessions_unaffected(self) -> None:
        """While one session sends garbage, another one works."""
        bad = self.world.logged_in()
        good = self.world.logged_in()
        good.ok("SELECT INBOX")
        bad.raw(b"z" * 100000)
        self.world.deliver(make_message(1))
        self.assertEqual(good.ok("NOOP"), [b"* 1 EXISTS", b"* 1 RECENT"])

    def test_garbage_then_bye(self) -> None:
        """Binary garbage: BADs, then BYE after max_errors."""
        world = make_world(self.mktemp(), max_errors=5)
        client = world.connect()
        out = client.raw(b"\x00\xff\x01 junk\r\n" * 10)
        self.assertEqual(out.count(b"BAD"), 5)
        self.assertTrue(out.endswith(b"* BYE Too many errors\r\n"), out)
        self.assertTrue(client.transport.disconnecting)


class SequenceSetTests(SynchronousTestCase):
    """Malformed and out-of-range sequence sets in every command that takes
    one: BAD with a reason, nothing changed, the session goes on."""

    def test_malformed_everywhere(self) -> None:
        """0, 1:0, empty parts, 4294967296, letters, a sign, a space: BAD
        for FETCH, STORE, COPY, MOVE, SEARCH, UID EXPUNGE and the UID forms,
        and no flag or message changed."""
        world = make_world(self.mktemp(), max_errors=1000)
        for n in (1, 2):
            world.deliver(make_message(n))
        client = world.logged_in()
        client.ok("SELECT INBOX")
        commands = [
            "FETCH {} FLAGS",
            "UID FETCH {} FLAGS",
            "STORE {} +FLAGS (\\Deleted)",
            "UID STORE {} +FLAGS (\\Deleted)",
            "COPY {} Trash",
            "UID COPY {} Trash",
            "MOVE {} Trash",
            "UID MOVE {} Trash",
            "SEARCH {}",
            "UID SEARCH UID {}",
            "UID EXPUNGE {}",
        ]
        for bad in ["0", "1:0", "1,,2", ",1", "1:", "4294967296", "x", "-1", "1 :2"]:
            for command in commands:
                lines = client.cmd(command.format(bad))
                self.assertEqual(len(lines), 1, (command, bad, lines))
                self.assertRegex(lines[0], rb"^a\d+ BAD \S", (command, bad))
        for command in commands[:8:2]:
            lines = client.cmd(command.format("3"))
            self.assertRegex(
                lines[-1], rb"^a\d+ BAD Invalid message sequence number", command
            )
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(
            client.ok("FETCH 1:* FLAGS"),
            [b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Recent))"],
        )
        self.assertIn(b"(MESSAGES 0)", client.ok("STATUS Trash (MESSAGES)")[0])


class MailboxNameTests(SynchronousTestCase):
    """Mailbox names that try to leave the Maildir, in every command that
    takes one."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        self.world.deliver(make_message(1))
        self.client: Client = self.world.logged_in()

    def snapshot(self) -> set[str]:
        """Every path under the test's root."""
        found = set()
        for directory, dirs, files in os.walk(self.world.root):
            for name in dirs + files:
                found.add(os.path.join(directory, name))
        return found

    def test_bad_names_everywhere(self) -> None:
        """``../x``, ``/etc``, ``.``, ``..``, separators at odd places,
        slashes: NO with a reason for each command, nothing created."""
        self.client.ok("SELECT INBOX")
        before = self.snapshot()
        names = ['"../x"', '"/etc"', '"."', '".."', '"a..b"', '".x"', '"x."', '"a/b"']
        commands = [
            "CREATE {}",
            "DELETE {}",
            "RENAME Trash {}",
            "RENAME {} Trash2",
            "SUBSCRIBE {}",
            "STATUS {} (MESSAGES)",
            "COPY 1 {}",
            "MOVE 1 {}",
            "UNSUBSCRIBE {}",
            "GETQUOTAROOT {}",
            "EXAMINE {}",
            "SELECT {}",
        ]
        for name in names:
            for command in commands:
                if name == '"x."' and command.startswith("CREATE"):
                    # A trailing separator in CREATE is allowed (RFC 3501
                    # §6.3.3): it names folder x.
                    continue
                lines = self.client.cmd(command.format(name))
                self.assertRegex(lines[-1], rb"^a\d+ NO ", (command, name))
                if command.startswith(("EXAMINE", "SELECT")):
                    self.client.ok("SELECT INBOX")
            out = self.client.raw(b"z APPEND " + name.encode() + b" {1+}\r\nx\r\n")
            self.assertRegex(out, rb"^z NO ")
        # Only the session's own index files may have appeared.
        added = {p for p in self.snapshot() - before if MODSEQ_NAME not in p}
        self.assertEqual(added, set())
        self.assertFalse(os.path.exists(os.path.join(self.world.root, "x")))

    def test_getquotaroot_names(self) -> None:
        """GETQUOTAROOT of a name that tries to leave the Maildir, or of a
        missing mailbox: NO with a reason, the name not echoed."""
        for name, code in (
            ('"../x"', b"CANNOT"),
            ('"/etc"', b"CANNOT"),
            ('".."', b"CANNOT"),
            ("Nowhere", b"NONEXISTENT"),
        ):
            lines = self.client.cmd("GETQUOTAROOT " + name)
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], rb"^a\d+ NO \[" + code + rb"\] ")
        self.assertEqual(self.client.ok("GETQUOTAROOT Trash"), [b"* QUOTAROOT Trash"])

    def test_nul_in_name(self) -> None:
        """A NUL in a name (in a literal) is BAD."""
        out = self.client.raw(b"a CREATE {3+}\r\na\x00b\r\n")
        self.assertRegex(out, rb"^a BAD ")
        out = self.client.raw(b'b SELECT "a\x00b"\r\n')
        self.assertRegex(out, rb"^b BAD ")

    def test_inbox_children_refused(self) -> None:
        """INBOX.x is refused with a reason (no folders below INBOX)."""
        self.assertEqual(
            self.client.cmd("CREATE INBOX.x"),
            [b"a1 NO [CANNOT] folders below INBOX are not supported"],
        )


class InternalErrorTests(SynchronousTestCase):
    """Failures inside the server: NO [SERVERBUG] with the session ID, or
    NO [UNAVAILABLE], never a traceback to the client."""

    def test_serverbug(self) -> None:
        """A broken mod-sequence index: NO [SERVERBUG]; the session goes on."""
        world = make_world(self.mktemp())
        client = world.logged_in()
        os.mkdir(os.path.join(world.maildir(), ".Sent", MODSEQ_NAME))
        session = client.proto.session_id.encode()
        self.assertEqual(
            client.cmd("SELECT Sent"),
            [b"a1 NO [SERVERBUG] Internal error (session " + session + b")"],
        )
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(client.ok("NOOP"), [])
        self.assertRegex(client.cmd("FETCH 1 FLAGS")[0], rb"^a3 BAD ")

    def test_mailbox_unavailable_at_login(self) -> None:
        """A Maildir that cannot be prepared: NO [UNAVAILABLE] to LOGIN."""
        world = make_world(self.mktemp())
        os.makedirs(os.path.dirname(world.maildir()))
        with open(world.maildir(), "w"):
            pass
        client = world.connect()
        lines = client.cmd('LOGIN alice "s3cret pass"')
        self.assertEqual(
            lines, [b"a1 NO [UNAVAILABLE] Mailbox not available, try again later"]
        )
        self.flushLoggedErrors()
        self.assertRegex(client.cmd("SELECT INBOX")[0], rb"^a2 BAD ")
