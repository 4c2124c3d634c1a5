"""Test helpers for the IMAP server tests (tests.test_imap_server*)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.auth.checkers import DirectoryChecker
from twistedmail.auth.passwords import hash_password
from twistedmail.auth.realm import MailRealm
from twistedmail.auth.throttle import LoginThrottle
from twistedmail.config import IMAPSettings, ServerSettings, Settings
from twistedmail.imap.server import IMAPServerFactory, IMAPServerProtocol
from twistedmail.interfaces import User
from twistedmail.maildir import MaildirStore
from twistedmail.maildir.watch import WatchMode, make_watcher
from twistedmail.tls import ServerTLS

__all__ = [
    "FAST",
    "PASSWORD",
    "Client",
    "TLSStringTransport",
    "World",
    "make_message",
    "make_world",
    "run_now",
]

#: Cheap argon2id parameters so the tests stay fast.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
HOSTNAME = "imap.example.test"
PASSWORD = "s3cret pass"
_HASH = hash_password(PASSWORD, FAST)


def run_now(f: Callable[[], Any]) -> Deferred[Any]:
    """A synchronous stand-in for a thread runner."""
    return maybeDeferred(f)


def _run_now_args(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


def make_message(n: int, subject: str = "", body: bytes = b"") -> bytes:
    """A small RFC 5322 message with CRLF line ends, numbered ``n``."""
    return (
        b"From: Sender <sender@example.test>\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: " + (subject or f"message {n}").encode() + b"\r\n"
        b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
        b"Message-ID: <%d@example.test>\r\n"
        b"\r\n" % n + (body or b"body of message %d\r\n" % n)
    )


class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS and setTcpNoDelay calls."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.tls_started: list[object] = []
        self.no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Record the TCP_NODELAY setting (as a TCP transport takes it)."""
        self.no_delay = enabled

    def startTLS(self, context: object) -> None:
        """Record the TLS context."""
        self.tls_started.append(context)


class Client:
    """A session on a fake transport: send lines, read what came back."""

    def __init__(
        self, proto: IMAPServerProtocol, transport: TLSStringTransport, clock: Clock
    ) -> None:
        self.proto = proto
        self.transport = transport
        self.clock = clock
        self.greeting = self.take()
        self._n = 0

    def take(self) -> bytes:
        """Everything written since the last take."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def raw(self, data: bytes) -> bytes:
        """Feed raw octets; return the output."""
        self.proto.dataReceived(data)
        # Calls due now (the login throttle's zero delay, idle updates).
        self.clock.advance(0)
        return self.take()

    def cmd(self, text: str | bytes, tag: str | None = None) -> list[bytes]:
        """Send one tagged command; return the response lines (CRLF cut)."""
        if tag is None:
            self._n += 1
            tag = f"a{self._n}"
        line = (text.encode() if isinstance(text, str) else text) + b"\r\n"
        out = self.raw(tag.encode() + b" " + line)
        return out.split(b"\r\n")[:-1] if out.endswith(b"\r\n") else out.split(b"\r\n")

    def ok(self, text: str | bytes) -> list[bytes]:
        """Send a command that must succeed; the untagged lines."""
        lines = self.cmd(text)
        assert lines and b" OK " in lines[-1], lines
        return lines[:-1]

    def login(self, user: str = "alice") -> None:
        """LOGIN as a test user."""
        lines = self.cmd(f'LOGIN {user}@example.test "{PASSWORD}"', tag="login")
        assert lines[-1].startswith(b"login OK "), lines


@dataclass
class World:
    """Everything an IMAP session needs, on a temporary directory."""

    root: str
    clock: Clock
    store: MaildirStore
    directory: MemoryDirectory
    portal: Portal
    throttle: LoginThrottle
    settings: Settings
    tls: ServerTLS | None = None
    factories: list[IMAPServerFactory] = field(default_factory=list)
    delivered: int = 0

    def maildir(self, user: str = "alice") -> str:
        """The Maildir of a test user."""
        return os.path.join(self.root, "mail", "example.test", user)

    def deliver(self, message: bytes, user: str = "alice") -> str:
        """Deliver one message through the store (notifying listeners)."""
        self.delivered += 1
        d = self.store.deliver(self.maildir(user), message, f"test-{self.delivered}")
        result: list[str] = []
        d.addCallback(result.append)
        assert result, "delivery did not finish synchronously"
        return result[0]

    def factory(
        self, *, implicit_tls: bool = False, reactor: IReactorTime | None = None
    ) -> IMAPServerFactory:
        """An IMAP factory on this world."""
        f = IMAPServerFactory(
            self.settings,
            reactor if reactor is not None else self.clock,
            portal=self.portal,
            throttle=self.throttle,
            store=self.store,
            tls=self.tls,
            implicit_tls=implicit_tls,
        )
        self.factories.append(f)
        return f

    def connect(
        self, factory: IMAPServerFactory | None = None, peer: str = "192.0.2.7"
    ) -> Client:
        """A connected session on a fake transport, greeting read."""
        f = factory if factory is not None else (self.factories or [self.factory()])[0]
        proto = f.buildProtocol(IPv4Address("TCP", peer, 40000))
        transport = TLSStringTransport(
            peerAddress=IPv4Address("TCP", peer, 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 143),
        )
        proto.makeConnection(transport)
        return Client(proto, transport, self.clock)

    def logged_in(self, user: str = "alice") -> Client:
        """A connected, logged-in session."""
        client = self.connect()
        client.login(user)
        return client


def make_world(
    root: str,
    *,
    tls: ServerTLS | None = None,
    run_in_thread: Callable[..., Deferred[Any]] | None = run_now,
    reactor: Any = None,
    quota: int | None = None,
    watch: WatchMode = "off",
    watch_interval: float = 1.0,
    **imap: Any,
) -> World:
    """A world with users alice and bob (password L{PASSWORD}) in
    example.test, a synchronous store and portal, and a clock in 2026.

    @param watch: the store's watcher (C{[maildir] watch}), on the
        reactor or the world's clock: C{"poll"} looks every
        C{watch_interval} seconds, C{"auto"} uses inotify; C{"off"} (the
        default here) gives none, and IMAP sessions poll on their own.

    @param imap: C{[imap]} settings; C{allow_plaintext_auth} defaults to
        true here so sessions need no TLS.
    """
    os.makedirs(root, exist_ok=True)
    clock = Clock()
    clock.advance(1_790_000_000)
    mail_root = os.path.join(root, "mail")
    store = MaildirStore(
        mail_root,
        HOSTNAME,
        reactor if reactor is not None else clock,
        run_in_thread,
        watcher=make_watcher(
            reactor if reactor is not None else clock, watch, watch_interval
        ),
    )
    directory = MemoryDirectory(
        domains=("example.test",),
        users=(
            User("alice@example.test", _HASH, "example.test/alice"),
            User("bob@example.test", _HASH, "example.test/bob", quota=quota),
        ),
    )
    checker = DirectoryChecker(
        directory, "example.test", _run_now_args, hasher=FAST, failure_hash=_HASH
    )
    portal = Portal(MailRealm(directory, mail_root), [checker])
    throttle = LoginThrottle(clock, 0.0, 0.0)
    imap.setdefault("allow_plaintext_auth", True)
    settings = Settings().with_changes(
        server=ServerSettings(hostname=HOSTNAME, data_dir=root),
        imap=IMAPSettings(**imap),
    )
    return World(root, clock, store, directory, portal, throttle, settings, tls)
