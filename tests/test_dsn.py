"""Tests for L{twistedmail.spool.dsn}: report format and the notifier."""

from __future__ import annotations

import email
from dataclasses import replace
from email.message import Message
from typing import TypeVar

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.config import QueueSettings
from twistedmail.interfaces import Envelope, Recipient
from twistedmail.replies import Reply
from twistedmail.spool.dsn import (
    DEFAULT_FULL_RETURN,
    NOTICE_DELAY,
    NOTICE_SUCCESS,
    Notifier,
    RecipientReport,
    Report,
    build_report,
    remote_mta,
    remote_reason,
    xtext_decode,
)
from twistedmail.spool.store import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    FAILED,
    REMOTE,
    QueueEntry,
    RecipientRecord,
    Spool,
)

T = TypeVar("T")
ORIGINAL = (
    b"From: Alice <alice@a.test>\r\n"
    b"To: bob@b.test\r\n"
    b"Subject: lunch\r\n"
    b"Message-ID: <orig-1@a.test>\r\n"
    b"\r\n"
    b"See you at noon.\r\n"
)
USER_UNKNOWN = Reply(550, "5.1.1", "No such user")


def parse(data: bytes) -> Message:
    """Parse a message with the email package."""
    return email.message_from_bytes(data)


def report(*recipients: RecipientReport, **kw: object) -> Report:
    """A report from mx.a.test to alice about a message."""
    fields: dict[str, object] = {
        "reporting_mta": "mx.a.test",
        "to": "alice@a.test",
        "original_sender": "alice@a.test",
        "envid": None,
        "arrival": 1_700_000_000.0,
        "recipients": recipients,
        "now": 1_700_000_100.0,
        "queue_id": "Q1",
    }
    fields.update(kw)
    return Report(**fields)  # type: ignore[arg-type]


FAILED_BOB = RecipientReport(
    final_recipient="bob@b.test",
    action="failed",
    status="5.1.1",
    diagnostic=USER_UNKNOWN,
    remote_mta="mx.b.test",
    last_attempt=1_700_000_050.0,
    reason=remote_reason("mx.b.test", USER_UNKNOWN),
)


class BuildReportTests(SynchronousTestCase):
    """The bytes L{build_report} makes, parsed back by the email package."""

    def test_structure(self) -> None:
        """multipart/report; report-type=delivery-status with a text part, a
        delivery-status part and the returned message, in that order."""
        data, eight_bit = build_report(report(FAILED_BOB), ORIGINAL, ret="FULL")
        self.assertFalse(eight_bit)
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        msg = parse(data)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        parts = msg.get_payload()
        assert isinstance(parts, list)
        self.assertEqual(
            [p.get_content_type() for p in parts],
            ["text/plain", "message/delivery-status", "message/rfc822"],
        )
        self.assertIn("bob@b.test", parts[0].get_payload())
        self.assertIn("550 5.1.1 No such user", parts[0].get_payload())

    def test_headers(self) -> None:
        """From MAILER-DAEMON, to the sender, Auto-Submitted: auto-replied
        (RFC 3834), and a reference to the original Message-ID."""
        msg = parse(build_report(report(FAILED_BOB), ORIGINAL)[0])
        self.assertEqual(msg["From"], "Mail Delivery System <MAILER-DAEMON@mx.a.test>")
        self.assertEqual(msg["To"], "<alice@a.test>")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        self.assertEqual(msg["Subject"], "Undelivered Mail Returned to Sender")
        self.assertEqual(msg["In-Reply-To"], "<orig-1@a.test>")
        self.assertEqual(msg["Date"], "Tue, 14 Nov 2023 22:15:00 +0000")
        self.assertTrue(msg["Message-ID"].endswith("@mx.a.test>"))

    def test_delivery_status_fields(self) -> None:
        """Per-message and per-recipient fields as RFC 3464 §2.2 and §2.3
        name them."""
        r = replace(FAILED_BOB, original_recipient="rfc822;bob@b.test")
        msg = parse(build_report(report(r, envid="ENV-42"), ORIGINAL)[0])
        status = msg.get_payload()[1]  # type: ignore[index]
        blocks = status.get_payload()
        self.assertEqual(len(blocks), 2)
        per_message, per_rcpt = blocks
        self.assertEqual(per_message["Reporting-MTA"], "dns;mx.a.test")
        self.assertEqual(per_message["Original-Envelope-Id"], "ENV-42")
        self.assertEqual(per_message["Arrival-Date"], "Tue, 14 Nov 2023 22:13:20 +0000")
        self.assertEqual(per_rcpt["Final-Recipient"], "rfc822;bob@b.test")
        self.assertEqual(per_rcpt["Original-Recipient"], "rfc822;bob@b.test")
        self.assertEqual(per_rcpt["Action"], "failed")
        self.assertEqual(per_rcpt["Status"], "5.1.1")
        self.assertEqual(per_rcpt["Remote-MTA"], "dns;mx.b.test")
        self.assertEqual(per_rcpt["Diagnostic-Code"], "smtp;550 5.1.1 No such user")
        self.assertEqual(
            per_rcpt["Last-Attempt-Date"], "Tue, 14 Nov 2023 22:14:10 +0000"
        )

    def test_several_recipients(self) -> None:
        """One block per recipient."""
        carol = replace(FAILED_BOB, final_recipient="carol@b.test")
        msg = parse(build_report(report(FAILED_BOB, carol), ORIGINAL)[0])
        blocks = msg.get_payload()[1].get_payload()  # type: ignore[index]
        self.assertEqual(
            [b["Final-Recipient"] for b in blocks[1:]],
            ["rfc822;bob@b.test", "rfc822;carol@b.test"],
        )

    def test_ret_full(self) -> None:
        """RET=FULL returns the whole message as message/rfc822."""
        msg = parse(build_report(report(FAILED_BOB), ORIGINAL, ret="FULL")[0])
        returned = msg.get_payload()[2]  # type: ignore[index]
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        inner = returned.get_payload()[0]
        self.assertEqual(inner["Subject"], "lunch")
        self.assertEqual(inner.get_payload(), "See you at noon.\r\n")

    def test_ret_hdrs(self) -> None:
        """RET=HDRS returns the header only, as text/rfc822-headers."""
        data = build_report(report(FAILED_BOB), ORIGINAL, ret="HDRS")[0]
        msg = parse(data)
        returned = msg.get_payload()[2]  # type: ignore[index]
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: lunch", returned.get_payload())
        self.assertNotIn(b"See you at noon", data)

    def test_no_ret_small_is_full(self) -> None:
        """Without RET a small message is returned whole."""
        msg = parse(build_report(report(FAILED_BOB), ORIGINAL)[0])
        returned = msg.get_payload()[2]  # type: ignore[index]
        self.assertEqual(returned.get_content_type(), "message/rfc822")

    def test_no_ret_large_is_headers(self) -> None:
        """Without RET a large message is returned as its header."""
        big = ORIGINAL + b"x" * DEFAULT_FULL_RETURN + b"\r\n"
        data = build_report(report(FAILED_BOB), big)[0]
        returned = parse(data).get_payload()[2]  # type: ignore[index]
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        self.assertLess(len(data), 10_000)

    def test_binary_is_headers(self) -> None:
        """A BINARYMIME message is returned as its header even with FULL."""
        data = build_report(
            report(FAILED_BOB), ORIGINAL, ret="FULL", body_type="BINARYMIME"
        )[0]
        returned = parse(data).get_payload()[2]  # type: ignore[index]
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")

    def test_eight_bit(self) -> None:
        """An 8-bit original makes an 8-bit report, declared 8bit."""
        data, eight_bit = build_report(
            report(FAILED_BOB), ORIGINAL + "Grüße\r\n".encode(), ret="FULL"
        )
        self.assertTrue(eight_bit)
        returned = parse(data).get_payload()[2]  # type: ignore[index]
        self.assertEqual(returned["Content-Transfer-Encoding"], "8bit")

    def test_boundary_not_in_message(self) -> None:
        """A boundary that occurs in the returned message is not used."""
        original = ORIGINAL + b"--=_fixed\r\n"
        data = build_report(report(FAILED_BOB), original, boundary="=_fixed")[0]
        msg = parse(data)
        self.assertNotEqual(msg.get_boundary(), "=_fixed")
        self.assertEqual(len(msg.get_payload()), 3)  # type: ignore[arg-type]

    def test_delayed(self) -> None:
        """A delay warning says delayed, with Will-Retry-Until."""
        r = replace(
            FAILED_BOB,
            action="delayed",
            status="4.2.2",
            diagnostic=Reply(452, "4.2.2", "Mailbox full"),
            will_retry_until=1_700_432_000.0,
        )
        msg = parse(build_report(report(r), ORIGINAL)[0])
        self.assertEqual(msg["Subject"], "Delayed Mail (still being retried)")
        block = msg.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(block["Action"], "delayed")
        self.assertEqual(block["Will-Retry-Until"], "Sun, 19 Nov 2023 22:13:20 +0000")

    def test_utf8_recipient(self) -> None:
        """An internationalised address is a utf-8 Final-Recipient (RFC 6533)."""
        r = replace(FAILED_BOB, final_recipient="jörg@b.test")
        data, eight_bit = build_report(report(r), ORIGINAL)
        self.assertTrue(eight_bit)
        self.assertIn("Final-Recipient: utf-8;jörg@b.test".encode(), data)


class HelperTests(SynchronousTestCase):
    """xtext and the remote-reason helpers."""

    def test_xtext(self) -> None:
        """+XX escapes are decoded; a bad escape is kept."""
        self.assertEqual(xtext_decode("a+2Bb+3Dc"), "a+b=c")
        self.assertEqual(xtext_decode("a+zz+"), "a+zz+")

    @given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126)))
    def test_xtext_plain(self, text: str) -> None:
        """Text without + decodes to itself."""
        text = text.replace("+", "")
        self.assertEqual(xtext_decode(text), text)

    def test_remote_reason(self) -> None:
        """The remote host is read back from the reason."""
        reason = remote_reason("mx.b.test", USER_UNKNOWN)
        self.assertEqual(reason, "host mx.b.test said: 550 5.1.1 No such user")
        self.assertEqual(remote_mta(reason), "mx.b.test")
        self.assertIsNone(remote_mta("mailbox full"))


class NotifierTests(SynchronousTestCase):
    """L{Notifier.settle} on entries in a real spool on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.spool = Spool(self.mktemp(), self.clock)
        self.spool.prepare()
        self.settings = QueueSettings(delay_warning=3600.0, max_lifetime=86400.0)
        self.notifier = Notifier(self.spool, self.clock, "mx.a.test", self.settings)

    def wait(self, d: Deferred[T]) -> T:
        """Run the clock's zero-delay calls until C{d} fires."""
        for _ in range(100):
            if d.called:
                break
            self.clock.advance(0)
        return self.successResultOf(d)

    def entry(
        self,
        *records: RecipientRecord,
        sender: str = "alice@a.test",
        ret: str | None = None,
        envid: str | None = None,
    ) -> QueueEntry:
        """Spool ORIGINAL and give it these records (not written)."""
        agent = self.spool.agent()
        agent.start(
            Envelope(sender, received_at=self.clock.seconds(), ret=ret, envid=envid)
        )
        for r in records:
            agent.add_recipient(Recipient(r.address))
        agent.body(ORIGINAL)
        queue_id = self.wait(agent.commit())
        entry = self.wait(self.spool.load(queue_id))
        return replace(entry, recipients=records)

    def others(self, *known: str) -> list[QueueEntry]:
        """Entries in the spool other than the given ids."""
        entries = self.wait(self.spool.open_entries())
        return [e for e in entries if e.queue_id not in known]

    def test_nothing_to_notify(self) -> None:
        """When L{Notifier.settle} finds nothing to send it fires at once
        with the entry as the full notice steps leave it (expired where
        due), and those steps would send nothing: the quick answer is the
        slow one."""
        full = Reply(452, "4.2.2", "Mailbox full")
        bob = RecipientRecord("bob@b.test")
        bases = [self.entry(bob, sender=s) for s in ("alice@a.test", "")]
        quick = slow = 0
        for step in (0.0, 3600.0, 86400.0):
            self.clock.advance(step)
            for base in bases:
                for status in (REMOTE, DEFERRED, DELIVERED, BOUNCED, FAILED):
                    for done in ((), (NOTICE_SUCCESS,), (NOTICE_DELAY,)):
                        for notify in ((), ("SUCCESS",), ("NEVER",)):
                            for reply, attempts in ((None, 0), (full, 1)):
                                record = replace(
                                    bob,
                                    status=status,
                                    done=done,
                                    notify=notify,
                                    reply=reply,
                                    attempts=attempts,
                                )
                                entry = replace(base, recipients=(record,))
                                expired = self.notifier.expire(entry)
                                if self.notifier._may_notify(expired):
                                    slow += 1
                                    continue
                                quick += 1
                                d = self.notifier.settle(entry)
                                self.assertEqual(self.successResultOf(d), expired)
                                steps = Deferred.fromCoroutine(
                                    self.notifier._notify(expired)
                                )
                                self.assertEqual(self.wait(steps), expired)
        self.assertEqual(self.others(*(b.queue_id for b in bases)), [])
        self.assertGreater(quick, 0)
        self.assertGreater(slow, 0)

    def test_bounce(self) -> None:
        """A failed recipient is bounced to the sender from <> and marked
        bounced."""
        failed = RecipientRecord(
            "bob@b.test",
            status=FAILED,
            reply=USER_UNKNOWN,
            reason=remote_reason("mx.b.test", USER_UNKNOWN),
            attempts=1,
            last_attempt=self.clock.seconds(),
        )
        entry = self.entry(failed)
        settled = self.wait(self.notifier.settle(entry))
        self.assertEqual([r.status for r in settled.recipients], [BOUNCED])
        [bounce] = self.others(entry.queue_id)
        self.assertEqual(bounce.envelope.sender, "")
        self.assertEqual([r.address for r in bounce.recipients], ["alice@a.test"])
        msg = parse(self.wait(self.spool.read_message(bounce.queue_id)))
        block = msg.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(block["Remote-MTA"], "dns;mx.b.test")
        self.assertEqual(block["Status"], "5.1.1")

    def test_bounce_carries_envid_and_orcpt(self) -> None:
        """ENVID and ORCPT reach the report."""
        failed = RecipientRecord(
            "bob@b.test",
            orcpt="rfc822;Bob+2Bx@b.test",
            status=FAILED,
            reply=USER_UNKNOWN,
        )
        entry = self.entry(failed, envid="E1", ret="HDRS")
        self.wait(self.notifier.settle(entry))
        [bounce] = self.others(entry.queue_id)
        msg = parse(self.wait(self.spool.read_message(bounce.queue_id)))
        parts = msg.get_payload()
        per_message, per_rcpt = parts[1].get_payload()  # type: ignore[index]
        self.assertEqual(per_message["Original-Envelope-Id"], "E1")
        self.assertEqual(per_rcpt["Original-Recipient"], "rfc822;Bob+x@b.test")
        self.assertEqual(parts[2].get_content_type(), "text/rfc822-headers")  # type: ignore[index]

    def test_notify_never(self) -> None:
        """NOTIFY=NEVER: no bounce, but the record is done."""
        failed = RecipientRecord(
            "bob@b.test", notify=("NEVER",), status=FAILED, reply=USER_UNKNOWN
        )
        entry = self.entry(failed)
        settled = self.wait(self.notifier.settle(entry))
        self.assertTrue(settled.is_done)
        self.assertEqual(self.others(entry.queue_id), [])

    def test_notify_success_only(self) -> None:
        """NOTIFY=SUCCESS alone: a failure is not reported."""
        failed = RecipientRecord(
            "bob@b.test", notify=("SUCCESS",), status=FAILED, reply=USER_UNKNOWN
        )
        entry = self.entry(failed)
        self.wait(self.notifier.settle(entry))
        self.assertEqual(self.others(entry.queue_id), [])

    def test_null_sender_goes_to_postmaster(self) -> None:
        """A failure of mail from <> goes to the postmaster, from <>."""
        failed = RecipientRecord("bob@b.test", status=FAILED, reply=USER_UNKNOWN)
        entry = self.entry(failed, sender="")
        settled = self.wait(self.notifier.settle(entry))
        self.assertTrue(settled.is_done)
        [double] = self.others(entry.queue_id)
        self.assertEqual(double.envelope.sender, "")
        self.assertEqual(
            [r.address for r in double.recipients], ["postmaster@mx.a.test"]
        )
        msg = parse(self.wait(self.spool.read_message(double.queue_id)))
        self.assertIn("double bounce", msg["Subject"])

    def test_double_bounce_dropped(self) -> None:
        """A failure of mail from <> to the postmaster is dropped: the
        postmaster hears once, never in a loop."""
        failed = RecipientRecord(
            "postmaster@mx.a.test", status=FAILED, reply=USER_UNKNOWN
        )
        entry = self.entry(failed, sender="")
        settled = self.wait(self.notifier.settle(entry))
        self.assertEqual([r.status for r in settled.recipients], [BOUNCED])
        self.assertEqual(self.others(entry.queue_id), [])

    def test_success(self) -> None:
        """NOTIFY=SUCCESS on a delivered recipient sends a success report,
        once."""
        ok = RecipientRecord("bob@a.test", notify=("SUCCESS",), status=DELIVERED)
        entry = self.entry(ok)
        settled = self.wait(self.notifier.settle(entry))
        self.assertIn(NOTICE_SUCCESS, settled.recipients[0].done)
        [notice] = self.others(entry.queue_id)
        msg = parse(self.wait(self.spool.read_message(notice.queue_id)))
        self.assertEqual(msg["Subject"], "Successful Mail Delivery Report")
        block = msg.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(block["Action"], "delivered")
        self.assertEqual(block["Status"], "2.0.0")
        self.wait(self.notifier.settle(settled))
        self.assertEqual(len(self.others(entry.queue_id)), 1)

    def test_no_success_without_notify(self) -> None:
        """Without NOTIFY=SUCCESS a delivery is not reported."""
        entry = self.entry(RecipientRecord("bob@a.test", status=DELIVERED))
        self.wait(self.notifier.settle(entry))
        self.assertEqual(self.others(entry.queue_id), [])

    def test_delay_warning(self) -> None:
        """After delay_warning seconds, one warning for waiting recipients
        (local deferred and remote ones that failed for now)."""
        full = Reply(452, "4.2.2", "Mailbox full")
        deferred = RecipientRecord(
            "bob@a.test", status=DEFERRED, reply=full, attempts=2
        )
        remote = RecipientRecord("carol@b.test", status=REMOTE, reply=full, attempts=1)
        untried = RecipientRecord("dave@c.test", status=REMOTE)
        entry = self.entry(deferred, remote, untried)
        self.clock.advance(3599)
        self.assertEqual(self.wait(self.notifier.settle(entry)), entry)
        self.clock.advance(1)
        settled = self.wait(self.notifier.settle(entry))
        self.assertEqual(
            [NOTICE_DELAY in r.done for r in settled.recipients], [True, True, False]
        )
        [warning] = self.others(entry.queue_id)
        msg = parse(self.wait(self.spool.read_message(warning.queue_id)))
        blocks = msg.get_payload()[1].get_payload()[1:]  # type: ignore[index]
        self.assertEqual([b["Action"] for b in blocks], ["delayed", "delayed"])
        self.assertEqual(settled.recipients[0].status, DEFERRED)
        self.clock.advance(3600)
        self.wait(self.notifier.settle(settled))
        self.assertEqual(len(self.others(entry.queue_id)), 1)

    def test_delay_notify_without_delay(self) -> None:
        """NOTIFY=FAILURE alone: no delay warning."""
        deferred = RecipientRecord(
            "bob@a.test",
            notify=("FAILURE",),
            status=DEFERRED,
            reply=Reply(452, "4.2.2", "Mailbox full"),
            attempts=1,
        )
        entry = self.entry(deferred)
        self.clock.advance(7200)
        self.wait(self.notifier.settle(entry))
        self.assertEqual(self.others(entry.queue_id), [])

    def test_expiry(self) -> None:
        """A recipient still failing for now after max_lifetime is bounced,
        with its last reply."""
        full = Reply(452, "4.2.2", "Mailbox full")
        deferred = RecipientRecord(
            "bob@a.test",
            status=DEFERRED,
            reply=full,
            reason="mailbox full",
            attempts=9,
            done=(NOTICE_DELAY,),
        )
        entry = self.entry(deferred)
        self.clock.advance(86400)
        settled = self.wait(self.notifier.settle(entry))
        self.assertTrue(settled.is_done)
        [bounce] = self.others(entry.queue_id)
        msg = parse(self.wait(self.spool.read_message(bounce.queue_id)))
        block = msg.get_payload()[1].get_payload()[1]  # type: ignore[index]
        self.assertEqual(block["Action"], "failed")
        self.assertEqual(block["Status"], "4.2.2")
        self.assertIn("gave up after 1 days", msg.get_payload()[0].get_payload())  # type: ignore[index]

    def test_untried_remote_does_not_expire(self) -> None:
        """A remote recipient never tried gets its attempt first."""
        entry = self.entry(RecipientRecord("dave@c.test", status=REMOTE))
        self.clock.advance(2 * 86400)
        self.assertEqual(self.wait(self.notifier.settle(entry)), entry)
