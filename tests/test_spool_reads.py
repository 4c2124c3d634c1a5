"""Tests for the spool's batched reads (L{twistedmail.spool.store}): reads
asked for while a thread job runs share the next job, and the message read
that skips the envelope record gives the same bytes as the full read."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.spool_helpers import ManualThreads
from twistedmail.interfaces import Envelope, Recipient
from twistedmail.spool.store import (
    REMOTE,
    BrokenEntry,
    RecipientRecord,
    Spool,
    read_entry_file,
    read_message_file,
)

T = TypeVar("T")
MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"


class BatchedReadTests(SynchronousTestCase):
    """Spool reads go to the thread pool many to a trip."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = self.mktemp()
        self.spool = Spool(self.path, self.clock, lambda f: _now(f))
        self.spool.prepare()
        self.ids = [self.commit(f"user{i}@b.test") for i in range(3)]
        self.threads = ManualThreads()
        self.reader = Spool(self.path, self.clock, self.threads)

    def commit(self, address: str) -> str:
        """Commit one message (inline thread runner)."""
        agent = self.spool.agent()
        agent.start(Envelope("alice@a.test"))
        agent.add_recipient(Recipient(address))
        agent.body(MESSAGE)
        d = agent.commit()
        self.clock.advance(0)
        return self.successResultOf(d)

    def test_one_trip_for_reads_asked_meanwhile(self) -> None:
        """The first read starts a job at once; the reads asked for while it
        runs go together into one next job, each caller getting its own
        answer."""
        first = self.reader.load(self.ids[0])
        self.assertEqual(len(self.threads.jobs), 1)
        loads = [self.reader.load(i) for i in self.ids[1:]]
        message = self.reader.read_message(self.ids[2])
        status = self.reader.read_status(self.ids[1])
        self.assertEqual(len(self.threads.jobs), 1)
        self.threads.run_one()
        self.assertEqual(self.successResultOf(first).queue_id, self.ids[0])
        self.assertEqual(len(self.threads.jobs), 1)
        self.threads.run_one()
        self.assertEqual(self.threads.jobs, [])
        self.assertEqual(
            [self.successResultOf(d).queue_id for d in loads], self.ids[1:]
        )
        self.assertEqual(self.successResultOf(message), MESSAGE)
        # No status file yet: the caller gets the error, the others not.
        self.failureResultOf(status, FileNotFoundError)

    def test_errors_go_to_their_callers(self) -> None:
        """A read that fails fails only its own caller."""
        self.reader.load(self.ids[0])
        missing = self.reader.load("F" * 23)
        good = self.reader.load(self.ids[1])
        self.threads.run_all()
        self.failureResultOf(missing, KeyError)
        self.assertEqual(self.successResultOf(good).queue_id, self.ids[1])

    def test_failed_job(self) -> None:
        """A thread job that fails as a whole fails every read in it, and the
        next reads still get a job."""
        self.reader.load(self.ids[0])
        a = self.reader.load(self.ids[1])
        b = self.reader.load(self.ids[2])
        self.threads.run_one()
        _, d = self.threads.jobs.pop(0)
        d.errback(RuntimeError("pool stopped"))
        self.failureResultOf(a, RuntimeError)
        self.failureResultOf(b, RuntimeError)
        again = self.reader.load(self.ids[1])
        self.threads.run_all()
        self.assertEqual(self.successResultOf(again).queue_id, self.ids[1])

    def test_read_status(self) -> None:
        """read_status gives the status file's records and hold flag."""
        record = RecipientRecord("user0@b.test", status=REMOTE, attempts=2)
        d = self.spool.update_status(self.ids[0], [record], held=True)
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(
            self.successResultOf(self.spool.read_status(self.ids[0])),
            ((record,), True),
        )


class MessageFileTests(SynchronousTestCase):
    """read_message_file gives what read_entry_file's offset and size give,
    and refuses what it refuses at the end of the file."""

    def write(self, message: bytes) -> str:
        """Commit C{message}; return the entry file's path."""
        clock = Clock()
        path = self.mktemp()
        spool = Spool(path, clock, lambda f: _now(f))
        spool.prepare()
        agent = spool.agent()
        agent.start(Envelope("alice@a.test"))
        agent.add_recipient(Recipient("bob@b.test"))
        agent.body(message)
        d = agent.commit()
        clock.advance(0)
        return spool.entry_path(self.successResultOf(d))

    @given(
        st.lists(
            st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\r\n"),
            max_size=6,
        )
    )
    def test_same_as_full_read(self, lines: list[bytes]) -> None:
        """Any message of whole lines reads back the same both ways."""
        message = b"".join(lines)
        path = self.write(message)
        entry, offset = read_entry_file(path)
        with open(path, "rb") as f:
            f.seek(offset)
            full = f.read(entry.size)
        self.assertEqual(read_message_file(path), full)
        self.assertEqual(full, message)

    def test_broken(self) -> None:
        """A truncated file, a wrong size and a missing END line are
        refused."""
        path = self.write(MESSAGE)
        with open(path, "rb") as f:
            content = f.read()
        for bad in (
            content[:-3],
            content.replace(MESSAGE, MESSAGE[5:]),
            content.rpartition(b"END")[0],
            content.replace(b"END ", b"END x"),
        ):
            with open(path, "wb") as f:
                f.write(bad)
            self.assertRaises(BrokenEntry, read_message_file, path)
        os.unlink(path)
        self.assertRaises(FileNotFoundError, read_message_file, path)


def _now(f: Callable[[], T]) -> Deferred[T]:
    """An inline thread runner."""
    return maybeDeferred(f)
