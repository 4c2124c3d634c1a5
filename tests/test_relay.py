"""Tests for L{twistedmail.spool.relay}: the outbound queue on a fake clock
with a fake transport."""

from __future__ import annotations

import email
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.relay_helpers import FakeTransport, Outbound, wait
from tests.smtp_fakes import Mailbag, expander_for
from tests.smtp_fakes import directory as smtp_directory
from twistedmail.config import QueueSettings, RelaySettings, ServerSettings, Settings
from twistedmail.interfaces import Envelope, Recipient, User
from twistedmail.replies import PermanentError, Reply, TemporaryError
from twistedmail.smtp.mx import MXResolver
from twistedmail.smtp.routing import Router
from twistedmail.smtp.server import SMTPServerFactory
from twistedmail.spool.dsn import NOTICE_DELAY, Notifier
from twistedmail.spool.relay import (
    JITTER_FRACTION,
    RelayRunner,
    SMTPTransport,
    _domain_of,
    retry_delay,
)
from twistedmail.spool.runner import EntryLocks
from twistedmail.spool.store import (
    DELIVERED,
    REMOTE,
    QueueEntry,
    RecipientRecord,
    Spool,
)

BUSY = Reply(451, "4.3.0", "Try again later")
UNKNOWN = Reply(550, "5.1.1", "No such user")
SCHEDULE = (300.0, 600.0, 1200.0, 2400.0, 7200.0)


class DomainOfTests(SynchronousTestCase):
    """L{_domain_of}, the cached domain of a recipient."""

    def test_domain(self) -> None:
        """The normalised domain, the same when asked again; C{None} for
        what is no address, again."""
        for _ in range(2):
            self.assertEqual(_domain_of("Bob@B.Test"), "b.test")
            self.assertIsNone(_domain_of("no-at-sign"))


class RetryDelayTests(SynchronousTestCase):
    """The pure back-off function."""

    def test_default_schedule(self) -> None:
        """5, 10, 20, 40 minutes, then every 2 hours."""
        self.assertEqual(
            [retry_delay(n, SCHEDULE) for n in range(1, 9)],
            [300.0, 600.0, 1200.0, 2400.0, 7200.0, 7200.0, 7200.0, 7200.0],
        )

    def test_jitter(self) -> None:
        """Jitter adds at most JITTER_FRACTION of the delay."""
        self.assertEqual(
            retry_delay(1, SCHEDULE, 0.5), 300.0 * (1 + JITTER_FRACTION / 2)
        )

    @given(st.integers(min_value=0, max_value=10_000), st.floats(0.0, 1.0))
    def test_bounds(self, attempts: int, jitter: float) -> None:
        """Every delay lies between the schedule's entry and that plus the
        jitter fraction."""
        base = SCHEDULE[min(max(attempts, 1), len(SCHEDULE)) - 1]
        delay = retry_delay(attempts, SCHEDULE, jitter)
        self.assertGreaterEqual(delay, base)
        self.assertLessEqual(delay, base * (1 + JITTER_FRACTION))


class RelayTestCase(SynchronousTestCase):
    """An outbound set-up started in a temp spool."""

    settings = QueueSettings()

    def setUp(self) -> None:
        self.out = Outbound(self.mktemp(), self.settings)
        self.transport = self.out.transport
        self.out.start()
        self.addCleanup(self.out.stop)

    def entry(self, queue_id: str) -> QueueEntry:
        """The entry as on disk."""
        return wait(self.out, self.out.spool.load(queue_id))

    def remote(self, queue_id: str) -> list[RecipientRecord]:
        """The entry's records that have no parent or are remote."""
        return [r for r in self.entry(queue_id).recipients if r.status == REMOTE]

    def bounces(self) -> list[tuple[str, email.message.Message]]:
        """Local copies from the null sender: (destination, parsed)."""
        return [
            (dest, email.message_from_bytes(msg))
            for (_, sender, dest), msg in zip(
                self.out.agent.copies, self.out.agent.messages, strict=True
            )
            if sender == ""
        ]


class DeliveryTests(RelayTestCase):
    """Sending remote recipients."""

    def test_relayed(self) -> None:
        """A remote recipient is sent once, then the entry is gone."""
        queue_id = self.out.submit("bob@b.test")
        self.assertEqual(self.transport.connects, ["b.test"])
        [(domain, message)] = self.transport.sent
        self.assertEqual(message.sender, "alice@a.test")
        self.assertEqual([r.address for r in message.recipients], ["bob@b.test"])
        self.assertEqual(message.data.split(b"\r\n")[0], b"From: alice@a.test")
        self.assertNotIn(queue_id, self.out.queue_ids())
        self.assertEqual(self.transport.closes, 1)

    def test_grouped_by_domain(self) -> None:
        """Recipients of one domain share a transaction; other domains get
        their own."""
        self.out.submit("bob@b.test", "carol@b.test", "dave@c.test")
        by_domain = {
            d: [r.address for r in m.recipients] for d, m in self.transport.sent
        }
        self.assertEqual(
            by_domain,
            {"b.test": ["bob@b.test", "carol@b.test"], "c.test": ["dave@c.test"]},
        )

    def test_alias_to_remote(self) -> None:
        """An alias target in a remote domain is relayed; local members are
        delivered locally."""
        self.out.submit("team@a.test")
        self.assertEqual(self.transport.recipients_sent(), ["carol@b.test"])
        self.assertEqual([c[2] for c in self.out.agent.copies], ["mailbox bob@a.test"])

    def test_dsn_parameters_passed(self) -> None:
        """NOTIFY, ORCPT and RET go with the message."""
        self.out.submit(
            Recipient("bob@b.test", ("SUCCESS", "FAILURE"), "rfc822;bob@b.test"),
            ret="HDRS",
        )
        [(_, message)] = self.transport.sent
        self.assertEqual(message.recipients[0].notify, ("SUCCESS", "FAILURE"))
        self.assertEqual(message.recipients[0].orcpt, "rfc822;bob@b.test")
        self.assertEqual(message.ret, "HDRS")

    def test_local_domain_never_leaves(self) -> None:
        """A remote record whose domain is local (it became ours) is handed
        back to the runner, never sent."""
        self.transport.replies["bob@b.test"] = BUSY
        queue_id = self.out.submit("bob@b.test")
        wait(self.out, self.out.directory.add_domain("b.test"))
        wait(
            self.out,
            self.out.directory.add_user(User("bob@b.test", "", "bob@b.test")),
        )
        self.out.advance(300)
        self.assertEqual(len(self.transport.sent), 1)
        self.assertIn(
            (queue_id, "alice@a.test", "mailbox bob@b.test"), self.out.agent.copies
        )
        self.assertNotIn(queue_id, self.out.queue_ids())


class RetryTests(RelayTestCase):
    """Temporary failures, the schedule and expiry."""

    def test_schedule(self) -> None:
        """A 4xx recipient is retried after 5, 10, 20, 40 minutes, then
        every 2 hours; the attempt is recorded each time."""
        self.transport.replies["bob@b.test"] = BUSY
        queue_id = self.out.submit("bob@b.test")
        times = [self.out.clock.seconds()]
        for delay in (300, 600, 1200, 2400, 7200, 7200):
            self.out.advance(delay - 1)
            self.assertEqual(len(self.transport.sent), len(times))
            self.out.advance(1)
            self.assertEqual(len(self.transport.sent), len(times) + 1)
            times.append(self.out.clock.seconds())
        [record] = self.remote(queue_id)
        self.assertEqual(record.attempts, 7)
        self.assertEqual(record.last_attempt, times[-1])
        self.assertEqual(record.next_attempt, times[-1] + 7200)
        self.assertEqual(record.reply, BUSY)
        self.assertEqual(
            record.reason, "host mx.b.test said: 451 4.3.0 Try again later"
        )

    def test_attempt_recorded_before_trying(self) -> None:
        """While a send is on the wire the entry already says attempt 1 and
        when the next one is due."""
        self.transport.hold = True
        queue_id = self.out.submit("bob@b.test")
        [record] = self.remote(queue_id)
        self.assertEqual(record.attempts, 1)
        self.assertEqual(record.next_attempt, self.out.clock.seconds() + 300)

    def test_per_recipient(self) -> None:
        """One recipient accepted, one deferred: only the deferred one is
        sent again; the accepted one never twice."""
        self.transport.replies["carol@b.test"] = BUSY
        queue_id = self.out.submit("bob@b.test", "carol@b.test")
        records = {r.address: r for r in self.entry(queue_id).recipients}
        self.assertEqual(records["bob@b.test"].status, DELIVERED)
        self.assertEqual(records["carol@b.test"].status, REMOTE)
        del self.transport.replies["carol@b.test"]
        self.out.advance(300)
        self.assertEqual(
            self.transport.recipients_sent(),
            ["bob@b.test", "carol@b.test", "carol@b.test"],
        )
        self.assertNotIn(queue_id, self.out.queue_ids())

    def test_permanent_bounces(self) -> None:
        """A 5xx recipient is bounced to the sender at once, the others are
        delivered, and the entry is removed."""
        self.transport.replies["carol@b.test"] = UNKNOWN
        queue_id = self.out.submit("bob@b.test", "carol@b.test")
        self.assertNotIn(queue_id, self.out.queue_ids())
        [(dest, bounce)] = self.bounces()
        self.assertEqual(dest, "mailbox alice@a.test")
        status = bounce.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(status["Final-Recipient"], "rfc822;carol@b.test")
        self.assertEqual(status["Action"], "failed")
        self.assertEqual(status["Remote-MTA"], "dns;mx.b.test")
        self.assertEqual(status["Diagnostic-Code"], "smtp;550 5.1.1 No such user")
        self.assertEqual(
            self.transport.recipients_sent(), ["bob@b.test", "carol@b.test"]
        )

    def test_session_error(self) -> None:
        """Recipients the server never answered (the session broke) are
        retried, and the connection is not used again."""
        self.transport.session_error = "connection lost during DATA"
        self.transport.replies["bob@b.test"] = Reply(451, "4.4.2", "connection lost")
        queue_id = self.out.submit("bob@b.test")
        [record] = self.remote(queue_id)
        self.assertEqual(record.reply, Reply(451, "4.4.2", "connection lost"))

    def test_delay_warning(self) -> None:
        """After 4 hours of temporary failures the sender gets one delay
        warning; the recipient stays queued."""
        self.transport.replies["bob@b.test"] = BUSY
        queue_id = self.out.submit("bob@b.test")
        self.out.jump(300)
        self.out.jump(600)
        self.out.jump(1200)
        self.out.jump(2400)
        self.out.jump(7200)  # 3h15 after arrival
        self.assertEqual(self.bounces(), [])
        self.out.jump(7200)  # 5h15: past delay_warning
        [(dest, warning)] = self.bounces()
        self.assertEqual(dest, "mailbox alice@a.test")
        self.assertEqual(warning["Subject"], "Delayed Mail (still being retried)")
        [record] = self.remote(queue_id)
        self.assertIn(NOTICE_DELAY, record.done)
        self.out.jump(7200)
        self.assertEqual(len(self.bounces()), 1)

    def test_expiry(self) -> None:
        """After max_lifetime the recipient is bounced with its last reply."""
        self.transport.replies["bob@b.test"] = BUSY
        queue_id = self.out.submit("bob@b.test")
        for delay in (300, 600, 1200, 2400):
            self.out.jump(delay)
        while queue_id in self.out.queue_ids():
            self.out.jump(7200)
        elapsed = self.out.clock.seconds() - 1_700_000_000
        self.assertGreaterEqual(elapsed, 5 * 86400)
        self.assertLess(elapsed, 5 * 86400 + 7200)
        bounce = self.bounces()[-1][1]
        self.assertEqual(bounce["Subject"], "Undelivered Mail Returned to Sender")
        status = bounce.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(status["Action"], "failed")
        self.assertEqual(status["Status"], "4.3.0")
        self.assertEqual(status["Diagnostic-Code"], "smtp;451 4.3.0 Try again later")

    def test_connect_failure_temporary(self) -> None:
        """A destination that cannot be reached defers every message waiting
        for it, with the reason."""
        self.transport.connect_errors["b.test"] = TemporaryError(
            Reply(451, "4.4.1", "No answer from any MX host"), "all hosts down"
        )
        queue_id = self.out.submit("bob@b.test")
        [record] = self.remote(queue_id)
        self.assertEqual(
            record.reply, Reply(451, "4.4.1", "No answer from any MX host")
        )
        self.assertEqual(record.reason, "b.test: all hosts down")
        del self.transport.connect_errors["b.test"]
        self.out.advance(300)
        self.assertNotIn(queue_id, self.out.queue_ids())

    def test_connect_failure_permanent(self) -> None:
        """A null MX (556) bounces at once."""
        self.transport.connect_errors["b.test"] = PermanentError(
            Reply(556, "5.1.10", "Recipient domain does not accept mail (null MX)")
        )
        queue_id = self.out.submit("bob@b.test")
        self.assertNotIn(queue_id, self.out.queue_ids())
        [(_, bounce)] = self.bounces()
        status = bounce.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(status["Status"], "5.1.10")

    def test_reason_names_domain_once(self) -> None:
        """A reason that already names the domain (the MX resolver's
        ``b.test: NXDOMAIN``) is not prefixed with it again; the bounce's
        text shows it once."""
        self.transport.connect_errors["b.test"] = PermanentError(
            Reply(550, "5.1.2", "Recipient domain does not exist"), "b.test: NXDOMAIN"
        )
        queue_id = self.out.submit("bob@b.test")
        self.assertNotIn(queue_id, self.out.queue_ids())
        [(_, bounce)] = self.bounces()
        human = bounce.get_payload()[0].get_payload(decode=True)  # type: ignore[index]
        self.assertIn(b"<bob@b.test>: b.test: NXDOMAIN\r\n", human)
        self.assertNotIn(b"b.test: b.test:", human)


class NullSenderTests(RelayTestCase):
    """Mail from <> is never bounced."""

    def test_goes_to_postmaster_once(self) -> None:
        """A failed bounce (from <>) goes to the postmaster; the postmaster
        notice failing is dropped."""
        self.transport.replies["bob@b.test"] = UNKNOWN
        queue_id = self.out.submit("bob@b.test", sender="")
        self.assertNotIn(queue_id, self.out.queue_ids())
        self.assertEqual(
            [(s, d) for _, s, d in self.out.agent.copies],
            [("", "mailbox postmaster@a.test (built-in postmaster)")],
        )
        self.assertEqual(self.out.queue_ids(), [])


class ConcurrencyTests(RelayTestCase):
    """Limits and connection reuse."""

    settings = QueueSettings(max_concurrency=3, max_per_domain=2, connection_reuse=3)

    def test_per_domain_limit(self) -> None:
        """At most max_per_domain connections to one domain."""
        self.transport.hold = True
        for _ in range(5):
            self.out.submit("bob@b.test")
        self.assertEqual(len(self.transport.connects), 2)
        self.assertEqual(self.transport.peak_sends, 2)
        while self.transport.held:
            self.transport.release_one()
            self.out.turn()
        self.assertEqual(len(self.transport.sent), 5)
        self.assertEqual(self.transport.peak_sends, 2)
        self.assertEqual(self.out.queue_ids(), [])

    def test_total_limit(self) -> None:
        """At most max_concurrency connections in all."""
        self.transport.hold = True
        for domain in ("b.test", "c.test", "d.test"):
            for _ in range(2):
                self.out.submit(f"x@{domain}")
        self.assertEqual(self.transport.peak_sends, 3)
        while self.transport.held:
            self.transport.release_one()
            self.out.turn()
            self.assertLessEqual(self.transport.open_connections, 3)
        self.assertEqual(len(self.transport.sent), 6)
        self.assertEqual(self.out.queue_ids(), [])

    def test_connection_reuse(self) -> None:
        """Messages waiting for a domain go over the open connection, up to
        connection_reuse messages per connection."""
        self.transport.hold = True
        for _ in range(8):
            self.out.submit("bob@b.test")
        while self.transport.held:
            self.transport.release_one()
            self.out.turn()
        self.assertEqual(len(self.transport.sent), 8)
        # Two workers at first; each carries at most three messages.
        self.assertEqual(len(self.transport.connects), 3)
        self.assertEqual(self.transport.closes, 3)


class RestartTests(SynchronousTestCase):
    """State lives in the queue entry: a restart resumes it."""

    def test_restart_in_the_middle(self) -> None:
        """A crash while a send is on the wire: the new process waits for
        the recorded next attempt, then sends once."""
        path = self.mktemp()
        first = Outbound(path)
        first.transport.hold = True
        first.start()
        queue_id = first.submit("bob@b.test")
        self.assertEqual(len(first.transport.sent), 1)
        first.stop()  # the held send never answers: as good as a crash

        transport = FakeTransport()
        second = Outbound(path, clock=first.clock, transport=transport)
        second.start()
        self.addCleanup(second.stop)
        second.advance(299)
        self.assertEqual(transport.sent, [])
        second.advance(1)
        self.assertEqual(transport.recipients_sent(), ["bob@b.test"])
        self.assertNotIn(queue_id, second.queue_ids())

    def test_failed_records_bounced_on_start(self) -> None:
        """Failed records left by a crash before the bounce are bounced on
        start."""
        path = self.mktemp()
        first = Outbound(path)
        first.spool.prepare()
        queue_id = first.submit("bob@b.test")
        entry = wait(first, first.spool.load(queue_id))
        failed = RecipientRecord("bob@b.test", status="failed", reply=UNKNOWN)
        wait(first, first.spool.update_status(queue_id, [failed]))
        first.start()
        self.addCleanup(first.stop)
        self.assertNotIn(entry.queue_id, first.queue_ids())
        self.assertEqual([c[1] for c in first.agent.copies], [""])


class LocalFailureTests(RelayTestCase):
    """The runner's failures go through the notifier too."""

    def test_local_permanent_failure_bounced(self) -> None:
        """A local delivery refused for good is bounced to the sender."""
        self.out.agent.errors["mailbox bob@a.test"] = PermanentError(
            Reply(550, "5.2.1", "Mailbox unavailable")
        )
        queue_id = self.out.submit("bob@a.test", sender="someone@a.test")
        self.assertNotIn(queue_id, self.out.queue_ids())
        # someone@a.test does not exist: the bounce fails in turn and goes
        # to the postmaster, once.
        self.assertEqual(
            [d for _, s, d in self.out.agent.copies],
            ["mailbox postmaster@a.test (built-in postmaster)"],
        )

    def test_local_success_notice(self) -> None:
        """NOTIFY=SUCCESS on a local delivery sends a success report."""
        self.out.submit(Recipient("bob@a.test", ("SUCCESS",)))
        notices = self.bounces()
        self.assertEqual(len(notices), 1)
        self.assertEqual(notices[0][1]["Subject"], "Successful Mail Delivery Report")

    def test_relayed_success_notice(self) -> None:
        """NOTIFY=SUCCESS to a server without DSN: a "relayed" report; with
        DSN, none (the server reports)."""
        self.out.submit(Recipient("bob@b.test", ("SUCCESS",)))
        [(_, notice)] = self.bounces()
        block = notice.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(block["Action"], "relayed")
        self.transport.dsn = True
        self.out.submit(Recipient("bob@b.test", ("SUCCESS",)))
        self.assertEqual(len(self.bounces()), 1)


class ForwardingTests(SynchronousTestCase):
    """The envelope sender of forwarded mail is rewritten."""

    def setUp(self) -> None:
        self.out = Outbound(self.mktemp(), rewrite_sender=lambda s: f"SRS0=x={s}")
        self.out.start()
        self.addCleanup(self.out.stop)

    def test_foreign_sender_forwarded(self) -> None:
        """Alias to a foreign address, foreign sender: rewritten."""
        self.out.submit("fwd@a.test", sender="joe@c.test")
        [(_, message)] = self.out.transport.sent
        self.assertEqual(message.sender, "SRS0=x=joe@c.test")

    def test_local_sender_kept(self) -> None:
        """Our own sender needs no rewriting."""
        self.out.submit("fwd@a.test", sender="alice@a.test")
        [(_, message)] = self.out.transport.sent
        self.assertEqual(message.sender, "alice@a.test")

    def test_direct_recipient_kept(self) -> None:
        """A recipient that is not forwarded keeps the sender."""
        self.out.submit("friend@b.test", sender="joe@c.test")
        [(_, message)] = self.out.transport.sent
        self.assertEqual(message.sender, "joe@c.test")

    def test_null_sender_kept(self) -> None:
        """The null sender stays null."""
        self.out.submit("fwd@a.test", sender="")
        [(_, message)] = self.out.transport.sent
        self.assertEqual(message.sender, "")


class ResultTests(RelayTestCase):
    """Results are recorded on the status as it is when the server has
    answered, not as it was when the message left."""

    def in_flight(self) -> str:
        """Submit to bob@b.test, whose server will say 451; return the id
        while that send waits for its reply."""
        self.transport.hold = True
        self.transport.replies["bob@b.test"] = BUSY
        queue_id = self.out.submit("bob@b.test")
        self.assertEqual(len(self.transport.held), 1)
        return queue_id

    def test_change_while_sending_kept(self) -> None:
        """An entry held while its message is on the wire stays held, and
        the reply is recorded too."""
        queue_id = self.in_flight()
        wait(self.out, self.out.relay.hold(queue_id))
        self.transport.release_one()
        self.out.turn()
        entry = self.entry(queue_id)
        self.assertTrue(entry.held)
        [record] = self.remote(queue_id)
        self.assertEqual(record.reply, BUSY)
        self.assertEqual(record.attempts, 1)

    def test_broken_status_while_sending(self) -> None:
        """A status file broken while the message is on the wire is
        quarantined (never deleted), and the entry stays in the queue."""
        queue_id = self.in_flight()
        with open(self.out.spool.status_path(queue_id), "wb") as f:
            f.write(b"garbage\n")
        self.transport.release_one()
        self.out.turn()
        self.assertIn(queue_id, self.out.queue_ids())
        quarantined = os.listdir(os.path.join(self.out.path, "quarantine"))
        self.assertEqual(quarantined, [f"{queue_id}.status"])
        self.flushLoggedErrors()

    def test_entry_deleted_while_sending(self) -> None:
        """An entry whose files are gone when the reply comes is left gone:
        nothing is written back for it."""
        queue_id = self.in_flight()
        os.unlink(self.out.spool.entry_path(queue_id))
        os.unlink(self.out.spool.status_path(queue_id))
        self.transport.release_one()
        self.out.turn()
        self.assertNotIn(queue_id, self.out.queue_ids())
        self.assertFalse(os.path.exists(self.out.spool.status_path(queue_id)))


class OperatorTests(RelayTestCase):
    """hold, release, delete and flush on the running service."""

    def test_hold_and_release(self) -> None:
        """A held entry is not retried; released, it is tried at once."""
        self.transport.replies["bob@b.test"] = BUSY
        queue_id = self.out.submit("bob@b.test")
        wait(self.out, self.out.relay.hold(queue_id))
        self.assertTrue(self.entry(queue_id).held)
        self.out.advance(600)
        self.assertEqual(len(self.transport.sent), 1)
        del self.transport.replies["bob@b.test"]
        wait(self.out, self.out.relay.release(queue_id))
        self.out.turn()
        self.assertEqual(len(self.transport.sent), 2)
        self.assertNotIn(queue_id, self.out.queue_ids())

    def test_flush(self) -> None:
        """flush tries deferred recipients now."""
        self.transport.replies["bob@b.test"] = BUSY
        self.out.submit("bob@b.test")
        self.out.relay.flush()
        self.out.turn()
        self.assertEqual(len(self.transport.sent), 2)

    def test_delete(self) -> None:
        """delete removes an entry without a bounce."""
        self.transport.replies["bob@b.test"] = BUSY
        queue_id = self.out.submit("bob@b.test")
        wait(self.out, self.out.relay.delete(queue_id))
        self.assertEqual(self.out.queue_ids(), [])
        self.out.advance(600)
        self.assertEqual(len(self.transport.sent), 1)
        self.assertEqual(self.bounces(), [])

    def test_unknown_id(self) -> None:
        """Operations on an unknown id fail with KeyError."""
        d = self.out.relay.hold("NOPE")
        self.out.turn()
        self.failureResultOf(d, KeyError)
        d2 = self.out.relay.delete("NOPE")
        self.out.turn()
        self.failureResultOf(d2, KeyError)


class SMTPTransportTests(TestCase):
    """The relay with the real ESMTP client, against our own server on
    loopback (a smarthost route to 127.0.0.1)."""

    async def _relay(self) -> None:
        bag = Mailbag()
        d = smtp_directory()
        factory = SMTPServerFactory(
            Settings().with_changes(server=ServerSettings(hostname="mx.local.example")),
            reactor,
            role="smtp",
            delivery_agent_factory=bag.agent,
            expander=expander_for(d),
            directory=d,
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        relay_settings = RelaySettings(
            smarthost=f"[127.0.0.1]:{port.getHost().port}",
            smarthost_tls="opportunistic",
        )
        router = Router(relay_settings, MXResolver(None, reactor), helo_name="a.test")
        spool = Spool(self.mktemp(), reactor)
        spool.prepare()
        agent = spool.agent()
        agent.start(Envelope("joe@a.test", received_at=reactor.seconds()))  # type: ignore[attr-defined]
        for rcpt in ("alice@local.example", "nobody@local.example"):
            agent.add_recipient(Recipient(rcpt))
        agent.body(b"Subject: hi\r\n\r\nHello.\r\n")
        queue_id = await agent.commit()
        records = [
            RecipientRecord("alice@local.example", status=REMOTE),
            RecipientRecord("nobody@local.example", status=REMOTE),
        ]
        await spool.update_status(queue_id, records)
        notifier = Notifier(spool, reactor, "a.test", QueueSettings())
        relay = RelayRunner(
            spool,
            SMTPTransport(reactor, router),
            reactor,
            notifier,
            EntryLocks(),
            QueueSettings(),
        )
        relay.startService()
        self.addCleanup(relay.stopService)
        for _ in range(400):
            if queue_id not in await spool.list():
                break
            await deferLater(reactor, 0.025, lambda: None)  # type: ignore[arg-type]
        self.assertNotIn(queue_id, await spool.list())
        [message] = bag.delivered
        self.assertEqual(message.envelope.sender, "joe@a.test")
        self.assertEqual(
            [r.address for r in message.recipients], ["alice@local.example"]
        )
        # nobody@ was refused at RCPT: a bounce to joe is queued.
        [bounce_id] = await spool.list()
        bounce = await spool.load(bounce_id)
        self.assertEqual(bounce.envelope.sender, "")
        text = await spool.read_message(bounce_id)
        self.assertIn(b"Final-Recipient: rfc822;nobody@local.example", text)
        self.assertIn(b"Remote-MTA: dns;127.0.0.1", text)

    def test_relay_over_smtp(self) -> None:
        """One recipient accepted, one refused at RCPT: delivered and
        bounced, the entry removed."""
        return Deferred.fromCoroutine(self._relay())
