"""Tests for L{twistedmail.spool.runner}."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.spool_helpers import FakeStore
from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.aliases.expander import (
    AliasExpander,
    Destination,
    ProgramTarget,
)
from twistedmail.config import AliasSettings, SpoolSettings
from twistedmail.delivery.local import LocalDelivery
from twistedmail.interfaces import Envelope, Recipient, User
from twistedmail.replies import MAILBOX_FULL, TemporaryError
from twistedmail.spool.runner import EntryLocks, LocalAgent, QueueRunner
from twistedmail.spool.store import QueueEntry, Spool, submit_incoming

D = "example.test"
T = TypeVar("T")
MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"


def _user(name: str) -> User:
    return User(f"{name}@{D}", "", f"{D}/{name}")


class FakeAgent:
    """A local agent that records copies; tests set per-key errors or hold
    deliveries open."""

    def __init__(self) -> None:
        self.copies: list[tuple[str, str, str]] = []
        self.errors: dict[str, Exception] = {}
        self.hold = False
        self.held: list[Deferred[None]] = []
        self.on_deliver: list[object] = []

    def deliver(
        self, queue_id: str, sender: str, destination: Destination, message: bytes
    ) -> Deferred[None]:
        """Record one copy, or fail as told."""
        key = str(destination)
        for hook in self.on_deliver:
            hook(queue_id)  # type: ignore[operator]
        if key in self.errors:
            return fail(self.errors[key])
        self.copies.append((queue_id, sender, key))
        if self.hold:
            d: Deferred[None] = Deferred()
            self.held.append(d)
            return d
        return succeed(None)


class EntryLocksTests(SynchronousTestCase):
    """L{EntryLocks}: one holder per entry at a time, first come first
    served, failures passed on and the lock freed whatever happens."""

    def test_uncontended(self) -> None:
        """A free entry's call runs at once; its result comes back and the
        entry is free again."""
        locks = EntryLocks()
        held = []
        d = locks.run("A", lambda: succeed(held.append(locks.locked("A")) or 7))
        self.assertEqual(self.successResultOf(d), 7)
        self.assertEqual(held, [True])
        self.assertFalse(locks.locked("A"))

    def test_waits_in_order(self) -> None:
        """Calls for a held entry wait and then run one after another in
        the order they came; another entry is not held up."""
        locks = EntryLocks()
        first: Deferred[str] = Deferred()
        second: Deferred[str] = Deferred()
        ran: list[str] = []

        def call(name: str, d: Deferred[str]) -> Callable[[], Deferred[str]]:
            def f() -> Deferred[str]:
                ran.append(name)
                return d

            return f

        d1 = locks.run("A", call("one", first))
        d2 = locks.run("A", call("two", second))
        d3 = locks.run("A", call("three", succeed("3")))
        d4 = locks.run("B", call("other", succeed("b")))
        self.assertEqual(ran, ["one", "other"])
        self.assertEqual(self.successResultOf(d4), "b")
        self.assertNoResult(d2)
        first.callback("1")
        self.assertEqual(self.successResultOf(d1), "1")
        self.assertEqual(ran, ["one", "other", "two"])
        self.assertTrue(locks.locked("A"))
        second.callback("2")
        self.assertEqual(
            [self.successResultOf(d2), self.successResultOf(d3)], ["2", "3"]
        )
        self.assertEqual(ran, ["one", "other", "two", "three"])
        self.assertFalse(locks.locked("A"))
        self.assertFalse(locks.locked("B"))

    def test_failures(self) -> None:
        """A call that raises or fails passes its failure to its caller
        only; the next call still runs and the entry ends free."""
        locks = EntryLocks()
        gate: Deferred[None] = Deferred()

        def boom() -> Deferred[None]:
            raise ValueError("boom")

        d1 = locks.run("A", lambda: gate)
        d2 = locks.run("A", boom)
        d3 = locks.run("A", lambda: fail(KeyError("gone")))
        d4 = locks.run("A", lambda: succeed("ok"))
        gate.callback(None)
        self.assertIsNone(self.successResultOf(d1))
        self.failureResultOf(d2, ValueError)
        self.failureResultOf(d3, KeyError)
        self.assertEqual(self.successResultOf(d4), "ok")
        self.assertFalse(locks.locked("A"))


class RunnerTestCase(SynchronousTestCase):
    """A spool, a directory with bob and carol, and a runner on a fake clock."""

    settings = SpoolSettings(max_active_deliveries=2, retry_delay=60.0)

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.path = self.mktemp()
        self.spool = Spool(self.path, self.clock)
        self.directory = MemoryDirectory(
            (D,),
            (_user("bob"), _user("carol")),
            {
                f"team@{D}": ("bob", "carol"),
                f"fwd@{D}": ("bob", "friend@remote.test"),
                f"prog@{D}": ("|/bin/true",),
            },
        )
        self.expander = AliasExpander(
            self.directory, AliasSettings(allow_programs=True, allow_files=True)
        )
        self.agent = FakeAgent()
        self.runner = self.make_runner()

    def make_runner(self) -> QueueRunner:
        """A runner over this test's spool."""
        return QueueRunner(
            self.spool, self.expander, self.local_agent(), self.clock, self.settings
        )

    def local_agent(self) -> LocalAgent:
        """The local delivery agent the runner uses."""
        return self.agent

    def start(self) -> None:
        """Start the runner and let its start-up scan finish."""
        self.runner.startService()
        self.addCleanup(self.stop)
        self.clock.advance(0)
        self.successResultOf(self.runner.started)

    def stop(self) -> None:
        """Stop the runner if it still runs."""
        if self.runner.running:
            self.successResultOf(self.runner.stopService())

    def submit(self, *recipients: str, message: bytes = MESSAGE) -> str:
        """Commit a message through the spool's agent; return its id."""
        agent = self.spool.agent()
        agent.start(Envelope("alice@sender.test"))
        for r in recipients:
            agent.add_recipient(Recipient(r))
        agent.body(message)
        d = agent.commit()
        self.clock.advance(0)
        return self.successResultOf(d)

    def entry(self, queue_id: str) -> QueueEntry:
        """The entry as on disk now."""
        return self.successResultOf(Spool(self.path, self.clock).load(queue_id))

    def queue(self) -> list[str]:
        """The ids in the queue."""
        return self.successResultOf(self.spool.list())


class DeliveryTests(RunnerTestCase):
    """Entries are expanded and delivered, and removed when done."""

    def test_new_entry(self) -> None:
        """A committed entry is delivered at once and removed."""
        self.start()
        queue_id = self.submit(f"bob@{D}")
        self.assertEqual(
            self.agent.copies, [(queue_id, "alice@sender.test", f"mailbox bob@{D}")]
        )
        self.assertEqual(self.queue(), [])

    def test_alias(self) -> None:
        """An alias is expanded after spooling: each member gets a copy."""
        self.start()
        self.submit(f"team@{D}")
        self.assertEqual(
            sorted(c[2] for c in self.agent.copies),
            [f"mailbox bob@{D}", f"mailbox carol@{D}"],
        )
        self.assertEqual(self.queue(), [])

    def test_resume_after_restart(self) -> None:
        """Entries left on disk (no runner was running) are delivered when the
        runner starts."""
        ids = [self.submit(f"bob@{D}"), self.submit(f"carol@{D}")]
        self.assertEqual(self.queue(), sorted(ids))
        self.start()
        self.assertEqual(sorted(c[0] for c in self.agent.copies), sorted(ids))
        self.assertEqual(self.queue(), [])

    def test_partial_then_retry(self) -> None:
        """One member deferred: the other is delivered, the recipient is
        deferred with the reason and a next attempt; the retry gives only the
        missing copy."""
        self.agent.errors[f"mailbox carol@{D}"] = TemporaryError(
            MAILBOX_FULL, "carol over quota"
        )
        self.start()
        queue_id = self.submit(f"team@{D}")
        [record] = self.entry(queue_id).recipients
        self.assertEqual(record.status, "deferred")
        self.assertEqual(record.reply, MAILBOX_FULL)
        self.assertIn("carol over quota", record.reason)
        self.assertEqual(record.next_attempt, 1060.0)
        self.assertEqual(record.attempts, 1)
        self.assertEqual(len(self.agent.copies), 1)

        del self.agent.errors[f"mailbox carol@{D}"]
        self.clock.advance(59)
        self.assertEqual(len(self.agent.copies), 1)
        self.clock.advance(1)
        self.assertEqual(
            [c[2] for c in self.agent.copies],
            [f"mailbox bob@{D}", f"mailbox carol@{D}"],
        )
        self.assertEqual(self.queue(), [])

    def test_backoff(self) -> None:
        """Each further temporary failure doubles the delay."""
        self.agent.errors[f"mailbox bob@{D}"] = TemporaryError(MAILBOX_FULL)
        self.start()
        queue_id = self.submit(f"bob@{D}")
        self.clock.advance(60)
        record = self.entry(queue_id).recipients[0]
        self.assertEqual((record.attempts, record.next_attempt), (2, 1180.0))

    def test_flush(self) -> None:
        """flush() retries a deferred recipient before its time."""
        self.agent.errors[f"mailbox bob@{D}"] = TemporaryError(MAILBOX_FULL)
        self.start()
        self.submit(f"bob@{D}")
        del self.agent.errors[f"mailbox bob@{D}"]
        self.clock.advance(1)
        self.assertEqual(self.agent.copies, [])
        self.runner.flush()
        self.clock.advance(0)  # the attempt record's folder fsync
        self.assertEqual(len(self.agent.copies), 1)
        self.assertEqual(self.queue(), [])

    def test_deferred_survives_restart(self) -> None:
        """A deferred recipient keeps its next attempt across a restart."""
        self.agent.errors[f"mailbox bob@{D}"] = TemporaryError(MAILBOX_FULL)
        self.start()
        self.submit(f"bob@{D}")
        self.successResultOf(self.runner.stopService())
        del self.agent.errors[f"mailbox bob@{D}"]
        self.runner = self.make_runner()
        self.start()
        self.assertEqual(self.agent.copies, [])
        self.clock.advance(60)
        self.assertEqual(len(self.agent.copies), 1)
        self.assertEqual(self.queue(), [])


class RecordTests(RunnerTestCase):
    """What stays in the queue is recorded in the entry."""

    def test_remote(self) -> None:
        """A remote recipient is marked remote and the entry stays."""
        self.start()
        queue_id = self.submit("someone@remote.test")
        [record] = self.entry(queue_id).recipients
        self.assertEqual(record.status, "remote")
        self.assertEqual(self.agent.copies, [])
        self.assertEqual(self.queue(), [queue_id])

    def test_forward(self) -> None:
        """An alias to a local and a remote address: the local copy is
        delivered, the remote target becomes its own record."""
        self.start()
        queue_id = self.submit(f"fwd@{D}")
        fwd, friend = self.entry(queue_id).recipients
        self.assertEqual(fwd.status, "delivered")
        self.assertEqual(
            (friend.address, friend.status, friend.parent),
            ("friend@remote.test", "remote", f"fwd@{D}"),
        )
        self.assertEqual(
            self.entry(queue_id).envelope.recipients, (Recipient(f"fwd@{D}"),)
        )

    def test_unknown_user(self) -> None:
        """An unknown recipient fails with 550 5.1.1; the entry is kept for
        the bounce."""
        self.start()
        queue_id = self.submit(f"nobody@{D}", f"bob@{D}")
        nobody, bob = self.entry(queue_id).recipients
        self.assertEqual(
            (nobody.status, nobody.reply and nobody.reply.status), ("failed", "5.1.1")
        )
        self.assertEqual(bob.status, "delivered")
        self.assertEqual(self.queue(), [queue_id])
        # A restart does not try it again.
        self.successResultOf(self.runner.stopService())
        self.runner = self.make_runner()
        self.start()
        self.assertEqual(len(self.agent.copies), 1)

    def test_loop_refused(self) -> None:
        """With the real local delivery, a message already delivered to bob
        (Delivered-To) fails as a loop."""
        store = FakeStore()
        self.runner = QueueRunner(
            self.spool,
            self.expander,
            LocalDelivery(store, None, self.clock),  # type: ignore[arg-type]
            self.clock,
            self.settings,
        )
        self.start()
        queue_id = self.submit(
            f"bob@{D}", message=b"Delivered-To: bob@example.test\r\n" + MESSAGE
        )
        [record] = self.entry(queue_id).recipients
        self.assertEqual(record.status, "failed")
        assert record.reply is not None
        self.assertEqual((record.reply.code, record.reply.status), (554, "5.4.6"))
        self.assertEqual(store.delivered, {})

    def test_attempt_recorded_first(self) -> None:
        """Before a program runs, the attempt is on disk."""
        seen: list[int] = []
        self.agent.on_deliver.append(
            lambda queue_id: seen.append(self.entry(queue_id).recipients[0].attempts)
        )
        self.start()
        queue_id = self.submit(f"prog@{D}", f"bob@{D}")
        self.assertEqual(seen, [1, 1])
        self.assertEqual(self.queue(), [])
        self.assertIn(
            (
                queue_id,
                "alice@sender.test",
                str(ProgramTarget("/bin/true", f"prog@{D}")),
            ),
            self.agent.copies,
        )

    def test_held(self) -> None:
        """A held entry is left alone."""
        queue_id = self.submit(f"bob@{D}")
        entry = self.entry(queue_id)
        self.spool.update_status(queue_id, entry.recipients, held=True)
        self.clock.advance(0)
        self.start()
        self.assertEqual(self.agent.copies, [])
        self.assertEqual(self.queue(), [queue_id])


class LimitTests(RunnerTestCase):
    """Deliveries in flight are bounded, and stopping waits for them."""

    def test_bounded(self) -> None:
        """With a limit of two, the third entry waits for a slot."""
        self.agent.hold = True
        self.start()
        for name in ("bob", "carol", "bob"):
            self.submit(f"{name}@{D}")
        self.assertEqual(len(self.agent.held), 2)
        self.agent.held[0].callback(None)
        self.assertEqual(len(self.agent.held), 3)
        for d in self.agent.held[1:]:
            d.callback(None)
        self.assertEqual(self.queue(), [])

    def test_stop_waits(self) -> None:
        """stopService fires only when the delivery in flight is done."""
        self.agent.hold = True
        self.start()
        queue_id = self.submit(f"bob@{D}")
        stopped = self.runner.stopService()
        self.assertNoResult(stopped)
        self.agent.held[0].callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.queue(), [])
        self.assertNotIn(queue_id, self.queue())


class IncomingTests(RunnerTestCase):
    """Mail dropped by sendmail is picked up."""

    def test_at_start(self) -> None:
        """A message dropped while no server ran is delivered on start."""
        submit_incoming(
            self.path, Envelope("root@" + D, (Recipient(f"bob@{D}"),)), MESSAGE, now=5.0
        )
        self.start()
        self.assertEqual(len(self.agent.copies), 1)
        self.assertEqual(os.listdir(os.path.join(self.path, "incoming")), [])

    def test_poll(self) -> None:
        """A message dropped while the server runs is found on the next poll."""
        self.start()
        submit_incoming(
            self.path, Envelope("root@" + D, (Recipient(f"bob@{D}"),)), MESSAGE, now=5.0
        )
        self.assertEqual(self.agent.copies, [])
        self.clock.advance(self.settings.incoming_poll_interval)
        self.assertEqual(len(self.agent.copies), 1)
        self.assertEqual(self.queue(), [])


class MaildirTests(RunnerTestCase):
    """The runner, local delivery and the real Maildir store together."""

    def local_agent(self) -> LocalAgent:
        """Local delivery into real Maildirs under a temporary mail root."""
        from twistedmail.maildir.store import MaildirStore

        self.mail = os.path.abspath(self.path + "-mail")
        store = MaildirStore(self.mail, "mx.example.test", self.clock, _inline)
        return LocalDelivery(store, None, self.clock)  # type: ignore[arg-type]

    def messages(self, name: str) -> list[bytes]:
        """The messages in a user's INBOX (new/ and cur/)."""
        found = []
        for sub in ("new", "cur"):
            folder = os.path.join(self.mail, D, name, sub)
            for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
                with open(os.path.join(folder, entry), "rb") as f:
                    found.append(f.read())
        return found

    def test_delivered(self) -> None:
        """A message reaches the Maildir with Return-Path and Delivered-To."""
        self.start()
        self.submit(f"team@{D}")
        [bob] = self.messages("bob")
        self.assertEqual(
            bob,
            b"Return-Path: <alice@sender.test>\r\nDelivered-To: bob@example.test\r\n"
            + MESSAGE,
        )
        self.assertEqual(len(self.messages("carol")), 1)

    def test_exactly_once_after_crash(self) -> None:
        """A crash after delivery but before the entry was removed: the
        restarted runner delivers it again to no one."""
        queue_id = self.submit(f"bob@{D}")
        path = os.path.join(self.path, "queue", queue_id)
        with open(path, "rb") as f:
            saved = f.read()
        self.start()
        self.assertEqual(len(self.messages("bob")), 1)
        self.successResultOf(self.runner.stopService())
        with open(path, "wb") as f:
            f.write(saved)  # as if the removal never reached the disk
        self.runner = self.make_runner()
        self.start()
        self.assertEqual(len(self.messages("bob")), 1)
        self.assertEqual(self.queue(), [])


def _inline(f: Callable[[], T]) -> Deferred[T]:
    return maybeDeferred(f)
