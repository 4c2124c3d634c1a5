"""Test helpers for the relay, DSN and queue tool tests: a fake transport,
a local agent that records copies, and a whole outbound set-up on a fake
clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.aliases.expander import AliasExpander, Destination
from twistedmail.config import AliasSettings, QueueSettings, SpoolSettings
from twistedmail.interfaces import Envelope, Recipient, User
from twistedmail.replies import OK, MailError, Reply
from twistedmail.spool.dsn import Notifier
from twistedmail.spool.relay import (
    Connection,
    DeliveryReport,
    OutboundMessage,
    RecipientOutcome,
    RelayRunner,
)
from twistedmail.spool.runner import EntryLocks, Expander, QueueRunner
from twistedmail.spool.store import Spool

__all__ = ["FakeConnection", "FakeTransport", "Outbound", "RecordingAgent"]

T = TypeVar("T")
LOCAL = "a.test"
MESSAGE = (
    b"From: alice@a.test\r\nSubject: hi\r\nMessage-ID: <m1@a.test>\r\n\r\nHello.\r\n"
)


class FakeConnection:
    """A session that answers from its transport's table."""

    def __init__(self, transport: FakeTransport, domain: str) -> None:
        self.transport = transport
        self.domain = domain
        self.closed = False

    def send(self, message: OutboundMessage) -> Deferred[DeliveryReport]:
        """Record the message; answer per recipient (250 unless told)."""
        t = self.transport
        t.sent.append((self.domain, message))
        t.open_sends += 1
        t.peak_sends = max(t.peak_sends, t.open_sends)
        report = DeliveryReport(
            tuple(
                RecipientOutcome(r.address, t.replies.get(r.address, OK))
                for r in message.recipients
            ),
            host=f"mx.{self.domain}",
            dsn=t.dsn,
            session_error=t.session_error,
        )
        d: Deferred[DeliveryReport] = Deferred()

        def done(r: DeliveryReport) -> DeliveryReport:
            t.open_sends -= 1
            return r

        d.addCallback(done)
        if t.hold:
            t.held.append((d, report))
        else:
            d.callback(report)
        return d

    def close(self) -> Deferred[None]:
        """Count the close."""
        self.closed = True
        self.transport.closes += 1
        return succeed(None)


class FakeTransport:
    """Opens L{FakeConnection}s; tests set replies, connect errors and
    whether sends wait to be released."""

    def __init__(self) -> None:
        self.connects: list[str] = []
        self.closes = 0
        self.sent: list[tuple[str, OutboundMessage]] = []
        self.replies: dict[str, Reply] = {}
        self.connect_errors: dict[str, MailError] = {}
        self.hold = False
        self.held: list[tuple[Deferred[DeliveryReport], DeliveryReport]] = []
        self.dsn = False
        self.session_error: str | None = None
        self.open_sends = 0
        self.peak_sends = 0

    def connect(self, domain: str) -> Deferred[Connection]:
        """A connection, or the domain's connect error."""
        self.connects.append(domain)
        if domain in self.connect_errors:
            return fail(self.connect_errors[domain])
        return succeed(FakeConnection(self, domain))

    def release_one(self) -> None:
        """Answer the oldest held send."""
        d, report = self.held.pop(0)
        d.callback(report)

    @property
    def open_connections(self) -> int:
        """Connections opened and not closed."""
        return len(self.connects) - len(self.connect_errors_hit()) - self.closes

    def connect_errors_hit(self) -> list[str]:
        """The connects that failed."""
        return [d for d in self.connects if d in self.connect_errors]

    def recipients_sent(self) -> list[str]:
        """Every recipient address sent, in order."""
        return [r.address for _, m in self.sent for r in m.recipients]


class RecordingAgent:
    """A local agent that records (queue id, sender, destination) copies;
    tests set errors per destination string."""

    def __init__(self) -> None:
        self.copies: list[tuple[str, str, str]] = []
        self.messages: list[bytes] = []
        self.errors: dict[str, MailError] = {}

    def deliver(
        self, queue_id: str, sender: str, destination: Destination, message: bytes
    ) -> Deferred[None]:
        """Record one copy, or fail as told."""
        key = str(destination)
        if key in self.errors:
            return fail(self.errors[key])
        self.copies.append((queue_id, sender, key))
        self.messages.append(message)
        return succeed(None)


def _user(address: str) -> User:
    return User(address, "", address)


class Outbound:
    """A spool, directory (a.test with alice, bob and the fwd and team
    aliases), runner, notifier and relay on one fake clock."""

    def __init__(
        self,
        path: str,
        settings: QueueSettings | None = None,
        *,
        clock: Clock | None = None,
        transport: FakeTransport | None = None,
        rewrite_sender: Callable[[str], str] | None = None,
        wrap_expander: Callable[[AliasExpander, MemoryDirectory], Expander]
        | None = None,
    ) -> None:
        if clock is None:
            clock = Clock()
            clock.advance(1_700_000_000)
        self.clock = clock
        self.path = path
        self.settings = settings or QueueSettings()
        self.spool = Spool(path, clock)
        self.directory = MemoryDirectory(
            (LOCAL,),
            (_user("alice@a.test"), _user("bob@a.test")),
            {
                "fwd@a.test": ("friend@b.test",),
                "team@a.test": ("bob", "carol@b.test"),
            },
        )
        self.expander: Expander = AliasExpander(self.directory, AliasSettings())
        if wrap_expander is not None:
            self.expander = wrap_expander(
                AliasExpander(self.directory, AliasSettings()), self.directory
            )
        self.agent = RecordingAgent()
        self.transport = transport or FakeTransport()
        self.locks = EntryLocks()
        self.notifier = Notifier(
            self.spool, clock, "mx.a.test", self.settings, "postmaster@a.test"
        )
        self.relay: RelayRunner
        self.runner = QueueRunner(
            self.spool,
            self.expander,
            self.agent,
            clock,
            SpoolSettings(retry_delay=300.0),
            locks=self.locks,
            settled=lambda e: self.relay.settled(e),
            backoff=lambda n: self.relay.backoff(n),
        )
        self.relay = RelayRunner(
            self.spool,
            self.transport,
            clock,
            self.notifier,
            self.locks,
            self.settings,
            directory=self.directory,
            rewrite_sender=rewrite_sender,
            kick=self.runner.flush,
            random=lambda: 0.0,
        )

    def start(self) -> None:
        """Start both services and let their scans finish."""
        self.runner.startService()
        self.relay.startService()
        self.turn()

    def stop(self) -> None:
        """Stop both services (without waiting for held work)."""
        if self.relay.running:
            self.relay.stopService()
        if self.runner.running:
            self.runner.stopService()

    def turn(self) -> None:
        """Run every call due now (zero-delay calls included)."""
        for _ in range(1000):
            now = self.clock.seconds()
            if not any(c.getTime() <= now for c in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)
        raise AssertionError("calls keep coming")

    def advance(self, seconds: float) -> None:
        """Move the clock on, a second at a time for the poll loops."""
        whole = int(seconds)
        for _ in range(whole):
            self.clock.advance(1)
            self.turn()
        rest = seconds - whole
        if rest:
            self.clock.advance(rest)
            self.turn()

    def jump(self, seconds: float) -> None:
        """Move the clock on in one step (then run what is due)."""
        self.clock.advance(seconds)
        self.turn()

    def submit(
        self,
        *recipients: str | Recipient,
        sender: str = "alice@a.test",
        message: bytes = MESSAGE,
        ret: str | None = None,
    ) -> str:
        """Commit a message through the spool's agent; return its id."""
        agent = self.spool.agent()
        agent.start(Envelope(sender, received_at=self.clock.seconds(), ret=ret))
        for r in recipients:
            agent.add_recipient(r if isinstance(r, Recipient) else Recipient(r))
        agent.body(message)
        d = agent.commit()
        self.turn()
        return wait(self, d)

    def queue_ids(self) -> list[str]:
        """The ids in the queue."""
        return wait(self, self.spool.list())


def wait(outbound: Outbound, d: Deferred[T]) -> T:
    """Run zero-delay calls until C{d} has fired; its result."""
    outbound.turn()
    results: list[T] = []
    failures: list[object] = []
    d.addCallbacks(results.append, failures.append)
    if failures:
        raise AssertionError(f"failed: {failures[0]}")
    if not results:
        raise AssertionError("Deferred has not fired")
    return results[0]
