# -*- test-case-name: tests.test_relay -*-
"""The outbound queue: remote recipients from the spool to other servers.

Step of the flow: spool → aliases (the L{QueueRunner} records each remote
address as a recipient record with the status ``remote``) → here → MTA
client → MX → the peer's server.  L{RelayRunner} is a Twisted service.

What it does with an entry (under the entry's lock from L{EntryLocks},
which the runner and the queue tools' control channel share, so no
read-change-write cycle loses another's update):

 1. Reads it again from disk, lets the L{Notifier} expire, bounce and warn
    (``failed`` records from the runner are bounced here too), and writes
    the result (or removes the entry when every recipient is done).
 2. Takes the ``remote`` records that are due (no next attempt yet, or one
    in the past; all of them on ``queue flush``).  A record whose domain the
    directory now calls local never leaves the server: it goes back to
    ``pending`` for the runner.
 3. Records the attempt before trying: ``attempts`` + 1, ``last_attempt``
    and a ``next_attempt`` from the retry schedule, written atomically
    (L{Spool.update}).  A crash in the middle therefore means one retry at
    the scheduled time, never a tight loop, and never a lost recipient.
 4. Groups the records by destination domain (and envelope sender) into
    jobs and queues each job on its domain.

Jobs are sent by workers, one connection each: at most ``[queue]
max_concurrency`` connections in all and ``max_per_domain`` to one domain
(domains sent through one smarthost share its queue, limit and
connections, L{SharedHops});
a worker keeps its connection for the next job of its domain, up to
``connection_reuse`` messages.  A connection that cannot be made fails
every job waiting for that domain the same way (a dead destination is not
tried once per message).  A worker goes on to its next job as soon as the
server has answered; the results are written meanwhile (the job's records
stay in flight, so they are not sent again, until they are written).

The active set is bounded: at most ``examine_limit`` entries are being
examined (read, attempt recorded) at once, so a flush of a long queue
turns into a steady stream of small spool batches and sends, not one huge
batch of status writes before the first message leaves.

Per-recipient results are applied under the lock again: a 2xx reply makes
the record ``delivered`` (it is never sent again), a 5xx one ``failed``
(bounced at once by the notifier), a 4xx one leaves it ``remote`` with its
reply and reason and the next attempt already recorded.  Retries are per
recipient.  The reason of a remote reply names the host
(L{twistedmail.spool.dsn.remote_reason}) for the bounce's Remote-MTA.

Retry schedule: L{retry_delay}, a pure function of the number of attempts,
the configured schedule and a jitter value in [0, 1) that the caller draws
(the service draws it from an injected C{random}).  Defaults: 5, 10, 20, 40
minutes, then every 2 hours, until ``max_lifetime`` (5 days) after arrival:
then the notifier bounces the recipient with its last reply.

Forwarding: a record an alias expanded (it has a C{parent}) whose envelope
sender is in a foreign domain leaves with the sender rewritten by the
C{rewrite_sender} function (SRS, L{twistedmail.spool.srs}), so that SPF
passes at the next hop and bounces come back through us.

Known limits: a remote server that took the message (250 after the final
dot) when we crash before recording it gets it again after the restart (at
least once; the window is one status write).  The relay learns of new
remote records from the runner's C{settled} hook (L{settled}), from its
start-up scan and from its poll of due entries.
"""

from __future__ import annotations

import collections
import functools
import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistedmail.address import Address, AddressError
from twistedmail.config import QueueSettings
from twistedmail.interfaces import IDirectory
from twistedmail.logs import preformatted
from twistedmail.replies import INTERNAL_ERROR, MailError, Reply, TemporaryError
from twistedmail.smtp.client import (
    DeliveryResult,
    HostFailure,
    SMTPClientConnection,
    Timeouts,
    connect,
)
from twistedmail.smtp.client import OutboundRecipient as ClientRecipient
from twistedmail.smtp.routing import Router
from twistedmail.spool.dsn import NOTICE_SUCCESS, Notifier, remote_reason, wants
from twistedmail.spool.runner import EntryLocks
from twistedmail.spool.store import (
    DELIVERED,
    FAILED,
    PENDING,
    REMOTE,
    BrokenEntry,
    NewerVersion,
    QueueEntry,
    RecipientRecord,
    Spool,
)

__all__ = [
    "EXAMINE_LIMIT",
    "IDLE_TIME",
    "JITTER_FRACTION",
    "Connection",
    "DeliveryReport",
    "Kick",
    "OutboundMessage",
    "OutboundRecipient",
    "RecipientOutcome",
    "RelayRunner",
    "SMTPTransport",
    "SharedHops",
    "Transport",
    "retry_delay",
]

log = Logger()

#: The jitter adds up to this fraction of the delay.
JITTER_FRACTION = 0.1

#: The least number of entries examined at once (read, attempt recorded,
#: jobs queued); at least four per connection allowed.
EXAMINE_LIMIT = 32

#: Seconds an open connection waits for another job while entries are
#: being examined (Postfix's smtp_connection_cache_time_limit is 2 s too).
IDLE_TIME = 2.0

BAD_ADDRESS = Reply(550, "5.1.3", "Bad recipient address syntax")


def retry_delay(attempts: int, schedule: Sequence[float], jitter: float = 0.0) -> float:
    """Seconds to wait after a recipient's C{attempts}-th attempt failed.

    The n-th delay of the schedule after the n-th attempt, its last delay
    after every later one; plus C{jitter} (in [0, 1)) times
    L{JITTER_FRACTION} of it, so retries of many messages spread out.

    @param attempts: attempts made so far (at least 1).
    @param schedule: the ``[queue] retry_schedule`` (not empty).
    """
    base = schedule[min(max(attempts, 1), len(schedule)) - 1]
    return base * (1.0 + JITTER_FRACTION * min(max(jitter, 0.0), 1.0))


# The client's side of the seam.  These mirror the ESMTP client's types;
# the service assembly adapts the real client to L{Transport}.


@dataclass(frozen=True)
class OutboundRecipient:
    """One recipient to send to, with its DSN parameters (RFC 3461 §4)."""

    address: str
    notify: tuple[str, ...] = ()
    orcpt: str | None = None


@dataclass(frozen=True)
class OutboundMessage:
    """One message and its envelope, as the client sends it.

    @ivar sender: the reverse path (``""`` for the null sender), already
        rewritten for forwarded mail.
    @ivar recipients: the recipients in this transaction (one domain).
    @ivar data: the message bytes as spooled.
    @ivar ret: DSN RET, or None.
    @ivar envid: DSN ENVID (plain text), or None.
    @ivar body_type: ``7BIT``, ``8BITMIME`` or ``BINARYMIME``.
    @ivar smtputf8: the message needs SMTPUTF8.
    @ivar queue_id: the queue entry it comes from (for the logs).
    """

    sender: str
    recipients: tuple[OutboundRecipient, ...]
    data: bytes
    ret: str | None = None
    envid: str | None = None
    body_type: str = "7BIT"
    smtputf8: bool = False
    queue_id: str = ""


@dataclass(frozen=True)
class RecipientOutcome:
    """What the server said about one recipient."""

    address: str
    reply: Reply


@dataclass(frozen=True)
class DeliveryReport:
    """The outcome of one transaction.

    @ivar recipients: one outcome per recipient sent (missing ones count as
        a temporary failure with C{session_error}).
    @ivar host: the server's host name (for Remote-MTA and the reasons).
    @ivar dsn: the server offered DSN, so NOTIFY was passed on.
    @ivar session_error: why the session broke, or None; the connection is
        not used again.
    """

    recipients: tuple[RecipientOutcome, ...]
    host: str = ""
    dsn: bool = False
    session_error: str | None = None


class Connection(Protocol):
    """An open session with a destination's server."""

    def send(self, message: OutboundMessage) -> Deferred[DeliveryReport]:
        """Run one transaction; fire with per-recipient results."""

    def close(self) -> Deferred[None]:
        """QUIT and disconnect."""


class Transport(Protocol):
    """Opens sessions with the server of a destination domain (MX lookup,
    smarthost routing and TLS policy are its business)."""

    def connect(self, domain: str) -> Deferred[Connection]:
        """A session with one of the domain's servers; fails with a
        L{MailError}: temporary (try later) or permanent (null MX, no such
        domain: bounce)."""


class SharedHops(Protocol):
    """A L{Transport} may also say which domains share a next hop (a
    smarthost): their jobs then wait in one queue, with one connection
    limit, and go over the same connections (as Postfix queues by next
    hop)."""

    def next_hop(self, domain: str) -> str | None:
        """The next hop's name, or None for the domain's own servers."""


class _SMTPConnection:
    """L{Connection} over the ESMTP client's L{SMTPClientConnection}."""

    def __init__(self, connection: SMTPClientConnection) -> None:
        self._connection = connection

    def send(self, message: OutboundMessage) -> Deferred[DeliveryReport]:
        """One transaction; the client's result as a L{DeliveryReport}."""
        recipients = [
            ClientRecipient(r.address, r.notify, r.orcpt) for r in message.recipients
        ]
        d = self._connection.send(
            message.sender,
            recipients,
            message.data,
            ret=message.ret,
            envid=message.envid,
        )

        def report(result: DeliveryResult) -> DeliveryReport:
            return DeliveryReport(
                tuple(
                    RecipientOutcome(r.recipient.address, r.reply)
                    for r in result.recipients
                ),
                host=result.host,
                dsn=result.dsn,
                session_error=result.session_error,
            )

        return d.addCallback(report)

    def close(self) -> Deferred[None]:
        """QUIT (never fails)."""
        return self._connection.quit()


class SMTPTransport:
    """L{Transport} over the ESMTP client and the router
    (L{twistedmail.smtp.routing.Router}): each host of the domain's route
    and each of its addresses in turn until one holds a session (RFC 5321
    §5.1); the session is kept for the relay to reuse.

    @param reactor: IReactorTCP and IReactorTime.
    @param router: says where a domain's mail goes and how.
    """

    def __init__(self, reactor: Any, router: Router) -> None:
        self._reactor = reactor
        self._router = router

    def connect(self, domain: str) -> Deferred[Connection]:
        """A session with one of the domain's servers."""
        return Deferred.fromCoroutine(self._connect(domain))

    def next_hop(self, domain: str) -> str | None:
        """The smarthost for the domain, if it has one (L{SharedHops})."""
        return self._router.next_hop(domain)

    async def _connect(self, domain: str) -> Connection:
        router = self._router
        route = await router.route(domain)
        timeouts = Timeouts.from_settings(router.settings)
        failures: list[str] = []
        last: MailError | None = None
        for host in route.hosts:
            for address in host.addresses:
                try:
                    connection = await connect(
                        self._reactor,
                        host.name,
                        address,
                        host.port,
                        router.client_options(route, host),
                        timeouts=timeouts,
                        trust_root=router.trust_root,
                    )
                except HostFailure as e:
                    # Logged even when a later host takes the mail, so a
                    # dead MX host shows in the log.
                    log.info(
                        "{host} [{address}]: {reason}",
                        host=host.name,
                        address=address,
                        reason=e.reason,
                    )
                    failures.append(f"{host.name}[{address}]: {e.reason}")
                    last = e
                    continue
                return _SMTPConnection(connection)
        reply = (
            last.reply if last is not None else Reply(451, "4.4.4", "No host to try")
        )
        if not reply.is_temporary:
            # A host's 5xx greeting is still a host failure: retry later.
            reply = Reply(451, "4.4.1", "No mail server of the domain took mail")
        raise TemporaryError(reply, "; ".join(failures) or f"no host for {domain}")


class Kick(Protocol):
    """Asks the local runner to look at an entry now (C{QueueRunner.flush})."""

    def __call__(self, queue_id: str | None = None, /) -> None:
        """Look at the entry (or at every waiting one) now."""


@dataclass
class _Job:
    """Some of one entry's remote records, for one domain and sender."""

    queue_id: str
    domain: str
    sender: str
    indexes: list[int]
    records: list[RecipientRecord]
    entry: QueueEntry


@dataclass
class _Domain:
    """The jobs waiting for one destination and its open workers."""

    jobs: collections.deque[_Job] = field(default_factory=collections.deque)
    workers: int = 0
    #: Workers with an open connection waiting for a job: fired with True
    #: to take one, False to close.
    idle: list[Deferred[bool]] = field(default_factory=list)


def _naming(domain: str, reason: str) -> str:
    """C{reason} with the destination domain in front, unless it starts
    with it already (the MX resolver's reasons do: ``b.test: NXDOMAIN``)."""
    if reason == domain or reason.startswith((f"{domain}:", f"{domain} ")):
        return reason
    return f"{domain}: {reason}"


@functools.lru_cache(maxsize=4096)
def _domain_of(address: str) -> str | None:
    """The address's normalised domain, or C{None} when it is no address;
    cached, as the same recipients come back message after message."""
    try:
        return Address.parse(address, utf8=True).domain
    except AddressError:
        return None


class RelayRunner(Service):
    """Delivers remote recipients; see the module docstring.

    @param spool: the queue.
    @param transport: opens sessions with destinations.
    @param clock: for the schedule and attempt times.
    @param notifier: expires, bounces and warns (L{Notifier}).
    @param locks: the entry locks shared with the runner and queue tools.
    @param settings: the ``[queue]`` settings.
    @param directory: to double-check that a domain is not ours.
    @param rewrite_sender: the envelope sender for forwarded mail from a
        foreign sender (SRS), or None to keep senders.
    @param kick: tells the local runner to look at an entry (after a record
        went back to it, or on release and flush).
    @param random: draws the retry jitter in [0, 1).
    @param poll_interval: seconds between looks for due entries.
    @param examine_limit: how many entries may be examined at once; by
        default L{EXAMINE_LIMIT} or four per allowed connection, whichever
        is more.
    @param idle_time: seconds a connection with nothing to send waits for
        a job while entries are being examined.
    """

    def __init__(
        self,
        spool: Spool,
        transport: Transport,
        clock: IReactorTime,
        notifier: Notifier,
        locks: EntryLocks,
        settings: QueueSettings | None = None,
        *,
        directory: IDirectory | None = None,
        rewrite_sender: Callable[[str], str] | None = None,
        kick: Kick | None = None,
        random: Callable[[], float] = _random.random,
        poll_interval: float = 1.0,
        examine_limit: int | None = None,
        idle_time: float = IDLE_TIME,
    ) -> None:
        self._spool = spool
        self._transport = transport
        self._clock = clock
        self._notifier = notifier
        self._locks = locks
        self._settings = settings or QueueSettings()
        self._directory = directory
        self._rewrite_sender = rewrite_sender
        self._kick = kick
        self._random = random
        self._poll_interval = poll_interval
        self._examine_limit = examine_limit or max(
            EXAMINE_LIMIT, 4 * self._settings.max_concurrency
        )
        self._throttled = False
        self._idle_time = idle_time
        self._dispatching = False
        self._redispatch = False
        self._waiting: dict[str, float] = {}
        self._forced: set[str] = set()
        self._examining: set[str] = set()
        self._in_flight: dict[str, set[int]] = {}
        self._domains: collections.OrderedDict[str, _Domain] = collections.OrderedDict()
        self._connections = 0
        self._work: set[Deferred[None]] = set()
        self._loop: LoopingCall | None = None
        self._soon: IDelayedCall | None = None
        #: Fires when the start-up scan is done.
        self.started: Deferred[None] = Deferred()

    # Service

    def startService(self) -> None:
        """Scan the spool for remote and failed records, then poll."""
        super().startService()
        self.started = Deferred()
        self._spool.prepare()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._poll_interval, now=False)
        d = Deferred.fromCoroutine(self._scan())
        d.addErrback(lambda f: log.failure("relay: queue scan failed", f))
        d.addBoth(lambda _: self.started.callback(None))

    def stopService(self) -> Deferred[None]:
        """Stop taking work; fire when the work in flight is done."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        self._waiting.clear()
        for domain in self._domains.values():
            domain.jobs.clear()
            self._wake(domain, False)
        d = DeferredList(list(self._work), consumeErrors=True)
        return d.addCallback(lambda _: None)

    async def _scan(self) -> None:
        entries = await self._spool.open_entries()
        for entry in entries:
            if any(r.status in (REMOTE, FAILED) for r in entry.recipients):
                self._waiting[entry.queue_id] = 0.0
        self._run_soon()

    # The seams with the runner and the queue tools

    @property
    def examining(self) -> int:
        """How many entries are being examined now (at most the examine
        limit; for tests and statistics)."""
        return len(self._examining)

    def backoff(self, attempts: int) -> float:
        """The retry delay after C{attempts} attempts, jitter drawn now (the
        runner's C{backoff} too)."""
        return retry_delay(attempts, self._settings.retry_schedule, self._random())

    def settled(self, entry: QueueEntry) -> Deferred[QueueEntry]:
        """The runner's C{settled} hook: notices now, remote records soon.

        Called under the entry's lock (the runner holds it), so it takes no
        lock itself; the remote records are looked at once the runner has
        written the entry and let go.
        """
        d = self._notifier.settle(entry)

        def then(entry: QueueEntry) -> QueueEntry:
            if self.running and any(r.status == REMOTE for r in entry.recipients):
                self._waiting[entry.queue_id] = 0.0
                self._run_soon()
            return entry

        return d.addCallback(then)

    def flush(self, queue_id: str | None = None) -> None:
        """Try remote records now (of one entry, or all), whatever their
        next attempt time; the local runner is kicked too."""
        # Entries being examined now count too: their examination may have
        # read its "forced" mark already, and would otherwise put them back
        # to wait for their next attempt time.
        ids = [queue_id] if queue_id is not None else [*self._waiting, *self._examining]
        for i in ids:
            self._forced.add(i)
            self._waiting[i] = 0.0
        if self._kick is not None:
            self._kick(queue_id)
        self._run_soon()

    def hold(self, queue_id: str) -> Deferred[QueueEntry]:
        """Hold an entry: neither runner nor relay touch it until released
        (jobs already on the wire finish).  Fails with KeyError."""
        return self._set_held(queue_id, True)

    def release(self, queue_id: str) -> Deferred[QueueEntry]:
        """Release a held entry and look at it now.  Fails with KeyError."""
        d = self._set_held(queue_id, False)

        def released(entry: QueueEntry) -> QueueEntry:
            self.flush(queue_id)
            return entry

        return d.addCallback(released)

    def _set_held(self, queue_id: str, held: bool) -> Deferred[QueueEntry]:
        async def go() -> QueueEntry:
            entry = await self._spool.load(queue_id)
            entry = replace(entry, held=held)
            await self._spool.update(entry)
            return entry

        return self._locks.run(queue_id, lambda: Deferred.fromCoroutine(go()))

    def exists(self, queue_id: str) -> Deferred[None]:
        """Fire when the entry exists; fail with KeyError otherwise."""
        return self._spool.load(queue_id).addCallback(lambda _: None)

    def delete(self, queue_id: str) -> Deferred[None]:
        """Remove an entry without notices.  Fails with KeyError."""

        async def go() -> None:
            await self._spool.load(queue_id)
            await self._spool.remove(queue_id)
            self._waiting.pop(queue_id, None)

        return self._locks.run(queue_id, lambda: Deferred.fromCoroutine(go()))

    # Scheduling

    def _run_soon(self) -> None:
        if self._soon is None and self.running:
            self._soon = self._clock.callLater(0, self._tick)

    def _tick(self) -> None:
        self._soon = None
        if not self.running:
            return
        now = self._clock.seconds()
        room = self._examine_limit - len(self._examining)
        start: list[str] = []
        for queue_id, due in self._waiting.items():
            if due <= now and queue_id not in self._examining:
                if len(start) >= room:
                    # More are due: look again when an examination ends.
                    self._throttled = True
                    break
                start.append(queue_id)
        for queue_id in start:
            del self._waiting[queue_id]
            self._examining.add(queue_id)
            d = self._locks.run(queue_id, self._examiner(queue_id))
            d.addErrback(self._examine_failed, queue_id)
            d.addBoth(self._examined, queue_id)
            self._track(d)
        if not self._more_coming():
            # Nothing more to examine: idle connections need not wait.
            self._wake_idle()

    def _examiner(self, queue_id: str) -> Callable[[], Deferred[None]]:
        return lambda: Deferred.fromCoroutine(self._examine(queue_id))

    def _examine_failed(self, failure: Failure, queue_id: str) -> None:
        log.failure("relay: entry {id} failed", failure, id=queue_id)
        if self.running:
            retry = self._clock.seconds() + self._settings.retry_schedule[0]
            self._waiting[queue_id] = retry

    def _examined(self, _: object, queue_id: str) -> None:
        self._examining.discard(queue_id)
        self._wake_idle()
        self._dispatch()
        if self._throttled or queue_id in self._forced:
            self._throttled = False
            self._run_soon()

    def _track(self, d: Deferred[None]) -> None:
        if d.called:
            return
        self._work.add(d)
        d.addBoth(lambda _: self._work.discard(d))

    async def _examine(self, queue_id: str) -> None:
        try:
            entry = await self._spool.load(queue_id)
        except KeyError:
            return
        forced = queue_id in self._forced
        self._forced.discard(queue_id)
        if entry.held:
            return
        before = entry
        entry = await self._notifier.settle(entry)
        if entry.is_done:
            await self._spool.remove(queue_id)
            return
        now = self._clock.seconds()
        busy = self._in_flight.get(queue_id, set())
        due = [
            i
            for i, r in enumerate(entry.recipients)
            if r.status == REMOTE
            and i not in busy
            and (forced or r.next_attempt is None or r.next_attempt <= now)
        ]
        records = list(entry.recipients)
        jobs: dict[tuple[str, str], list[int]] = {}
        back_home = False
        for i in due:
            r = records[i]
            domain = _domain_of(r.address)
            if domain is None:
                records[i] = replace(
                    r, status=FAILED, reply=BAD_ADDRESS, reason="bad address"
                )
                continue
            if self._directory is not None and await self._directory.is_local_domain(
                domain
            ):
                # Local after all (the domain became ours since expansion):
                # never sent out; the runner expands it again.
                records[i] = replace(r, status=PENDING, next_attempt=None)
                back_home = True
                continue
            sender = await self._sender_for(entry, r)
            records[i] = replace(
                r,
                attempts=r.attempts + 1,
                last_attempt=now,
                next_attempt=now + self.backoff(r.attempts + 1),
            )
            jobs.setdefault((domain, sender), []).append(i)
        entry = replace(entry, recipients=tuple(records))
        if any(r.status == FAILED for r in entry.recipients):
            entry = await self._notifier.settle(entry)
        if entry != before:
            await self._spool.update(entry)
        if back_home and self._kick is not None:
            self._kick(queue_id)
        for (domain, sender), indexes in jobs.items():
            busy = self._in_flight.setdefault(queue_id, set())
            busy.update(indexes)
            job = _Job(
                queue_id,
                domain,
                sender,
                indexes,
                [entry.recipients[i] for i in indexes],
                entry,
            )
            self._domains.setdefault(self._queue_name(domain), _Domain()).jobs.append(
                job
            )
        if not jobs:
            self._reschedule(entry)

    def _queue_name(self, domain: str) -> str:
        """The queue a domain's jobs wait in: its next hop's when the
        transport says it shares one (L{SharedHops}), else its own."""
        next_hop = getattr(self._transport, "next_hop", None)
        hop = next_hop(domain) if next_hop is not None else None
        return hop if hop is not None else domain

    async def _sender_for(self, entry: QueueEntry, record: RecipientRecord) -> str:
        sender = entry.envelope.sender
        if not sender or record.parent is None or self._rewrite_sender is None:
            return sender
        domain = _domain_of(sender)
        if domain is None:
            return sender
        if self._directory is not None and await self._directory.is_local_domain(
            domain
        ):
            return sender
        return self._rewrite_sender(sender)

    def _reschedule(self, entry: QueueEntry) -> None:
        """Wait for the entry's next due remote record."""
        if not self.running or entry.queue_id in self._in_flight:
            return
        times = [r.next_attempt or 0.0 for r in entry.recipients if r.status == REMOTE]
        if times:
            # Flushed while it was examined: due now, not at its next time.
            forced = entry.queue_id in self._forced
            self._waiting[entry.queue_id] = 0.0 if forced else min(times)

    # Workers

    def _dispatch(self) -> None:
        """Start workers while limits allow, taking domains in turn."""
        if self._dispatching:
            # Called back from a worker that this loop started and that
            # finished at once: the loop goes round again instead.
            self._redispatch = True
            return
        self._dispatching = True
        try:
            self._redispatch = True
            while self._redispatch:
                self._redispatch = False
                self._start_workers()
        finally:
            self._dispatching = False

    def _start_workers(self) -> None:
        limit, per_domain = (
            self._settings.max_concurrency,
            self._settings.max_per_domain,
        )
        progress = True
        while progress and self._connections < limit and self.running:
            progress = False
            for name in list(self._domains):
                if self._connections >= limit:
                    break
                domain = self._domains.get(name)
                if domain is None:
                    continue
                if not domain.jobs:
                    if not domain.workers:
                        del self._domains[name]
                    continue
                # Another connection only while more jobs wait than the
                # domain's workers (each takes the next job when done).
                if domain.workers >= min(per_domain, len(domain.jobs)):
                    continue
                self._domains.move_to_end(name)
                domain.workers += 1
                self._connections += 1
                d = Deferred.fromCoroutine(self._worker(name, domain))
                d.addErrback(self._worker_failed, name)
                d.addBoth(self._worker_done, domain)
                self._track(d)
                progress = True

    def _worker_failed(self, failure: Failure, name: str) -> None:
        log.failure("relay: worker for {domain} failed", failure, domain=name)

    def _worker_done(self, _: object, domain: _Domain) -> None:
        domain.workers -= 1
        self._connections -= 1
        self._dispatch()

    async def _worker(self, name: str, domain: _Domain) -> None:
        # A shared next hop's queue holds several domains: any of them
        # routes to it.
        target = domain.jobs[0].domain if domain.jobs else name
        try:
            connection = await self._transport.connect(target)
        except MailError as e:
            await self._fail_waiting(domain, e.reply, _naming(name, e.reason))
            return
        except Exception as e:
            log.failure("relay: cannot connect to {domain}", domain=name)
            await self._fail_waiting(domain, INTERNAL_ERROR, f"{name}: {e!r}")
            return
        try:
            sent = 0
            while sent < self._settings.connection_reuse and self.running:
                if not domain.jobs:
                    if await self._next_job(domain):
                        continue
                    break
                job = domain.jobs.popleft()
                sent += 1
                if not await self._send(connection, job):
                    break
        finally:
            try:
                await connection.close()
            except Exception:
                log.failure("relay: closing the connection to {domain}", domain=name)

    def _next_job(self, domain: _Domain) -> Deferred[bool]:
        """Whether a worker with nothing to send should wait for another job:
        while entries are being examined (they may bring jobs for it), up to
        C{idle_time} seconds, so a flush of a long queue does not close and
        reopen connections between jobs."""
        if not self._more_coming() or not self.running:
            return succeed(False)
        d: Deferred[bool] = Deferred()
        domain.idle.append(d)
        timer = self._clock.callLater(self._idle_time, self._give_up, domain, d)

        def stop_timer(result: bool) -> bool:
            if timer.active():
                timer.cancel()
            return result

        return d.addCallback(stop_timer)

    def _give_up(self, domain: _Domain, d: Deferred[bool]) -> None:
        if d in domain.idle:
            domain.idle.remove(d)
            d.callback(False)

    def _wake(self, domain: _Domain, take: bool, count: int | None = None) -> None:
        """Fire idle workers of a domain (all, or C{count})."""
        n = len(domain.idle) if count is None else min(count, len(domain.idle))
        for _ in range(n):
            domain.idle.pop(0).callback(take)

    def _more_coming(self) -> bool:
        """Whether entries are being examined or wait for room to be."""
        return bool(self._examining) or self._throttled

    def _wake_idle(self) -> None:
        """Idle workers take new jobs of their domain; with no examination
        left, the others close.  At the total limit, idle workers of other
        domains close for a domain that needs a connection."""
        needy = False
        for domain in list(self._domains.values()):
            if domain.jobs and domain.idle:
                self._wake(domain, True, len(domain.jobs))
            elif not self._more_coming() and domain.idle:
                self._wake(domain, False)
            if domain.jobs and domain.workers < min(
                self._settings.max_per_domain, len(domain.jobs)
            ):
                needy = True
        if needy and self._connections >= self._settings.max_concurrency:
            for domain in list(self._domains.values()):
                if domain.idle and not domain.jobs:
                    self._wake(domain, False, 1)
                    break

    async def _fail_waiting(self, domain: _Domain, reply: Reply, reason: str) -> None:
        """A destination that cannot be reached: every job waiting for it
        gets the same reply (it is not tried once per message)."""
        jobs = list(domain.jobs)
        domain.jobs.clear()
        if not jobs:
            return
        for job in jobs:
            outcomes = {r.address: reply for r in job.records}
            await self._apply(job, outcomes, "", False, reason)

    async def _send(self, connection: Connection, job: _Job) -> bool:
        """Send one job; return whether the connection may be used again."""
        try:
            data = await self._spool.read_message(job.queue_id)
        except Exception:
            # Deleted meanwhile (queue delete) or unreadable.
            self._done_with(job)
            return True
        entry = job.entry
        message = OutboundMessage(
            sender=job.sender,
            recipients=tuple(
                OutboundRecipient(r.address, r.notify, r.orcpt) for r in job.records
            ),
            data=data,
            ret=entry.envelope.ret,
            envid=entry.envelope.envid,
            body_type=entry.envelope.body_type,
            smtputf8=entry.envelope.smtputf8,
            queue_id=job.queue_id,
        )
        try:
            report = await connection.send(message)
        except MailError as e:
            outcomes = {r.address: e.reply for r in job.records}
            self._record(job, outcomes, "", False, e.reason)
            return False
        except Exception as e:
            log.failure("relay: sending {id} failed", id=job.queue_id)
            outcomes = {r.address: INTERNAL_ERROR for r in job.records}
            self._record(job, outcomes, "", False, repr(e))
            return False
        outcomes = {o.address.lower(): o.reply for o in report.recipients}
        missing = Reply(451, "4.4.2", report.session_error or "No reply")
        by_address = {
            r.address: outcomes.get(r.address.lower(), missing) for r in job.records
        }
        self._record(job, by_address, report.host, report.dsn, "")
        return report.session_error is None

    def _record(
        self,
        job: _Job,
        outcomes: dict[str, Reply],
        host: str,
        dsn: bool,
        reason: str,
    ) -> None:
        """Record a transaction's results while the connection goes on to
        the next job.  The job's records stay in flight (never sent again)
        until the results are written."""
        d = Deferred.fromCoroutine(self._apply(job, outcomes, host, dsn, reason))
        d.addErrback(self._record_failed, job.queue_id)
        self._track(d)

    def _record_failed(self, failure: Failure, queue_id: str) -> None:
        log.failure("relay: recording results for {id} failed", failure, id=queue_id)
        if self.running:
            retry = self._clock.seconds() + self._settings.retry_schedule[0]
            self._waiting[queue_id] = retry

    def _done_with(self, job: _Job) -> None:
        busy = self._in_flight.get(job.queue_id)
        if busy is not None:
            busy.difference_update(job.indexes)
            if not busy:
                del self._in_flight[job.queue_id]

    async def _reload(self, job: _Job) -> QueueEntry:
        """The job's entry as it is now (called under its lock).

        Only the status file is read: the entry file (envelope and message)
        never changes, so the job's copy of the envelope stands.  With no
        readable status file the whole entry is loaded, which quarantines a
        broken one and fails with KeyError when the entry is gone."""
        try:
            recipients, held = await self._spool.read_status(job.queue_id)
        except (OSError, BrokenEntry, NewerVersion):
            return await self._spool.load(job.queue_id)
        return replace(job.entry, recipients=recipients, held=held)

    async def _apply(
        self,
        job: _Job,
        outcomes: dict[str, Reply],
        host: str,
        dsn: bool,
        reason: str,
    ) -> None:
        """Record per-recipient results under the entry's lock."""

        async def go() -> None:
            try:
                entry = await self._reload(job)
            except KeyError:
                return
            records = list(entry.recipients)
            for i, sent in zip(job.indexes, job.records, strict=True):
                if i >= len(records):
                    continue
                r = records[i]
                if r.address != sent.address or r.status != REMOTE:
                    continue
                reply = outcomes[r.address]
                why = remote_reason(host, reply) if host else (reason or str(reply))
                if 200 <= reply.code < 300:
                    done = r.done
                    if dsn or not wants(r, "SUCCESS"):
                        done = (*done, NOTICE_SUCCESS)
                    records[i] = replace(
                        r,
                        status=DELIVERED,
                        reply=reply,
                        reason=why,
                        next_attempt=None,
                        done=done,
                    )
                    log.info(
                        preformatted(f"{job.queue_id}: relayed to {r.address}: {why}"),
                        id=job.queue_id,
                        rcpt=r.address,
                        why=why,
                    )
                elif reply.is_permanent:
                    records[i] = replace(
                        r, status=FAILED, reply=reply, reason=why, next_attempt=None
                    )
                    log.info(
                        preformatted(f"{job.queue_id}: {r.address} refused: {why}"),
                        id=job.queue_id,
                        rcpt=r.address,
                        why=why,
                    )
                else:
                    records[i] = replace(r, reply=reply, reason=why)
                    log.info(
                        preformatted(f"{job.queue_id}: {r.address} deferred: {why}"),
                        id=job.queue_id,
                        rcpt=r.address,
                        why=why,
                    )
            entry = replace(entry, recipients=tuple(records))
            entry = await self._notifier.settle(entry)
            self._done_with(job)
            if entry.is_done:
                await self._spool.remove(job.queue_id)
                return
            await self._spool.update(entry)
            self._reschedule(entry)

        try:
            await self._locks.run(job.queue_id, lambda: Deferred.fromCoroutine(go()))
        finally:
            self._done_with(job)
