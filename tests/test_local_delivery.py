"""Tests for L{twistedmail.delivery.local}."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.spool_helpers import FakeStore
from twistedmail.aliases.expander import FileTarget, LocalMailbox, ProgramTarget
from twistedmail.config import DeliverySettings
from twistedmail.delivery.local import (
    LocalDelivery,
    delivered_to,
    exit_status_reply,
    mbox_bytes,
    unique_name,
)
from twistedmail.interfaces import User
from twistedmail.replies import MAILBOX_FULL, PermanentError, TemporaryError

MESSAGE = b"Subject: hi\r\nTo: bob@example.com\r\n\r\nHello.\r\nFrom here.\r\n"
BOB = User("bob@example.com", "", "example.com/bob")


class MailboxTests(SynchronousTestCase):
    """Delivery into a mailbox through the store."""

    def setUp(self) -> None:
        self.store = FakeStore()
        self.clock = Clock()
        self.local = LocalDelivery(self.store, None, self.clock)  # type: ignore[arg-type]

    def test_headers(self) -> None:
        """Return-Path and Delivered-To are prepended, in the message's line
        ending."""
        dest = LocalMailbox("bob@example.com", BOB)
        self.successResultOf(
            self.local.deliver("Q1", "alice@example.org", dest, MESSAGE)
        )
        [(path, message, quota)] = self.store.delivered.values()
        self.assertEqual(path, "/mail/example.com/bob")
        self.assertEqual(
            message,
            b"Return-Path: <alice@example.org>\r\nDelivered-To: bob@example.com\r\n"
            + MESSAGE,
        )

    def test_null_sender(self) -> None:
        """The null sender gives Return-Path: <>."""
        dest = LocalMailbox("bob@example.com", BOB)
        self.successResultOf(self.local.deliver("Q1", "", dest, MESSAGE))
        [(_, message, _)] = self.store.delivered.values()
        self.assertTrue(message.startswith(b"Return-Path: <>\r\n"))

    def test_exactly_once(self) -> None:
        """The same entry and mailbox always give the same unique name, so a
        repeat finds the first copy; another mailbox or entry gets another."""
        bob = LocalMailbox("bob@example.com", BOB)
        carol = LocalMailbox("carol@example.com", BOB)
        self.assertEqual(unique_name("Q1", bob), unique_name("Q1", bob))
        self.assertNotEqual(unique_name("Q1", bob), unique_name("Q1", carol))
        self.assertNotEqual(unique_name("Q1", bob), unique_name("Q2", bob))
        for _ in range(2):
            self.successResultOf(self.local.deliver("Q1", "a@b.example", bob, MESSAGE))
        self.assertEqual(list(self.store.delivered), [unique_name("Q1", bob)])

    def test_loop(self) -> None:
        """A message already delivered to this address is refused as a loop."""
        looped = b"Delivered-To: Bob@Example.com\r\n" + MESSAGE
        dest = LocalMailbox("bob@example.com", BOB)
        f = self.failureResultOf(
            self.local.deliver("Q1", "a@b.example", dest, looped), PermanentError
        )
        self.assertEqual((f.value.reply.code, f.value.reply.status), (554, "5.4.6"))
        self.assertEqual(self.store.delivered, {})

    def test_delivered_to_in_body_is_no_loop(self) -> None:
        """Only the header counts: a body line naming the address is fine."""
        message = b"Subject: x\r\n\r\nDelivered-To: bob@example.com\r\n"
        self.assertEqual(delivered_to(message), [])
        dest = LocalMailbox("bob@example.com", BOB)
        self.successResultOf(self.local.deliver("Q1", "a@b.example", dest, message))

    def test_folded_header(self) -> None:
        """A folded Delivered-To field is read whole."""
        message = b"Delivered-To:\r\n bob@example.com\r\nSubject: x\r\n\r\nhi\r\n"
        self.assertEqual(delivered_to(message), ["bob@example.com"])

    def test_disabled(self) -> None:
        """A disabled user's mailbox is a permanent failure."""
        user = User("bob@example.com", "", "example.com/bob", enabled=False)
        dest = LocalMailbox("bob@example.com", user)
        f = self.failureResultOf(
            self.local.deliver("Q1", "", dest, MESSAGE), PermanentError
        )
        self.assertEqual(f.value.reply.status, "5.2.1")

    def test_builtin_postmaster(self) -> None:
        """The built-in postmaster mailbox (no user) has a default path."""
        dest = LocalMailbox("postmaster@example.com", None)
        self.successResultOf(self.local.deliver("Q1", "", dest, MESSAGE))
        [(path, _, _)] = self.store.delivered.values()
        self.assertEqual(path, "/mail/example.com/postmaster")

    def test_over_quota(self) -> None:
        """The store's temporary failure (over quota) comes through as it is."""
        self.store.error = TemporaryError(MAILBOX_FULL)
        dest = LocalMailbox("bob@example.com", BOB)
        f = self.failureResultOf(
            self.local.deliver("Q1", "", dest, MESSAGE), TemporaryError
        )
        self.assertEqual(f.value.reply, MAILBOX_FULL)

    def test_store_os_error(self) -> None:
        """An OS error in the store is a temporary failure."""
        self.store.error = OSError(5, "I/O error")
        dest = LocalMailbox("bob@example.com", BOB)
        self.failureResultOf(
            self.local.deliver("Q1", "", dest, MESSAGE), TemporaryError
        )


class FileTests(SynchronousTestCase):
    """Appending to files in mbox format."""

    def test_append(self) -> None:
        """Two deliveries append two mboxrd records with From quoting."""
        path = os.path.abspath(self.mktemp())
        clock = Clock()
        local = LocalDelivery(FakeStore(), None, clock)  # type: ignore[arg-type]
        target = FileTarget(path, "list@example.com")
        for _ in range(2):
            self.successResultOf(local.deliver("Q1", "a@b.example", target, MESSAGE))
        with open(path, "rb") as f:
            content = f.read()
        record = mbox_bytes(
            b"Return-Path: <a@b.example>\r\nDelivered-To: list@example.com\r\n"
            + MESSAGE,
            "a@b.example",
            0.0,
        )
        self.assertEqual(content, record * 2)
        self.assertTrue(
            record.startswith(b"From a@b.example Thu Jan  1 00:00:00 1970\n")
        )
        self.assertIn(b"\n>From here.\n", record)
        self.assertNotIn(b"\r", record)

    def test_unwritable(self) -> None:
        """A file in a missing folder is a temporary failure; a folder as the
        file is permanent."""
        local = LocalDelivery(FakeStore(), None, Clock())  # type: ignore[arg-type]
        missing = FileTarget("/nonexistent-folder/x/mbox", "l@example.com")
        self.failureResultOf(local.deliver("Q1", "", missing, MESSAGE), TemporaryError)
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder)
        self.failureResultOf(
            local.deliver("Q1", "", FileTarget(folder, "l@example.com"), MESSAGE),
            PermanentError,
        )


class ExitStatusTests(SynchronousTestCase):
    """sysexits(3) codes map to temporary or permanent replies."""

    def test_map(self) -> None:
        """0 is success; 75, 71, 74, 78 temporary; others permanent."""
        self.assertIsNone(exit_status_reply(0))
        for code in (71, 74, 75, 78):
            reply = exit_status_reply(code)
            assert reply is not None
            self.assertTrue(reply.is_temporary, code)
        for code in (1, 2, 64, 65, 67, 69, 77, 127):
            reply = exit_status_reply(code)
            assert reply is not None
            self.assertTrue(reply.is_permanent, code)
        reply = exit_status_reply(67)
        assert reply is not None
        self.assertEqual(reply.status, "5.1.1")


class ProgramTests(TestCase):
    """Program targets run for real through the reactor."""

    def local(self, clock: Clock | None = None, **settings: object) -> LocalDelivery:
        """A LocalDelivery on the real reactor (and a given clock)."""
        from twisted.internet import reactor

        return LocalDelivery(
            FakeStore(),
            reactor,
            clock or reactor,
            DeliverySettings(**settings),  # type: ignore[arg-type]
        )

    async def test_stdin_and_environment(self) -> None:
        """The program gets the message (with trace headers) on stdin and the
        sender in its environment; no shell is involved."""
        out = os.path.abspath(self.mktemp())
        script = f'cat > {out}; echo "$SENDER $RECIPIENT" >> {out}'
        target = ProgramTarget(f"/bin/sh -c '{script}'", "list@example.com")
        await self.local().deliver("Q1", "a@b.example", target, MESSAGE)
        with open(out, "rb") as f:
            content = f.read()
        self.assertEqual(
            content,
            b"Return-Path: <a@b.example>\r\nDelivered-To: list@example.com\r\n"
            + MESSAGE
            + b"a@b.example list@example.com\n",
        )

    async def test_tempfail(self) -> None:
        """Exit 75 (EX_TEMPFAIL) is a temporary failure."""
        target = ProgramTarget("/bin/sh -c 'exit 75'", "l@example.com")
        with self.assertRaises(TemporaryError) as cm:
            await self.local().deliver("Q1", "", target, MESSAGE)
        self.assertEqual(cm.exception.reply.code, 451)

    async def test_permanent(self) -> None:
        """Exit 67 (EX_NOUSER) is permanent, 5.1.1; exit 1 permanent too."""
        target = ProgramTarget("/bin/sh -c 'exit 67'", "l@example.com")
        with self.assertRaises(PermanentError) as cm:
            await self.local().deliver("Q1", "", target, MESSAGE)
        self.assertEqual(cm.exception.reply.status, "5.1.1")
        with self.assertRaises(PermanentError):
            await self.local().deliver(
                "Q1", "", ProgramTarget("false", "l@x.y"), MESSAGE
            )

    async def test_path_lookup(self) -> None:
        """A bare command name is found in program_path."""
        await self.local().deliver("Q1", "", ProgramTarget("true", "l@x.y"), MESSAGE)

    async def test_no_shell(self) -> None:
        """Without program_shell, shell syntax is passed as words, not run."""
        out = os.path.abspath(self.mktemp())
        target = ProgramTarget(f"echo hi > {out}", "l@example.com")
        await self.local().deliver("Q1", "", target, MESSAGE)
        self.assertFalse(os.path.exists(out))

    async def test_shell(self) -> None:
        """With program_shell, the command line goes to /bin/sh -c."""
        out = os.path.abspath(self.mktemp())
        target = ProgramTarget(f"echo hi > {out}", "l@example.com")
        await self.local(program_shell=True).deliver("Q1", "", target, MESSAGE)
        with open(out) as f:
            self.assertEqual(f.read(), "hi\n")

    async def test_not_found(self) -> None:
        """A command that does not exist is permanent; so are bad quotes."""
        with self.assertRaises(PermanentError):
            await self.local().deliver(
                "Q1", "", ProgramTarget("no-such-command-here", "l@x.y"), MESSAGE
            )
        with self.assertRaises(PermanentError):
            await self.local().deliver(
                "Q1", "", ProgramTarget("echo 'unbalanced", "l@x.y"), MESSAGE
            )

    async def test_timeout(self) -> None:
        """A program over the time limit is killed: a temporary failure."""
        clock = Clock()
        local = self.local(clock, program_timeout=10.0)
        d = local.deliver("Q1", "", ProgramTarget("sleep 60", "l@x.y"), MESSAGE)
        self.assertNoResult(d)
        clock.advance(10)
        with self.assertRaises(TemporaryError) as cm:
            await d
        self.assertIn("time limit", cm.exception.reply.text)
