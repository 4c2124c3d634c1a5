"""Loopback tests: Python's poplib against the POP3 server over STLS and
over implicit TLS (POP3S), with a test certificate."""

from __future__ import annotations

import os
import poplib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.pop3_helpers import PASSWORD, World, make_message, make_world
from twistedmail.auth.throttle import LoginThrottle
from twistedmail.pop3.server import SYNC_READ_LIMIT
from twistedmail.testing import make_test_certificate
from twistedmail.tls import ServerTLS

USER = "alice@example.test"


def tricky_messages() -> list[bytes]:
    """Messages that exercise byte-stuffing and the thread read path."""
    dots = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nend\r\n"
    big = b"Subject: big\r\n\r\n" + b"".join(
        b"%s line %d\r\n" % (b"." if i % 7 == 0 else b"", i) for i in range(100000)
    )
    assert len(big) > SYNC_READ_LIMIT
    return [make_message(1), dots, big, make_message(4, body_lines=50)]


class LoopbackTests(TestCase):
    """poplib over real TCP connections."""

    def setUp(self) -> None:
        cert, key = make_test_certificate(self.mktemp())
        self.cert = cert
        self.world = make_world(
            self.mktemp(),
            tls=ServerTLS(cert, key),
            run_in_thread=None,
            reactor=reactor,
            allow_plaintext_auth=False,
        )
        self.world.throttle = LoginThrottle(reactor, 0.0, 0.0)
        delivered = {self.world.deliver(m): m for m in tricky_messages()}
        # The server lists messages in UID order (the store's, which for
        # mail delivered in the same second need not be delivery order).
        mailbox = self.world.store.open_mailbox(self.world.maildir())
        self.bases = [info.base for info in mailbox.messages()]
        mailbox.close()
        self.messages = [delivered[b] for b in self.bases]

    def listen(self, implicit: bool) -> int:
        """Listen on 127.0.0.1, port 0; return the port number."""
        world: World = self.world
        factory = world.factory(implicit_tls=implicit, reactor=reactor)
        wrapped: Any = factory
        if implicit:
            assert world.tls is not None
            wrapped = world.tls.wrap_implicit(factory, reactor)
        port: IListeningPort = reactor.listenTCP(0, wrapped, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port  # type: ignore[no-any-return,attr-defined]

    def context(self) -> ssl.SSLContext:
        """A client context that trusts only the test certificate."""
        return ssl.create_default_context(cafile=self.cert)

    def in_thread(self, f: Callable[[], Any]) -> Deferred[Any]:
        return deferToThread(f)

    def session(self, client: poplib.POP3, delete: bool) -> dict[str, Any]:
        """Log in, list, fetch everything, maybe delete it all, quit."""
        result: dict[str, Any] = {"capa": client.capa()}
        client.user(USER)
        client.pass_(PASSWORD)
        result["stat"] = client.stat()
        result["uidl"] = client.uidl()[1]
        result["list"] = client.list()[1]
        dots = self.messages.index(tricky_messages()[1]) + 1
        result["top"] = client.top(dots, 1)[1]
        fetched = []
        for n in range(1, len(self.messages) + 1):
            resp, lines, octets = client.retr(n)
            fetched.append(b"".join(line + b"\r\n" for line in lines))
            if delete:
                client.dele(n)
        result["messages"] = fetched
        result["quit"] = client.quit()
        return result

    def check(self, result: dict[str, Any], delete: bool) -> None:
        """What arrived is the stored mail, byte for byte."""
        self.assertEqual(result["messages"], self.messages)
        sizes = [len(m) for m in self.messages]
        self.assertEqual(result["stat"], (len(sizes), sum(sizes)))
        self.assertEqual(
            result["uidl"],
            [b"%d %s" % (i + 1, b.encode()) for i, b in enumerate(self.bases)],
        )
        self.assertEqual(
            result["list"], [b"%d %d" % (i + 1, s) for i, s in enumerate(sizes)]
        )
        self.assertEqual(result["top"], [b"Subject: dots", b"", b"."])
        self.assertTrue(result["quit"].startswith(b"+OK"))
        md = self.world.maildir()
        left = os.listdir(os.path.join(md, "new")) + os.listdir(os.path.join(md, "cur"))
        self.assertEqual(len(left), 0 if delete else len(self.messages))

    async def _stls(self, delete: bool) -> None:
        port = self.listen(implicit=False)

        def run() -> dict[str, Any]:
            client = poplib.POP3("127.0.0.1", port, timeout=30)
            greeting = client.getwelcome()
            assert greeting.startswith(b"+OK"), greeting
            before = client.capa()
            assert "STLS" in before and "USER" not in before, before
            client.stls(self.context())
            return self.session(client, delete)

        result = await self.in_thread(run)
        self.assertNotIn("STLS", result["capa"])
        self.assertIn("USER", result["capa"])
        self.check(result, delete)

    async def _pop3s(self, delete: bool) -> None:
        port = self.listen(implicit=True)

        def run() -> dict[str, Any]:
            client = poplib.POP3_SSL(
                "127.0.0.1", port, context=self.context(), timeout=30
            )
            return self.session(client, delete)

        result = await self.in_thread(run)
        self.assertNotIn("STLS", result["capa"])
        self.assertEqual(result["capa"]["SASL"], ["PLAIN"])
        self.check(result, delete)

    def test_stls_keep(self) -> None:
        """poplib over STLS fetches every message intact and keeps them."""
        return Deferred.fromCoroutine(self._stls(delete=False))  # type: ignore[return-value]

    def test_stls_delete(self) -> None:
        """poplib over STLS fetches and deletes every message."""
        return Deferred.fromCoroutine(self._stls(delete=True))  # type: ignore[return-value]

    def test_pop3s_keep(self) -> None:
        """poplib over POP3S fetches every message intact and keeps them."""
        return Deferred.fromCoroutine(self._pop3s(delete=False))  # type: ignore[return-value]

    def test_pop3s_delete(self) -> None:
        """poplib over POP3S fetches and deletes every message."""
        return Deferred.fromCoroutine(self._pop3s(delete=True))  # type: ignore[return-value]

    def test_plaintext_refused(self) -> None:
        """Without STLS, poplib's USER gets -ERR [AUTH]."""
        port = self.listen(implicit=False)

        def run() -> str:
            client = poplib.POP3("127.0.0.1", port, timeout=30)
            try:
                client.user(USER)
            except poplib.error_proto as e:
                return str(e)
            finally:
                client.quit()
            return "accepted"

        d = self.in_thread(run)
        d.addCallback(lambda error: self.assertIn("[AUTH]", error))
        return d

    def read_to_end(self, sock: Any) -> bytes:
        """Everything the server sends until it closes (a 30 s timeout
        raises, so a server that never closes fails the test)."""
        sock.settimeout(30)
        chunks = []
        while True:
            try:
                chunk = sock.recv(4096)
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def test_pop3s_quit_closes(self) -> None:
        """After QUIT on implicit TLS the server sends its TLS close and
        closes the connection; the client sees the end of the stream."""
        port = self.listen(implicit=True)

        def run() -> bytes:
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            with self.context().wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"QUIT\r\n")
                return self.read_to_end(s)

        d = self.in_thread(run)
        d.addCallback(
            lambda data: self.assertEqual(
                [line.split(b" ")[0] for line in data.splitlines()], [b"+OK", b"+OK"]
            )
        )
        return d

    def test_stls_quit_closes(self) -> None:
        """After STLS, QUIT closes the TLS connection too."""
        port = self.listen(implicit=False)

        def run() -> bytes:
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            raw.settimeout(30)
            greeting = raw.recv(4096)
            assert greeting.startswith(b"+OK"), greeting
            raw.sendall(b"STLS\r\n")
            answer = raw.recv(4096)
            assert answer.startswith(b"+OK"), answer
            with self.context().wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"QUIT\r\n")
                return self.read_to_end(s)

        d = self.in_thread(run)
        d.addCallback(lambda data: self.assertTrue(data.startswith(b"+OK"), data))
        return d
