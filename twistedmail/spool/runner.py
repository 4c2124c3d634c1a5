# -*- test-case-name: tests.test_runner -*-
"""The queue runner: from the spool through alias expansion to delivery.

Step of the flow: spool → aliases → Maildir (and, for remote recipients, the
outbound queue manager of the relay step).  L{QueueRunner} is a Twisted
service.  On start it reads every entry left in the spool (so a restart after
a crash resumes where it stopped) and picks up what ``sendmail`` dropped in
``incoming/``; then it takes each entry as soon as the spool commits it, polls
``incoming/`` on the clock, and retries deferred recipients when they are due.

For each recipient that is pending (or deferred and due) it asks the alias
expander where the mail goes, then:

 - local mailboxes, programs and files (when the expander allows them) get a
   copy through the local delivery agent; each destination that got its copy
   is remembered in the recipient's ``done`` list, so a retry never gives a
   program or a file a second copy, and Maildir copies are idempotent anyway;
 - remote addresses are recorded as recipient records of their own with the
   status ``remote`` (and the envelope recipient they came from as
   ``parent``); they wait in the entry for the outbound queue manager;
 - expansion failures and permanent delivery failures mark the recipient
   ``failed`` with the reply (the first one; the reason lists them all);
 - temporary failures mark it ``deferred`` with the reason and a next attempt
   time: C{retry_delay} doubled per attempt up to C{retry_delay_max} (the
   outbound issue brings the full schedule and the expiry).

The attempt is recorded in the entry's status file before trying, except for
a first attempt whose destinations are all Maildir mailboxes: those copies
are idempotent (one name per queue id and mailbox), so a crash in the middle
repeats them harmlessly, and the hot path saves an fsync.

An entry is removed when every recipient is done (``delivered``,
``expanded`` or ``bounced``).  Entries with ``failed`` recipients stay until
the bounce code (issue 4) has reported them and marks them ``bounced``;
entries with ``remote`` recipients stay for the outbound queue manager.

At most C{max_active_deliveries} deliveries run at once, and as many entries
are worked on at once; C{stopService} waits for those in flight.

Working with the outbound queue (L{twistedmail.spool.relay}): both services
read, change and rewrite whole status records, so they share an
L{EntryLocks}; the runner holds an entry's lock for a whole attempt and
reloads the entry under it (except an entry it was just handed by the spool,
which nobody else has seen yet).  After each attempt the C{settled} hook gets
the new entry before it is written: it sends the bounces and notices and
returns the entry to write.  C{backoff} replaces the doubling retry delay
with the ``[queue]`` schedule.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    fail,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from twistedmail.address import Address, AddressError
from twistedmail.aliases.expander import (
    Destination,
    Expansion,
    FileTarget,
    ProgramTarget,
    RemoteAddress,
)
from twistedmail.config import SpoolSettings
from twistedmail.delivery.local import destination_key
from twistedmail.logs import FastLogger, preformatted
from twistedmail.replies import MailError, Reply
from twistedmail.spool.store import (
    DEFERRED,
    DELIVERED,
    EXPANDED,
    FAILED,
    PENDING,
    REMOTE,
    QueueEntry,
    RecipientRecord,
    Spool,
    fast_replace,
)

__all__ = [
    "BAD_ADDRESS",
    "EntryLocks",
    "Expander",
    "LocalAgent",
    "QueueRunner",
    "SettledHook",
]

log = FastLogger()

BAD_ADDRESS = Reply(550, "5.1.3", "Bad recipient address syntax")
LOOKUP_FAILED = Reply(451, "4.3.0", "Temporary lookup failure")
DELIVERY_ERROR = Reply(451, "4.3.0", "Internal error")


_T = TypeVar("_T")
_R = TypeVar("_R")
_Waiter = tuple[Callable[[], Deferred[Any]], Deferred[Any]]


class EntryLocks:
    """One lock per queue entry, shared by everything in the server process
    that rewrites entries (the runner, the relay, the queue tools' control
    channel), so that no read-change-write cycle loses another's update."""

    def __init__(self) -> None:
        # An entry is held while its queue ID is a key; the value holds the
        # calls waiting for it, first come first served.  (Lighter than a
        # DeferredLock per entry: an uncontended run adds one callback.)
        self._held: dict[str, collections.deque[_Waiter]] = {}

    def run(self, queue_id: str, f: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        """Call C{f} while holding the entry's lock; fire with its result."""
        waiting = self._held.get(queue_id)
        if waiting is None:
            self._held[queue_id] = collections.deque()
            return self._start(queue_id, f)
        d: Deferred[_T] = Deferred()
        waiting.append((f, d))
        return d

    def _start(self, queue_id: str, f: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        """Call C{f} (the lock is held); release when its result comes."""
        try:
            d = f()
        except BaseException:
            d = fail()
        if not isinstance(d, Deferred):
            d = succeed(d)
        d.addBoth(self._release, queue_id)
        return d

    def _release(self, result: _R, queue_id: str) -> _R:
        """Hand the lock to the next waiting call, or free the entry."""
        waiting = self._held[queue_id]
        if waiting:
            f, d = waiting.popleft()
            self._start(queue_id, f).chainDeferred(d)
        else:
            del self._held[queue_id]
        return result

    def locked(self, queue_id: str) -> bool:
        """Whether someone holds the entry's lock now."""
        return queue_id in self._held


class SettledHook(Protocol):
    """Called with an entry after an attempt, before it is written: sends
    bounces and notices and returns the entry to write."""

    def __call__(self, entry: QueueEntry, /) -> Deferred[QueueEntry]:
        """The entry to write (or remove, when it is done)."""


class Expander(Protocol):
    """What the runner needs from the alias expander."""

    def expand(self, address: Address) -> Deferred[Expansion]:
        """Where one recipient's mail goes."""


class LocalAgent(Protocol):
    """What the runner needs from local delivery."""

    def deliver(
        self, queue_id: str, sender: str, destination: Destination, message: bytes
    ) -> Deferred[None]:
        """Deliver one copy; fail with a MailError."""


@dataclass
class _Outcome:
    """What happened to one envelope recipient in one attempt."""

    index: int
    key: str = ""
    expansion: Expansion | None = None
    error: MailError | None = None
    results: list[tuple[Destination, MailError | None]] | None = None


def _is_due(record: RecipientRecord, now: float) -> bool:
    if record.status == PENDING:
        return True
    return record.status == DEFERRED and (record.next_attempt or 0.0) <= now


def _due_time(entry: QueueEntry) -> float | None:
    """When the entry next needs work (0.0: now), or None for never."""
    times = [
        0.0 if r.status == PENDING else (r.next_attempt or 0.0)
        for r in entry.recipients
        if r.status in (PENDING, DEFERRED)
    ]
    return min(times) if times else None


class QueueRunner(Service):
    """Delivers spooled entries to local destinations; see the module doc.

    @param spool: the queue.
    @param expander: the alias expander.
    @param local_agent: local delivery (L{twistedmail.delivery.local}).
    @param clock: for polling, retries and attempt times.
    @param settings: the ``[spool]`` settings.
    @param locks: the entry locks shared with the relay and queue tools.
    @param settled: the hook called after each attempt (module docstring).
    @param backoff: seconds to wait after the given number of attempts,
        instead of the doubling C{retry_delay}.
    """

    def __init__(
        self,
        spool: Spool,
        expander: Expander,
        local_agent: LocalAgent,
        clock: IReactorTime,
        settings: SpoolSettings | None = None,
        *,
        locks: EntryLocks | None = None,
        settled: SettledHook | None = None,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self._locks = locks
        self._settled = settled
        self._backoff_function = backoff
        self._spool = spool
        self._expander = expander
        self._local = local_agent
        self._clock = clock
        self._settings = settings or SpoolSettings()
        self._deliveries = DeferredSemaphore(self._settings.max_active_deliveries)
        self._ready: collections.deque[tuple[str, QueueEntry | None]] = (
            collections.deque()
        )
        self._queued: set[str] = set()
        self._waiting: dict[str, float] = {}
        self._active: dict[str, Deferred[None]] = {}
        self._loop: LoopingCall | None = None
        self._picking = False
        self._forced: set[str] = set()
        #: Fires when the start-up scan is done (for tests and embedders).
        self.started: Deferred[None] = Deferred()

    # Service

    def startService(self) -> None:
        """Scan the spool, pick up ``incoming/``, then follow new commits."""
        super().startService()
        self.started = Deferred()
        self._spool.prepare()
        self._spool.add_observer(self._committed)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._settings.incoming_poll_interval, now=False)
        d = Deferred.fromCoroutine(self._scan())
        d.addErrback(lambda f: log.failure("queue scan failed", f))
        d.addBoth(lambda _: self.started.callback(None))

    def stopService(self) -> Deferred[None]:
        """Stop taking work; fire when deliveries in flight are done."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._spool.remove_observer(self._committed)
        self._ready.clear()
        self._queued.clear()
        self._waiting.clear()
        d = DeferredList(list(self._active.values()), consumeErrors=True)
        return d.addCallback(lambda _: None)

    async def _scan(self) -> None:
        await self._spool.sweep_tmp()
        entries = await self._spool.open_entries()
        log.info("queue: {n} entries on start", n=len(entries))
        for entry in entries:
            self._consider(entry)
        await self._pickup()

    # Scheduling

    def flush(self, queue_id: str | None = None) -> None:
        """Try deferred recipients now (of one entry, or of all waiting
        ones), whatever their next attempt time; for ``queue flush``."""
        ids = [queue_id] if queue_id is not None else list(self._waiting)
        for i in ids:
            self._waiting.pop(i, None)
            self._forced.add(i)
            if i not in self._queued:
                self._queued.add(i)
                self._ready.append((i, None))
        self._pump()

    def _committed(self, entry: QueueEntry) -> None:
        if self.running:
            self._consider(entry, fresh=True)

    def _consider(self, entry: QueueEntry, fresh: bool = False) -> None:
        """Schedule an entry according to its recipients.

        @param fresh: the entry was just committed (nobody else changed it);
            others are read again under the lock before an attempt.
        """
        queue_id = entry.queue_id
        if entry.held or queue_id in self._queued or queue_id in self._active:
            return
        due = _due_time(entry)
        if due is None:
            if entry.is_done:
                self._remove(queue_id)
            return
        if due <= self._clock.seconds():
            self._waiting.pop(queue_id, None)
            self._queued.add(queue_id)
            keep = fresh or self._locks is None
            self._ready.append((queue_id, entry if keep else None))
            self._pump()
        else:
            self._waiting[queue_id] = due

    def _tick(self) -> None:
        now = self._clock.seconds()
        for queue_id, due in list(self._waiting.items()):
            if due <= now:
                # Read it again: a queue tool may have changed it meanwhile.
                del self._waiting[queue_id]
                self._queued.add(queue_id)
                self._ready.append((queue_id, None))
        self._pump()
        if not self._picking:
            d = Deferred.fromCoroutine(self._pickup())
            d.addErrback(lambda f: log.failure("incoming pick-up failed", f))

    async def _pickup(self) -> None:
        self._picking = True
        try:
            # Observers hear of each entry and schedule it.
            await self._spool.pickup_incoming()
        finally:
            self._picking = False

    def _pump(self) -> None:
        limit = self._settings.max_active_deliveries
        while self._ready and len(self._active) < limit and self.running:
            queue_id, entry = self._ready.popleft()
            self._queued.discard(queue_id)
            if queue_id in self._active:
                # Still being worked on: look again on the next tick.
                self._waiting[queue_id] = 0.0
                continue
            d = Deferred.fromCoroutine(self._guarded(queue_id, entry))
            if not d.called:
                self._active[queue_id] = d

    async def _guarded(self, queue_id: str, entry: QueueEntry | None) -> None:
        try:
            if self._locks is None:
                await self._process(queue_id, entry)
            else:
                await self._locks.run(
                    queue_id,
                    lambda: Deferred.fromCoroutine(self._process(queue_id, entry)),
                )
        except Exception:
            log.failure("queue entry {id} failed", id=queue_id)
            if self.running:
                retry = self._clock.seconds() + self._settings.retry_delay
                self._waiting[queue_id] = retry
        finally:
            self._active.pop(queue_id, None)
            self._pump()

    def _remove(self, queue_id: str) -> None:
        d = self._spool.remove(queue_id)
        d.addErrback(lambda f: log.failure("cannot remove {id}", f, id=queue_id))

    # One attempt

    async def _process(self, queue_id: str, entry: QueueEntry | None) -> None:
        if entry is None:
            try:
                entry = await self._spool.load(queue_id)
            except KeyError:
                return
        if entry.held:
            return
        now = self._clock.seconds()
        forced = queue_id in self._forced
        self._forced.discard(queue_id)
        due = [
            i
            for i, r in enumerate(entry.recipients)
            if _is_due(r, now) or (forced and r.status == DEFERRED)
        ]
        if not due:
            self._settle(entry)
            return
        message = await self._spool.read_message(queue_id)
        outcomes = [await self._expand(i, entry.recipients[i]) for i in due]

        records = list(entry.recipients)
        for i in due:
            r = records[i]
            records[i] = fast_replace(r, attempts=r.attempts + 1, last_attempt=now)
        if self._must_record(entry, outcomes):
            entry = fast_replace(entry, recipients=tuple(records))
            await self._spool.update(entry)

        await self._deliver(entry, outcomes, message)
        records = self._results(entry, records, outcomes, now)
        entry = fast_replace(entry, recipients=tuple(records))
        if self._settled is not None:
            entry = await self._settled(entry)
        if entry.is_done:
            await self._spool.remove(queue_id)
            return
        await self._spool.update(entry)
        self._settle(entry)

    def _settle(self, entry: QueueEntry) -> None:
        due = _due_time(entry)
        if due is not None and self.running:
            self._waiting[entry.queue_id] = due

    async def _expand(self, index: int, record: RecipientRecord) -> _Outcome:
        try:
            address = Address.parse(record.address, utf8=True)
        except AddressError as e:
            return _Outcome(index, error=MailError(BAD_ADDRESS, str(e)))
        key = address.key
        try:
            expansion = await self._expander.expand(address)
        except MailError as e:
            return _Outcome(index, key, error=e)
        except Exception as e:
            log.failure("alias expansion of {address} failed", address=record.address)
            return _Outcome(index, key, error=MailError(LOOKUP_FAILED, repr(e)))
        return _Outcome(index, key, expansion=expansion)

    def _must_record(self, entry: QueueEntry, outcomes: Sequence[_Outcome]) -> bool:
        """Whether the attempt must be written before trying (see the module
        docstring)."""
        for o in outcomes:
            record = entry.recipients[o.index]
            if record.attempts > 0:
                return True
            if o.expansion is not None and any(
                isinstance(d, (ProgramTarget, FileTarget))
                for d in o.expansion.destinations
            ):
                return True
        return False

    async def _deliver(
        self, entry: QueueEntry, outcomes: Sequence[_Outcome], message: bytes
    ) -> None:
        jobs: list[Deferred[None]] = []
        for o in outcomes:
            if o.expansion is None:
                continue
            done = set(entry.recipients[o.index].done)
            o.results = []
            for dest in o.expansion.destinations:
                if isinstance(dest, RemoteAddress) or destination_key(dest) in done:
                    continue
                jobs.append(self._deliver_one(entry, dest, message, o.results))
        if len(jobs) == 1:
            # The usual single destination: what the DeferredList below
            # does for it (errors consumed), without making one.
            await jobs[0].addErrback(lambda _: None)
        elif jobs:
            await DeferredList(jobs, consumeErrors=True)

    def _deliver_one(
        self,
        entry: QueueEntry,
        dest: Destination,
        message: bytes,
        results: list[tuple[Destination, MailError | None]],
    ) -> Deferred[None]:
        queue_id, sender = entry.queue_id, entry.envelope.sender

        async def one() -> None:
            try:
                await self._local.deliver(queue_id, sender, dest, message)
            except MailError as e:
                log.info(
                    "{id}: {dest}: {reply} ({reason})",
                    id=queue_id,
                    dest=str(dest),
                    reply=str(e.reply),
                    reason=e.reason,
                )
                results.append((dest, e))
            except Exception as e:
                log.failure("{id}: delivery to {dest} failed", id=queue_id, dest=dest)
                results.append((dest, MailError(DELIVERY_ERROR, repr(e))))
            else:
                where = str(dest)
                log.info(
                    preformatted(f"{queue_id}: delivered to {where}"),
                    id=queue_id,
                    dest=where,
                )
                results.append((dest, None))

        return self._deliveries.run(lambda: Deferred.fromCoroutine(one()))

    def _results(
        self,
        entry: QueueEntry,
        records: list[RecipientRecord],
        outcomes: Sequence[_Outcome],
        now: float,
    ) -> list[RecipientRecord]:
        """The recipient records after an attempt, remote children appended."""
        children: list[RecipientRecord] = []
        for o in outcomes:
            r = records[o.index]
            temporary: list[tuple[Reply, str]] = []
            permanent: list[tuple[Reply, str]] = []
            done = list(r.done)
            # "notice:" keys record DSNs sent (see the relay), not copies.
            delivered = any(not d.startswith(("remote:", "notice:")) for d in done)
            itself_remote = False
            if o.error is not None:
                bucket = temporary if o.error.reply.is_temporary else permanent
                bucket.append((o.error.reply, o.error.reason))
            elif o.expansion is not None:
                expansion = o.expansion
                for failure in expansion.failures:
                    bucket = temporary if failure.reply.is_temporary else permanent
                    bucket.append((failure.reply, str(failure)))
                if not expansion.destinations and not expansion.failures:
                    reply = expansion.rcpt_reply()
                    if reply is not None:
                        permanent.append((reply, "alias expands to nothing"))
                for dest, error in o.results or ():
                    if error is None:
                        done.append(destination_key(dest))
                        delivered = True
                    else:
                        bucket = temporary if error.reply.is_temporary else permanent
                        bucket.append((error.reply, error.reason))
                for dest in expansion.destinations:
                    if not isinstance(dest, RemoteAddress):
                        continue
                    if dest.key == o.key:
                        itself_remote = True
                        continue
                    key = destination_key(dest)
                    if key in done:
                        continue
                    done.append(key)
                    children.append(
                        RecipientRecord(
                            dest.address,
                            r.notify,
                            r.orcpt,
                            status=REMOTE,
                            parent=r.address,
                        )
                    )
            if temporary:
                reply, reason = temporary[0]
                records[o.index] = fast_replace(
                    r,
                    status=DEFERRED,
                    reply=reply,
                    reason="; ".join(why for _, why in temporary),
                    next_attempt=now + self._backoff(r.attempts),
                    done=tuple(done),
                )
            elif permanent:
                reply, reason = permanent[0]
                records[o.index] = fast_replace(
                    r,
                    status=FAILED,
                    reply=reply,
                    reason="; ".join(why for _, why in permanent),
                    next_attempt=None,
                    done=tuple(done),
                )
            else:
                status = (
                    REMOTE if itself_remote else DELIVERED if delivered else EXPANDED
                )
                records[o.index] = fast_replace(
                    r,
                    status=status,
                    reply=None,
                    reason="",
                    next_attempt=None,
                    done=tuple(done),
                )
                if status == REMOTE:
                    # From here on the attempts counted are the relay's.
                    records[o.index] = fast_replace(
                        records[o.index], attempts=0, last_attempt=None
                    )
        return records + children

    def _backoff(self, attempts: int) -> float:
        """Seconds to wait after the given number of attempts (at least 1)."""
        if self._backoff_function is not None:
            return self._backoff_function(attempts)
        delay = self._settings.retry_delay * 2 ** max(0, min(attempts - 1, 30))
        return float(min(delay, self._settings.retry_delay_max))
