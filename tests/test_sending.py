"""Tests for L{twistedmail.sending}: output handed to the socket at once,
on real TCP connections over loopback."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twistedmail.sending import MAX_PIECES, write_now


class Collector(Protocol):
    """Keeps what arrives; C{arrived} fires once C{wanted} octets are in."""

    def __init__(self, wanted: int = 0) -> None:
        self.chunks: list[bytes] = []
        self.count = 0
        self.wanted = wanted
        self.arrived: Deferred[bytes] = Deferred()
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        """Fire C{made}."""
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        """Keep it; fire C{arrived} when all is in."""
        self.chunks.append(data)
        self.count += len(data)
        if self.count >= self.wanted and not self.arrived.called:
            self.arrived.callback(b"".join(self.chunks))

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Fire C{lost}."""
        self.lost.callback(None)


class Accepted(Protocol):
    """The server side: tells the test its transport."""

    def __init__(self, made: Deferred[Accepted]) -> None:
        self.made = made
        self.lost: Deferred[None] = Deferred()
        self.tls_writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        """What the connection passes to its TLS layer once its C{TLS}
        flag is set (this protocol stands in for that layer)."""
        self.tls_writes.append(data)

    def connectionMade(self) -> None:
        """Hand this protocol to the test."""
        self.made.callback(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Fire C{lost}."""
        self.lost.callback(None)


def run(coroutine: Coroutine[Any, Any, None]) -> Deferred[None]:
    """A test's coroutine as the Deferred trial waits for."""
    return Deferred.fromCoroutine(coroutine)


class WriteNowTCPTests(TestCase):
    """write_now on a TCP connection between two sockets of this reactor."""

    async def connect(self, wanted: int) -> tuple[Any, Collector]:
        """The server side's transport and the client that reads from it."""
        made: Deferred[Accepted] = Deferred()
        server_factory = Factory.forProtocol(lambda: Accepted(made))
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        collector = Collector(wanted)
        client_factory = ClientFactory.forProtocol(lambda: collector)
        address: Any = port.getHost()
        connector = reactor.connectTCP(
            "127.0.0.1",
            address.port,
            client_factory,  # type: ignore[arg-type]
        )
        server = await made
        await collector.made

        async def close() -> None:
            connector.disconnect()
            assert server.transport is not None
            server.transport.loseConnection()
            await collector.lost
            await server.lost

        self.addCleanup(lambda: run(close()))
        return server.transport, collector

    def test_sent_at_once(self) -> Deferred[None]:
        """With nothing buffered the pieces go to the socket in one call:
        nothing is left in the transport, which does not ask the reactor
        to tell it when it can write."""

        async def go() -> None:
            transport, collector = await self.connect(11)
            self.assertTrue(write_now(transport, [b"+OK ", b"", b"hello\r\n"]))
            self.assertNotIn(transport, reactor.getWriters())
            self.assertEqual(transport._tempDataLen, 0)
            self.assertEqual(await collector.arrived, b"+OK hello\r\n")

        return run(go())

    def test_rest_buffered(self) -> Deferred[None]:
        """What the socket does not take (more than its buffer holds) is
        buffered by the transport and sent later, in order."""
        pieces = [b"head\r\n", bytes(range(256)) * 40000, b"x" * 3_000_000, b".\r\n"]
        whole = b"".join(pieces)

        async def go() -> None:
            transport, collector = await self.connect(len(whole))
            self.assertFalse(write_now(transport, pieces))
            self.assertIn(transport, reactor.getWriters())
            # Written while the rest waits: goes behind it, not to the socket.
            self.assertFalse(write_now(transport, [b"after\r\n"]))
            collector.wanted += len(b"after\r\n")
            self.assertEqual(await collector.arrived, whole + b"after\r\n")

        return run(go())

    def test_many_pieces(self) -> Deferred[None]:
        """More pieces than one sendmsg takes are joined and sent in order."""
        pieces = [b"%d\r\n" % i for i in range(MAX_PIECES * 3)]
        whole = b"".join(pieces)

        async def go() -> None:
            transport, collector = await self.connect(len(whole))
            self.assertTrue(write_now(transport, pieces))
            self.assertEqual(await collector.arrived, whole)

        return run(go())

    def test_closing(self) -> Deferred[None]:
        """Once the connection is closing, pieces go to the transport
        (which still sends them before it closes)."""

        async def go() -> None:
            transport, collector = await self.connect(5)
            transport.loseConnection()
            self.assertFalse(write_now(transport, [b"bye", b"\r\n"]))
            await collector.lost
            self.assertEqual(b"".join(collector.chunks), b"bye\r\n")

        return run(go())

    def test_after_starttls(self) -> Deferred[None]:
        """A connection running TLS (after STARTTLS) is never written to
        directly: the pieces go to its TLS layer."""

        async def go() -> None:
            transport, collector = await self.connect(0)
            transport.TLS = True
            try:
                self.assertFalse(write_now(transport, [b"secret\r\n"]))
            finally:
                transport.TLS = False
            self.assertEqual(transport.protocol.tls_writes, [b"secret\r\n"])
            self.assertEqual(transport._tempDataLen, 0)

        return run(go())


class WriteNowOtherTests(SynchronousTestCase):
    """write_now on transports that are not TCP connections."""

    def test_test_transport(self) -> None:
        """A test transport is written to as usual (one piece with write,
        more with writeSequence)."""
        transport = StringTransport()
        self.assertFalse(write_now(transport, [b"one"]))
        self.assertFalse(write_now(transport, [b" two", b" three"]))
        self.assertTrue(write_now(transport, []))
        self.assertEqual(transport.value(), b"one two three")

    def test_wrapper(self) -> None:
        """A wrapper that passes attribute lookups on to a TCP connection
        (as TLS does) is not written around."""

        class Wrapper(StringTransport):
            socket = object()
            TLS = False
            connected = True
            disconnecting = False

        transport = Wrapper()
        self.assertFalse(write_now(transport, [b"secret"]))
        self.assertEqual(transport.value(), b"secret")
