"""Loopback tests: Python's smtplib against the SMTP server on port 0."""

from __future__ import annotations

import functools
import smtplib
import socket
import ssl
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.smtp_fakes import Mailbag, directory, expander_for, portal
from twistedmail.auth.throttle import LoginThrottle
from twistedmail.config import ServerSettings, Settings, SMTPSettings
from twistedmail.smtp.server import SMTPServerFactory, SMTPServerProtocol
from twistedmail.testing import make_test_certificate
from twistedmail.tls import ServerTLS

_T = TypeVar("_T")

MESSAGE = b"From: a@remote.example\r\nSubject: test\r\n\r\nHello.\r\n.leading dot\r\n"


class _TrackingFactory(SMTPServerFactory):
    """Fires waiters when every connection has closed; keeps its protocols."""

    waiters: list[Deferred[None]]
    built: list[SMTPServerProtocol]

    def buildProtocol(self, addr: Any) -> SMTPServerProtocol:
        protocol = super().buildProtocol(addr)
        assert isinstance(protocol, SMTPServerProtocol)
        self.built.append(protocol)
        return protocol

    def connection_closed(self, ip: str) -> None:
        super().connection_closed(ip)
        if self.connections == 0:
            waiters, self.waiters = self.waiters, []
            for d in waiters:
                d.callback(None)

    def all_closed(self) -> Deferred[None]:
        if self.connections == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.waiters.append(d)
        return d


class _SmallSendBufferProtocol(SMTPServerProtocol):
    """Shrinks its socket's send buffer, so that replies soon fill it."""

    def connectionMade(self) -> None:
        sock = self._transport.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().connectionMade()


class _SmallSendBufferFactory(_TrackingFactory):
    """Builds L{_SmallSendBufferProtocol}s."""

    def buildProtocol(self, addr: Any) -> SMTPServerProtocol:
        protocol = _SmallSendBufferProtocol(self)
        self.built.append(protocol)
        return protocol


class LoopbackTests(TestCase):
    """smtplib talks to the server over real sockets."""

    def serve(
        self,
        role: str = "smtp",
        *,
        implicit_tls: bool = False,
        small_send_buffer: bool = False,
        **smtp: Any,
    ) -> tuple[int, Mailbag]:
        """Listen on 127.0.0.1 port 0; return the port and the mailbag."""
        self.cert, key = make_test_certificate(self.mktemp(), "localhost")
        tls = ServerTLS(self.cert, key)
        d = directory()
        bag = Mailbag()
        cls = _SmallSendBufferFactory if small_send_buffer else _TrackingFactory
        factory = cls(
            Settings().with_changes(
                server=ServerSettings(hostname="mx.local.example"),
                smtp=SMTPSettings(**smtp),
            ),
            reactor,
            role=role,
            delivery_agent_factory=bag.agent,
            expander=expander_for(d),
            directory=d,
            portal=portal(d),
            throttle=LoginThrottle(reactor),
            tls=tls,
        )
        factory.waiters = []
        factory.built = []
        self.factory = factory
        listening = tls.wrap_implicit(factory, reactor) if implicit_tls else factory
        port = reactor.listenTCP(0, listening, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(factory.all_closed)
        self.addCleanup(port.stopListening)
        return port.getHost().port, bag

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting the test certificate."""
        return ssl.create_default_context(cafile=self.cert)

    def in_thread(self, f: Callable[[], _T]) -> Deferred[_T]:
        """Run blocking client code off the reactor thread."""
        return deferToThread(f)

    @inlineCallbacks
    def test_plain(self) -> Generator[Deferred[Any], Any, None]:
        """A plain MX delivery with smtplib.sendmail."""
        port, bag = self.serve()

        def client() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.example")
                refused = s.sendmail(
                    "a@remote.example", ["alice@local.example"], MESSAGE
                )
                assert refused == {}
                return s.noop()

        code, _ = yield self.in_thread(client)
        self.assertEqual(code, 250)
        (msg,) = bag.delivered
        self.assertTrue(
            msg.data.startswith(b"Received: from client.example ([127.0.0.1])")
        )
        self.assertTrue(msg.data.endswith(MESSAGE))
        self.assertIsNone(msg.envelope.tls)

    @inlineCallbacks
    def test_direct_send_only_on_plain_tcp(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """Replies go straight to the socket on plain TCP, not under TLS."""
        for implicit_tls in (False, True):
            port, _ = self.serve(implicit_tls=implicit_tls)

            def client(port: int, tls: bool, context: ssl.SSLContext) -> int:
                cls = smtplib.SMTP_SSL if tls else smtplib.SMTP
                kwargs: dict[str, Any] = {"context": context} if tls else {}
                with cls("127.0.0.1", port, timeout=10, **kwargs) as s:
                    return s.ehlo("client.example")[0]

            context = self.client_context()
            code = yield self.in_thread(
                functools.partial(client, port, implicit_tls, context)
            )
            self.assertEqual(code, 250)
            (protocol,) = self.factory.built
            self.assertEqual(protocol._direct, not implicit_tls)

    @inlineCallbacks
    def test_refusals(self) -> Generator[Deferred[Any], Any, None]:
        """smtplib sees the unknown user and the relay refusal."""
        port, bag = self.serve()

        def client() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                try:
                    s.sendmail(
                        "a@remote.example",
                        ["nobody@local.example", "v@foreign.example"],
                        MESSAGE,
                    )
                except smtplib.SMTPRecipientsRefused as e:
                    return e.recipients  # type: ignore[no-any-return]
            raise AssertionError("not refused")

        refused = yield self.in_thread(client)
        self.assertEqual(refused["nobody@local.example"][0], 550)
        self.assertEqual(refused["v@foreign.example"][0], 550)
        self.assertIn(b"5.7.1", refused["v@foreign.example"][1])
        self.assertEqual(bag.delivered, [])

    @inlineCallbacks
    def test_starttls_auth_plain(self) -> Generator[Deferred[Any], Any, None]:
        """Submission: STARTTLS, AUTH PLAIN, then a relayed message; the
        envelope and trace header state the TLS version."""
        port, bag = self.serve("submission")

        def client() -> tuple[bool, bool, bool]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.example")
                before = s.has_extn("auth")
                s.starttls(context=self.client_context())
                s.ehlo("client.example")
                after = s.has_extn("auth")
                no_starttls = not s.has_extn("starttls")
                s.login("alice@local.example", "secret")
                s.sendmail("alice@local.example", ["v@foreign.example"], MESSAGE)
                return before, after, no_starttls

        before, after, no_starttls = yield self.in_thread(client)
        self.assertEqual((before, after, no_starttls), (False, True, True))
        env = bag.delivered[0].envelope
        self.assertEqual(env.protocol, "ESMTPSA")
        self.assertEqual(env.auth_user, "alice@local.example")
        assert env.tls is not None
        self.assertRegex(env.tls, r"^TLSv1\.[23] \S+$")
        self.assertIn(f"with ESMTPSA ({env.tls})".encode(), bag.delivered[0].data)

    @inlineCallbacks
    def test_auth_login_and_failure(self) -> Generator[Deferred[Any], Any, None]:
        """AUTH LOGIN works; a wrong password is 535."""
        port, bag = self.serve("submission")

        def client() -> tuple[int, int]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.starttls(context=self.client_context())
                s.ehlo()
                try:
                    s.login("alice@local.example", "wrong")
                except smtplib.SMTPAuthenticationError as e:
                    failed = e.smtp_code
                s.user, s.password = "bob@local.example", "hunter2"
                code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
                return failed, code

        failed, code = yield self.in_thread(client)
        self.assertEqual((failed, code), (535, 235))

    @inlineCallbacks
    def test_implicit_tls(self) -> Generator[Deferred[Any], Any, None]:
        """submissions: TLS from the first byte, no STARTTLS offered."""
        port, bag = self.serve("submissions", implicit_tls=True)

        def client() -> bool:
            with smtplib.SMTP_SSL(
                "localhost", port, timeout=10, context=self.client_context()
            ) as s:
                s.ehlo()
                offered = s.has_extn("starttls")
                s.login("alice@local.example", "secret")
                s.sendmail("alice@local.example", ["bob@local.example"], MESSAGE)
                return offered

        offered = yield self.in_thread(client)
        self.assertFalse(offered)
        self.assertEqual(bag.delivered[0].envelope.protocol, "ESMTPSA")
        self.assertIsNotNone(bag.delivered[0].envelope.tls)

    @inlineCallbacks
    def test_pipelining(self) -> Generator[Deferred[Any], Any, None]:
        """A pipelined group sent in one write gets every reply, in order."""
        port, bag = self.serve()

        def client() -> list[int]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo()
                assert s.has_extn("pipelining")
                assert s.sock is not None
                s.sock.sendall(
                    b"MAIL FROM:<a@remote.example>\r\n"
                    b"RCPT TO:<alice@local.example>\r\n"
                    b"RCPT TO:<nobody@local.example>\r\n"
                    b"RCPT TO:<bob@local.example>\r\n"
                    b"DATA\r\n"
                )
                codes = [s.getreply()[0] for _ in range(5)]
                s.sock.sendall(b"one\r\n.\r\nNOOP\r\n")
                codes += [s.getreply()[0] for _ in range(2)]
                return codes

        codes = yield self.in_thread(client)
        self.assertEqual(codes, [250, 250, 550, 250, 354, 250, 250])
        self.assertEqual(len(bag.delivered[0].recipients), 2)

    @inlineCallbacks
    def test_replies_in_order_when_socket_full(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """A client that sends many commands before reading any reply gets
        every reply, in order: once the socket takes no more, the rest waits
        in the transport and later replies queue behind it."""
        port, _ = self.serve(small_send_buffer=True)
        rounds = 2000

        def client() -> tuple[int, list[bytes]]:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", port))
                s.sendall(b"EHLO c.example\r\nVRFY x\r\n" * rounds + b"QUIT\r\n")
                data = bytearray()
                while chunk := s.recv(65536):
                    data += chunk
            lines = bytes(data).split(b"\r\n")
            codes = [line[:4] for line in lines if line[3:4] == b" "]
            return len(data), codes

        size, codes = yield self.in_thread(client)
        self.assertGreater(size, 100_000)
        self.assertEqual(codes, [b"220 "] + [b"250 ", b"252 "] * rounds + [b"221 "])

    @inlineCallbacks
    def test_bdat(self) -> Generator[Deferred[Any], Any, None]:
        """CHUNKING by hand: two chunks, the second LAST."""
        port, bag = self.serve()

        def client() -> list[tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo()
                assert s.has_extn("chunking")
                s.mail("a@remote.example")
                s.rcpt("bob@local.example")
                s.send(b"BDAT 8\r\nSubject:")
                first = s.getreply()
                s.send(b"BDAT 9 LAST\r\n x\r\n\r\n.\r\n")
                return [first, s.getreply()]

        replies = yield self.in_thread(client)
        self.assertEqual([c for c, _ in replies], [250, 250])
        self.assertIn(b"queued as", replies[1][1])
        self.assertTrue(bag.delivered[0].data.endswith(b"\r\nSubject: x\r\n\r\n.\r\n"))

    @inlineCallbacks
    def test_8bitmime_smtputf8(self) -> Generator[Deferred[Any], Any, None]:
        """An 8-bit body with BODY=8BITMIME, and a UTF-8 sender with SMTPUTF8."""
        port, bag = self.serve()
        body = "Subject: Grüße\r\n\r\nÄpfel und Bücher\r\n".encode()

        def client() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo()
                assert s.has_extn("8bitmime") and s.has_extn("smtputf8")
                s.sendmail(
                    "a@remote.example",
                    ["alice@local.example"],
                    body,
                    mail_options=["BODY=8BITMIME"],
                )
                s.sendmail(
                    "jöran@bücher.example",
                    ["alice@local.example"],
                    body,
                    mail_options=["SMTPUTF8", "BODY=8BITMIME"],
                )

        yield self.in_thread(client)
        first, second = bag.delivered
        self.assertEqual(first.envelope.body_type, "8BITMIME")
        self.assertTrue(first.data.endswith(body))
        self.assertEqual(second.envelope.sender, "jöran@xn--bcher-kva.example")
        self.assertTrue(second.envelope.smtputf8)
        self.assertEqual(second.envelope.protocol, "UTF8SMTP")

    @inlineCallbacks
    def test_starttls_injection(self) -> Generator[Deferred[Any], Any, None]:
        """Commands pipelined after STARTTLS in the same packet are dropped,
        and the session starts over on TLS (RFC 3207 §4.2; CVE-2011-0411)."""
        port, bag = self.serve()

        def client() -> list[int]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo()
                assert s.sock is not None
                s.sock.sendall(
                    b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n"
                    b"RCPT TO:<bob@local.example>\r\n"
                )
                codes = [s.getreply()[0]]
                s.sock = self.client_context().wrap_socket(
                    s.sock, server_hostname="localhost"
                )
                s.file = None
                codes.append(s.rcpt("bob@local.example")[0])
                codes.append(s.mail("a@remote.example")[0])
                codes.append(s.ehlo()[0])
                s.sendmail("a@remote.example", ["bob@local.example"], MESSAGE)
                return codes

        codes = yield self.in_thread(client)
        self.assertEqual(codes, [220, 503, 503, 250])
        (msg,) = bag.delivered
        self.assertEqual(msg.envelope.sender, "a@remote.example")
        self.assertEqual(msg.envelope.protocol, "ESMTPS")
