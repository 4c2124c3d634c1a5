"""Test helpers for the IMAP interoperability tests (tests.test_imap_clients,
tests.test_imap_concurrent, tests.test_imap_mbsync): a server on 127.0.0.1
port 0 in the real reactor, with the test certificate, and realistic mail.

The blocking clients (imaplib, imapclient) run in threads through
L{in_thread}; the store also works in the reactor's thread pool, as in
production.
"""

from __future__ import annotations

import imaplib
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.imap_server_helpers import PASSWORD, World, make_world
from twistedmail.auth.throttle import LoginThrottle
from twistedmail.testing import make_test_certificate
from twistedmail.tls import ServerTLS

__all__ = [
    "ALICE",
    "BOB",
    "PASSWORD",
    "TIMEOUT",
    "Server",
    "in_thread",
    "make_server",
    "messages",
    "mime_message",
    "plain_message",
    "transcript",
]

ALICE = "alice@example.test"
BOB = "bob@example.test"

#: Socket timeout of the blocking clients: a hung server fails the test
#: instead of leaving a thread behind.
TIMEOUT = 15.0

_T = TypeVar("_T")


def in_thread(f: Callable[..., _T], *args: Any, **kwargs: Any) -> Deferred[_T]:
    """Run a blocking client call in the reactor's thread pool."""
    return deferToThread(f, *args, **kwargs)


def transcript(client: imaplib.IMAP4, command: str) -> list[bytes]:
    """Send one command on an imaplib connection and return every line of
    the answer, untagged ones and the tagged one, in order (CRLF cut, a
    literal kept inline), for tests that check what arrives when.
    Blocking: call it in a thread."""
    tag = client._new_tag()  # type: ignore[attr-defined]
    client.send(tag + b" " + command.encode() + b"\r\n")
    lines = []
    while True:
        line = client.readline()
        if not line:
            raise AssertionError(f"connection closed after {lines!r}")
        while line.endswith(b"}\r\n") and b"{" in line:
            size = int(line[line.rindex(b"{") + 1 : -3])
            line = line + client.read(size) + client.readline()
        lines.append(line[:-2])
        if line.startswith(tag + b" "):
            return lines


def plain_message(n: int, subject: str = "", body: bytes = b"") -> bytes:
    """A small text/plain message with a Message-ID ``<n@example.test>``."""
    return (
        b"From: Sender <sender@example.test>\r\n"
        b"To: Alice <alice@example.test>\r\n"
        b"Subject: " + (subject or f"message {n}").encode() + b"\r\n"
        b"Date: Mon, 7 Feb 2022 21:52:25 -0800\r\n"
        b"Message-ID: <%d@example.test>\r\n"
        b"\r\n" % n + (body or b"body of message %d\r\n" % n)
    )


def mime_message(n: int) -> bytes:
    """A multipart/mixed message: an encoded-word subject, a UTF-8
    quoted-printable text part and a base64 attachment."""
    return (
        b"From: =?utf-8?q?Ren=C3=A9?= <rene@example.test>\r\n"
        b"To: alice@example.test, Bob <bob@example.test>\r\n"
        b"Cc: carol@example.test\r\n"
        b"Subject: =?utf-8?q?r=C3=A9sum=C3=A9_attached?=\r\n"
        b"Date: Tue, 8 Feb 2022 10:00:00 +0100\r\n"
        b"Message-ID: <" + str(n).encode() + b"@example.test>\r\n"
        b"In-Reply-To: <1@example.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n'
        b"\r\n"
        b"preamble\r\n"
        b"--b1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln, voil=C3=A0 mon r=C3=A9sum=C3=A9.\r\n"
        b"--b1\r\n"
        b'Content-Type: application/pdf; name="cv.pdf"\r\n'
        b'Content-Disposition: attachment; filename="cv.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        + b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\r\n" * 8
        + b"--b1--\r\n"
    )


def messages() -> list[bytes]:
    """Mail for a mailbox: two plain messages, a MIME one (number 3), a
    plain one with 8-bit UTF-8 body text and a bigger one."""
    big = plain_message(
        5,
        "a bigger one",
        b"".join(b"line %d of a longer message\r\n" % i for i in range(3000)),
    )
    return [
        plain_message(1, "hello"),
        plain_message(2, "lunch on friday?"),
        mime_message(3),
        plain_message(4, "caf\u00e9", "Gr\u00fc\u00dfe, \u00e7a va?\r\n".encode()),
        big,
    ]


@dataclass
class Server:
    """A running IMAP server: the world, its certificate and listeners."""

    world: World
    cert: str
    test: TestCase
    _seeded: int = 0

    async def disconnect(self) -> None:
        """Drop every session still open and wait until each is gone (a
        cleanup: the reactor must be clean when the test ends)."""
        for factory in self.world.factories:
            for protocol in list(factory.protocols):
                if protocol.transport is not None:
                    protocol.transport.abortConnection()
        for _ in range(100):
            if not any(f.protocols for f in self.world.factories):
                return
            await deferLater(reactor, 0, lambda: None)

    @property
    def store(self) -> Any:
        """The Maildir store."""
        return self.world.store

    def listen(self, implicit: bool = False) -> int:
        """Start a plain (STARTTLS) or implicit-TLS listener; its port."""
        world = self.world
        factory: Any = world.factory(implicit_tls=implicit, reactor=reactor)
        if implicit:
            assert world.tls is not None
            factory = world.tls.wrap_implicit(factory, reactor)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.test.addCleanup(port.stopListening)
        return port.getHost().port  # type: ignore[no-any-return]

    def maildir(self, user: str = "alice") -> str:
        """A user's Maildir."""
        return self.world.maildir(user)

    def seed(self, mail: list[bytes], user: str = "alice") -> list[str]:
        """Deliver messages into a user's INBOX, blocking (before any
        client connects); their base names."""
        bases = []
        path = self.maildir(user)
        for m in mail:
            self._seeded += 1
            bases.append(self.store.deliver_sync(path, m, f"seed-{self._seeded}"))
            # Opening the INBOX gives each message its UID in delivery order
            # (names made within one second do not sort in that order).
            self.store.open_mailbox(path).close()
        return bases

    async def deliver(self, message: bytes, unique: str, user: str = "alice") -> str:
        """Deliver one message through the store, telling the sessions."""
        base: str = await self.store.deliver(self.maildir(user), message, unique)
        return base

    def close_later(self, client: imaplib.IMAP4) -> None:
        """Close an imaplib client's socket at the end of the test (unless
        it logged out)."""

        def close() -> None:
            if client.state != "LOGOUT":
                client.sock.close()

        self.test.addCleanup(close)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the test certificate."""
        return ssl.create_default_context(cafile=self.cert)

    def imaplib(
        self, port: int, *, implicit: bool = False, starttls: bool = True
    ) -> imaplib.IMAP4:
        """A connected imaplib client (blocking: call it in a thread)."""
        client: imaplib.IMAP4
        if implicit:
            client = imaplib.IMAP4_SSL(
                "127.0.0.1", port, ssl_context=self.ssl_context(), timeout=TIMEOUT
            )
        else:
            client = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
            if starttls:
                client.starttls(self.ssl_context())
        self.close_later(client)
        return client


def make_server(test: TestCase, *, quota: int | None = None, **imap: Any) -> Server:
    """A world in a temporary directory of C{test}, on the real reactor,
    with a fresh test certificate (STARTTLS, implicit TLS) and users
    alice and bob (password L{PASSWORD}; bob has C{quota}).

    @param imap: C{[imap]} settings; plaintext logins are refused unless
        C{allow_plaintext_auth=True} is given.
    """
    cert, key = make_test_certificate(os.path.abspath(test.mktemp()))
    imap.setdefault("allow_plaintext_auth", False)
    world = make_world(
        test.mktemp(),
        tls=ServerTLS(cert, key),
        run_in_thread=None,
        reactor=reactor,
        quota=quota,
        **imap,
    )
    world.throttle = LoginThrottle(reactor, 0.0, 0.0)
    server = Server(world, cert, test)
    test.addCleanup(lambda: Deferred.fromCoroutine(server.disconnect()))
    return server
