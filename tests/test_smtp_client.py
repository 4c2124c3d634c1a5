"""Tests for L{twistedmail.smtp._client} and L{twistedmail.smtp.client}:
the ESMTP client against a scripted server on a fake transport."""

from __future__ import annotations

import email
import email.policy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.address import AddressError
from twistedmail.smtp._client import (
    REPLY_LINE_LIMIT,
    ClientMachine,
    ClientOptions,
    ClientProtocolError,
    Credentials,
    DeliveryResult,
    OutboundMessage,
    OutboundRecipient,
    ReplyParser,
    ServerReply,
    State,
    _wire_address,
    to_seven_bit,
)
from twistedmail.smtp.client import (
    HostFailure,
    SMTPClientProtocol,
    Timeouts,
    connect,
    deliver_message,
)

MESSAGE = b"From: a@a.test\r\nTo: b@b.test\r\nSubject: hi\r\n\r\nHello.\r\n"
EHLO_FULL = (
    b"250-mx.b.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n"
    b"250-DSN\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
)
EHLO_PLAIN = b"250-mx.b.test\r\n250 SIZE\r\n"


class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS."""

    tls_options: Any = None
    tls_started = False

    def startTLS(self, options: Any) -> None:
        """Record the call (no handshake happens here)."""
        self.tls_started = True
        self.tls_options = options


class Session:
    """A client protocol on a StringTransport with a Clock, and helpers to
    play the server."""

    def __init__(self, **options: Any) -> None:
        implicit = options.pop("implicit", False)
        self.clock = Clock()
        self.transport = TLSStringTransport()
        opts = ClientOptions(helo_name="a.test", **options)
        self.machine = ClientMachine(opts, tls_active=implicit)
        self.protocol = SMTPClientProtocol(
            self.machine, self.clock, Timeouts(), tls=None
        )
        self.protocol.makeConnection(self.transport)
        self.ready: list[Any] = []
        self.protocol.ready.addBoth(self.ready.append)

    def server(self, data: bytes) -> None:
        """The server sends C{data}."""
        self.protocol.dataReceived(data)

    def sent(self) -> bytes:
        """What the client wrote since the last call (message text included)."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        value = self.transport.value()
        self.transport.clear()
        return value

    def up(self, ehlo: bytes = EHLO_FULL) -> None:
        """Greeting and EHLO (policy "none" or no STARTTLS offered)."""
        self.server(b"220 mx.b.test ESMTP\r\n")
        assert self.sent() == b"EHLO a.test\r\n"
        self.server(ehlo)
        assert self.ready and self.ready[0] is self.protocol, self.ready

    def send(
        self, *recipients: str | OutboundRecipient, data: bytes = MESSAGE, **kw: Any
    ) -> list[Any]:
        """Start a transaction; the result lands in the returned list."""
        rcpts = tuple(
            r if isinstance(r, OutboundRecipient) else OutboundRecipient(r)
            for r in recipients
        )
        out: list[Any] = []
        sender = kw.pop("sender", "a@a.test")
        self.protocol.send(OutboundMessage(sender, rcpts, data, **kw)).addBoth(
            out.append
        )
        return out

    def lose(self, why: Exception | None = None) -> None:
        """The connection drops."""
        self.protocol.connectionLost(Failure(why or ConnectionDone("gone")))


def codes(result: DeliveryResult) -> list[tuple[int, str]]:
    """Each recipient's reply code and status."""
    return [(r.reply.code, r.reply.status) for r in result.recipients]


class GreetingTests(SynchronousTestCase):
    """The first moments of a session."""

    def test_421_greeting(self) -> None:
        """421 on connect: a host failure (try the next MX), connection closed."""
        s = Session()
        s.server(b"421 4.3.2 busy, come back later\r\n")
        error = s.ready[0].value
        self.assertIsInstance(error, HostFailure)
        self.assertEqual((error.reply.code, error.reply.status), (421, "4.3.2"))
        self.assertTrue(s.transport.disconnecting)

    def test_554_greeting(self) -> None:
        """A 5xx greeting fails the host too (RFC 5321 §3.1); QUIT is sent."""
        s = Session()
        s.server(b"554 no service\r\n")
        self.assertIsInstance(s.ready[0].value, HostFailure)
        self.assertEqual(s.ready[0].value.reply.code, 554)
        self.assertEqual(s.sent(), b"QUIT\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_multiline_greeting(self) -> None:
        """A multiline 220 is one reply."""
        s = Session(tls="none")
        s.server(b"220-mx.b.test\r\n220 welcome\r\n")
        self.assertEqual(s.sent(), b"EHLO a.test\r\n")

    def test_helo_fallback(self) -> None:
        """EHLO refused with 500 or 502: HELO, then a plain transaction."""
        for code in (b"500", b"502"):
            s = Session()
            s.server(b"220 old.b.test\r\n")
            s.sent()
            s.server(code + b" what?\r\n")
            self.assertEqual(s.sent(), b"HELO a.test\r\n")
            s.server(b"250 old.b.test\r\n")
            self.assertEqual(s.ready, [s.protocol])
            out = s.send("b@b.test")
            self.assertEqual(s.sent(), b"MAIL FROM:<a@a.test>\r\n")
            s.server(b"250 ok\r\n")
            self.assertEqual(s.sent(), b"RCPT TO:<b@b.test>\r\n")
            s.server(b"250 ok\r\n")
            self.assertEqual(s.sent(), b"DATA\r\n")
            s.server(b"354 go\r\n")
            self.assertEqual(s.sent(), MESSAGE + b".\r\n")
            s.server(b"250 queued\r\n")
            self.assertEqual(codes(out[0]), [(250, "")])

    def test_ehlo_refused_otherwise(self) -> None:
        """EHLO refused with 554: the host fails."""
        s = Session()
        s.server(b"220 x\r\n")
        s.server(b"554 5.7.1 go away\r\n")
        self.assertIsInstance(s.ready[0].value, HostFailure)


class TransactionTests(SynchronousTestCase):
    """Messages and per-recipient results."""

    def test_pipelined(self) -> None:
        """With PIPELINING, MAIL, RCPTs and DATA go in one write (RFC 2920)."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test", "c@b.test")
        self.assertEqual(
            s.sent(),
            b"MAIL FROM:<a@a.test> SIZE=%d\r\nRCPT TO:<b@b.test>\r\n"
            b"RCPT TO:<c@b.test>\r\nDATA\r\n" % len(MESSAGE),
        )
        s.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
        self.assertEqual(s.sent(), MESSAGE + b".\r\n")
        self.assertEqual(out, [])
        s.server(b"250 2.0.0 queued as X\r\n")
        result = out[0]
        self.assertEqual(codes(result), [(250, "2.0.0"), (250, "2.0.0")])
        self.assertEqual(len(result.delivered), 2)
        self.assertEqual(result.recipients[0].reply.text, "queued as X")
        self.assertTrue(result.dsn)

    def test_some_recipients_refused(self) -> None:
        """452 and 550 on some RCPTs; the others get the reply after DATA."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test", "full@b.test", "nobody@b.test")
        s.sent()
        s.server(
            b"250 ok\r\n250 ok\r\n452 4.2.2 mailbox full\r\n"
            b"550 5.1.1 no such user\r\n354 go\r\n"
        )
        s.sent()
        s.server(b"250 2.0.0 queued\r\n")
        result = out[0]
        self.assertEqual(
            codes(result), [(250, "2.0.0"), (452, "4.2.2"), (550, "5.1.1")]
        )
        self.assertEqual(
            [r.recipient.address for r in result.temporary], ["full@b.test"]
        )
        self.assertEqual(
            [r.recipient.address for r in result.permanent], ["nobody@b.test"]
        )

    def test_552_after_data(self) -> None:
        """552 after the final dot: every accepted recipient fails for good."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test", "c@b.test")
        s.sent()
        s.server(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        s.sent()
        s.server(b"552 5.3.4 too big\r\n")
        self.assertEqual(codes(out[0]), [(552, "5.3.4")] * 2)
        self.assertEqual(len(out[0].permanent), 2)

    def test_451_after_data(self) -> None:
        """451 after the final dot: temporary for every accepted recipient."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test")
        s.sent()
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        s.sent()
        s.server(b"451 4.3.0 try later\r\n")
        self.assertEqual(len(out[0].temporary), 1)

    def test_mail_refused(self) -> None:
        """5xx on MAIL: permanent for all; the RCPT and DATA replies (503)
        do not change that."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test", "c@b.test")
        s.sent()
        s.server(b"550 5.7.1 sender refused\r\n503 5.5.1 no\r\n503 5.5.1 no\r\n")
        self.assertEqual(out, [])
        s.server(b"503 5.5.1 no\r\n")
        self.assertEqual(codes(out[0]), [(550, "5.7.1")] * 2)
        self.assertEqual(s.sent(), b"")

    def test_mail_refused_not_pipelined(self) -> None:
        """Without PIPELINING a MAIL refusal ends the transaction at once."""
        s = Session(tls="none")
        s.up(EHLO_PLAIN)
        out = s.send("b@b.test")
        s.sent()
        s.server(b"451 4.3.0 later\r\n")
        self.assertEqual(codes(out[0]), [(451, "4.3.0")])
        self.assertEqual(s.sent(), b"")

    def test_all_recipients_refused(self) -> None:
        """No recipient accepted: DATA's 554 is expected; no text is sent
        and the next transaction starts with RSET."""
        s = Session(tls="none")
        s.up()
        out = s.send("x@b.test")
        s.sent()
        s.server(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
        self.assertEqual(codes(out[0]), [(550, "5.1.1")])
        self.assertEqual(s.sent(), b"")
        s.send("b@b.test")
        self.assertTrue(s.sent().startswith(b"RSET\r\nMAIL FROM:"))

    def test_354_without_recipients(self) -> None:
        """A server answering 354 with no recipient accepted gets an empty
        message (a lone dot), never the text."""
        s = Session(tls="none")
        s.up()
        out = s.send("x@b.test")
        s.sent()
        s.server(b"250 ok\r\n550 no\r\n354 go\r\n")
        self.assertEqual(s.sent(), b".\r\n")
        s.server(b"554 no recipients\r\n")
        self.assertEqual(codes(out[0]), [(550, "")])

    def test_connection_reused(self) -> None:
        """Several messages over one session, then QUIT."""
        s = Session(tls="none")
        s.up()
        for n in range(3):
            out = s.send(f"u{n}@b.test")
            s.sent()
            s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
            s.sent()
            s.server(b"250 ok\r\n")
            self.assertEqual(len(out[0].delivered), 1)
        closed: list[Any] = []
        s.protocol.quit().addCallback(closed.append)
        self.assertEqual(s.sent(), b"QUIT\r\n")
        s.server(b"221 bye\r\n")
        self.assertTrue(s.transport.disconnecting)
        s.lose()
        self.assertEqual(closed, [None])

    def test_dot_stuffing_and_line_endings(self) -> None:
        """Leading dots are doubled and bare LFs become CRLF."""
        s = Session(tls="none")
        s.up()
        s.send("b@b.test", data=b"Subject: x\n\n.hidden\n..two\nend")
        s.sent()
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(
            s.sent(), b"Subject: x\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\n"
        )

    def test_421_mid_transaction(self) -> None:
        """421 to a RCPT: the server is going away; nothing is delivered and
        the session fails."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test", "c@b.test")
        s.sent()
        s.server(b"250 ok\r\n421 4.4.2 bye\r\n")
        result = out[0]
        self.assertEqual(len(result.temporary), 2)
        self.assertTrue(result.session_error)
        self.assertTrue(s.transport.disconnecting)
        self.assertIsInstance(
            self.failureResultOf(s.protocol.send(OutboundMessage("", (), b""))).value,
            HostFailure,
        )

    def test_chunking(self) -> None:
        """With chunking on and CHUNKING offered, BDAT carries the message
        without dot-stuffing (RFC 3030)."""
        s = Session(tls="none", chunking=True)
        s.up()
        data = b"Subject: x\r\n\r\n.dot\r\n"
        out = s.send("b@b.test", data=data)
        self.assertEqual(
            s.sent(), b"MAIL FROM:<a@a.test> SIZE=20\r\nRCPT TO:<b@b.test>\r\n"
        )
        s.server(b"250 ok\r\n250 ok\r\n")
        self.assertEqual(s.sent(), b"BDAT 20 LAST\r\n" + data)
        s.server(b"250 2.0.0 ok\r\n")
        self.assertEqual(len(out[0].delivered), 1)

    def test_null_sender(self) -> None:
        """The null sender is sent as <>."""
        s = Session(tls="none")
        s.up(EHLO_PLAIN)
        s.send("b@b.test", sender="")
        self.assertEqual(s.sent(), b"MAIL FROM:<> SIZE=%d\r\n" % len(MESSAGE))


class ExtensionTests(SynchronousTestCase):
    """SIZE, 8BITMIME, SMTPUTF8 and DSN."""

    def test_size_too_big(self) -> None:
        """A message over the server's SIZE: permanent 552 5.3.4, no MAIL."""
        s = Session(tls="none")
        s.up(b"250-mx\r\n250 SIZE 10\r\n")
        out = s.send("b@b.test", "c@b.test")
        self.assertEqual(codes(out[0]), [(552, "5.3.4")] * 2)
        self.assertEqual(s.sent(), b"")
        self.assertIn("10", out[0].recipients[0].reply.text)

    def test_8bitmime_offered(self) -> None:
        """8-bit text goes as it is, declared BODY=8BITMIME."""
        s = Session(tls="none")
        s.up()
        data = "Subject: x\r\n\r\nGrüße\r\n".encode()
        s.send("b@b.test", data=data)
        self.assertIn(b" BODY=8BITMIME", s.sent())
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(s.sent(), data + b".\r\n")

    def test_no_8bitmime_converted(self) -> None:
        """Without 8BITMIME the 8-bit text part becomes quoted-printable
        (RFC 6152 §3) and decodes back to the same text."""
        s = Session(tls="none")
        s.up(EHLO_PLAIN)
        text = "Grüße aus Köln\r\n.leading dot\r\n"
        data = (
            "From: a@a.test\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n" + text
        ).encode()
        s.send("b@b.test", data=data)
        mail = s.sent()
        self.assertNotIn(b"BODY=", mail)
        s.server(b"250 ok\r\n")
        s.sent()
        s.server(b"250 ok\r\n")
        s.sent()
        s.server(b"354 go\r\n")
        body = s.sent()
        self.assertTrue(body.isascii())
        self.assertTrue(body.endswith(b"\r\n.\r\n"))
        unstuffed = body[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")
        msg = email.message_from_bytes(unstuffed, policy=email.policy.default)
        self.assertEqual(msg["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(
            msg.get_content().replace("\r\n", "\n"), text.replace("\r\n", "\n")
        )

    def test_conversion_multipart(self) -> None:
        """Text parts get quoted-printable, others base64; all decode back."""
        raw = (
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
            b"--XX\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n"
            b"caf\xe9\r\n--XX\r\nContent-Type: application/octet-stream\r\n\r\n"
            b"\x00\xff\xfe\r\n--XX--\r\n"
        )
        out = to_seven_bit(raw)
        self.assertTrue(out.isascii())
        msg = email.message_from_bytes(out, policy=email.policy.default)
        text, blob = msg.iter_parts()
        self.assertEqual(text.get_content(), "caf\xe9")
        self.assertEqual(text["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(blob.get_content(), b"\x00\xff\xfe")

    def test_conversion_impossible(self) -> None:
        """8-bit headers and no SMTPUTF8/8BITMIME: permanent, with the reason."""
        s = Session(tls="none")
        s.up(EHLO_PLAIN)
        out = s.send("b@b.test", data="Subject: Grüße\r\n\r\nhi\r\n".encode())
        self.assertEqual(codes(out[0]), [(554, "5.6.9")])
        self.assertEqual(s.sent(), b"")
        s2 = Session(tls="none")
        s2.up(b"250-mx\r\n250 8BITMIME\r\n")
        out = s2.send("b@b.test", data="Subject: Grüße\r\n\r\nhi\r\n".encode())
        self.assertEqual(codes(out[0]), [(554, "5.6.9")])

    def test_broken_base64_part(self) -> None:
        """8-bit bytes inside a part claiming base64 cannot be converted."""
        s = Session(tls="none")
        s.up(EHLO_PLAIN)
        data = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\n\xff\r\n"
        out = s.send("b@b.test", data=data)
        self.assertEqual(codes(out[0]), [(554, "5.6.3")])
        self.assertIn("base64", out[0].recipients[0].reply.text)

    def test_smtputf8_missing(self) -> None:
        """A UTF-8 recipient without SMTPUTF8 is refused for good (553 5.6.7)
        while the others are sent; a UTF-8 sender fails everyone."""
        s = Session(tls="none")
        s.up(b"250-mx\r\n250 PIPELINING\r\n")
        out = s.send("jürgen@b.test", "b@b.test")
        self.assertEqual(
            s.sent(), b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n"
        )
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        s.sent()
        s.server(b"250 ok\r\n")
        self.assertEqual(codes(out[0]), [(553, "5.6.7"), (250, "")])
        out = s.send("b@b.test", sender="jürgen@a.test")
        self.assertEqual(codes(out[0]), [(553, "5.6.7")])
        self.assertEqual(s.sent(), b"")

    def test_utf8_domain_as_alabels(self) -> None:
        """A UTF-8 domain with an ASCII local part needs no SMTPUTF8."""
        s = Session(tls="none")
        s.up(b"250-mx\r\n250 PIPELINING\r\n")
        s.send("b@bücher.test")
        self.assertIn(b"RCPT TO:<b@xn--bcher-kva.test>\r\n", s.sent())

    def test_smtputf8_offered(self) -> None:
        """With SMTPUTF8 offered, UTF-8 addresses go in UTF-8 with SMTPUTF8."""
        s = Session(tls="none")
        s.up()
        s.send("jürgen@b.test")
        sent = s.sent()
        self.assertIn(b" SMTPUTF8", sent.split(b"\r\n")[0])
        self.assertIn("RCPT TO:<jürgen@b.test>".encode(), sent)

    def test_dsn_passed_on(self) -> None:
        """NOTIFY, ORCPT, RET and ENVID go out when the server offers DSN."""
        s = Session(tls="none")
        s.up()
        rcpt = OutboundRecipient("b@b.test", ("SUCCESS", "FAILURE"), "rfc822;b@b.test")
        s.send(rcpt, ret="HDRS", envid="id 1+2")
        lines = s.sent().split(b"\r\n")
        self.assertEqual(
            lines[0],
            b"MAIL FROM:<a@a.test> SIZE=%d RET=HDRS ENVID=id+201+2B2" % len(MESSAGE),
        )
        self.assertEqual(
            lines[1], b"RCPT TO:<b@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@b.test"
        )

    def test_dsn_not_offered(self) -> None:
        """Without DSN the parameters are left out, and the result says so."""
        s = Session(tls="none")
        s.up(b"250-mx\r\n250 PIPELINING\r\n")
        out = s.send(OutboundRecipient("b@b.test", ("SUCCESS",)), ret="FULL", envid="x")
        self.assertEqual(
            s.sent(), b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n"
        )
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        s.sent()
        s.server(b"250 ok\r\n")
        self.assertFalse(out[0].dsn)

    def test_bad_recipient_address(self) -> None:
        """A recipient that is not an address is refused here (no CRLF
        injection into the command stream)."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test>\r\nRSET")
        self.assertEqual(codes(out[0]), [(553, "5.1.3")])
        self.assertEqual(s.sent(), b"")


class TLSTests(SynchronousTestCase):
    """STARTTLS policies and AUTH."""

    def test_opportunistic_starttls(self) -> None:
        """STARTTLS is used when offered; EHLO again after the handshake."""
        s = Session()
        s.server(b"220 mx\r\n")
        s.sent()
        s.server(b"250-mx\r\n250 STARTTLS\r\n")
        self.assertEqual(s.sent(), b"STARTTLS\r\n")
        s.server(b"220 go ahead\r\n")
        self.assertTrue(s.transport.tls_started)
        self.assertEqual(s.sent(), b"")
        s.protocol.handshakeCompleted()
        self.assertEqual(s.sent(), b"EHLO a.test\r\n")
        s.server(b"250-mx\r\n250 PIPELINING\r\n")
        self.assertEqual(s.ready, [s.protocol])
        out = s.send("b@b.test")
        s.sent()
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        s.sent()
        s.server(b"250 ok\r\n")
        self.assertTrue(out[0].tls)

    def test_opportunistic_without_starttls(self) -> None:
        """Not offered: plain text is fine for "opportunistic"."""
        s = Session()
        s.up(b"250 mx\r\n")
        self.assertFalse(s.machine.tls_active)

    def test_required_not_offered(self) -> None:
        """ "required" and STARTTLS not offered: a host failure, 4.7.10."""
        for policy in ("required", "verify"):
            s = Session(tls=policy)
            s.server(b"220 mx\r\n")
            s.sent()
            s.server(b"250 mx\r\n")
            error = s.ready[0].value
            self.assertIsInstance(error, HostFailure)
            self.assertEqual(error.reply.status, "4.7.10")
            self.assertEqual(s.sent(), b"QUIT\r\n")

    def test_starttls_refused(self) -> None:
        """454 to STARTTLS: a host failure (no silent fallback to plain)."""
        s = Session()
        s.server(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n")
        s.sent()
        s.server(b"454 4.7.0 TLS not available\r\n")
        self.assertIsInstance(s.ready[0].value, HostFailure)

    def test_handshake_failure(self) -> None:
        """The handshake fails: a temporary host failure, 4.7.5."""
        m = ClientMachine(ClientOptions("a.test"))
        m.receive_data(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n")
        self.assertEqual(m.state, State.STARTTLS)
        m.receive_data(b"220 go\r\n")
        self.assertEqual(m.state, State.TLS)
        events = m.connection_lost("TLS error: certificate verify failed")
        error = events[-1].error  # type: ignore[union-attr]
        self.assertIsInstance(error, HostFailure)
        self.assertEqual(error.reply.status, "4.7.5")

    def test_starttls_drops_pipelined_bytes(self) -> None:
        """Bytes the server sent after its 220 are dropped (RFC 3207 §4.2),
        and EHLO is sent again after the handshake."""
        m = ClientMachine(ClientOptions("a.test"))
        m.receive_data(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n")
        events = m.receive_data(b"220 go\r\n250 forged\r\n")
        self.assertEqual(m.state, State.TLS)
        self.assertEqual(len(events), 1)
        events = m.tls_established()
        self.assertEqual(events[0].data, b"EHLO a.test\r\n")  # type: ignore[union-attr]
        events = m.receive_data(b"250 mx\r\n")
        self.assertEqual(m.state, State.READY)

    def test_auth_plain(self) -> None:
        """AUTH PLAIN over TLS with the smarthost credentials."""
        s = Session(credentials=Credentials("u", "p"), implicit=True)
        s.server(b"220 relay\r\n")
        s.sent()
        s.server(b"250-relay\r\n250 AUTH LOGIN PLAIN\r\n")
        self.assertEqual(s.sent(), b"AUTH PLAIN AHUAcA==\r\n")
        self.assertEqual(s.ready, [])
        s.server(b"235 2.7.0 ok\r\n")
        self.assertEqual(s.ready, [s.protocol])

    def test_auth_login(self) -> None:
        """AUTH LOGIN when PLAIN is not offered."""
        s = Session(credentials=Credentials("u", "p"), implicit=True)
        s.server(b"220 relay\r\n250-relay\r\n250 AUTH LOGIN\r\n")
        self.assertEqual(s.sent(), b"EHLO a.test\r\nAUTH LOGIN\r\n")
        s.server(b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(s.sent(), b"dQ==\r\n")
        s.server(b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(s.sent(), b"cA==\r\n")
        s.server(b"235 ok\r\n")
        self.assertEqual(s.ready, [s.protocol])

    def test_auth_refused(self) -> None:
        """535: a host failure (the relay refuses us; retry later)."""
        s = Session(credentials=Credentials("u", "p"), implicit=True)
        s.server(b"220 relay\r\n250-relay\r\n250 AUTH PLAIN\r\n")
        s.server(b"535 5.7.8 bad credentials\r\n")
        self.assertIsInstance(s.ready[0].value, HostFailure)

    def test_auth_needs_tls(self) -> None:
        """No AUTH in plain text unless allowed."""
        s = Session(credentials=Credentials("u", "p"), tls="opportunistic")
        s.server(b"220 relay\r\n250-relay\r\n250 AUTH PLAIN\r\n")
        self.assertIsInstance(s.ready[0].value, HostFailure)
        self.assertNotIn(b"AUTH", s.sent())
        s = Session(
            credentials=Credentials("u", "p"), tls="none", allow_plaintext_auth=True
        )
        s.server(b"220 relay\r\n250-relay\r\n250 AUTH PLAIN\r\n")
        self.assertIn(b"AUTH PLAIN", s.sent())

    def test_credentials_hidden(self) -> None:
        """The password never shows in a repr (logs)."""
        self.assertNotIn("s3cret", repr(Credentials("u", "s3cret")))


class FailureTests(SynchronousTestCase):
    """Garbage, huge lines, drops and timeouts: temporary, nothing delivered."""

    def test_garbage_reply(self) -> None:
        """A reply that is not SMTP: the session fails, temporary."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test")
        s.sent()
        s.server(b"HTTP/1.1 400 Bad Request\r\n")
        self.assertEqual(len(out[0].temporary), 1)
        self.assertIn("protocol error", out[0].session_error)
        self.assertTrue(s.transport.disconnecting)

    def test_garbage_greeting(self) -> None:
        """Garbage instead of a greeting: a host failure."""
        s = Session()
        s.server(b"SSH-2.0-OpenSSH\r\n")
        self.assertIsInstance(s.ready[0].value, HostFailure)

    def test_huge_reply_line(self) -> None:
        """A 1 MB reply line: the buffer stays below the limit, and the
        session fails (temporary) as soon as the line passes it."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test")
        s.sent()
        s.server(b"250")
        chunk = b"x" * 4096
        for _ in range(256):
            s.server(chunk)
            self.assertLessEqual(s.machine._parser.buffered, REPLY_LINE_LIMIT)
        self.assertEqual(len(out[0].temporary), 1)
        self.assertTrue(s.transport.disconnecting)

    def test_drop_mid_data(self) -> None:
        """The connection drops while the text is sent: every recipient is
        temporary with the reason, none delivered."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test", "c@b.test", "x@b.test")
        s.sent()
        s.server(b"250 ok\r\n250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
        s.lose()
        result = out[0]
        self.assertEqual(
            codes(result), [(451, "4.4.2"), (451, "4.4.2"), (550, "5.1.1")]
        )
        self.assertEqual(result.delivered, ())
        self.assertIn("connection lost", result.session_error)

    def test_timeouts(self) -> None:
        """Each wait has its RFC 5321 §4.5.3.2 timeout on the clock."""
        t = Timeouts()
        s = Session(tls="none")
        s.clock.advance(t.greeting - 1)
        self.assertEqual(s.ready, [])
        s.clock.advance(1)
        self.assertIsInstance(s.ready[0].value, HostFailure)
        self.assertEqual(s.ready[0].value.reply.status, "4.4.2")
        self.assertTrue(s.transport.disconnecting)

        for stage, wait, replies in [
            ("mail", t.mail, b""),
            ("rcpt", t.rcpt, b"250 ok\r\n"),
            ("data_init", t.data_init, b"250 ok\r\n250 ok\r\n"),
        ]:
            s = Session(tls="none")
            s.up()
            out = s.send("b@b.test")
            s.sent()
            s.server(replies)
            s.clock.advance(wait - 1)
            self.assertEqual(out, [], stage)
            s.clock.advance(1)
            self.assertEqual(len(out[0].temporary), 1, stage)
            self.assertIn(stage, out[0].session_error)

    def test_data_timeouts(self) -> None:
        """Each block of text has 3 minutes; the final reply 10 minutes."""
        t = Timeouts()
        s = Session(tls="none")
        s.up()
        big = b"Subject: x\r\n\r\n" + b"y" * 200 + b"\r\n"
        out = s.send("b@b.test", data=big * 1000)
        s.sent()
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        producer = s.transport.producer
        self.assertIsNotNone(producer)
        producer.resumeProducing()
        s.clock.advance(t.data_block - 1)
        producer.resumeProducing()
        s.clock.advance(t.data_block - 1)
        s.sent()
        self.assertIsNone(s.transport.producer)
        s.clock.advance(t.data_done - 1)
        self.assertEqual(out, [])
        s.clock.advance(1)
        self.assertIn("data_done", out[0].session_error)
        self.assertEqual(out[0].delivered, ())

    def test_one_block_written_at_once(self) -> None:
        """Message text of one block is written when 354 comes, without a
        producer, and the final reply's timeout runs from then."""
        t = Timeouts()
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test")
        s.transport.clear()
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertIsNone(s.transport.producer)
        self.assertEqual(s.transport.value(), MESSAGE + b".\r\n")
        s.clock.advance(t.data_done - 1)
        self.assertEqual(out, [])
        s.clock.advance(1)
        self.assertIn("data_done", out[0].session_error)

    def test_data_block_timeout(self) -> None:
        """A transport that stops draining: the block timeout fires."""
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test", data=MESSAGE * 10000)
        s.sent()
        s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
        s.transport.producer.resumeProducing()
        s.clock.advance(Timeouts().data_block)
        self.assertEqual(len(out[0].temporary), 1)
        self.assertIsNone(s.transport.producer)

    def test_dribbling_server(self) -> None:
        """A server sending a reply a byte at a time gets no extra time."""
        s = Session(tls="none")
        for byte in b"220 slow":
            s.server(bytes([byte]))
            s.clock.advance(30)
        s.clock.advance(Timeouts().greeting - 30 * 8)
        self.assertIsInstance(s.ready[0].value, HostFailure)

    def test_one_timer_moved(self) -> None:
        """Through a transaction the one timer is moved from wait to wait
        (never a second call on the clock), each wait timed from its start."""
        t = Timeouts()
        s = Session(tls="none")
        s.up()
        out = s.send("b@b.test")
        s.sent()
        self.assertEqual(len(s.clock.getDelayedCalls()), 1)
        s.clock.advance(t.mail - 1)
        s.server(b"250 ok\r\n")
        self.assertEqual(len(s.clock.getDelayedCalls()), 1)
        s.clock.advance(t.rcpt - 1)
        s.server(b"250 ok\r\n")
        (timer,) = s.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), s.clock.seconds() + t.data_init)
        s.clock.advance(t.data_init)
        self.assertIn("data_init", out[0].session_error)

    def test_no_timer_left(self) -> None:
        """After QUIT and close no timer is left on the clock."""
        s = Session(tls="none")
        s.up()
        s.protocol.quit()
        s.server(b"221 bye\r\n")
        s.lose()
        self.assertEqual(s.clock.getDelayedCalls(), [])


class WireAddressTests(SynchronousTestCase):
    """Addresses as sent in MAIL and RCPT (a cached function)."""

    def test_same_answer_again(self) -> None:
        """The domain becomes lower-case A-labels, the local part stays as
        given, and asking again gives the same answer."""
        for _ in range(2):
            self.assertEqual(
                _wire_address("Bob@B\u00fccher.Example"), "Bob@xn--bcher-kva.example"
            )

    def test_bad_address_raises_again(self) -> None:
        """A bad address raises every time it is asked about (failures are
        not cached as answers)."""
        for _ in range(2):
            self.assertRaises(AddressError, _wire_address, "no-at-sign")
            self.assertRaises(AddressError, _wire_address, "bob@b..test")


class ReplyParserTests(SynchronousTestCase):
    """The reply parser alone."""

    def test_multiline(self) -> None:
        """Continuation lines make one reply; the status code is split off."""
        p = ReplyParser()
        (reply,) = p.feed(b"550-5.1.1 no such\r\n550 5.1.1 user here\r\n")
        self.assertEqual(reply, ServerReply(550, ("5.1.1 no such", "5.1.1 user here")))
        r = reply.to_reply()
        self.assertEqual(
            (r.code, r.status, r.text), (550, "5.1.1", "no such user here")
        )

    def test_mismatched_codes(self) -> None:
        """A multiline reply whose code changes is garbage."""
        with self.assertRaises(ClientProtocolError):
            ReplyParser().feed(b"250-a\r\n251 b\r\n")

    @given(st.lists(st.binary(max_size=300), max_size=20))
    def test_random_bytes(self, chunks: list[bytes]) -> None:
        """Random bytes give replies or ClientProtocolError, nothing else."""
        p = ReplyParser()
        try:
            for chunk in chunks:
                p.feed(chunk)
        except ClientProtocolError:
            pass
        self.assertLessEqual(p.buffered, REPLY_LINE_LIMIT)

    @given(
        st.lists(
            st.tuples(
                st.sampled_from([220, 250, 354, 421, 452, 550]),
                st.lists(
                    st.text(
                        alphabet=st.characters(min_codepoint=32, max_codepoint=126)
                    ),
                    min_size=1,
                    max_size=4,
                ),
            ),
            max_size=5,
        ),
        st.integers(min_value=1, max_value=50),
    )
    def test_chunking_invariant(self, replies: list[Any], size: int) -> None:
        """Any way of cutting the bytes gives the same replies."""
        wire = b""
        for code, lines in replies:
            for i, line in enumerate(lines):
                sep = " " if i == len(lines) - 1 else "-"
                wire += f"{code}{sep}{line}\r\n".encode()
        p = ReplyParser()
        got = []
        for i in range(0, len(wire), size):
            got += p.feed(wire[i : i + size])
        self.assertEqual(
            [(r.code, r.lines) for r in got],
            [(code, tuple(lines)) for code, lines in replies],
        )


class ConnectTests(SynchronousTestCase):
    """connect() and deliver_message() with a memory reactor."""

    def test_connection_refused(self) -> None:
        """A refused connection is a host failure (4.4.1)."""
        reactor = MemoryReactorClock()
        d = connect(reactor, "mx.b.test", "127.0.0.2", 25, ClientOptions("a.test"))
        host, port, factory, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.2", 25, 30.0))
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        error = self.failureResultOf(d, HostFailure).value
        self.assertEqual(error.reply.status, "4.4.1")

    def test_deliver_message(self) -> None:
        """Connect, one message, QUIT; the result names the host."""
        reactor = MemoryReactorClock()
        d = deliver_message(
            reactor,
            "mx.b.test",
            "192.0.2.1",
            2525,
            helo_name="a.test",
            envelope_sender="a@a.test",
            recipients=["b@b.test"],
            message=MESSAGE,
            tls_policy="none",
        )
        factory = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for reply in [b"220 mx\r\n", b"250 mx\r\n", b"250 ok\r\n", b"250 ok\r\n"]:
            protocol.dataReceived(reply)
        protocol.dataReceived(b"354 go\r\n")
        while transport.producer is not None:
            transport.producer.resumeProducing()
        protocol.dataReceived(b"250 queued\r\n")
        self.assertNoResult(d)
        self.assertTrue(
            transport.value().endswith(b"\r\n.\r\nQUIT\r\n"), transport.value()
        )
        protocol.dataReceived(b"221 bye\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        result = self.successResultOf(d)
        self.assertEqual((result.host, result.address), ("mx.b.test", "192.0.2.1"))
        self.assertEqual(len(result.delivered), 1)
