# -*- test-case-name: tests.test_smtp_client -*-
"""The ESMTP client over TCP (the relay step: our MTA client → the peer's
MTA server).

A thin Twisted adapter around L{twistedmail.smtp._client.ClientMachine}: it
connects, writes what the machine says, starts TLS when told, and keeps the
client timeouts of RFC 5321 §4.5.3.2 on the injected clock (the greeting,
each command's reply, each block of message text written, and the reply
after the final dot).  Commands, and message text of one block, are
written at once (straight to the socket on plain TCP,
L{twistedmail.sending.write_now}); longer text goes out block by block
as the transport drains.

Two ways in:

  - L{connect} opens a session and gives a L{SMTPClientConnection}; call
    C{send} for each message to that destination, then C{quit}.
  - L{deliver_message} does connect, one send and quit.

A failure of the host (refused or timed-out connection, a greeting other
than 220, TLS failure, refused EHLO or AUTH) fails with L{HostFailure}, a
L{TemporaryError}: try the next MX host.  Once a session is up every
transaction gives a L{DeliveryResult} with a reply per recipient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPullProducer,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedmail.replies import Reply, TemporaryError
from twistedmail.sending import write_now
from twistedmail.smtp._client import (
    ClientMachine,
    ClientOptions,
    Closed,
    Credentials,
    DeliveryResult,
    Event,
    Extensions,
    HostFailure,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    SendBody,
    SendCommands,
    SessionFailed,
    SessionReady,
    StartTLS,
    TransactionDone,
)

__all__ = [
    "BLOCK_SIZE",
    "ClientOptions",
    "Credentials",
    "DeliveryResult",
    "HostFailure",
    "OutboundMessage",
    "OutboundRecipient",
    "RecipientResult",
    "SMTPClientConnection",
    "SMTPClientProtocol",
    "Timeouts",
    "connect",
    "deliver_message",
    "load_trust_root",
    "tls_options",
]

log = Logger()

#: Message text is written in blocks of this size; the data block timeout
#: (RFC 5321 §4.5.3.2.5) runs for each.
BLOCK_SIZE = 64 * 1024

CONNECT_FAILED = Reply(451, "4.4.1", "Could not connect to the host")


@dataclass(frozen=True)
class Timeouts:
    """Client timeouts in seconds (RFC 5321 §4.5.3.2 minimums by default)."""

    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_done: float = 600.0

    @classmethod
    def from_settings(cls, relay: Any) -> Timeouts:
        """From a L{twistedmail.config.RelaySettings}."""
        return cls(
            connect=relay.connect_timeout,
            greeting=relay.greeting_timeout,
            command=relay.command_timeout,
            mail=relay.mail_timeout,
            rcpt=relay.rcpt_timeout,
            data_init=relay.data_init_timeout,
            data_block=relay.data_block_timeout,
            data_done=relay.data_done_timeout,
        )


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """Client TLS that encrypts but accepts any certificate (opportunistic
    and "required" policies; RFC 7435), still sending SNI."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname
        self._context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._context.set_verify(SSL.VERIFY_NONE, lambda *a: True)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._hostname and not self._hostname.startswith("["):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        return connection


def tls_options(
    policy: str, hostname: str, trust_root: Any = None
) -> IOpenSSLClientConnectionCreator:
    """Client TLS options for a policy.

    @param policy: "verify" checks the certificate (service_identity)
        against C{hostname}; "implicit" does too; anything else encrypts
        without checking.
    @param hostname: the MX host's name (or an address literal).
    @param trust_root: an C{IOpenSSLTrustRoot} (or a L{Certificate}); None
        means the system's trust store.
    """
    if policy in ("verify", "implicit"):
        name = hostname.strip("[]")
        if name.lower().startswith("ipv6:"):
            name = name[5:]
        root = trust_root if trust_root is not None else platformTrust()
        return optionsForClientTLS(name, trustRoot=root)
    return _UnverifiedTLS(hostname)


@implementer(IPullProducer)
class _BodyWriter:
    """Writes the message text in blocks as the transport drains."""

    def __init__(self, protocol: SMTPClientProtocol, data: bytes) -> None:
        self._protocol = protocol
        self._data = memoryview(data)
        self._offset = 0

    def resumeProducing(self) -> None:
        transport = self._protocol.transport
        if transport is None:
            return
        block = self._data[self._offset : self._offset + BLOCK_SIZE]
        self._offset += len(block)
        if block:
            transport.write(bytes(block))
        if self._offset >= len(self._data):
            transport.unregisterProducer()  # type: ignore[attr-defined]
            self._protocol._body_written()
        else:
            self._protocol._arm("data_block")

    def stopProducing(self) -> None:
        self._offset = len(self._data)


@implementer(IHandshakeListener)
class SMTPClientProtocol(Protocol):
    """One SMTP client session over a transport.

    @param machine: the sans-I/O session.
    @param clock: for the timeouts.
    @param timeouts: how long to wait for what.
    @param tls: the options for STARTTLS.
    """

    def __init__(
        self,
        machine: ClientMachine,
        clock: IReactorTime,
        timeouts: Timeouts,
        tls: IOpenSSLClientConnectionCreator | None,
    ) -> None:
        self.machine = machine
        self.clock = clock
        self.timeouts = timeouts
        self.tls = tls
        self.ready: Deferred[SMTPClientProtocol] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._pending: Deferred[DeliveryResult] | None = None
        self._timer: IDelayedCall | None = None
        self._timer_key: tuple[str | None, int] = (None, -1)
        self._writing_body = False
        self.failure: TemporaryError | None = None

    # Twisted ---------------------------------------------------------------

    def connectionMade(self) -> None:
        self._rearm()

    def dataReceived(self, data: bytes) -> None:
        self._dispatch(self.machine.receive_data(data))

    def handshakeCompleted(self) -> None:
        self._dispatch(self.machine.tls_established())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self._dispatch(self.machine.connection_lost(_describe(reason)))
        if self.failure is None and not self.closed.called:
            self.failure = HostFailure(CONNECT_FAILED, "connection closed")
        self._fail_waiters()
        if not self.closed.called:
            self.closed.callback(None)

    # Calls from SMTPClientConnection ----------------------------------------

    def send(self, message: OutboundMessage) -> Deferred[DeliveryResult]:
        """Run one transaction."""
        if self.failure is not None:
            return defer.fail(self.failure)
        if self._pending is not None:
            raise RuntimeError("a transaction is already running")
        d: Deferred[DeliveryResult] = Deferred()
        self._pending = d
        self._dispatch(self.machine.send_message(message))
        return d

    def quit(self) -> Deferred[None]:
        """QUIT, then close; fires when the connection is closed."""
        if self.transport is not None and not self.closed.called:
            try:
                events = self.machine.quit() if self.failure is None else []
            except RuntimeError:
                events = []
            if events:
                self._dispatch(events)
            else:
                self.transport.loseConnection()
        return self.closed

    # Events ----------------------------------------------------------------

    def _dispatch(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, SendCommands):
                if self.transport is not None:
                    write_now(self.transport, (event.data,))
            elif isinstance(event, SendBody):
                assert self.transport is not None
                if len(event.data) <= BLOCK_SIZE:
                    # One block: written at once (straight to the socket on
                    # plain TCP); the final reply's timer starts below.
                    write_now(self.transport, (event.data,))
                    continue
                self._writing_body = True
                self.transport.registerProducer(  # type: ignore[attr-defined]
                    _BodyWriter(self, event.data), False
                )
                self._arm("data_block")
            elif isinstance(event, StartTLS):
                assert self.transport is not None
                self.transport.startTLS(self.tls)  # type: ignore[attr-defined]
            elif isinstance(event, SessionReady):
                if not self.ready.called:
                    self.ready.callback(self)
            elif isinstance(event, TransactionDone):
                d, self._pending = self._pending, None
                if d is not None:
                    d.callback(event.result)
            elif isinstance(event, SessionFailed):
                self.failure = event.error
                log.info(
                    "SMTP session failed: {reason}",
                    reason=event.error.reason,
                )
                self._fail_waiters()
                if self.transport is not None:
                    self.transport.loseConnection()
            elif isinstance(event, Closed):
                if self.transport is not None:
                    self.transport.loseConnection()
        self._rearm()

    def _fail_waiters(self) -> None:
        error = self.failure or HostFailure(CONNECT_FAILED, "connection closed")
        if not self.ready.called:
            self.ready.errback(error)
        d, self._pending = self._pending, None
        if d is not None:
            d.errback(error)

    # Timers ----------------------------------------------------------------

    def _body_written(self) -> None:
        self._writing_body = False
        self._rearm(force=True)

    def _rearm(self, force: bool = False) -> None:
        """Start the timer for what the machine waits for now; a timer keeps
        running while the same reply is still awaited (a server dribbling
        bytes gets no extra time)."""
        if self._writing_body:
            return
        waiting = self.machine.waiting_for
        key = (waiting, self.machine.replies_received)
        if key == self._timer_key and not force and self._timer is not None:
            return
        self._timer_key = key
        if waiting is not None and self.transport is not None:
            self._start_timer(getattr(self.timeouts, waiting))
        else:
            self._cancel_timer()

    def _arm(self, kind: str) -> None:
        self._timer_key = (kind, -1)
        self._start_timer(getattr(self.timeouts, kind))

    def _start_timer(self, seconds: float) -> None:
        """Time out C{seconds} from now: the running timer is moved (cheaper
        for the reactor than cancelling it and scheduling a new call)."""
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(seconds)
        else:
            self._timer = self.clock.callLater(seconds, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._writing_body and self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self._writing_body = False
        self._dispatch(self.machine.timed_out())
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


def _describe(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, SSL.Error):
        return f"TLS error: {value}"
    return str(value) or type(value).__name__


class _Factory(ClientFactory):
    noisy = False

    def __init__(self, build: Any) -> None:
        self._build = build
        self.connect_failed: Deferred[None] = Deferred()

    def buildProtocol(self, addr: Any) -> SMTPClientProtocol:
        protocol: SMTPClientProtocol = self._build()
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.connect_failed.errback(
            HostFailure(CONNECT_FAILED, f"cannot connect: {_describe(reason)}")
        )


class SMTPClientConnection:
    """An open session with one server; reuse it for several messages.

    @ivar host: the server's host name; C{address}, C{port} where it is.
    @ivar extensions: what its EHLO offered.
    """

    def __init__(self, protocol: SMTPClientProtocol, host: str, address: str) -> None:
        self._protocol = protocol
        self.host = host
        self.address = address
        self.extensions: Extensions = protocol.machine.extensions

    @property
    def usable(self) -> bool:
        """Whether another message may be sent on this connection."""
        return self._protocol.failure is None and not self._protocol.closed.called

    def send(
        self,
        sender: str,
        recipients: Sequence[OutboundRecipient | str],
        message: bytes,
        *,
        ret: str | None = None,
        envid: str | None = None,
    ) -> Deferred[DeliveryResult]:
        """Send one message; one at a time per connection.

        @param sender: the envelope sender, ``""`` for the null sender.
        @param recipients: addresses, or L{OutboundRecipient} with DSN
            parameters.
        @param message: the message bytes (any line endings).
        @return: a Deferred firing with the L{DeliveryResult}, or failing
            with L{HostFailure} when the connection is already broken.
        """
        rcpts = tuple(
            r if isinstance(r, OutboundRecipient) else OutboundRecipient(r)
            for r in recipients
        )
        d = self._protocol.send(OutboundMessage(sender, rcpts, message, ret, envid))
        return d.addCallback(lambda r: replace(r, host=self.host, address=self.address))

    def quit(self) -> Deferred[None]:
        """Say QUIT and close; fires once closed (never fails)."""
        return self._protocol.quit()


def connect(
    reactor: Any,
    host: str,
    address: str,
    port: int,
    options: ClientOptions,
    *,
    timeouts: Timeouts = Timeouts(),
    trust_root: Any = None,
) -> Deferred[SMTPClientConnection]:
    """Open an SMTP session (greeting, EHLO, STARTTLS and AUTH as the
    options say).

    @param reactor: IReactorTCP and IReactorTime.
    @param host: the server's host name (for TLS verification and logs).
    @param address: the IP address to connect to.
    @param options: HELO name, TLS policy, credentials, chunking.
    @param trust_root: for TLS policy "verify"/"implicit" (None: system).
    @return: a Deferred firing with the connection once it is ready, or
        failing with L{HostFailure}.
    """
    tls = tls_options(options.tls, host, trust_root) if options.tls != "none" else None
    implicit = options.tls == "implicit"
    result: Deferred[SMTPClientConnection] = Deferred()

    def connected(protocol: SMTPClientProtocol) -> None:
        if not result.called:
            result.callback(SMTPClientConnection(protocol, host, address))

    def failed(f: Failure) -> None:
        if not result.called:
            result.errback(f)

    def build() -> SMTPClientProtocol:
        machine = ClientMachine(options, tls_active=implicit)
        protocol = SMTPClientProtocol(machine, reactor, timeouts, tls)
        protocol.ready.addCallbacks(connected, failed)
        return protocol

    factory = _Factory(build)
    factory.connect_failed.addErrback(failed)
    tcp_factory: Any = factory
    if implicit:
        assert tls is not None
        tcp_factory = TLSMemoryBIOFactory(tls, True, factory)
    IReactorTCP(reactor).connectTCP(
        address, port, tcp_factory, timeout=timeouts.connect
    )
    return result


def deliver_message(
    reactor: Any,
    host: str,
    address: str,
    port: int,
    *,
    helo_name: str,
    envelope_sender: str,
    recipients: Sequence[OutboundRecipient | str],
    message: bytes | str,
    tls_policy: str = "opportunistic",
    trust_root: Any = None,
    credentials: Credentials | None = None,
    allow_plaintext_auth: bool = False,
    chunking: bool = False,
    ret: str | None = None,
    envid: str | None = None,
    timeouts: Timeouts = Timeouts(),
) -> Deferred[DeliveryResult]:
    """Connect, send one message, QUIT.

    @param message: the message bytes, or the path of a file holding them
        (read in the reactor's thread pool when it has one).
    @return: a Deferred firing with the L{DeliveryResult}, or failing with
        L{HostFailure} (try the next host).
    """
    options = ClientOptions(
        helo_name=helo_name,
        tls=tls_policy,
        credentials=credentials,
        allow_plaintext_auth=allow_plaintext_auth,
        chunking=chunking,
    )

    async def run() -> DeliveryResult:
        data = message if isinstance(message, bytes) else await _read(reactor, message)
        conn = await connect(
            reactor,
            host,
            address,
            port,
            options,
            timeouts=timeouts,
            trust_root=trust_root,
        )
        try:
            result = await conn.send(
                envelope_sender, recipients, data, ret=ret, envid=envid
            )
        finally:
            await conn.quit()
        return result

    return Deferred.fromCoroutine(run())


async def _read(reactor: Any, path: str) -> bytes:
    """A file's bytes, read off the reactor thread where possible."""

    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    if IReactorThreads.providedBy(reactor):
        return await deferToThreadPool(reactor, reactor.getThreadPool(), read)
    return read()


def load_trust_root(path: str) -> Any:
    """A trust root from a PEM file of CA certificates (the first one)."""
    with open(path, "rb") as f:
        return Certificate.loadPEM(f.read())
