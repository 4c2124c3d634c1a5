"""Tests for twistedmail.imap.server with many sessions on one mailbox
(RFC 3501 §7, §5.2), IDLE (RFC 2177), and changes made by deliveries, the
store (as POP3 makes them) and other programs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.imap_server_helpers import make_message, make_world, run_now


class TwoSessionTests(SynchronousTestCase):
    """Two sessions with INBOX selected."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        for n in (1, 2, 3):
            self.world.deliver(make_message(n))
        self.first = self.world.logged_in()
        self.second = self.world.logged_in()
        self.first.ok("SELECT INBOX")
        self.second.ok("SELECT INBOX")

    def test_recent_to_one_session(self) -> None:
        """\\Recent goes to the session that selected first, and a new
        message's \\Recent to exactly one session."""
        self.assertEqual(
            self.second.ok("SEARCH RECENT"), [b"* SEARCH"], "second saw \\Recent"
        )
        self.assertEqual(self.first.ok("SEARCH RECENT"), [b"* SEARCH 1 2 3"])
        self.world.deliver(make_message(4))
        self.assertEqual(self.second.ok("NOOP"), [b"* 4 EXISTS", b"* 1 RECENT"])
        self.assertEqual(self.first.ok("NOOP"), [b"* 4 EXISTS", b"* 3 RECENT"])
        self.assertEqual(
            self.second.ok("FETCH 4 FLAGS"), [b"* 4 FETCH (FLAGS (\\Recent))"]
        )
        self.assertEqual(self.first.ok("FETCH 4 FLAGS"), [b"* 4 FETCH (FLAGS ())"])

    def test_copy_and_move_recent_in_one_session(self) -> None:
        """Messages COPYed or MOVEd into a mailbox another session has
        selected are \\Recent there (it is told at once), and in no session
        that selects the mailbox later (RFC 3501 §2.3.2, §6.4.7)."""
        self.first.ok("CREATE Saved")
        self.second.ok("SELECT Saved")
        self.first.ok("COPY 1 Saved")
        self.assertEqual(self.second.ok("NOOP"), [b"* 1 EXISTS", b"* 1 RECENT"])
        self.first.ok("MOVE 2 Saved")
        self.assertEqual(self.second.ok("NOOP"), [b"* 2 EXISTS", b"* 2 RECENT"])
        self.assertEqual(
            self.second.ok("FETCH 1:2 FLAGS"),
            [b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Recent))"],
        )
        self.assertIn(b"* 0 RECENT", self.first.ok("EXAMINE Saved"))
        self.assertIn(b"* 0 RECENT", self.first.ok("SELECT Saved"))
        self.assertEqual(self.first.ok("SEARCH RECENT"), [b"* SEARCH"])

    def test_append_recent_to_the_session_that_looks_first(self) -> None:
        """A message APPENDed to a mailbox nobody has selected is \\Recent
        for the first session to select it; STATUS counts it as RECENT
        until then."""
        self.first.ok("APPEND Drafts (\\Draft) {8+}\r\nx: y\r\n\r\n")
        self.assertEqual(
            self.first.ok("STATUS Drafts (MESSAGES RECENT)"),
            [b"* STATUS Drafts (MESSAGES 1 RECENT 1)"],
        )
        self.assertIn(b"* 1 RECENT", self.second.ok("SELECT Drafts"))
        self.assertEqual(
            self.second.ok("FETCH 1 FLAGS"), [b"* 1 FETCH (FLAGS (\\Draft \\Recent))"]
        )
        self.assertIn(b"* 0 RECENT", self.first.ok("SELECT Drafts"))

    def test_flag_changes_reach_the_other(self) -> None:
        """A STORE in one session is an unsolicited FETCH in the other, at
        its next command."""
        self.first.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(self.second.ok("NOOP"), [b"* 2 FETCH (FLAGS (\\Flagged))"])
        self.assertEqual(self.second.ok("NOOP"), [])

    def test_seen_by_fetch_reaches_the_other(self) -> None:
        """\\Seen set by a non-peek FETCH is told to the other session."""
        self.first.ok("FETCH 1 BODY[TEXT]")
        self.assertEqual(self.second.ok("NOOP"), [b"* 1 FETCH (FLAGS (\\Seen))"])

    def test_no_expunge_during_fetch_store_search(self) -> None:
        """EXPUNGE is held back during FETCH, STORE and SEARCH (RFC 3501
        §7.4.1); sequence numbers stay as the client knows them until a
        command that allows it (NOOP)."""
        self.first.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.first.ok("EXPUNGE"), [b"* 2 EXPUNGE"])
        lines = self.second.ok("FETCH 1:* (UID)")
        self.assertEqual(
            lines,
            [
                b"* 1 FETCH (UID 1)",
                b"* 2 FETCH (UID 2)",
                b"* 3 FETCH (UID 3)",
            ],
        )
        self.assertEqual(
            self.second.ok("STORE 3 +FLAGS (\\Seen)"), [b"* 3 FETCH (FLAGS (\\Seen))"]
        )
        self.assertEqual(self.second.ok("SEARCH ALL"), [b"* SEARCH 1 2 3"])
        self.assertEqual(self.second.ok("UID SEARCH ALL"), [b"* SEARCH 1 2 3"])
        self.assertEqual(self.second.ok("NOOP"), [b"* 2 EXPUNGE"])
        self.assertEqual(self.second.ok("SEARCH ALL"), [b"* SEARCH 1 2"])
        self.assertEqual(self.second.ok("FETCH 2 UID"), [b"* 2 FETCH (UID 3)"])

    def test_expunge_told_with_exists_order(self) -> None:
        """An expunge and a delivery: EXPUNGE first, then EXISTS counting
        after it."""
        self.first.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.first.ok("EXPUNGE")
        self.world.deliver(make_message(4))
        self.assertEqual(
            self.second.ok("NOOP"), [b"* 1 EXPUNGE", b"* 3 EXISTS", b"* 1 RECENT"]
        )

    def test_fetch_body_of_message_expunged_elsewhere(self) -> None:
        """A held-back expunged message cannot be read: NO [EXPUNGEISSUED]
        for it, the rest is answered."""
        self.first.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
        self.first.ok("EXPUNGE")
        lines = self.second.cmd("FETCH 2:3 BODY.PEEK[TEXT]")
        self.assertEqual(
            lines,
            [
                b"* 2 FETCH (BODY[TEXT] {19}",
                b"body of message 2",
                b")",
                b"a2 NO [EXPUNGEISSUED] Some messages were expunged meanwhile",
            ],
        )

    def test_store_expunge_as_pop3_does(self) -> None:
        """An expunge made through the store (as the POP3 server makes it)
        reaches the IMAP sessions."""
        mailbox = self.world.store.open_mailbox(self.world.maildir())
        try:
            mailbox.expunge([1])
        finally:
            mailbox.close()
        self.assertEqual(self.second.ok("NOOP"), [b"* 1 EXPUNGE"])

    def test_other_program_changes_flags(self) -> None:
        """A flag change made on disk by another program is seen once the
        check interval has passed."""
        cur = os.path.join(self.world.maildir(), "cur")
        for name in os.listdir(cur):
            if name.endswith(":2,"):
                os.rename(os.path.join(cur, name), os.path.join(cur, name + "F"))
        self.world.clock.advance(self.world.settings.imap.check_interval)
        lines = self.second.ok("NOOP")
        self.assertEqual(
            lines,
            [
                b"* 1 FETCH (FLAGS (\\Flagged))",
                b"* 2 FETCH (FLAGS (\\Flagged))",
                b"* 3 FETCH (FLAGS (\\Flagged))",
            ],
        )

    def test_selected_mailbox_deleted(self) -> None:
        """The selected folder deleted by another session: BYE at the next
        command."""
        self.first.ok("CREATE Temp")
        self.second.ok("SELECT Temp")
        self.first.ok("DELETE Temp")
        lines = self.second.cmd("NOOP")
        self.assertEqual(lines, [b"* BYE The selected mailbox was deleted or renamed"])
        self.assertTrue(self.second.transport.disconnecting)
        self.assertEqual(self.first.ok("NOOP"), [])


class IdleTests(SynchronousTestCase):
    """IDLE: pushes at once, keep-alives, DONE, errors."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        self.world.deliver(make_message(1))
        self.client = self.world.logged_in()
        self.client.ok("SELECT INBOX")

    def test_delivery_pushed_at_once(self) -> None:
        """A delivery is pushed with no clock time passing (the store tells
        the session)."""
        self.assertEqual(self.client.raw(b"i IDLE\r\n"), b"+ idling\r\n")
        self.world.deliver(make_message(2))
        self.assertEqual(self.client.raw(b""), b"* 2 EXISTS\r\n* 2 RECENT\r\n")
        self.assertEqual(self.client.raw(b"DONE\r\n"), b"i OK IDLE terminated\r\n")

    def test_expunge_and_flags_pushed(self) -> None:
        """Changes by another session are pushed during IDLE, EXPUNGE
        included."""
        other = self.world.logged_in()
        other.ok("SELECT INBOX")
        self.world.deliver(make_message(2))
        self.client.ok("NOOP")
        other.ok("NOOP")
        self.client.raw(b"i IDLE\r\n")
        other.ok("STORE 2 +FLAGS.SILENT (\\Answered)")
        self.assertEqual(
            self.client.raw(b""), b"* 2 FETCH (FLAGS (\\Answered \\Recent))\r\n"
        )
        other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        other.ok("EXPUNGE")
        self.assertEqual(
            self.client.raw(b""),
            b"* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\n* 1 EXPUNGE\r\n",
        )
        self.assertEqual(self.client.raw(b"DONE\r\n"), b"i OK IDLE terminated\r\n")

    def test_outside_delivery_seen_within_a_second(self) -> None:
        """A message put into new/ by another program is pushed within the
        check interval (one second)."""
        self.client.raw(b"i IDLE\r\n")
        new = os.path.join(self.world.maildir(), "new")
        with open(os.path.join(new, "1790000000.outside.host,S=9"), "wb") as f:
            f.write(b"Subject: x\r\n\r\n"[:9])
        self.assertEqual(self.client.raw(b""), b"")
        self.world.clock.advance(1)
        self.assertEqual(self.client.take(), b"* 2 EXISTS\r\n* 2 RECENT\r\n")

    def test_keepalive(self) -> None:
        """``* OK Still here`` every idle_keepalive seconds; a client that
        re-issues IDLE before 30 minutes stays (RFC 2177 §3)."""
        self.client.raw(b"i IDLE\r\n")
        self.world.clock.advance(120)
        self.assertEqual(self.client.take(), b"* OK Still here\r\n")
        for _ in range(13):
            self.world.clock.advance(120)
        self.assertEqual(self.client.take(), b"* OK Still here\r\n" * 13)
        self.assertEqual(self.client.raw(b"DONE\r\n"), b"i OK IDLE terminated\r\n")
        self.client.raw(b"j IDLE\r\n")
        self.world.clock.advance(1799)
        self.assertFalse(self.client.transport.disconnecting)
        self.client.raw(b"DONE\r\n")
        self.assertFalse(self.client.transport.disconnecting)

    def test_idle_autologout(self) -> None:
        """An IDLE left for 30 minutes ends with BYE (RFC 2177 §3 allows it;
        clients re-issue IDLE every 29 minutes)."""
        self.client.raw(b"i IDLE\r\n")
        self.world.clock.advance(1800)
        self.assertTrue(
            self.client.take().endswith(b"* BYE Autologout; idle for too long\r\n")
        )
        self.assertTrue(self.client.transport.disconnecting)

    def test_idle_authenticated(self) -> None:
        """IDLE without a selected mailbox works too."""
        self.client.ok("UNSELECT")
        self.assertEqual(self.client.raw(b"i IDLE\r\n"), b"+ idling\r\n")
        self.world.deliver(make_message(2))
        self.assertEqual(self.client.raw(b"done\r\n"), b"i OK IDLE terminated\r\n")

    def test_not_done(self) -> None:
        """Anything but DONE ends IDLE with BAD."""
        self.client.raw(b"i IDLE\r\n")
        out = self.client.raw(b"a NOOP\r\n")
        self.assertRegex(out, rb"^i BAD ")
        self.assertEqual(self.client.ok("NOOP"), [])

    def test_idle_before_login(self) -> None:
        """IDLE before login is BAD, and the next command runs."""
        client = self.world.connect()
        out = client.raw(b"i IDLE\r\na NOOP\r\n")
        self.assertEqual(
            out,
            b"i BAD IDLE is not allowed in the not authenticated state\r\n"
            b"a OK NOOP completed\r\n",
        )

    def test_pipelined_done(self) -> None:
        """IDLE and DONE in one packet."""
        out = self.client.raw(b"i IDLE\r\nDONE\r\na NOOP\r\n")
        self.assertEqual(
            out, b"+ idling\r\ni OK IDLE terminated\r\na OK NOOP completed\r\n"
        )


class WatcherTests(SynchronousTestCase):
    """With a store watcher ([maildir] watch), sessions learn of changes
    made by other programs from its notifications, and do not poll on their
    own every check_interval."""

    def setUp(self) -> None:
        # The watcher looks every 5 s; the sessions' own check_interval
        # (1 s) must not matter while it is there.
        self.world = make_world(self.mktemp(), watch="poll", watch_interval=5.0)
        self.world.deliver(make_message(1))
        self.client = self.world.logged_in()
        self.client.ok("SELECT INBOX")

    def outside_delivery(self) -> None:
        """Another program puts a message into new/."""
        new = os.path.join(self.world.maildir(), "new")
        with open(os.path.join(new, "1790000000.outside.host,S=9"), "wb") as f:
            f.write(b"x: y\r\n\r\nz")

    def test_idle_pushes_what_the_watcher_reports(self) -> None:
        """During IDLE, an outside delivery is pushed when the watcher
        reports the folder; the session keeps no check timer of its own
        (only the keep-alive is added)."""
        before = len(self.world.clock.getDelayedCalls())
        self.assertEqual(self.client.raw(b"i IDLE\r\n"), b"+ idling\r\n")
        self.assertEqual(len(self.world.clock.getDelayedCalls()), before + 1)
        self.outside_delivery()
        self.world.clock.advance(1)
        self.assertEqual(self.client.take(), b"")
        self.world.clock.advance(4)
        self.assertEqual(self.client.take(), b"* 2 EXISTS\r\n* 2 RECENT\r\n")
        self.assertEqual(self.client.raw(b"DONE\r\n"), b"i OK IDLE terminated\r\n")

    def test_store_changes_pushed_at_once(self) -> None:
        """A delivery and an expunge through the store (as SMTP delivery
        and POP3 make them) are pushed during IDLE with no time passing."""
        self.client.raw(b"i IDLE\r\n")
        self.world.deliver(make_message(2))
        self.assertEqual(self.client.raw(b""), b"* 2 EXISTS\r\n* 2 RECENT\r\n")
        mailbox = self.world.store.open_mailbox(self.world.maildir())
        try:
            mailbox.expunge([1])
        finally:
            mailbox.close()
        self.assertEqual(self.client.raw(b""), b"* 1 EXPUNGE\r\n")
        self.assertEqual(self.client.raw(b"DONE\r\n"), b"i OK IDLE terminated\r\n")

    def test_delivery_while_selecting(self) -> None:
        """A message another program delivers while SELECT opens the
        mailbox, after its snapshot but before the session listens, is
        reported at once (before SELECT's tagged OK, or at the next command)
        instead of waiting for some later change."""
        armed: list[bool] = []

        def runner(f: Callable[[], Any]) -> Deferred[Any]:
            d = run_now(f)
            if armed:
                # Outside the two seconds in which the store cannot trust
                # directory times, so that the snapshot counts as current.
                armed.clear()
                world.clock.advance(10)
                new = os.path.join(world.maildir(), "new")
                with open(os.path.join(new, "1790000000.outside.host,S=9"), "wb") as f:
                    f.write(b"x: y\r\n\r\nz")
                world.clock.advance(10)
            return d

        world = make_world(
            self.mktemp(), watch="poll", watch_interval=5.0, run_in_thread=runner
        )
        world.deliver(make_message(1))
        client = world.logged_in()
        world.clock.advance(10)
        armed.append(True)
        lines = client.ok("SELECT INBOX")
        self.assertEqual(armed, [])
        self.assertIn(b"* 1 EXISTS", lines)
        lines += client.ok("UID SEARCH ALL")
        self.assertIn(b"* 2 EXISTS", lines)
        self.assertEqual(lines[-1], b"* SEARCH 1 2")

    def test_commands_do_not_poll(self) -> None:
        """An outside flag change reaches the session once the watcher
        reports it, not when check_interval passes; NOOP still looks at
        once."""
        cur = os.path.join(self.world.maildir(), "cur")
        [name] = os.listdir(cur)
        os.rename(os.path.join(cur, name), os.path.join(cur, name[:-1] + ",F"))
        self.world.clock.advance(2)
        self.assertEqual(self.client.ok("FETCH 1 (UID)"), [b"* 1 FETCH (UID 1)"])
        self.world.clock.advance(3)
        self.assertEqual(
            self.client.ok("FETCH 1 (UID)"),
            [b"* 1 FETCH (UID 1)", b"* 1 FETCH (FLAGS (\\Flagged \\Recent))"],
        )
        os.rename(
            os.path.join(cur, name[:-1] + ",F"), os.path.join(cur, name[:-1] + ",S")
        )
        self.assertEqual(
            self.client.ok("NOOP"), [b"* 1 FETCH (FLAGS (\\Seen \\Recent))"]
        )

    def test_watch_ends_with_the_session(self) -> None:
        """The folder is watched while a session has it selected."""
        self.assertEqual(
            [os.path.basename(p) for p in self.world.store.watched], ["alice"]
        )
        self.client.ok("UNSELECT")
        self.assertEqual(self.world.store.watched, [])
