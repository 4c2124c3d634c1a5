"""Tests for L{twistedmail.smtp._machine}."""

from __future__ import annotations

import base64
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.smtp_helpers import Driver
from twistedmail.replies import Reply
from twistedmail.smtp._machine import (
    TRANSITIONS,
    AuthRequested,
    BodyReceived,
    CloseRequested,
    MachineConfig,
    MailRequested,
    MessageAborted,
    MessageCompleted,
    Session,
    SMTPMachine,
    State,
)

HELLO = b"EHLO client.example\r\n"
TXN = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
_REPLY_LINE = re.compile(rb"\A[2-5][0-9]{2}[ -]")


def replies(data: bytes) -> list[bytes]:
    """Split output into reply lines without CRLF."""
    return data.split(b"\r\n")[:-1]


def codes(data: bytes) -> list[str]:
    """The final lines' code and enhanced status, e.g. '250 2.1.0'."""
    out = []
    for line in replies(data):
        if line[3:4] == b" ":
            words = line.decode().split(" ")
            status = (
                re.match(r"[245]\.[0-9]+\.[0-9]+\Z", words[1])
                if len(words) > 1
                else None
            )
            out.append(" ".join(words[:2]) if status else words[0])
    return out


def ready(config: MachineConfig | None = None, **kw: bool) -> Driver:
    """A driver that has sent EHLO."""
    d = Driver(config or MachineConfig(), **kw)
    d.feed(HELLO)
    return d


class GreetingTests(SynchronousTestCase):
    """Greeting, EHLO, HELO and the commands allowed anywhere."""

    def test_greeting(self) -> None:
        """The server speaks first with 220 (RFC 5321 §4.3.1)."""
        d = Driver(MachineConfig(hostname="mx.example"))
        self.assertEqual(bytes(d.output), b"220 mx.example ESMTP ready\r\n")

    def test_ehlo(self) -> None:
        """EHLO lists the extensions; STARTTLS and AUTH only when offered."""
        out = Driver(MachineConfig(max_message_size=1000)).feed(HELLO)
        self.assertEqual(
            out,
            b"250-localhost Hello client.example\r\n250-PIPELINING\r\n"
            b"250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
            b"250-SMTPUTF8\r\n250-CHUNKING\r\n250-DSN\r\n250 HELP\r\n",
        )
        out = Driver(MachineConfig(starttls=True, auth=True)).feed(HELLO)
        self.assertIn(b"250-STARTTLS\r\n", out)
        self.assertNotIn(b"AUTH", out)
        out = Driver(MachineConfig(starttls=True, auth=True), tls_active=True).feed(
            HELLO
        )
        self.assertNotIn(b"STARTTLS", out)
        self.assertIn(b"250-AUTH PLAIN LOGIN\r\n", out)

    def test_helo(self) -> None:
        """HELO gets one line and makes ESMTP parameters unavailable."""
        d = Driver()
        self.assertEqual(d.feed(b"HELO c\r\n"), b"250 localhost Hello c\r\n")
        self.assertEqual(
            codes(d.feed(b"MAIL FROM:<a@b.example> SIZE=10\r\n")), ["555 5.5.4"]
        )
        self.assertEqual(codes(d.feed(b"MAIL FROM:<a@b.example>\r\n")), ["250 2.1.0"])

    def test_need_hello(self) -> None:
        """MAIL, RCPT, DATA and AUTH before EHLO are a bad sequence."""
        d = Driver(MachineConfig(auth=True, auth_plaintext=True))
        for line in [TXN, b"DATA\r\n", b"AUTH PLAIN\r\n"]:
            for code in codes(d.feed(line)):
                self.assertEqual(code, "503 5.5.1")

    def test_simple_commands(self) -> None:
        """NOOP, RSET, HELP, VRFY (off: 252), EXPN (502), unknown (500)."""
        d = ready()
        out = d.feed(
            b"NOOP\r\nRSET\r\nHELP\r\nVRFY alice\r\nEXPN list\r\nFOO\r\nMAIL\r\n"
        )
        self.assertEqual(
            codes(out),
            [
                "250 2.0.0",
                "250 2.0.0",
                "214 2.0.0",
                "252 2.5.0",
                "502 5.5.1",
                "500 5.5.2",
                "501 5.5.4",
            ],
        )

    def test_vrfy_enabled(self) -> None:
        """With VRFY on, the adapter answers."""
        d = ready(MachineConfig(vrfy=True))
        self.assertEqual(d.feed(b"VRFY alice\r\n"), b"252 2.5.0 Maybe\r\n")

    def test_quit(self) -> None:
        """QUIT gets 221 and a close; nothing after it is read."""
        d = ready()
        self.assertEqual(d.feed(b"QUIT\r\nNOOP\r\n"), b"221 2.0.0 Bye\r\n")
        self.assertEqual(d.count(CloseRequested), 1)
        self.assertEqual(d.feed(b"NOOP\r\n"), b"")
        self.assertIs(d.machine.state, State.CLOSED)

    def test_every_reply_has_status(self) -> None:
        """Every reply except the greeting, EHLO/HELO and 354/334 carries an
        enhanced status code (RFC 2034)."""
        d = ready(MachineConfig(auth=True, auth_plaintext=True))
        out = d.feed(
            TXN + b"RCPT TO:<unknown@d.example>\r\nDATA\r\nx\r\n.\r\n"
            b"AUTH LOGIN\r\n*\r\nBDAT x\r\nVRFY x\r\nRSET\r\nQUIT\r\n"
        )
        for line in replies(out):
            if line[:3] not in (b"354", b"334"):
                self.assertRegex(line, rb"\A[245][0-9]{2}[ -][245]\.[0-9]+\.[0-9]+ ")


class TransactionTests(SynchronousTestCase):
    """MAIL, RCPT, DATA."""

    def test_message(self) -> None:
        """A whole transaction: the envelope, the unstuffed body, the reply."""
        d = ready()
        out = d.feed(
            b"MAIL FROM:<a@b.example> BODY=8BITMIME RET=HDRS ENVID=x1\r\n"
            b"RCPT TO:<c@d.example> NOTIFY=FAILURE ORCPT=rfc822;c+40d.example\r\n"
            b"RCPT TO:<unknown@d.example>\r\nDATA\r\n"
            b"Subject: hi\r\n\r\n..leading dot\r\n.\r\n"
        )
        self.assertEqual(
            codes(out), ["250 2.1.0", "250 2.1.5", "550 5.1.1", "354", "250 2.0.0"]
        )
        self.assertEqual(d.body(), b"Subject: hi\r\n\r\n.leading dot\r\n")
        (started,) = d.started()
        env = started.envelope
        self.assertEqual(env.sender, "a@b.example")
        self.assertEqual(env.body_type, "8BITMIME")
        self.assertEqual((env.ret, env.envid), ("HDRS", "x1"))
        self.assertEqual(env.client_address, "192.0.2.9")
        self.assertEqual(env.client_name, "client.example")
        self.assertEqual(env.protocol, "ESMTP")
        (r,) = env.recipients
        self.assertEqual(r.address, "c@d.example")
        self.assertEqual(r.notify, ("FAILURE",))
        self.assertEqual(r.orcpt, "rfc822;c+40d.example")
        self.assertIs(d.machine.state, State.READY)

    def test_empty_message(self) -> None:
        """A lone dot right after DATA is an empty message."""
        d = ready()
        out = d.feed(TXN + b"DATA\r\n.\r\n")
        self.assertEqual(codes(out)[-1], "250 2.0.0")
        self.assertEqual(d.body(), b"")

    def test_sequence_errors(self) -> None:
        """RCPT before MAIL, nested MAIL, DATA without recipients."""
        d = ready()
        self.assertEqual(codes(d.feed(b"RCPT TO:<c@d.example>\r\n")), ["503 5.5.1"])
        d.feed(b"MAIL FROM:<>\r\n")
        self.assertEqual(codes(d.feed(b"MAIL FROM:<>\r\n")), ["503 5.5.1"])
        self.assertEqual(codes(d.feed(b"DATA\r\n")), ["554 5.5.1"])
        self.assertEqual(
            codes(d.feed(b"RCPT TO:<unknown@d.example>\r\n")), ["550 5.1.1"]
        )
        self.assertEqual(codes(d.feed(b"DATA\r\n")), ["554 5.5.1"])

    def test_refused_mail(self) -> None:
        """A refused MAIL leaves no transaction."""
        d = ready(policy=lambda e, lmtp: Reply(553, "5.7.1", "Not yours"))
        self.assertEqual(codes(d.feed(TXN)), ["553 5.7.1", "503 5.5.1"])

    def test_rset_and_ehlo_reset(self) -> None:
        """RSET and EHLO drop the transaction."""
        d = ready()
        d.feed(TXN + b"RSET\r\n")
        self.assertEqual(codes(d.feed(b"DATA\r\n")), ["503 5.5.1"])
        d.feed(TXN + HELLO)
        self.assertEqual(codes(d.feed(b"DATA\r\n")), ["503 5.5.1"])

    def test_postmaster(self) -> None:
        """Bare <Postmaster> is postmaster at our hostname."""
        d = ready(MachineConfig(hostname="mx.example"))
        d.feed(b"MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n.\r\n")
        self.assertEqual(
            d.started()[0].envelope.recipients[0].address, "postmaster@mx.example"
        )

    def test_smtputf8(self) -> None:
        """UTF-8 recipients only in an SMTPUTF8 transaction."""
        d = ready()
        rcpt = "RCPT TO:<jöran@bücher.example>\r\n".encode()
        out = d.feed(b"MAIL FROM:<a@b.example>\r\n" + rcpt + b"RSET\r\n")
        self.assertEqual(codes(out), ["250 2.1.0", "553 5.6.7", "250 2.0.0"])
        out = d.feed(b"MAIL FROM:<a@b.example> SMTPUTF8\r\n" + rcpt + b"DATA\r\n.\r\n")
        self.assertEqual(codes(out), ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"])
        self.assertEqual(d.started()[0].envelope.protocol, "UTF8SMTP")
        self.assertTrue(d.started()[0].envelope.smtputf8)

    def test_max_recipients(self) -> None:
        """Recipients beyond the limit get 452 4.5.3; the message still goes."""
        d = ready(MachineConfig(max_recipients=2))
        out = d.feed(
            b"MAIL FROM:<>\r\n"
            + b"".join(b"RCPT TO:<u%d@d.example>\r\n" % i for i in range(3))
            + b"DATA\r\n.\r\n"
        )
        self.assertEqual(
            codes(out),
            ["250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3", "354", "250 2.0.0"],
        )
        self.assertEqual(len(d.started()[0].envelope.recipients), 2)

    def test_internal_error_reset(self) -> None:
        """answer(reset=True) drops the transaction."""
        m = SMTPMachine(MachineConfig(), Session())
        m.receive_data(HELLO)
        (ev,) = m.receive_data(b"MAIL FROM:<>\r\n")
        self.assertIsInstance(ev, MailRequested)
        m.answer(Reply(250, "2.1.0", "OK"))
        m.receive_data(b"RCPT TO:<a@b.example>\r\n")
        m.answer(Reply(451, "4.3.0", "Internal error"), reset=True)
        self.assertIs(m.state, State.READY)


class LimitTests(SynchronousTestCase):
    """Line and size limits, errors per session."""

    def test_command_line_limit(self) -> None:
        """512 octets with CRLF pass; 513 get 500 and the rest of the line is
        discarded; the connection stays usable (RFC 5321 §4.5.3.1.4)."""
        d = ready()
        ok = b"NOOP " + b"x" * 505 + b"\r\n"
        self.assertEqual(len(ok), 512)
        self.assertEqual(codes(d.feed(ok)), ["250 2.0.0"])
        long = b"NOOP " + b"x" * 506 + b"\r\n"
        self.assertEqual(codes(d.feed(long)), ["500 5.5.2"])
        huge = b"MAIL FROM:<" + b"x" * 5000 + b"\r" + b"\r\nNOOP\r\n"
        self.assertEqual(codes(d.feed(huge)), ["500 5.5.2", "250 2.0.0"])

    def test_text_line_limit(self) -> None:
        """A text line over 1000 octets fails the message, after its end."""
        d = ready()
        d.feed(TXN + b"DATA\r\n")
        out = d.feed(b"a" * 998 + b"\r\n", b"b" * 999 + b"\r\n", b"ok\r\n.\r\nNOOP\r\n")
        self.assertEqual(codes(out), ["500 5.5.2", "250 2.0.0"])
        self.assertEqual(d.aborted(), 1)
        self.assertEqual(d.count(MessageCompleted), 0)

    def test_size_param(self) -> None:
        """MAIL SIZE= over the limit is refused before DATA (RFC 1870)."""
        d = ready(MachineConfig(max_message_size=100))
        out = d.feed(b"MAIL FROM:<> SIZE=101\r\nMAIL FROM:<> SIZE=100\r\n")
        self.assertEqual(codes(out), ["552 5.3.4", "250 2.1.0"])

    def test_size_body(self) -> None:
        """A body over the limit is read to its end, then 552 5.3.4."""
        d = ready(MachineConfig(max_message_size=100))
        d.feed(TXN + b"DATA\r\n")
        out = d.feed(b"x" * 60 + b"\r\n", b"y" * 60 + b"\r\n", b".\r\n")
        self.assertEqual(codes(out), ["552 5.3.4"])
        self.assertEqual(d.aborted(), 1)
        self.assertEqual(codes(d.feed(b"NOOP\r\n")), ["250 2.0.0"])

    def test_max_errors(self) -> None:
        """Repeated errors end the session with 421 4.7.0."""
        d = ready(MachineConfig(max_errors=3))
        out = d.feed(b"FOO\r\nFOO\r\nFOO\r\nFOO\r\n")
        self.assertEqual(
            codes(out), ["500 5.5.2", "500 5.5.2", "500 5.5.2", "421 4.7.0"]
        )
        self.assertEqual(d.count(CloseRequested), 1)

    def test_close(self) -> None:
        """close() sends a last reply and aborts a started message."""
        d = ready()
        d.feed(TXN + b"DATA\r\nsome text\r\n")
        events = d.machine.close(Reply(421, "4.4.2", "Timeout"))
        self.assertEqual(d.machine.data_to_send(), b"421 4.4.2 Timeout\r\n")
        self.assertEqual([type(e) for e in events], [MessageAborted, CloseRequested])


# Payloads that must never end DATA, each followed by a would-be second message.
SMUGGLING = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\r\n",
    b"\r\n\x00.\r\n",
]
SECOND = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@d.example>\r\nDATA\r\nbad\r\n"


class SmugglingTests(SynchronousTestCase):
    """Only <CRLF>.<CRLF> ends DATA (SMTP smuggling defence)."""

    def test_reject(self) -> None:
        """Each payload: no second transaction; the message is refused after
        the real end with 550 5.6.0, and the session goes on."""
        for payload in SMUGGLING:
            d = ready()
            d.feed(TXN + b"DATA\r\nSubject: x\r\n\r\nfirst" + payload + SECOND)
            out = d.feed(b".\r\n")
            self.assertEqual(d.count(MailRequested), 1, payload)
            if payload == b"\r\n\x00.\r\n":
                self.assertEqual(codes(out), ["250 2.0.0"], payload)
            else:
                self.assertEqual(codes(out), ["550 5.6.0"], payload)
                self.assertEqual(d.aborted(), 1)
            self.assertEqual(codes(d.feed(b"NOOP\r\n")), ["250 2.0.0"])

    def test_normalize(self) -> None:
        """In normalize mode bare CR/LF become CRLF inside the one message."""
        for payload in SMUGGLING[:-1]:
            d = ready(MachineConfig(bare_line_endings="normalize"))
            out = d.feed(TXN + b"DATA\r\nfirst" + payload + SECOND + b".\r\n")
            self.assertEqual(d.count(MailRequested), 1, payload)
            self.assertEqual(codes(out)[-1], "250 2.0.0")
            body = d.body()
            self.assertNotRegex(body, rb"\r(?!\n)|(?<!\r)\n")
            self.assertIn(b"MAIL FROM:<evil@x.example>\r\n", body)

    def test_bdat_bare_lf(self) -> None:
        """BDAT text with a bare LF is refused; a CRLF split over chunks is not."""
        d = ready()
        out = d.feed(TXN + b"BDAT 3\r\na\r\nBDAT 3 LAST\r\n\nb\n")
        self.assertEqual(codes(out)[-2:], ["250 2.0.0", "550 5.6.0"])
        d = ready()
        out = d.feed(TXN + b"BDAT 2\r\na\rBDAT 3 LAST\r\n\nb\r")
        self.assertEqual(codes(out)[-1], "550 5.6.0")
        d = ready()
        out = d.feed(TXN + b"BDAT 2\r\na\rBDAT 3 LAST\r\n\nb.")
        self.assertEqual(codes(out)[-1], "250 2.0.0")
        self.assertEqual(d.body(), b"a\r\nb.")


class ChunkingTests(SynchronousTestCase):
    """BDAT (RFC 3030)."""

    def test_chunks(self) -> None:
        """Chunks are taken verbatim, no dot-unstuffing, pipelined freely."""
        d = ready()
        out = d.feed(TXN + b"BDAT 5\r\n.\r\n..BDAT 4 LAST\r\nab\r\nNOOP\r\n")
        self.assertEqual(
            codes(out),
            ["250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "250 2.0.0"],
        )
        self.assertEqual(d.body(), b".\r\n..ab\r\n")
        self.assertEqual(d.count(MessageCompleted), 1)

    def test_zero_last(self) -> None:
        """BDAT 0 LAST ends a message."""
        d = ready()
        out = d.feed(TXN + b"BDAT 2\r\nhiBDAT 0 LAST\r\n")
        self.assertEqual(codes(out)[-1], "250 2.0.0")
        self.assertEqual(d.body(), b"hi")

    def test_refused_chunk_is_consumed(self) -> None:
        """A refused BDAT's octets are read, never taken as commands."""
        d = ready()
        out = d.feed(b"BDAT 12\r\nQUIT\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(codes(out), ["503 5.5.1", "250 2.0.0"])
        d.feed(b"MAIL FROM:<>\r\n")
        out = d.feed(b"BDAT 6 LAST\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["554 5.5.1"])
        self.assertIs(d.machine.state, State.MAIL)

    def test_data_after_bdat(self) -> None:
        """DATA inside a BDAT transaction is a bad sequence; RSET aborts."""
        d = ready()
        out = d.feed(TXN + b"BDAT 1\r\nxDATA\r\nRSET\r\n")
        self.assertEqual(codes(out)[-2:], ["503 5.5.1", "250 2.0.0"])
        self.assertEqual(d.aborted(), 1)

    def test_size(self) -> None:
        """An oversized chunk is read and refused; later chunks too until RSET."""
        d = ready(MachineConfig(max_message_size=5))
        out = d.feed(TXN + b"BDAT 6\r\n123456BDAT 1 LAST\r\nxRSET\r\n")
        self.assertEqual(codes(out)[-3:], ["552 5.3.4", "503 5.5.1", "250 2.0.0"])
        self.assertEqual(d.count(MessageCompleted), 0)


class PipeliningTests(SynchronousTestCase):
    """Reply batching (RFC 2920)."""

    def test_batched(self) -> None:
        """Replies to a pipelined group go out in one write."""
        d = ready()
        d.flushes.clear()
        d.feed(TXN + b"RCPT TO:<e@d.example>\r\nDATA\r\n")
        self.assertEqual(len(d.flushes), 1)
        self.assertEqual(
            codes(d.flushes[0]), ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"]
        )

    def test_held_while_pending(self) -> None:
        """While a decision is pending and input waits, nothing is flushed;
        when the input runs out, the replies go."""
        m = SMTPMachine(MachineConfig(), Session())
        m.greet()
        m.data_to_send()
        m.receive_data(HELLO)
        m.data_to_send()
        m.receive_data(TXN)
        self.assertTrue(m.pending)
        self.assertEqual(m.data_to_send(), b"")
        m.answer(Reply(250, "2.1.0", "OK"))
        self.assertTrue(m.pending)
        self.assertEqual(m.data_to_send(), b"250 2.1.0 OK\r\n")


class StartTLSTests(SynchronousTestCase):
    """STARTTLS (RFC 3207)."""

    def test_pipelined_commands_discarded(self) -> None:
        """Commands sent after STARTTLS in the same packet are not executed,
        and the session starts over after the handshake."""
        d = ready(MachineConfig(starttls=True, auth=True))
        out = d.feed(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n")
        self.assertEqual(out, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertEqual(d.count(MailRequested), 0)
        self.assertTrue(d.machine.session.tls_active)
        self.assertIsNone(d.machine.session.helo)
        self.assertEqual(codes(d.feed(b"MAIL FROM:<>\r\n")), ["503 5.5.1"])
        out = d.feed(HELLO)
        self.assertNotIn(b"STARTTLS", out)
        self.assertIn(b"AUTH PLAIN LOGIN", out)
        self.assertEqual(codes(d.feed(b"STARTTLS\r\n")), ["503 5.5.1"])

    def test_not_offered(self) -> None:
        """STARTTLS where it is not offered, or in a transaction."""
        self.assertEqual(codes(ready().feed(b"STARTTLS\r\n")), ["502 5.5.1"])
        d = ready(MachineConfig(starttls=True))
        self.assertEqual(codes(d.feed(TXN + b"STARTTLS\r\n"))[-1], "503 5.5.1")


def plain(user: str, password: str, authzid: str = "") -> bytes:
    """An AUTH PLAIN response."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


class AuthTests(SynchronousTestCase):
    """AUTH PLAIN and LOGIN (RFC 4954)."""

    def tls(self, **kw: bool) -> Driver:
        """A driver on TLS with AUTH offered."""
        return ready(MachineConfig(auth=True, **kw), tls_active=True)

    def test_plain_initial(self) -> None:
        """PLAIN with an initial response; the user is remembered."""
        d = self.tls()
        out = d.feed(b"AUTH PLAIN " + plain("alice@d.example", "secret") + b"\r\n")
        self.assertEqual(out, b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(d.machine.session.auth_user, "alice@d.example")
        self.assertEqual(codes(d.feed(b"AUTH PLAIN =\r\n")), ["503 5.5.1"])
        self.assertNotIn(b"AUTH", d.feed(HELLO))
        d.feed(TXN + b"DATA\r\n.\r\n")
        self.assertEqual(d.started()[0].envelope.protocol, "ESMTPSA")
        self.assertEqual(d.started()[0].envelope.auth_user, "alice@d.example")

    def test_plain_challenge(self) -> None:
        """PLAIN without an initial response gets an empty 334."""
        d = self.tls()
        self.assertEqual(d.feed(b"AUTH PLAIN\r\n"), b"334 \r\n")
        out = d.feed(plain("alice", "wrong") + b"\r\n")
        self.assertEqual(out, b"535 5.7.8 Authentication credentials invalid\r\n")
        self.assertIsNone(d.machine.session.auth_user)

    def test_login(self) -> None:
        """LOGIN asks for user name and password."""
        d = self.tls()
        self.assertEqual(d.feed(b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(
            d.feed(base64.b64encode(b"bob") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n"
        )
        self.assertEqual(
            codes(d.feed(base64.b64encode(b"secret") + b"\r\n")), ["235 2.7.0"]
        )
        self.assertEqual(d.machine.session.auth_user, "bob")
        auths = [e for e in d.events if isinstance(e, AuthRequested)]
        self.assertEqual(auths, [AuthRequested("LOGIN", "bob", "secret")])

    def test_login_initial(self) -> None:
        """LOGIN with the user name as initial response."""
        d = self.tls()
        out = d.feed(b"AUTH LOGIN " + base64.b64encode(b"bob") + b"\r\n")
        self.assertEqual(out, b"334 UGFzc3dvcmQ6\r\n")

    def test_errors(self) -> None:
        """Cancel, bad base64, unknown mechanism, bad PLAIN, other authzid."""
        d = self.tls()
        self.assertEqual(codes(d.feed(b"AUTH LOGIN\r\n*\r\n")), ["334", "501 5.0.0"])
        self.assertEqual(codes(d.feed(b"AUTH PLAIN\r\n!!!\r\n")), ["334", "501 5.5.2"])
        self.assertEqual(codes(d.feed(b"AUTH CRAM-MD5\r\n")), ["504 5.5.4"])
        bad = base64.b64encode(b"no-nul")
        self.assertEqual(codes(d.feed(b"AUTH PLAIN " + bad + b"\r\n")), ["501 5.5.2"])
        other = plain("alice", "secret", authzid="bob")
        self.assertEqual(codes(d.feed(b"AUTH PLAIN " + other + b"\r\n")), ["535 5.7.8"])
        self.assertEqual(
            codes(d.feed(b"AUTH PLAIN\r\n" + b"A" * 13000 + b"\r\n")),
            ["334", "500 5.5.6"],
        )
        self.assertEqual(codes(d.feed(b"NOOP\r\n")), ["250 2.0.0"])

    def test_tls_required(self) -> None:
        """Without TLS, AUTH is refused with 538 unless plaintext is allowed."""
        d = ready(MachineConfig(auth=True, starttls=True))
        self.assertEqual(codes(d.feed(b"AUTH PLAIN =\r\n")), ["538 5.7.11"])
        d = ready(MachineConfig(auth=True, auth_plaintext=True))
        out = d.feed(b"AUTH PLAIN " + plain("u", "secret") + b"\r\n")
        self.assertEqual(codes(out), ["235 2.7.0"])
        self.assertEqual(codes(ready().feed(b"AUTH PLAIN =\r\n")), ["502 5.5.1"])

    def test_auth_required(self) -> None:
        """Submission: MAIL before AUTH gets 530 (STARTTLS first without TLS)."""
        config = MachineConfig(auth=True, auth_required=True, starttls=True)
        self.assertEqual(
            replies(ready(config).feed(b"MAIL FROM:<>\r\n")),
            [b"530 5.7.0 Must issue a STARTTLS command first"],
        )
        d = ready(config, tls_active=True)
        self.assertEqual(
            replies(d.feed(b"MAIL FROM:<>\r\n")), [b"530 5.7.0 Authentication required"]
        )
        d.feed(b"AUTH PLAIN " + plain("u", "secret") + b"\r\n")
        self.assertEqual(codes(d.feed(b"MAIL FROM:<>\r\n")), ["250 2.1.0"])


class LMTPTests(SynchronousTestCase):
    """LMTP (RFC 2033)."""

    def test_lhlo_only(self) -> None:
        """LMTP takes LHLO, not EHLO or HELO; SMTP does not take LHLO."""
        d = Driver(MachineConfig(lmtp=True))
        self.assertEqual(
            codes(d.feed(HELLO + b"HELO x\r\nMAIL FROM:<>\r\n")),
            ["500 5.5.1", "500 5.5.1", "503 5.5.1"],
        )
        self.assertIn(b"250-PIPELINING", d.feed(b"LHLO x\r\n"))
        self.assertEqual(codes(Driver().feed(b"LHLO x\r\n")), ["500 5.5.2"])

    def test_reply_per_recipient(self) -> None:
        """After DATA, one reply per accepted recipient, in order."""
        d = Driver(MachineConfig(lmtp=True))
        out = d.feed(
            b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@d.example>\r\n"
            b"RCPT TO:<unknown@d.example>\r\nRCPT TO:<b@d.example>\r\n"
            b"DATA\r\nhi\r\n.\r\n"
        )
        self.assertEqual(replies(out)[-2:], [b"250 2.0.0 OK 0", b"250 2.0.0 OK 1"])
        self.assertEqual(d.started()[0].envelope.protocol, "LMTP")

    def test_failure_per_recipient(self) -> None:
        """A refused message is refused once per recipient."""
        d = Driver(MachineConfig(lmtp=True, max_message_size=3))
        out = d.feed(
            b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@d.example>\r\n"
            b"RCPT TO:<b@d.example>\r\nDATA\r\nhello\r\n.\r\n"
        )
        self.assertEqual(codes(out)[-2:], ["552 5.3.4", "552 5.3.4"])


SCRIPT = (
    HELLO
    + TXN
    + b"RCPT TO:<unknown@d.example>\r\nDATA\r\nSubject: x\r\n\r\n..a\r\n"
    + b"b" * 1200
    + b"\r\n.\r\nNOOP "
    + b"y" * 600
    + b"\r\n"
    + TXN
    + b"DATA\r\nline\r\n\r\n.\r\n"
    + TXN
    + b"BDAT 7\r\n1\r\n.\r\n2BDAT 3 LAST\r\nend"
    + b"AUTH LOGIN\r\n*\r\nFOO\r\nVRFY x\r\nRSET\r\nQUIT\r\n"
)


class PropertyTests(SynchronousTestCase):
    """Chunking invariance and robustness."""

    @settings(max_examples=200)
    @given(st.lists(st.integers(min_value=0, max_value=len(SCRIPT)), max_size=12))
    def test_chunking_invariance(self, cuts: list[int]) -> None:
        """Any split of the input gives the same replies and the same body."""
        whole = Driver(MachineConfig(auth=True, auth_plaintext=True))
        whole.feed(SCRIPT)
        self.assertEqual(whole.completed(), [b"line\r\n\r\n", b"1\r\n.\r\n2end"])
        d = Driver(MachineConfig(auth=True, auth_plaintext=True))
        points = sorted(set(cuts))
        chunks = [
            SCRIPT[a:b]
            for a, b in zip([0, *points], [*points, len(SCRIPT)], strict=True)
        ]
        d.feed(*chunks)
        self.assertEqual(bytes(d.output), bytes(whole.output))
        self.assertEqual(d.completed(), whole.completed())

    @settings(max_examples=200)
    @given(
        st.lists(
            st.sampled_from(
                [HELLO, b"HELO x\r\n", TXN, b"DATA\r\n", b".\r\n", b"text\r\n"]
                + [b"BDAT 3\r\n", b"BDAT 0 LAST\r\n", b"RSET\r\n", b"\r\n", b"\n"]
                + [b"AUTH PLAIN\r\n", b"*\r\n", b"STARTTLS\r\n", b"LHLO x\r\n"]
                + [b"NOOP\r\n", b"VRFY a\r\n", b"\r", b"x" * 600, b"\xff\x00"]
            ),
            max_size=30,
        ),
        st.booleans(),
    )
    def test_any_sequence(self, parts: list[bytes], lmtp: bool) -> None:
        """Any sequence of commands and junk gives only well-formed replies."""
        d = Driver(
            MachineConfig(lmtp=lmtp, auth=True, starttls=True, auth_plaintext=True)
        )
        d.feed(*parts)
        for line in replies(bytes(d.output)):
            self.assertRegex(line, _REPLY_LINE)

    def test_table(self) -> None:
        """The table only names existing handlers, from command states."""
        for (state, kind), name in TRANSITIONS.items():
            self.assertTrue(callable(getattr(SMTPMachine, name)), name)
            self.assertNotIn(state, (State.DATA, State.BDAT, State.CLOSED))
            self.assertTrue(isinstance(kind, type))


def _data_model(text: bytes, max_size: int) -> tuple[bytes | None, str | None]:
    """What DATA must make of C{text} (which ends with the terminator line),
    line by line as RFC 5321 §4.5.2 and §4.5.3.1.6 say: (body, None) or
    (None, the failure's code and status)."""
    pos, size, failure, body = 0, 0, None, []
    while True:
        i = text.find(b"\r\n", pos)
        line, pos = text[pos:i], i + 2
        if line == b".":
            break
        if len(line) > 998:
            failure = failure or "500 5.5.2"
            continue
        if failure:
            continue
        if line.startswith(b"."):
            line = line[1:]
        if b"\r" in line or b"\n" in line:
            failure = "550 5.6.0"
            continue
        size += len(line) + 2
        if size > max_size:
            failure = "552 5.3.4"
            continue
        body.append(line + b"\r\n")
    return (None, failure) if failure else (b"".join(body), None)


class DataReaderTests(SynchronousTestCase):
    """The DATA reader (a fast path over whole buffers, line by line when a
    line needs care) against a line-by-line model of the RFC."""

    @settings(max_examples=300)
    @given(
        st.lists(
            st.sampled_from(
                [b"a", b".", b"..", b"\r\n", b"\r", b"\n", b"x" * 400, b"y" * 998]
            ),
            max_size=40,
        ),
        st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
        st.sampled_from([100, 2000, 10**6]),
    )
    def test_model(self, parts: list[bytes], cuts: list[int], max_size: int) -> None:
        """Any text, cut anywhere: the model's body, or its failure reply."""
        text = b"x" + b"".join(parts) + b"\r\n"
        # A line "." would end the data early: keep the terminator last.
        while b"\r\n.\r\n" in text:
            text = text.replace(b"\r\n.\r\n", b"\r\n..\r\n")
        text += b".\r\n"
        body, failure = _data_model(text, max_size)
        d = ready(MachineConfig(max_message_size=max_size))
        d.feed(TXN + b"DATA\r\n")
        points = sorted({c for c in cuts if c < len(text)})
        chunks = [
            text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)
        ]
        out = d.feed(*chunks)
        if failure is None:
            self.assertEqual(codes(out), ["250 2.0.0"])
            self.assertEqual(d.completed(), [body])
        else:
            self.assertEqual(codes(out), [failure])
            self.assertEqual(d.completed(), [])
        self.assertEqual(codes(d.feed(b"NOOP\r\n")), ["250 2.0.0"])

    def test_one_buffer(self) -> None:
        """A whole message in one read: one body event, dots removed."""
        d = ready()
        d.feed(TXN + b"DATA\r\n")
        d.feed(b"Subject: x\r\n\r\n..one\r\n.two\r\n...\r\n.\r\nNOOP\r\n")
        self.assertEqual(d.completed(), [b"Subject: x\r\n\r\n.one\r\ntwo\r\n..\r\n"])
        self.assertEqual(d.count(BodyReceived), 1)
