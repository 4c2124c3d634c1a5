"""Tests for the relay's throughput paths: results written while the
connection goes on, connections kept while more jobs may come, a bounded
number of entries examined at once, attempt records written over spare
files, and the ESMTP client's fast paths for message text that needs no
rewriting."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.relay_helpers import FakeTransport
from twistedmail.config import QueueSettings, RelaySettings
from twistedmail.interfaces import Envelope, Recipient
from twistedmail.smtp._client import dot_stuff, normalize_line_endings
from twistedmail.smtp.mx import MXResolver
from twistedmail.smtp.routing import Router
from twistedmail.spool.dsn import Notifier
from twistedmail.spool.relay import IDLE_TIME, RelayRunner
from twistedmail.spool.runner import EntryLocks
from twistedmail.spool.store import REMOTE, RecipientRecord, Spool
from twistedmail.testing import memory_resolver

T = TypeVar("T")
MESSAGE = b"From: alice@a.test\r\nSubject: hi\r\n\r\nHello.\r\n"


class HeldRunner:
    """A spool thread runner that runs calls inline, or keeps them until
    released while C{held}."""

    def __init__(self) -> None:
        self.held = False
        self.waiting: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, f: Callable[[], T], /) -> Deferred[T]:
        """Run C{f} now, or later when held."""
        if not self.held:
            return maybeDeferred(f)
        d: Deferred[T] = Deferred()
        self.waiting.append((f, d))
        return d

    def run_next(self) -> None:
        """Run the oldest kept call."""
        f, d = self.waiting.pop(0)
        maybeDeferred(f).chainDeferred(d)

    def release_all(self) -> None:
        """Stop holding and run every kept call."""
        self.held = False
        while self.waiting:
            f, d = self.waiting.pop(0)
            maybeDeferred(f).chainDeferred(d)


class RelaySetup:
    """A spool with a held runner, a fake transport and a relay, on a fake
    clock; no local runner (entries are queued with remote records)."""

    def __init__(self, path: str, settings: QueueSettings, **kw: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.runner = HeldRunner()
        self.spool = Spool(path, self.clock, self.runner)
        self.spool.prepare()
        self.transport = FakeTransport()
        notifier = Notifier(
            self.spool, self.clock, "mx.a.test", settings, "postmaster@a.test"
        )
        self.relay = RelayRunner(
            self.spool,
            self.transport,
            self.clock,
            notifier,
            EntryLocks(),
            settings,
            random=lambda: 0.0,
            **kw,
        )

    def turn(self) -> None:
        """Run every call due now."""
        for _ in range(1000):
            now = self.clock.seconds()
            if not any(c.getTime() <= now for c in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)
        raise AssertionError("calls keep coming")

    def result(self, d: Deferred[T]) -> T:
        """The result of a Deferred that fires once due calls have run."""
        self.turn()
        out: list[T] = []
        d.addCallback(out.append)
        if not out:
            raise AssertionError("Deferred has not fired")
        return out[0]

    def queue(self, address: str) -> str:
        """Commit a message whose one recipient waits for the relay."""
        agent = self.spool.agent()
        agent.start(Envelope("alice@a.test", received_at=self.clock.seconds()))
        agent.add_recipient(Recipient(address))
        agent.body(MESSAGE)
        queue_id = self.result(agent.commit())
        record = RecipientRecord(address, status=REMOTE)
        self.result(self.spool.update_status(queue_id, [record]))
        return queue_id

    def queue_ids(self) -> list[str]:
        """The ids in the queue."""
        return self.result(self.spool.list())

    def stop(self) -> None:
        """Stop the relay (work still held is left alone)."""
        if self.relay.running:
            self.relay.stopService()


class PipeliningTests(SynchronousTestCase):
    """A connection goes on while the last message's results are written."""

    def setUp(self) -> None:
        settings = QueueSettings(max_concurrency=1, max_per_domain=1)
        self.setup = RelaySetup(self.mktemp(), settings)
        self.addCleanup(self.setup.stop)

    def test_next_message_while_results_are_written(self) -> None:
        """The second message is sent before the first one's results are on
        disk; both entries are gone once the writes are done."""
        s = self.setup
        s.queue("bob@b.test")
        s.queue("carol@b.test")
        s.transport.hold = True
        s.relay.startService()
        s.turn()
        self.assertEqual(s.transport.recipients_sent(), ["bob@b.test"])
        s.runner.held = True
        s.transport.release_one()
        s.turn()
        self.assertEqual(s.transport.recipients_sent(), ["bob@b.test", "carol@b.test"])
        self.assertTrue(s.runner.waiting)
        s.runner.release_all()
        s.transport.release_one()
        s.turn()
        self.assertEqual(s.queue_ids(), [])
        self.assertEqual(len(s.transport.connects), 1)

    def test_in_flight_until_written(self) -> None:
        """A flush while a delivered message's results are being written does
        not send it again."""
        s = self.setup
        s.queue("bob@b.test")
        s.transport.hold = True
        s.relay.startService()
        s.turn()
        s.runner.held = True
        s.transport.release_one()
        s.turn()
        s.relay.flush()
        s.turn()
        s.runner.release_all()
        s.turn()
        s.relay.flush()
        s.turn()
        self.assertEqual(s.transport.recipients_sent(), ["bob@b.test"])
        self.assertEqual(s.queue_ids(), [])


class IdleConnectionTests(SynchronousTestCase):
    """A connection with nothing to send waits while entries are examined."""

    def setUp(self) -> None:
        settings = QueueSettings(max_concurrency=1, max_per_domain=1)
        self.setup = RelaySetup(self.mktemp(), settings, examine_limit=1)
        self.addCleanup(self.setup.stop)
        self.setup.queue("bob@b.test")
        self.setup.queue("carol@b.test")
        self.setup.relay.startService()
        self.setup.runner.held = True
        self.setup.turn()
        while not self.setup.transport.sent:
            self.setup.runner.run_next()
            self.setup.turn()

    def test_waits_for_the_next_job(self) -> None:
        """While the second entry is examined the connection stays open, and
        the second message goes over it."""
        s = self.setup
        self.assertTrue(s.runner.waiting)
        self.assertEqual(s.transport.closes, 0)
        s.runner.release_all()
        s.turn()
        self.assertEqual(s.transport.recipients_sent(), ["bob@b.test", "carol@b.test"])
        self.assertEqual(len(s.transport.connects), 1)
        self.assertEqual(s.transport.closes, 1)
        self.assertEqual(s.queue_ids(), [])

    def test_gives_up(self) -> None:
        """After idle_time seconds without a job the connection closes; the
        next job opens another."""
        s = self.setup
        s.clock.advance(IDLE_TIME)
        self.assertEqual(s.transport.closes, 1)
        s.runner.release_all()
        s.turn()
        self.assertEqual(s.transport.recipients_sent(), ["bob@b.test", "carol@b.test"])
        self.assertEqual(len(s.transport.connects), 2)
        self.assertEqual(s.queue_ids(), [])

    def test_closed_on_stop(self) -> None:
        """Stopping the relay closes an idle connection at once."""
        s = self.setup
        s.relay.stopService()
        self.assertEqual(s.transport.closes, 1)
        self.assertEqual(s.clock.getDelayedCalls(), [])


class HopTransport(FakeTransport):
    """A fake transport whose b.test and c.test share the next hop
    ``[relay.test]:25``."""

    def next_hop(self, domain: str) -> str | None:
        """The shared hop for b.test and c.test."""
        return "[relay.test]:25" if domain in ("b.test", "c.test") else None


class SharedHopTests(SynchronousTestCase):
    """Domains with one next hop share its queue and connections."""

    def test_one_connection(self) -> None:
        """Mail for two domains through one smarthost goes over one
        connection, opened for the first job's domain; a domain of its own
        gets its own connection."""
        settings = QueueSettings(max_concurrency=5, max_per_domain=1)
        s = RelaySetup(self.mktemp(), settings)
        self.addCleanup(s.stop)
        s.transport = HopTransport()
        s.relay = RelayRunner(
            s.spool,
            s.transport,
            s.clock,
            Notifier(s.spool, s.clock, "mx.a.test", settings, "postmaster@a.test"),
            EntryLocks(),
            settings,
        )
        for address in ("x@b.test", "y@c.test", "z@b.test", "w@d.test"):
            s.queue(address)
        s.relay.startService()
        s.turn()
        self.assertEqual(sorted(s.transport.connects), ["b.test", "d.test"])
        self.assertEqual(
            sorted(s.transport.recipients_sent()),
            ["w@d.test", "x@b.test", "y@c.test", "z@b.test"],
        )
        self.assertEqual(s.queue_ids(), [])

    def test_router(self) -> None:
        """The router names the smarthost for the domains it takes."""
        mx = MXResolver(memory_resolver({}), Clock())
        everything = Router(
            RelaySettings(smarthost="relay.test:587"), mx, helo_name="mx.a.test"
        )
        self.assertEqual(everything.next_hop("B.test."), "[relay.test]:587")
        some = Router(
            RelaySettings(smarthost="[192.0.2.1]", smarthost_domains=("b.test",)),
            mx,
            helo_name="mx.a.test",
        )
        self.assertEqual(some.next_hop("sub.b.test"), "[192.0.2.1]:25")
        self.assertIsNone(some.next_hop("c.test"))
        none = Router(RelaySettings(), mx, helo_name="mx.a.test")
        self.assertIsNone(none.next_hop("b.test"))


class ExamineLimitTests(SynchronousTestCase):
    """At most examine_limit entries are examined at once."""

    def test_bounded(self) -> None:
        """With five entries due and a limit of two, two are read at first;
        the rest follow as those finish, and every one is sent once."""
        s = RelaySetup(self.mktemp(), QueueSettings(), examine_limit=2)
        self.addCleanup(s.stop)
        addresses = [f"user{i}@b.test" for i in range(5)]
        for address in addresses:
            s.queue(address)
        s.relay.startService()
        s.runner.held = True
        s.turn()
        self.assertEqual(s.relay.examining, 2)
        # The spool reads both in one trip to the thread pool.
        self.assertEqual(len(s.runner.waiting), 1)
        self.assertEqual(s.transport.sent, [])
        s.runner.release_all()
        s.turn()
        self.assertEqual(sorted(s.transport.recipients_sent()), addresses)
        self.assertEqual(s.queue_ids(), [])

    def test_default(self) -> None:
        """By default the limit is four entries per allowed connection, and
        at least 32."""
        for concurrency, expected in ((1, 32), (50, 200)):
            s = RelaySetup(self.mktemp(), QueueSettings(max_concurrency=concurrency))
            addresses = [f"user{i}@b.test" for i in range(expected + 1)]
            for address in addresses:
                s.queue(address)
            s.relay.startService()
            s.runner.held = True
            s.turn()
            self.assertEqual(s.relay.examining, expected)
            self.assertEqual(len(s.runner.waiting), 1)
            s.runner.release_all()
            s.turn()
            self.assertEqual(len(s.transport.sent), expected + 1)
            s.stop()


# The ESMTP client's message text: the fast paths give what the regular
# expressions give.

TEXT = st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n."])).map(
    b"".join
)


def _normalized(data: bytes) -> bytes:
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


class MessageTextTests(SynchronousTestCase):
    """normalize_line_endings and dot_stuff."""

    @given(TEXT)
    def test_line_endings(self, data: bytes) -> None:
        """Every CR, LF and CRLF becomes CRLF, whether or not the text was
        CRLF already."""
        self.assertEqual(normalize_line_endings(data), _normalized(data))

    @given(TEXT)
    def test_dot_stuffing(self, data: bytes) -> None:
        """Every line that starts with a dot gets another; the end is
        ``.<CRLF>``."""
        data = _normalized(data)
        self.assertEqual(dot_stuff(data), re.sub(rb"(?m)^\.", b"..", data) + b".\r\n")

    def test_clean_text_unchanged(self) -> None:
        """CRLF text without leading dots is passed through."""
        self.assertEqual(normalize_line_endings(MESSAGE), MESSAGE)
        self.assertEqual(dot_stuff(MESSAGE), MESSAGE + b".\r\n")
        self.assertEqual(dot_stuff(b".x\r\n"), b"..x\r\n.\r\n")

    def test_line_ends_apart(self) -> None:
        """A bare CR and a later bare LF (alternating like CRLFs, but not
        adjacent) each become CRLF."""
        self.assertEqual(normalize_line_endings(b"x\ry\nz\r\n"), b"x\r\ny\r\nz\r\n")
        self.assertEqual(normalize_line_endings(b"x\r\n\r"), b"x\r\n\r\n")
        self.assertEqual(normalize_line_endings(b"x\n\r"), b"x\r\n\r\n")


class FlushWhileExaminedTests(SynchronousTestCase):
    """A flush that comes while an entry is being examined is not lost."""

    def _deferred_entry(self, s: RelaySetup) -> str:
        """An entry whose one remote record waits an hour for its next
        attempt."""
        queue_id = s.queue("bob@b.test")
        later = s.clock.seconds() + 3600
        record = RecipientRecord("bob@b.test", status=REMOTE, next_attempt=later)
        s.result(s.spool.update_status(queue_id, [record]))
        return queue_id

    def test_flush_all_during_load(self) -> None:
        """flush() while the entry's load waits in the thread pool: the
        record is tried now, not in an hour."""
        s = RelaySetup(self.mktemp(), QueueSettings())
        self.addCleanup(s.stop)
        self._deferred_entry(s)
        s.relay.startService()
        s.runner.held = True
        s.turn()
        s.relay.flush(None)
        s.relay.flush(None)
        s.runner.release_all()
        s.turn()
        self.assertEqual(s.transport.recipients_sent(), ["bob@b.test"])

    def test_flush_one_during_load(self) -> None:
        """flush(id) while the entry's load waits: tried now."""
        s = RelaySetup(self.mktemp(), QueueSettings())
        self.addCleanup(s.stop)
        queue_id = self._deferred_entry(s)
        s.relay.startService()
        s.runner.held = True
        s.turn()
        self.assertEqual(s.relay.examining, 1)
        s.relay.flush(queue_id)
        s.runner.release_all()
        s.turn()
        self.assertEqual(s.transport.recipients_sent(), ["bob@b.test"])

    def test_no_flush_waits(self) -> None:
        """Without a flush the record waits for its time (the tests above
        are not passing by accident)."""
        s = RelaySetup(self.mktemp(), QueueSettings())
        self.addCleanup(s.stop)
        self._deferred_entry(s)
        s.relay.startService()
        s.turn()
        self.assertEqual(s.transport.sent, [])
        s.clock.advance(3600)
        s.turn()
        self.assertEqual(s.transport.recipients_sent(), ["bob@b.test"])


class AttemptRecordSpareTests(SynchronousTestCase):
    """The relay's attempt record (a status rewrite per message sent)
    overwrites a spare file instead of creating one."""

    def test_status_rewrite_uses_a_spare(self) -> None:
        """After a removal left a spare, the next status rewrite is that
        file, cut to its length, and reads back exactly."""
        s = RelaySetup(self.mktemp(), QueueSettings())
        first = s.queue("bob@b.test")
        second = s.queue("carol@b.test")
        inode = os.stat(s.spool.entry_path(first)).st_ino
        s.result(s.spool.remove(first))
        spare = os.path.join(s.spool.path, "spare")
        self.assertEqual(len(os.listdir(spare)), 1)
        record = RecipientRecord("carol@b.test", status=REMOTE, attempts=1)
        s.result(s.spool.update_status(second, [record]))
        self.assertEqual(os.stat(s.spool.status_path(second)).st_ino, inode)
        self.assertEqual(os.listdir(spare), [])
        self.assertEqual(os.listdir(os.path.join(s.spool.path, "tmp")), [])
        fresh = Spool(s.spool.path, s.clock)
        self.assertEqual(s.result(fresh.read_status(second)), ((record,), False))

    def test_no_spare(self) -> None:
        """With no spare the status file is a new file, as before."""
        s = RelaySetup(self.mktemp(), QueueSettings())
        queue_id = s.queue("bob@b.test")
        record = RecipientRecord("bob@b.test", status=REMOTE, attempts=1)
        s.result(s.spool.update_status(queue_id, [record]))
        fresh = Spool(s.spool.path, s.clock)
        self.assertEqual(s.result(fresh.read_status(queue_id)), ((record,), False))
