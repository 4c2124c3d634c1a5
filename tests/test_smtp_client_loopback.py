"""Loopback tests: our ESMTP client against real servers on 127.0.0.1 —
Postfix's smtp-sink, and twistedmail's own server (STARTTLS, AUTH)."""

from __future__ import annotations

import os
import shutil
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.smtp_fakes import Mailbag, directory, expander_for, portal
from twistedmail.auth.throttle import LoginThrottle
from twistedmail.config import ServerSettings, Settings
from twistedmail.smtp.client import (
    ClientOptions,
    Credentials,
    HostFailure,
    OutboundRecipient,
    connect,
    deliver_message,
    load_trust_root,
)
from twistedmail.smtp.server import SMTPServerFactory
from twistedmail.testing import make_test_certificate
from twistedmail.tls import ServerTLS

MESSAGE = b"From: a@a.test\r\nTo: b@b.test\r\nSubject: hi\r\n\r\nHello.\r\n.dot\r\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Sink(ProcessProtocol):
    """Watches the smtp-sink process."""

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class SMTPSinkTests(TestCase):
    """Postfix's smtp-sink (Debian package postfix) as the receiving end."""

    async def start_sink(self) -> tuple[int, str]:
        """Run smtp-sink on a free loopback port; return it and the dump file."""
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        dump = os.path.join(folder, "dump")
        port = free_port()
        args = [binary, "-D", dump, f"127.0.0.1:{port}", "10"]
        if os.getuid() == 0:
            # smtp-sink insists on a user to run as when started as root.
            args[1:1] = ["-u", "root"]
        sink = _Sink()
        process = reactor.spawnProcess(sink, binary, args, env={})  # type: ignore[attr-defined]

        def stop() -> Deferred[None]:
            if process.pid is not None:
                process.signalProcess("TERM")
            return sink.ended

        self.addCleanup(stop)
        # Wait until it listens (bounded: 200 tries, 25 ms apart).
        for _ in range(200):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return port, dump
            await deferLater(reactor, 0.025, lambda: None)  # type: ignore[arg-type]
        self.fail(f"smtp-sink did not start: {sink.output!r}")

    async def test_pipelined_messages(self) -> None:
        """Two messages over one pipelined connection, one of them 8-bit with
        DSN parameters; smtp-sink's dump shows both as sent."""
        port, dump = await self.start_sink()
        conn = await connect(
            reactor, "localhost", "127.0.0.1", port, ClientOptions("a.test", tls="none")
        )
        self.assertIn("PIPELINING", conn.extensions)
        first = await conn.send("a@a.test", ["b@b.test", "c@b.test"], MESSAGE)
        self.assertEqual(len(first.delivered), 2)
        eight_bit = "Subject: 8-bit text\r\n\r\nGrüße\r\n".encode()
        second = await conn.send(
            "a@a.test",
            [OutboundRecipient("d@b.test", ("SUCCESS",), "rfc822;d@b.test")],
            eight_bit,
            ret="HDRS",
            envid="e1",
        )
        self.assertEqual([r.reply.code for r in second.recipients], [250])
        self.assertTrue(second.dsn)
        await conn.quit()
        with open(dump, "rb") as f:
            text = f.read()
        self.assertIn(b"X-Rcpt-Args: <b@b.test>\n", text)
        self.assertIn(b"X-Rcpt-Args: <c@b.test>\n", text)
        self.assertIn(b"Hello.\n.dot\n", text)
        self.assertIn(
            b"X-Mail-Args: <a@a.test> BODY=8BITMIME RET=HDRS ENVID=e1\n", text
        )
        self.assertIn(
            b"X-Rcpt-Args: <d@b.test> NOTIFY=SUCCESS ORCPT=rfc822;d@b.test\n", text
        )
        self.assertIn("Grüße\n".encode(), text)

    async def test_deliver_message(self) -> None:
        """deliver_message: connect, send, QUIT in one call; the message
        read from a file."""
        port, dump = await self.start_sink()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(MESSAGE)
        result = await deliver_message(
            reactor,
            "localhost",
            "127.0.0.1",
            port,
            helo_name="a.test",
            envelope_sender="",
            recipients=["b@b.test"],
            message=path,
        )
        self.assertEqual(len(result.delivered), 1)
        self.assertFalse(result.tls)
        with open(dump, "rb") as f:
            text = f.read()
        self.assertIn(b"X-Mail-Args: <>\n", text)
        self.assertIn(b"Hello.\n.dot\n", text)


class _Factory(SMTPServerFactory):
    """Lets a test wait until every connection has closed."""

    waiters: list[Deferred[None]]

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


class OwnServerTests(TestCase):
    """Our client against our server: STARTTLS, certificate checks, AUTH."""

    def serve(self, role: str = "smtp") -> tuple[int, Mailbag]:
        """Our server with a test certificate for localhost, on port 0."""
        self.cert, key = make_test_certificate(self.mktemp(), "localhost")
        d = directory()
        bag = Mailbag()
        factory = _Factory(
            Settings().with_changes(server=ServerSettings(hostname="mx.local.example")),
            reactor,
            role=role,
            delivery_agent_factory=bag.agent,
            expander=expander_for(d),
            directory=d,
            portal=portal(d),
            throttle=LoginThrottle(reactor),
            tls=ServerTLS(self.cert, key),
        )
        factory.waiters = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(factory.all_closed)
        self.addCleanup(port.stopListening)
        return port.getHost().port, bag

    async def test_starttls_verify(self) -> None:
        """Policy "verify": STARTTLS, certificate checked against the host
        name, message delivered over TLS."""
        port, bag = self.serve()
        result = await deliver_message(
            reactor,
            "localhost",
            "127.0.0.1",
            port,
            helo_name="a.test",
            envelope_sender="a@a.test",
            recipients=["alice@local.example", "nobody@local.example"],
            message=MESSAGE,
            tls_policy="verify",
            trust_root=load_trust_root(self.cert),
        )
        self.assertTrue(result.tls)
        self.assertEqual(
            [(r.reply.code, r.reply.status) for r in result.recipients],
            [(250, "2.0.0"), (550, "5.1.1")],
        )
        (msg,) = bag.delivered
        self.assertIsNotNone(msg.envelope.tls)
        self.assertTrue(msg.data.endswith(MESSAGE))

    async def test_verify_wrong_name(self) -> None:
        """A certificate not valid for the MX name: host failure, 4.7.5."""
        port, bag = self.serve()
        d = deliver_message(
            reactor,
            "mx.elsewhere.example",
            "127.0.0.1",
            port,
            helo_name="a.test",
            envelope_sender="a@a.test",
            recipients=["alice@local.example"],
            message=MESSAGE,
            tls_policy="verify",
            trust_root=load_trust_root(self.cert),
        )
        error = await self.assertFailure(d, HostFailure)
        self.assertEqual(error.reply.status, "4.7.5")
        self.assertEqual(bag.delivered, [])

    async def test_opportunistic_self_signed(self) -> None:
        """ "opportunistic" encrypts with any certificate."""
        port, bag = self.serve()
        result = await deliver_message(
            reactor,
            "localhost",
            "127.0.0.1",
            port,
            helo_name="a.test",
            envelope_sender="a@a.test",
            recipients=["alice@local.example"],
            message=MESSAGE,
        )
        self.assertTrue(result.tls)
        self.assertEqual(len(bag.delivered), 1)

    async def test_auth_relay(self) -> None:
        """AUTH PLAIN after STARTTLS on the submission role lets us relay,
        as with a smarthost."""
        port, bag = self.serve("submission")
        result = await deliver_message(
            reactor,
            "localhost",
            "127.0.0.1",
            port,
            helo_name="a.test",
            envelope_sender="alice@local.example",
            recipients=["v@foreign.example"],
            message=MESSAGE,
            tls_policy="required",
            credentials=Credentials("alice@local.example", "secret"),
        )
        self.assertEqual(len(result.delivered), 1)
        self.assertEqual(len(bag.delivered), 1)

    async def test_auth_bad_password(self) -> None:
        """A wrong password: host failure, nothing sent."""
        port, bag = self.serve("submission")
        d = deliver_message(
            reactor,
            "localhost",
            "127.0.0.1",
            port,
            helo_name="a.test",
            envelope_sender="alice@local.example",
            recipients=["v@foreign.example"],
            message=MESSAGE,
            tls_policy="required",
            credentials=Credentials("alice@local.example", "wrong"),
        )
        error = await self.assertFailure(d, HostFailure)
        self.assertEqual(error.reply.code, 535)
        self.assertEqual(bag.delivered, [])

    async def test_connection_refused(self) -> None:
        """Nothing listening: host failure (try the next MX)."""
        d = deliver_message(
            reactor,
            "localhost",
            "127.0.0.1",
            free_port(),
            helo_name="a.test",
            envelope_sender="a@a.test",
            recipients=["b@b.test"],
            message=MESSAGE,
        )
        error = await self.assertFailure(d, HostFailure)
        self.assertEqual(error.reply.status, "4.4.1")
