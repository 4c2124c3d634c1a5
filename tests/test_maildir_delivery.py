"""Tests for delivery into Maildir: L{twistedmail.maildir.store.MaildirStore.deliver}
and L{twistedmail.maildir.delivery}."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.maildir_helpers import make_store
from twistedmail.interfaces import User
from twistedmail.maildir import MaildirError, MaildirStore
from twistedmail.maildir.delivery import (
    JOURNAL_NAME,
    Delivery,
    DeliveryBatches,
    DeliveryJournal,
    deliver_batch,
    token_hash,
)
from twistedmail.replies import INTERNAL_ERROR, MAILBOX_FULL, TemporaryError

MESSAGE = b"Subject: hi\r\n\r\nHello\r\n"


class DeliverTests(SynchronousTestCase):
    """Delivery by the qmail rules."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1_790_000_000.25)
        self.store = make_store(self.root, self.clock)
        self.path = os.path.join(self.root, "example.test", "alice")

    def deliver(
        self,
        message: bytes = MESSAGE,
        unique: str = "Q1.alice",
        quota: int | None = None,
    ) -> str:
        return self.successResultOf(
            self.store.deliver(self.path, message, unique, quota)
        )

    def test_creates_maildir(self) -> None:
        """The Maildir and its cur/, new/, tmp/ are made with mode 0700."""
        self.deliver()
        for sub in ("", "cur", "new", "tmp"):
            mode = stat.S_IMODE(os.stat(os.path.join(self.path, sub)).st_mode)
            self.assertEqual(mode, 0o700, sub)

    def test_file_in_new(self) -> None:
        """The message lands in new/ under the returned name; tmp/ is empty."""
        base = self.deliver()
        self.assertEqual(os.listdir(os.path.join(self.path, "new")), [base])
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        with open(os.path.join(self.path, "new", base), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        mode = stat.S_IMODE(os.stat(os.path.join(self.path, "new", base)).st_mode)
        self.assertEqual(mode, 0o600)

    def test_name(self) -> None:
        """The name has the clock's time, microseconds, pid, the delivery
        hash, the host name and the size."""
        base = self.deliver()
        self.assertTrue(base.startswith(f"1790000000.M250000P{os.getpid()}"), base)
        self.assertIn("U" + token_hash("Q1.alice")[:8] + ".", base)
        self.assertTrue(base.endswith(f".mx.example.test,S={len(MESSAGE)}"), base)

    def test_names_built_at_call_time(self) -> None:
        """Later deliveries carry the later time."""
        self.deliver()
        self.clock.advance(100)
        base = self.deliver(unique="Q2.alice")
        self.assertTrue(base.startswith("1790000100."), base)

    def test_idempotent(self) -> None:
        """The same unique twice gives one file and the same name."""
        first = self.deliver()
        second = self.deliver()
        self.assertEqual(first, second)
        self.assertEqual(os.listdir(os.path.join(self.path, "new")), [first])

    def test_idempotent_after_move_to_cur(self) -> None:
        """A retry finds the message after a client moved it to cur/ with
        flags, and writes nothing."""
        base = self.deliver()
        os.rename(
            os.path.join(self.path, "new", base),
            os.path.join(self.path, "cur", base + ":2,RS"),
        )
        self.assertEqual(self.deliver(), base)
        self.assertEqual(os.listdir(os.path.join(self.path, "new")), [])
        self.assertEqual(os.listdir(os.path.join(self.path, "cur")), [base + ":2,RS"])

    def test_idempotent_across_store_restart(self) -> None:
        """A new store (a restarted server) still finds the earlier copy."""
        base = self.deliver()
        again = make_store(self.root, self.clock)
        self.assertEqual(
            self.successResultOf(again.deliver(self.path, MESSAGE, "Q1.alice")), base
        )
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 1)

    def test_crash_before_link(self) -> None:
        """When the journal has the name but the file never got linked (a
        crash in between), the retry delivers under that same name."""
        os.makedirs(self.path)
        journal = DeliveryJournal(self.path)
        with journal.lock():
            journal.record(token_hash("Q1.alice"), "1789999999.Mx.host,S=22", 0)
        self.assertEqual(self.deliver(), "1789999999.Mx.host,S=22")
        self.assertEqual(
            os.listdir(os.path.join(self.path, "new")), ["1789999999.Mx.host,S=22"]
        )

    def test_crash_before_link_other_size(self) -> None:
        """If the retried message differs in size from the recorded name, a
        new name is recorded so that ,S= stays true."""
        os.makedirs(self.path)
        journal = DeliveryJournal(self.path)
        with journal.lock():
            journal.record(token_hash("Q1.alice"), "1789999999.Mx.host,S=99", 0)
        base = self.deliver()
        self.assertTrue(base.endswith(f",S={len(MESSAGE)}"), base)
        self.assertEqual(self.deliver(), base)
        self.assertEqual(os.listdir(os.path.join(self.path, "new")), [base])

    def test_torn_journal_line(self) -> None:
        """A half-written last journal line (crash while appending) is
        ignored and does not spoil later records."""
        first = self.deliver()
        with open(os.path.join(self.path, JOURNAL_NAME), "ab") as f:
            f.write(b"0123456789abcdef0123 half")
        second = self.deliver(unique="Q2.alice")
        restarted = make_store(self.root, self.clock)
        self.assertEqual(
            self.successResultOf(restarted.deliver(self.path, MESSAGE, "Q1.alice")),
            first,
        )
        self.assertEqual(
            self.successResultOf(restarted.deliver(self.path, MESSAGE, "Q2.alice")),
            second,
        )
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 2)

    def test_journal_compacted(self) -> None:
        """A large journal is rewritten without records older than 30 days."""
        os.makedirs(self.path)
        with open(os.path.join(self.path, JOURNAL_NAME), "wb") as f:
            f.write(b"twistedmail-delivered 1\n")
            for i in range(30_000):
                f.write(b"%020x 1000.M%dP1.host,S=1\n" % (i, i))
        self.deliver()
        self.assertLess(os.path.getsize(os.path.join(self.path, JOURNAL_NAME)), 1000)
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 1)
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 1)
        self.deliver()
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 1)

    def test_busy_journal_not_rewritten_each_time(self) -> None:
        """A journal holding more than 1 MiB of recent records is rewritten
        once, not on every delivery."""
        os.makedirs(self.path)
        journal = os.path.join(self.path, JOURNAL_NAME)
        now = int(self.clock.seconds())
        with open(journal, "wb") as f:
            f.write(b"twistedmail-delivered 1\n")
            for i in range(30_000):
                f.write(b"%020x %d.M%dP1.host,S=1\n" % (i, now, i))
        self.deliver(unique="Q1")
        inode = os.stat(journal).st_ino
        self.deliver(unique="Q2")
        self.deliver(unique="Q3")
        self.assertEqual(os.stat(journal).st_ino, inode)
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 3)
        self.assertEqual(self.deliver(unique="Q1"), self.deliver(unique="Q1"))
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 3)

    def test_different_uniques(self) -> None:
        """Different deliveries make different files."""
        a = self.deliver(unique="Q1.alice")
        b = self.deliver(unique="Q1.bob")
        self.assertNotEqual(a, b)
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 2)

    def test_quota(self) -> None:
        """Over quota is a temporary failure with 452 4.2.2 and writes
        nothing; a retry of a done delivery still succeeds."""
        size = len(MESSAGE)
        done = self.deliver(quota=size * 2)
        self.deliver(unique="Q2", quota=size * 2)
        failure = self.failureResultOf(
            self.store.deliver(self.path, MESSAGE, "Q3", size * 2), TemporaryError
        )
        self.assertEqual(failure.value.reply, MAILBOX_FULL)
        self.assertEqual(MAILBOX_FULL.code, 452)
        self.assertEqual(MAILBOX_FULL.status, "4.2.2")
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 2)
        self.assertEqual(self.deliver(quota=size * 2), done)

    def test_quota_counts_folders(self) -> None:
        """Messages in folders count against the quota too."""
        self.deliver()
        self.store.create_folder(self.path, "Archive")
        mailbox = self.store.open_mailbox(self.path, "Archive")
        mailbox.add(b"x" * 100)
        self.assertEqual(self.store.mailbox_size(self.path), len(MESSAGE) + 100)
        self.failureResultOf(
            self.store.deliver(self.path, MESSAGE, "Q2", len(MESSAGE) * 2 + 50),
            TemporaryError,
        )

    def test_io_error(self) -> None:
        """A file system failure is a temporary failure with a generic
        reply; the reason names the problem for the log."""
        os.makedirs(self.root)
        with open(os.path.join(self.root, "example.test"), "wb"):
            pass
        failure = self.failureResultOf(
            self.store.deliver(self.path, MESSAGE, "Q1"), TemporaryError
        )
        self.assertEqual(failure.value.reply, INTERNAL_ERROR)
        self.assertIn("Maildir delivery failed", failure.value.reason)

    def test_notifies(self) -> None:
        """Listeners of the INBOX hear of each delivery until they
        unsubscribe."""
        calls: list[str] = []
        unsubscribe = self.store.subscribe(
            self.path, "INBOX", lambda: calls.append("x")
        )
        self.deliver()
        self.assertEqual(calls, ["x"])
        unsubscribe()
        self.deliver(unique="Q2")
        self.assertEqual(calls, ["x"])

    def test_listener_error_logged(self) -> None:
        """A failing listener is logged; delivery still succeeds."""

        def broken() -> None:
            raise RuntimeError("boom")

        self.store.subscribe(self.path, "INBOX", broken)
        self.deliver()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_hostname_escaped(self) -> None:
        """'/' and ':' in the host name cannot break the file name."""
        store = make_store(self.root, self.clock)
        store.hostname = "a/b:c"
        base = self.successResultOf(store.deliver(self.path, MESSAGE, "Q1"))
        self.assertIn(".a\\057b\\072c,", base)
        self.assertNotIn(":", base)


class MailboxPathTests(SynchronousTestCase):
    """L{MaildirStore.mailbox_path}."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.store = make_store(self.root)

    def user(self, mailbox: str) -> User:
        return User("alice@example.test", "", mailbox)

    def test_relative(self) -> None:
        """A relative path is under the mail root."""
        self.assertEqual(
            self.store.mailbox_path(self.user("example.test/alice")),
            os.path.join(self.root, "example.test", "alice"),
        )

    def test_absolute(self) -> None:
        """An absolute path is used as it is."""
        self.assertEqual(
            self.store.mailbox_path(self.user("/srv/mail/a")), "/srv/mail/a"
        )

    def test_escape_refused(self) -> None:
        """Relative paths that leave the mail root, or are the root itself,
        are refused."""
        for bad in ("../x", "a/../../x", "..", ".", "", "a\0b", "a/.."):
            self.assertRaises(MaildirError, self.store.mailbox_path, self.user(bad))


class _HeldRunner:
    """A thread runner that holds each job until the test runs it."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, f: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((f, d))
        return d

    def run_next(self) -> None:
        f, d = self.jobs.pop(0)
        try:
            result = f()
        except Exception:
            d.errback()
        else:
            d.callback(result)


def _counted_batches() -> tuple[_HeldRunner, list[int], DeliveryBatches]:
    """Delivery batches on a held runner whose work names each delivery
    C{base-<unique>} and records each batch's size."""
    runner = _HeldRunner()
    sizes: list[int] = []

    def work(pairs: list[tuple[str, Delivery]]) -> list[str | Exception]:
        sizes.append(len(pairs))
        return [f"base-{item.unique}" for _, item in pairs]

    return runner, sizes, DeliveryBatches(runner, work)


class BatchTests(SynchronousTestCase):
    """Deliveries in batches: L{deliver_batch} and L{DeliveryBatches}."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.root, "alice")
        self.journal = DeliveryJournal(self.path)
        self.counter = 0

    def new_base(self, size: int, token: str, now: float) -> str:
        self.counter += 1
        return f"{int(now)}.M{self.counter}U{token}.host,S={size}"

    def batch(self, *items: Delivery, size: int = 0) -> list[str | Exception]:
        return deliver_batch(
            self.path, list(items), self.journal, self.new_base, lambda p: size
        )

    def test_several(self) -> None:
        """Each message of a batch lands in new/ under its own name, with
        its journal record; tmp/ is left empty."""
        results = self.batch(
            Delivery(b"one\r\n", "Q1.a", now=10.0),
            Delivery(b"two!\r\n", "Q2.a", now=10.0),
        )
        self.assertEqual(len(results), 2)
        new = os.path.join(self.path, "new")
        self.assertEqual(sorted(os.listdir(new)), sorted(results))
        for base, data in zip(results, (b"one\r\n", b"two!\r\n"), strict=True):
            assert isinstance(base, str)
            with open(os.path.join(new, base), "rb") as f:
                self.assertEqual(f.read(), data)
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        again = DeliveryJournal(self.path)
        self.assertEqual(again.lookup(token_hash("Q1.a")), results[0])
        self.assertEqual(again.lookup(token_hash("Q2.a")), results[1])

    def test_retry_in_later_batch(self) -> None:
        """A later batch finds deliveries made before and writes them again
        for nobody; new ones are delivered."""
        first = self.batch(Delivery(b"one\r\n", "Q1.a"))
        second = self.batch(Delivery(b"one\r\n", "Q1.a"), Delivery(b"x\r\n", "Q3.a"))
        self.assertEqual(second[0], first[0])
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 2)

    def test_journal_read_once_per_batch(self) -> None:
        """A batch reads the journal once, under the lock (not once per item
        and again before appending), and still finds a delivery another
        process journaled and linked before it."""
        reads: list[int] = []

        class Counting(DeliveryJournal):
            def _catch_up(self) -> None:
                reads.append(1)
                super()._catch_up()

        first = self.batch(Delivery(b"one\r\n", "Q1.a"))
        self.journal = Counting(self.path)
        results = self.batch(
            Delivery(b"one\r\n", "Q1.a"),
            Delivery(b"two\r\n", "Q2.a"),
            Delivery(b"three\r\n", "Q3.a"),
        )
        self.assertEqual(len(reads), 1)
        self.assertEqual(results[0], first[0])
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 3)
        again = DeliveryJournal(self.path)
        for item, base in zip(("Q1.a", "Q2.a", "Q3.a"), results, strict=True):
            self.assertEqual(again.lookup(token_hash(item)), base)

    def test_folders_looked_for_once(self) -> None:
        """The first batch makes the Maildir and marks the journal so; later
        batches do not look for its folders again."""
        self.assertFalse(self.journal.made)
        self.batch(Delivery(b"one\r\n", "Q1.a"))
        self.assertTrue(self.journal.made)
        self.batch(Delivery(b"two\r\n", "Q2.a"))
        self.assertTrue(self.journal.made)
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 2)

    def test_maildir_removed_between_batches(self) -> None:
        """A Maildir removed after an earlier batch is made again and the
        next batch is delivered, each message once."""
        self.batch(Delivery(b"one\r\n", "Q1.a"))
        shutil.rmtree(self.path)
        results = self.batch(
            Delivery(b"two\r\n", "Q2.a"), Delivery(b"three\r\n", "Q3.a")
        )
        new = os.path.join(self.path, "new")
        self.assertEqual(sorted(os.listdir(new)), sorted(results))
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(os.path.join(self.path, sub)))

    def test_tmp_removed_between_batches(self) -> None:
        """With ``tmp/`` (or ``new/``) gone after an earlier batch, the
        items go once more after the folders are made: one copy each, under
        the name the journal holds."""
        first = self.batch(Delivery(b"one\r\n", "Q1.a"))
        shutil.rmtree(os.path.join(self.path, "tmp"))
        shutil.rmtree(os.path.join(self.path, "new"))
        results = self.batch(
            Delivery(b"two\r\n", "Q2.a"), Delivery(b"three\r\n", "Q3.a")
        )
        self.assertNotIn(first[0], results)
        new = os.path.join(self.path, "new")
        self.assertEqual(sorted(os.listdir(new)), sorted(results))
        for base, data in zip(results, (b"two\r\n", b"three\r\n"), strict=True):
            assert isinstance(base, str)
            with open(os.path.join(new, base), "rb") as f:
                self.assertEqual(f.read(), data)
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        again = DeliveryJournal(self.path)
        self.assertEqual(again.lookup(token_hash("Q2.a")), results[0])
        self.assertEqual(again.lookup(token_hash("Q3.a")), results[1])

    def test_same_token_twice(self) -> None:
        """The same delivery twice in one batch is one message."""
        results = self.batch(Delivery(b"one\r\n", "Q1.a"), Delivery(b"one\r\n", "Q1.a"))
        self.assertEqual(results[0], results[1])
        self.assertEqual(os.listdir(os.path.join(self.path, "new")), [results[0]])

    def test_quota_counts_the_batch(self) -> None:
        """The quota counts the batch's earlier messages: the one that
        would pass it waits with 452 4.2.2."""
        results = self.batch(
            Delivery(b"x" * 60, "Q1.a", quota=100),
            Delivery(b"y" * 60, "Q2.a", quota=100),
            size=10,
        )
        self.assertIsInstance(results[0], str)
        error = results[1]
        assert isinstance(error, TemporaryError)
        self.assertEqual(error.reply, MAILBOX_FULL)
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 1)

    def test_one_write_fails(self) -> None:
        """A message file that cannot be created fails its item only: the
        others of the batch are delivered, and the file in the way is left
        alone."""
        os.makedirs(os.path.join(self.path, "tmp"))
        clash = os.path.join(self.path, "tmp", "clash")
        with open(clash, "wb") as f:
            f.write(b"someone else's")
        # One call per item for its name in new/, then one for its tmp/ name.
        names = iter(["first", "second", "third", "t1", "clash", "t3"])
        results = deliver_batch(
            self.path,
            [Delivery(b"1\r\n", "Q1.a"), Delivery(b"2\r\n", "Q2.a")]
            + [Delivery(b"3\r\n", "Q3.a")],
            self.journal,
            lambda size, token, now: next(names),
            lambda p: 0,
        )
        self.assertIsInstance(results[1], FileExistsError)
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.path, "new"))), ["first", "third"]
        )
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), ["clash"])
        with open(clash, "rb") as f:
            self.assertEqual(f.read(), b"someone else's")

    def test_journal_sees_other_writers(self) -> None:
        """After its own append the journal still notices records another
        process appends, and keeps its own."""
        first = self.batch(Delivery(b"one\r\n", "Q1.a"))
        other = DeliveryJournal(self.path)
        other.record(token_hash("Q9.a"), "99.M1Uother.host,S=3", 99.0)
        second = self.batch(Delivery(b"two\r\n", "Q2.a"))
        self.assertEqual(self.journal.lookup(token_hash("Q1.a")), first[0])
        self.assertEqual(self.journal.lookup(token_hash("Q2.a")), second[0])
        self.assertEqual(
            self.journal.lookup(token_hash("Q9.a")), "99.M1Uother.host,S=3"
        )
        self.assertEqual(other.lookup(token_hash("Q2.a")), second[0])

    def test_file_system_error(self) -> None:
        """When the Maildir cannot be made, every item gets the error."""
        os.makedirs(self.root)
        with open(self.path, "wb"):
            pass
        results = self.batch(Delivery(b"a", "Q1.a"), Delivery(b"b", "Q2.a"))
        self.assertEqual([type(r) for r in results], [FileExistsError] * 2)

    def test_group_commit(self) -> None:
        """Deliveries handed over while a batch runs form the next batch:
        one thread job for them all, each Deferred fires with its name."""
        runner, sizes, batches = _counted_batches()
        first = batches.deliver(self.path, Delivery(b"a", "Q1"))
        later = [batches.deliver(self.path, Delivery(b"b", f"Q{i}")) for i in (2, 3)]
        self.assertEqual(len(runner.jobs), 1)
        runner.run_next()
        self.assertEqual(self.successResultOf(first), "base-Q1")
        self.assertNoResult(later[0])
        self.assertEqual(len(runner.jobs), 1)
        runner.run_next()
        self.assertEqual(
            [self.successResultOf(d) for d in later], ["base-Q2", "base-Q3"]
        )
        self.assertEqual(sizes, [1, 2])
        self.assertEqual(runner.jobs, [])

    def test_deliveries_from_callbacks_wait_together(self) -> None:
        """Deliveries handed over by a finished batch's callbacks (the queue
        runner moving on) all form the next batch: the first does not go
        alone."""
        runner, sizes, batches = _counted_batches()
        later: list[Deferred[str]] = []

        def more(_: str) -> None:
            later.append(batches.deliver(self.path, Delivery(b"b", f"Q{len(later)}")))

        for i in range(4):
            batches.deliver(self.path, Delivery(b"a", f"P{i}")).addCallback(more)
        runner.run_next()  # P0, alone; its callback hands over Q0
        runner.run_next()  # P1-P3 and Q0; their callbacks hand over Q1-Q3
        runner.run_next()  # Q1-Q3
        self.assertEqual(runner.jobs, [])
        self.assertEqual(sizes, [1, 4, 3])
        self.assertEqual(
            [self.successResultOf(d) for d in later],
            ["base-Q0", "base-Q1", "base-Q2", "base-Q3"],
        )

    def test_group_commit_errors(self) -> None:
        """An item's exception fails only its Deferred; a job that fails as
        a whole fails every Deferred of the batch."""
        runner = _HeldRunner()

        def work(pairs: list[tuple[str, Delivery]]) -> list[str | Exception]:
            if len(pairs) > 1:
                raise RuntimeError("broken")
            return [OSError("disk")]

        batches = DeliveryBatches(runner, work)
        first = batches.deliver(self.path, Delivery(b"a", "Q1"))
        later = [batches.deliver(self.path, Delivery(b"b", f"Q{i}")) for i in (2, 3)]
        runner.run_next()
        self.failureResultOf(first, OSError)
        runner.run_next()
        for d in later:
            self.failureResultOf(d, RuntimeError)

    def test_store_batches_by_maildir(self) -> None:
        """The store delivers one batch into two Maildirs, each message to
        its own, and notifies each INBOX."""
        runner = _HeldRunner()
        clock = Clock()
        clock.advance(1_790_000_000)
        store = MaildirStore(self.root, "mx.example.test", clock, runner)
        other = os.path.join(self.root, "bob")
        heard: list[str] = []
        store.subscribe(self.path, "INBOX", lambda: heard.append("alice"))
        store.subscribe(other, "INBOX", lambda: heard.append("bob"))
        first = store.deliver(self.path, MESSAGE, "Q0.alice")
        ds = [
            store.deliver(self.path, MESSAGE, "Q1.alice"),
            store.deliver(other, MESSAGE, "Q1.bob"),
            store.deliver(self.path, MESSAGE, "Q2.alice"),
        ]
        runner.run_next()
        runner.run_next()
        self.assertEqual(runner.jobs, [])
        base = self.successResultOf(first)
        names = [self.successResultOf(d) for d in ds]
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.path, "new"))),
            sorted([base, names[0], names[2]]),
        )
        self.assertEqual(os.listdir(os.path.join(other, "new")), [names[1]])
        self.assertEqual(sorted(heard), ["alice", "alice", "alice", "bob"])
