"""Test helpers for the POP3 server tests (tests.test_pop3_*)."""

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
from twistedmail.config import POP3Settings, ServerSettings, Settings
from twistedmail.interfaces import User
from twistedmail.maildir import MaildirStore
from twistedmail.pop3.server import POP3ServerFactory, POP3ServerProtocol
from twistedmail.tls import ServerTLS

__all__ = [
    "FAST",
    "HOSTNAME",
    "PASSWORD",
    "TLSStringTransport",
    "World",
    "make_message",
    "make_world",
    "run_now",
]

#: Cheap argon2id parameters so the tests stay fast.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
HOSTNAME = "pop.example.test"
PASSWORD = "s3cret pass"
_HASH = hash_password(PASSWORD, FAST)


def run_now(f: Callable[[], Any]) -> Deferred[Any]:
    """A synchronous stand-in for a thread runner."""
    return maybeDeferred(f)


def _run_now_args(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


def make_message(n: int, body_lines: int = 3, extra: bytes = b"") -> bytes:
    """A small RFC 5322 message with CRLF line ends, numbered ``n``."""
    head = (
        b"From: sender@example.test\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: message %d\r\n"
        b"Message-ID: <%d@example.test>\r\n"
        b"\r\n" % (n, n)
    )
    body = b"".join(b"line %d of message %d\r\n" % (i, n) for i in range(body_lines))
    return head + body + extra


class TLSStringTransport(StringTransport):
    """A StringTransport that records STLS's startTLS call."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.tls_started: list[object] = []

    def startTLS(self, context: object) -> None:
        """Record the TLS context; later writes are "encrypted"."""
        self.tls_started.append(context)


@dataclass
class World:
    """Everything a POP3 session needs, on a temporary directory."""

    root: str
    clock: Clock
    store: MaildirStore
    directory: MemoryDirectory
    portal: Portal
    throttle: LoginThrottle
    settings: Settings
    tls: ServerTLS | None = None
    factories: list[POP3ServerFactory] = field(default_factory=list)
    delivered: int = 0

    def maildir(self, user: str = "alice") -> str:
        """The Maildir of a test user."""
        return os.path.join(self.root, "mail", "example.test", user)

    def deliver(self, message: bytes, user: str = "alice") -> str:
        """Deliver one message; return its base name."""
        self.delivered += 1
        unique = f"test-delivery-{self.delivered}"
        return self.store.deliver_sync(self.maildir(user), message, unique)

    def factory(
        self,
        *,
        implicit_tls: bool = False,
        reactor: IReactorTime | None = None,
        **keep: int,
    ) -> POP3ServerFactory:
        """A POP3 factory on this world.

        @param keep: C{keep_maildrops} and C{keep_messages} when given.
        """
        f = POP3ServerFactory(
            self.settings,
            reactor if reactor is not None else self.clock,
            portal=self.portal,
            throttle=self.throttle,
            store=self.store,
            tls=self.tls,
            implicit_tls=implicit_tls,
            **keep,
        )
        self.factories.append(f)
        return f

    def connect(
        self,
        factory: POP3ServerFactory | None = None,
        peer: str = "192.0.2.7",
    ) -> tuple[POP3ServerProtocol, TLSStringTransport]:
        """A connected protocol on a fake transport, greeting consumed."""
        f = factory if factory is not None else self.factory()
        proto = f.buildProtocol(IPv4Address("TCP", peer, 40000))
        transport = TLSStringTransport(
            peerAddress=IPv4Address("TCP", peer, 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 110),
        )
        proto.makeConnection(transport)
        return proto, transport


def make_world(
    root: str,
    *,
    tls: ServerTLS | None = None,
    run_in_thread: Callable[..., Deferred[Any]] | None = run_now,
    reactor: Any = None,
    **pop3: Any,
) -> World:
    """A world with users alice and bob (password L{PASSWORD}) in
    example.test, a synchronous store and portal, and a clock in 2026.

    @param pop3: C{[pop3]} settings; C{allow_plaintext_auth} defaults to
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
    )
    directory = MemoryDirectory(
        domains=("example.test",),
        users=(
            User("alice@example.test", _HASH, "example.test/alice"),
            User("bob@example.test", _HASH, "example.test/bob"),
        ),
    )
    checker = DirectoryChecker(
        directory, "example.test", _run_now_args, hasher=FAST, failure_hash=_HASH
    )
    portal = Portal(MailRealm(directory, mail_root), [checker])
    throttle = LoginThrottle(clock, 0.0, 0.0)
    pop3.setdefault("allow_plaintext_auth", True)
    settings = Settings().with_changes(
        server=ServerSettings(hostname=HOSTNAME, data_dir=root),
        pop3=POP3Settings(**pop3),
    )
    return World(root, clock, store, directory, portal, throttle, settings, tls)
