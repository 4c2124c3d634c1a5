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


def reference_response(data: bytes) -> bytes:
    """The RETR response for a stored message, made the plain way (the
    whole message made CRLF when its first line ends in a bare LF, every
    line starting with a dot stuffed by one replace, the dot line), to
    check the server's byte for byte."""
    first = data.find(b"\n")
    if first == 0 or (first > 0 and data[first - 1 : first] != b"\r"):
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = b"+OK %d octets\r\n" % len(data)
    stuffed = (b"." if data.startswith(b".") else b"") + data.replace(
        b"\r\n.", b"\r\n.."
    )
    if data and not data.endswith(b"\r\n"):
        return head + stuffed + b"\r\n.\r\n"
    return head + stuffed + b".\r\n"


class PlainLoopbackTests(TestCase):
    """Clients over plain TCP (plaintext logins allowed), where replies go
    to the socket at once (L{twistedmail.sending.write_now})."""

    def setUp(self) -> None:
        self.world = make_world(
            self.mktemp(),
            run_in_thread=None,
            reactor=reactor,
            allow_plaintext_auth=True,
        )
        self.world.throttle = LoginThrottle(reactor, 0.0, 0.0)
        stored = tricky_messages()
        # Read on the reactor thread, and more than Linux's socket buffers
        # take at once (4 MiB at most by default).
        stored.append(
            b"Subject: medium\r\n\r\n"
            + b"".join(b"%s row %d\r\n" % (b"." * (i % 3), i) for i in range(70000))
        )
        stored.append(
            b"Subject: huge\r\n\r\n"
            + b"".join(
                b"%s row %06d%s\r\n" % (b"." * (i % 2), i, b"x" * 60)
                for i in range(80000)
            )
        )
        for m in stored:
            self.world.deliver(m)
        md = self.world.maildir()
        # Files other programs wrote: bare LF line ends, a dot on the very
        # first line, no final line end, nothing at all.
        others = [
            b"Subject: lf\n\n.dot\nbody\n",
            b".starts with a dot\r\n\r\n.\r\nno end",
            b"",
        ]
        for i, data in enumerate(others):
            with open(os.path.join(md, "new", f"1600000000.M{i}P1.other"), "wb") as f:
                f.write(data)
        mailbox = self.world.store.open_mailbox(md)
        self.stored = [mailbox.read(info.uid) for info in mailbox.messages()]
        mailbox.close()

    def listen(self) -> int:
        """Listen on 127.0.0.1, port 0; return the port number."""
        factory: Any = self.world.factory(reactor=reactor)
        port: IListeningPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address: Any = port.getHost()
        return int(address.port)

    def test_poplib(self) -> Deferred[None]:
        """poplib reads every message as stored (made CRLF), one RETR at a
        time, and TOP as before."""
        port = self.listen()

        def run() -> tuple[list[bytes], list[bytes]]:
            client = poplib.POP3("127.0.0.1", port, timeout=30)
            client.user(USER)
            client.pass_(PASSWORD)
            fetched = []
            for n in range(1, len(self.stored) + 1):
                _, lines, _ = client.retr(n)
                fetched.append(b"".join(line + b"\r\n" for line in lines))
            dots = self.stored.index(tricky_messages()[1]) + 1
            top = client.top(dots, 1)[1]
            client.quit()
            return fetched, top

        def check(result: tuple[list[bytes], list[bytes]]) -> None:
            fetched, top = result
            expected = []
            for data in self.stored:
                if b"\r\n" not in data:
                    data = data.replace(b"\n", b"\r\n")
                if data and not data.endswith(b"\r\n"):
                    data += b"\r\n"
                expected.append(data)
            self.assertEqual(fetched, expected)
            self.assertEqual(top, [b"Subject: dots", b"", b"."])

        return self.in_thread(run).addCallback(check)

    def test_pipelined(self) -> Deferred[None]:
        """Every RETR sent at once, read only after the last: the responses
        are byte for byte the plain way's, in order, with the socket full
        most of the time (what it does not take waits in the transport)."""
        port = self.listen()
        count = len(self.stored)

        def run() -> bytes:
            with socket.socket() as s:
                # A small window: the server's socket fills up.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(30)
                s.connect(("127.0.0.1", port))
                s.sendall(
                    f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode()
                    + b"".join(b"RETR %d\r\n" % n for n in range(1, count + 1))
                    + b"QUIT\r\n"
                )
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        def check(data: bytes) -> None:
            greeting, user, login, rest = data.split(b"\r\n", 3)
            self.assertTrue(login.startswith(b"+OK"), login)
            retrs = b"".join(reference_response(m) for m in self.stored)
            self.assertEqual(rest[: len(retrs)], retrs)
            self.assertTrue(rest[len(retrs) :].startswith(b"+OK"))

        return self.in_thread(run).addCallback(check)

    def in_thread(self, f: Callable[[], Any]) -> Deferred[Any]:
        return deferToThread(f)
