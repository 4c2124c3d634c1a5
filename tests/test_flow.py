"""The seed's flow end to end: two twistedmail instances and a DNS server on
loopback, in one reactor.

    usera (smtplib: EHLO, STARTTLS, AUTH) → A's submission listener → A's
    spool → A's alias expansion (team@a.test: carol@a.test, userb@b.test)
    → carol's Maildir at A, and the relay → MX lookup for b.test at the
    test DNS (10 mx1.b.test: a dead port; 20 mx2.b.test: B) → B's smtp
    listener → B's spool → B's alias expansion (userb@b.test: userb,
    archive) → userb's and archive's Maildirs at B.

A's C{[dns] nameservers} names the test DNS and its C{[relay] port} is B's
smtp port; mx1.b.test is 127.0.0.2 on that port, where nothing listens
(see L{flow_helpers.dead_port}), so the first MX refuses connections.

A's retry schedule is an hour and nothing flushes the relay: a message
reaches B only if A tries the second MX in the same attempt as the dead
first one (RFC 5321 §5.1).

The last step of the flow, B's user reading the mail: L{ReadingTests} IDLEs
in userb's INBOX over IMAP (STARTTLS) while the message travels, sees the
untagged EXISTS, then retrieves the message over POP3S.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import poplib
import smtplib
import ssl
from collections.abc import Awaitable, Callable
from email.message import EmailMessage, Message
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.names import dns
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.flow_helpers import Instance, dead_port, start_instance, wait_for
from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.auth.passwords import hash_password
from twistedmail.config import (
    DNSSettings,
    ListenerSettings,
    QueueSettings,
    RelaySettings,
    ServerSettings,
    Settings,
    TLSSettings,
)
from twistedmail.interfaces import User
from twistedmail.testing import make_test_certificate, start_test_dns

LOOPBACK = "tcp:port=0:interface=127.0.0.1"
PASSWORD = "usera's long password"
USERB_PASSWORD = "userb's long password"
#: The dead first MX: on Linux all of 127/8 is loopback, and B listens on
#: 127.0.0.1 only.
DEAD_ADDRESS = "127.0.0.2"
#: Long enough that a deferred message is never retried during a test.
HOUR = 3600.0


def _user(address: str, password: str = "") -> User:
    local, _, domain = address.partition("@")
    return User(
        address, hash_password(password) if password else "", f"{domain}/{local}"
    )


def _received(message: Message) -> list[str]:
    """The Received: fields, newest first, unfolded."""
    return [" ".join(str(v).split()) for v in message.get_all("Received", [])]


def _parts(message: Message) -> list[Message]:
    """The parts of a multipart message (or of a message/delivery-status
    part: its field blocks)."""
    payload = message.get_payload()
    assert isinstance(payload, list), message.get_content_type()
    return [part for part in payload if isinstance(part, Message)]


def _text(part: Message) -> str:
    """A text part's decoded content."""
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data.decode("utf-8")


@implementer(ILogObserver)
class _Events:
    """Collects log events with a given format string."""

    def __init__(self, log_format: str) -> None:
        self.log_format = log_format
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_format") == self.log_format:
            self.events.append(event)


class FlowTestCase(TestCase):
    """Instances A and B, the test DNS and the dead first MX, and usera's
    submission client."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        """Start B, the test DNS and A (A needs B's port and the DNS port)."""
        b_data = self.mktemp()
        self.b_ca, b_key = make_test_certificate(b_data + "-tls", "mx2.b.test")
        self.b = await start_instance(
            self,
            reactor,
            Settings(
                server=ServerSettings(
                    hostname="mx2.b.test", data_dir=b_data, demo_account=False
                ),
                listeners=ListenerSettings.only(
                    smtp=LOOPBACK, imap=LOOPBACK, pop3s=LOOPBACK
                ),
                tls=TLSSettings(certificate=self.b_ca, key=b_key),
            ),
            MemoryDirectory(
                ("b.test",),
                (_user("userb@b.test", USERB_PASSWORD), _user("archive@b.test")),
                # The sendmail "alias to self" idiom: userb gets a copy and so
                # does the archive.
                {"userb@b.test": ("userb@b.test", "archive@b.test")},
            ),
        )
        b_port = self.b.ports["smtp"]
        dead_port(self, DEAD_ADDRESS, b_port)
        dns_port, stop_dns = start_test_dns(
            reactor,
            {
                "b.test": [
                    dns.Record_MX(20, b"mx2.b.test"),
                    dns.Record_MX(10, b"mx1.b.test"),
                ],
                "mx1.b.test": [dns.Record_A(DEAD_ADDRESS)],
                "mx2.b.test": [dns.Record_A("127.0.0.1")],
            },
        )
        self.addCleanup(stop_dns)
        a_data = self.mktemp()
        self.ca, key = make_test_certificate(a_data + "-tls", "mx.a.test")
        self.a = await start_instance(
            self,
            reactor,
            Settings(
                server=ServerSettings(
                    hostname="mx.a.test", data_dir=a_data, demo_account=False
                ),
                listeners=ListenerSettings.only(smtp=LOOPBACK, submission=LOOPBACK),
                tls=TLSSettings(certificate=self.ca, key=key),
                dns=DNSSettings(nameservers=(f"127.0.0.1:{dns_port}",), timeout=(2.0,)),
                relay=RelaySettings(port=b_port),
                queue=QueueSettings(retry_schedule=(HOUR,)),
            ),
            MemoryDirectory(
                ("a.test",),
                (_user("usera@a.test", PASSWORD), _user("carol@a.test")),
                {"team@a.test": ("carol@a.test", "userb@b.test")},
            ),
        )
        self.host_failures = _Events("{host} [{address}]: {reason}")
        globalLogPublisher.addObserver(self.host_failures)
        self.addCleanup(globalLogPublisher.removeObserver, self.host_failures)

    async def submit(self, to: str, message_id: str, subject: str) -> dict[str, Any]:
        """usera submits one message on A's submission port: EHLO, STARTTLS
        (trusting only A's test certificate), EHLO, AUTH PLAIN, MAIL, RCPT,
        DATA.  Returns what the server said at each step."""
        port = self.a.ports["submission"]
        context = ssl.create_default_context(cafile=self.ca)
        message = EmailMessage()
        message["From"] = "User A <usera@a.test>"
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = f"<{message_id}>"
        message.set_content("Hello from A.\n")

        def talk() -> dict[str, Any]:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.a.test") as s:
                out: dict[str, Any] = {"ehlo": s.ehlo()}
                out["starttls"] = s.starttls(context=context)
                out["ehlo_tls"] = s.ehlo()
                out["auth"] = s.login("usera@a.test", PASSWORD)
                s.mail("usera@a.test")
                out["rcpt"] = s.rcpt(to)
                out["data"] = s.data(message.as_bytes(policy=email.policy.SMTP))
            return out

        result: dict[str, Any] = await deferToThread(talk)
        return result

    async def one_message(
        self, instance: Instance, mailbox: str, needle: bytes
    ) -> Message:
        """Wait for the one message containing C{needle} in a Maildir."""

        def matching() -> list[bytes]:
            return [m for m in instance.messages(mailbox) if needle in m]

        await wait_for(reactor, lambda: bool(matching()), f"{needle!r} in {mailbox}")
        [raw] = matching()
        return email.message_from_bytes(raw)


class FlowTests(FlowTestCase):
    """usera@a.test to team@a.test and on to b.test, and a bounce back."""

    async def test_team_to_a_and_b(self) -> None:
        """team@a.test reaches carol at A and, past the dead first MX,
        userb and the archive at B; each hop leaves its trace header."""
        out = await self.submit("team@a.test", "flow-1@a.test", "to the team")
        self.assertEqual(out["starttls"][0], 220)
        self.assertEqual(out["auth"][0], 235)
        self.assertEqual(out["rcpt"][0], 250)
        self.assertEqual(out["data"][0], 250)
        self.assertIn(b"queued as", out["data"][1])

        carol = await self.one_message(self.a, "a.test/carol", b"flow-1@a.test")
        userb = await self.one_message(self.b, "b.test/userb", b"flow-1@a.test")
        archive = await self.one_message(self.b, "b.test/archive", b"flow-1@a.test")

        # A's copy: one hop, the submission, over TLS with AUTH (RFC 3848).
        self.assertEqual(carol["Return-Path"], "<usera@a.test>")
        self.assertEqual(carol["Delivered-To"], "carol@a.test")
        [submitted] = _received(carol)
        self.assertTrue(submitted.startswith("from client.a.test ([127.0.0.1])"))
        self.assertIn("by mx.a.test (twistedmail) with ESMTPSA (TLSv1.", submitted)
        self.assertIn("for <team@a.test>", submitted)

        # B's copies: B's hop on top of A's submission hop.
        for copy, mailbox in ((userb, "userb@b.test"), (archive, "archive@b.test")):
            self.assertEqual(copy["Return-Path"], "<usera@a.test>")
            self.assertEqual(copy["Delivered-To"], mailbox)
            self.assertEqual(copy["Message-ID"], "<flow-1@a.test>")
            relayed, first = _received(copy)
            self.assertTrue(relayed.startswith("from mx.a.test ([127.0.0.1])"))
            # A offered no certificate check (opportunistic STARTTLS) but
            # the hop is still encrypted: ESMTPS, and no AUTH.
            self.assertIn("by mx2.b.test (twistedmail) with ESMTPS (TLSv1.", relayed)
            self.assertIn("for <userb@b.test>", relayed)
            self.assertEqual(first, submitted)
            self.assertIn("Hello from A.", copy.get_payload())

        # The dead MX was tried first, and in the same attempt the second.
        [failure] = self.host_failures.events
        self.assertEqual(failure["host"], "mx1.b.test")
        self.assertEqual(failure["address"], DEAD_ADDRESS)

        # Nothing else arrived: one copy each, no bounce to usera.
        self.assertEqual(len(self.a.messages("a.test/carol")), 1)
        self.assertEqual(len(self.b.messages("b.test/userb")), 1)
        self.assertEqual(self.a.messages("a.test/usera"), [])

    async def test_unknown_user_at_b_bounces(self) -> None:
        """B refuses nobody@b.test at RCPT (550 5.1.1); A bounces it to
        usera with an RFC 3464 report."""
        out = await self.submit("nobody@b.test", "flow-2@a.test", "to nobody")
        self.assertEqual(out["rcpt"][0], 250)
        self.assertEqual(out["data"][0], 250)

        bounce = await self.one_message(self.a, "a.test/usera", b"flow-2@a.test")
        self.assertEqual(bounce["Return-Path"], "<>")
        self.assertEqual(bounce["Delivered-To"], "usera@a.test")
        self.assertEqual(bounce["Auto-Submitted"], "auto-replied")
        self.assertEqual(bounce.get_content_type(), "multipart/report")
        self.assertEqual(bounce.get_param("report-type"), "delivery-status")
        human, status, original = _parts(bounce)
        self.assertEqual(human.get_content_type(), "text/plain")
        self.assertIn("nobody@b.test", _text(human))
        self.assertEqual(status.get_content_type(), "message/delivery-status")
        per_message, per_recipient = _parts(status)
        self.assertEqual(per_message["Reporting-MTA"], "dns;mx.a.test")
        self.assertEqual(per_recipient["Final-Recipient"], "rfc822;nobody@b.test")
        self.assertEqual(per_recipient["Action"], "failed")
        self.assertEqual(per_recipient["Status"], "5.1.1")
        self.assertEqual(per_recipient["Remote-MTA"], "dns;mx2.b.test")
        self.assertTrue(per_recipient["Diagnostic-Code"].startswith("smtp;550 5.1.1 "))
        self.assertIn(
            original.get_content_type(), ("message/rfc822", "text/rfc822-headers")
        )
        self.assertIn("flow-2@a.test", original.as_string())
        # Nothing reached B.
        self.assertEqual(self.b.messages("b.test/userb"), [])

    async def test_no_such_domain_bounces(self) -> None:
        """A domain the DNS says does not exist (NXDOMAIN) bounces at once;
        the bounce names the domain once in its text."""
        out = await self.submit("someone@nx.test", "flow-3@a.test", "to nowhere")
        self.assertEqual(out["data"][0], 250)

        bounce = await self.one_message(self.a, "a.test/usera", b"flow-3@a.test")
        human, status, _ = _parts(bounce)
        text = _text(human)
        self.assertIn("<someone@nx.test>: nx.test: NXDOMAIN\r\n", text)
        self.assertNotIn("nx.test: nx.test", text)
        _, per_recipient = _parts(status)
        self.assertEqual(per_recipient["Status"], "5.1.2")
        self.assertIsNone(per_recipient["Remote-MTA"])


class ReadingTests(FlowTestCase):
    """userb reads what A relayed: IMAP IDLE sees it arrive, then POP3S."""

    async def imap_idle_until_delivery(
        self, deliver: Callable[[], Awaitable[object]]
    ) -> list[bytes]:
        """Log in to B's IMAP listener (STARTTLS, LOGIN), SELECT INBOX and
        IDLE; then run C{deliver} and wait for the untagged EXISTS, end
        the IDLE and FETCH the new message's Message-ID.

        imaplib in Python 3.11 has no IDLE command, so the IDLE and DONE
        lines are written to the connection by hand.

        @return: every line the server sent from SELECT on, and the
            fetched header last.
        """
        port = self.b.ports["imap"]
        context = ssl.create_default_context(cafile=self.b_ca)
        idling: Deferred[None] = Deferred()

        def fire() -> None:
            if not idling.called:
                idling.callback(None)

        def signal() -> None:
            cast(IReactorFromThreads, reactor).callFromThread(fire)

        def read(c: imaplib.IMAP4, lines: list[bytes]) -> bytes:
            line = c.readline()
            if not line:
                raise imaplib.IMAP4.abort("connection closed")
            lines.append(line)
            return line

        def session() -> list[bytes]:
            try:
                with imaplib.IMAP4("127.0.0.1", port, timeout=20) as c:
                    c.starttls(ssl_context=context)
                    c.login("userb@b.test", USERB_PASSWORD)
                    typ, data = c.select("INBOX")
                    lines = [typ.encode(), *(d for d in data if isinstance(d, bytes))]
                    c.send(b"F1 IDLE\r\n")
                    while not read(c, lines).startswith(b"+ "):
                        pass
                    signal()
                    while not read(c, lines).endswith(b" EXISTS\r\n"):
                        pass
                    c.send(b"DONE\r\n")
                    while not read(c, lines).startswith(b"F1 "):
                        pass
                    typ, fetched = c.fetch(
                        "1", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
                    )
                    item = fetched[0]
                    assert isinstance(item, tuple), fetched
                    lines += [typ.encode(), item[1]]
                    return lines
            finally:
                signal()

        reading = deferToThread(session)
        await idling
        await deliver()
        lines: list[bytes] = await reading
        return lines

    async def test_imap_idle_then_pop3s(self) -> None:
        """userb IDLEs in INBOX over IMAP with STARTTLS; usera's message to
        userb@b.test, relayed by A past the dead MX, shows up as an
        untagged EXISTS; then POP3S (implicit TLS) retrieves the same
        message, its UIDL the Maildir base name."""

        async def deliver() -> None:
            out = await self.submit("userb@b.test", "flow-4@a.test", "for userb")
            self.assertEqual(out["data"][0], 250)

        lines = await self.imap_idle_until_delivery(deliver)
        self.assertEqual(lines[:2], [b"OK", b"0"])  # SELECT: INBOX was empty
        self.assertIn(b"+ idling\r\n", lines)
        self.assertIn(b"* 1 EXISTS\r\n", lines)
        self.assertTrue(lines[-3].startswith(b"F1 OK "))
        self.assertEqual(lines[-2], b"OK")
        self.assertEqual(lines[-1].strip(), b"Message-ID: <flow-4@a.test>")

        port = self.b.ports["pop3s"]
        context = ssl.create_default_context(cafile=self.b_ca)

        def pop() -> dict[str, Any]:
            p = poplib.POP3_SSL("127.0.0.1", port, context=context, timeout=20)
            try:
                out: dict[str, Any] = {"welcome": p.getwelcome()}
                p.user("userb@b.test")
                out["pass"] = p.pass_(USERB_PASSWORD)
                out["stat"] = p.stat()
                out["uidl"] = p.uidl()[1]
                out["retr"] = b"\r\n".join(p.retr(1)[1])
            finally:
                out["quit"] = p.quit()
            return out

        out = await deferToThread(pop)
        self.assertTrue(out["welcome"].startswith(b"+OK"))
        self.assertTrue(out["pass"].startswith(b"+OK"))
        [maildir_copy] = self.b.messages("b.test/userb", folders=("new", "cur"))
        self.assertEqual(out["stat"], (1, len(maildir_copy)))
        [listing] = out["uidl"]
        [base] = self.b.message_names("b.test/userb")
        self.assertEqual(listing, b"1 " + base.encode())
        message = email.message_from_bytes(out["retr"])
        self.assertEqual(message["Message-ID"], "<flow-4@a.test>")
        self.assertEqual(message["Delivered-To"], "userb@b.test")
        relayed, submitted = _received(message)
        self.assertIn("by mx2.b.test (twistedmail) with ESMTPS", relayed)
        self.assertIn("by mx.a.test (twistedmail) with ESMTPSA", submitted)
        self.assertTrue(out["quit"].startswith(b"+OK"))
