# -*- test-case-name: tests.test_lmtp -*-
"""LMTP delivery: Receive, Expand and Maildir in one step (RFC 2033).

Step of the flow: a front MTA (Postfix, Exim) hands a message to our
``lmtp`` listener; the server makes one L{LMTPDeliveryAgent} per message and,
after the end of data, asks it for one reply per recipient
(L{IPerRecipientDeliveryAgent.commit_each}, RFC 2033 §4.2).

For each recipient the agent asks the alias expander where the mail goes and
delivers every local mailbox copy at once through L{LocalDelivery} (the same
code, trace headers and loop check as the queue runner).  Then:

  - every mailbox copy is in its Maildir (written in ``tmp/``, fsynced,
    linked into ``new/``, the folder fsynced) and nothing else is left to
    do: ``250 2.0.0``, and the recipient never enters the queue;
  - no copy could be made and nothing is left for later: the failure's own
    reply (``452 4.2.2`` for a full mailbox, ``550 5.2.1`` for a disabled
    user...), temporary failures first.  The recipient never enters the queue
    either: with a 4xx or 5xx reply the front MTA keeps the responsibility
    (it retries or bounces), so queueing it here as well would deliver it
    twice or bounce it twice;
  - anything else (a remote alias target, a program or file target, some
    copies of an alias made and some not, or a DSN ``NOTIFY=SUCCESS`` whose
    notice is to be sent): ``250 2.0.0``, and the recipient is written to
    the spool, so the queue runner finishes it with its retry, bounce,
    notice and relay machinery.

Exactly once: the spooled entry keeps the queue id the agent reserved in
L{start}, and a Maildir copy's unique name is made from the queue id and the
mailbox (L{twistedmail.delivery.local.unique_name}), so when the runner
delivers the queued recipients' mailbox copies again it finds the copies
made here and writes nothing.  Program and file targets are left to the
runner alone, which records each copy it made.  Recipients answered here are
not in the entry at all, so the runner cannot deliver them a second time.

A crash before the replies are sent loses no acknowledged mail (nothing was
acknowledged); the front MTA sends the message again, so copies made before
the crash may arrive twice, as with any LMTP server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from twisted.internet.defer import Deferred, DeferredList
from zope.interface import implementer

from twistedmail.address import Address, AddressError
from twistedmail.aliases.expander import Destination, LocalMailbox
from twistedmail.interfaces import Envelope, IPerRecipientDeliveryAgent, Recipient
from twistedmail.logs import FastLogger
from twistedmail.replies import (
    UNKNOWN_USER,
    MailError,
    PermanentError,
    Reply,
    TemporaryError,
)
from twistedmail.spool.runner import Expander, LocalAgent
from twistedmail.spool.store import Spool, SpoolDeliveryAgent

__all__ = ["BAD_ADDRESS", "DELIVERY_ERROR", "LOOKUP_FAILED", "LMTPDeliveryAgent"]

log = FastLogger()

BAD_ADDRESS = Reply(550, "5.1.3", "Bad recipient address syntax")
LOOKUP_FAILED = Reply(451, "4.3.0", "Temporary lookup failure")
DELIVERY_ERROR = Reply(451, "4.3.0", "Internal error")


@dataclass
class _Result:
    """One recipient's fate at commit."""

    reply: Reply
    queued: bool = False
    temporary: list[MailError] = field(default_factory=list)
    permanent: list[MailError] = field(default_factory=list)


@implementer(IPerRecipientDeliveryAgent)
class LMTPDeliveryAgent:
    """Delivers one LMTP message straight into local mailboxes.

    @param spool: reserves the queue id and takes what is left for later.
    @param expander: the alias expander.
    @param local: local delivery (L{twistedmail.delivery.local.LocalDelivery}).

    @ivar queue_id: the message's queue id, known from L{start} on (the
        server names it in the Received: header); Maildir copies are named
        after it whether or not the message is ever spooled.
    """

    def __init__(self, spool: Spool, expander: Expander, local: LocalAgent) -> None:
        self._spool = spool
        self._expander = expander
        self._local = local
        self._queue: SpoolDeliveryAgent | None = None
        self._envelope: Envelope | None = None
        self._recipients: list[Recipient] = []
        self._chunks: list[bytes] = []
        self.queue_id: str | None = None

    def start(self, envelope: Envelope) -> None:
        """Begin a message and reserve its queue id."""
        self.abort()
        queue = self._queue = self._spool.agent()
        queue.start(replace(envelope, recipients=()))
        self.queue_id = queue.queue_id
        self._envelope = envelope
        self._recipients = list(envelope.recipients)
        self._chunks = []

    def add_recipient(self, recipient: Recipient) -> None:
        """Add one accepted recipient."""
        self._recipients.append(recipient)

    def body(self, data: bytes) -> None:
        """Append message bytes (kept in memory: each copy needs them all,
        and the server's size limit bounds them)."""
        if self._queue is None:
            raise RuntimeError("no message started")
        self._chunks.append(data)

    def commit_each(self) -> Deferred[list[Reply]]:
        """Deliver; fire with one reply per recipient in L{add_recipient}
        order (see the module docstring for which reply and what is queued).
        """
        queue, self._queue = self._queue, None
        envelope = self._envelope
        if queue is None or envelope is None or self.queue_id is None:
            raise RuntimeError("commit without start")
        recipients, self._recipients = self._recipients, []
        message = b"".join(self._chunks)
        self._chunks = []
        return Deferred.fromCoroutine(
            self._commit(queue, self.queue_id, envelope, recipients, message)
        )

    def commit(self) -> Deferred[str]:
        """Deliver, for servers that want one reply: the queue id when at
        least one recipient got 250, else the first recipient's failure."""

        async def go() -> str:
            replies = await self.commit_each()
            if any(r.code == 250 for r in replies) or not replies:
                assert self.queue_id is not None
                return self.queue_id
            error = PermanentError if replies[0].is_permanent else TemporaryError
            raise error(replies[0], "no recipient could be delivered")

        return Deferred.fromCoroutine(go())

    def abort(self) -> None:
        """Drop the message; nothing was delivered or written yet."""
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.abort()
        self._chunks = []
        self._recipients = []

    async def _commit(
        self,
        queue: SpoolDeliveryAgent,
        queue_id: str,
        envelope: Envelope,
        recipients: Sequence[Recipient],
        message: bytes,
    ) -> list[Reply]:
        jobs = [
            Deferred.fromCoroutine(self._recipient(queue_id, envelope, r, message))
            for r in recipients
        ]
        outcomes = await DeferredList(jobs, fireOnOneErrback=True, consumeErrors=True)
        results: list[_Result] = [value for _, value in outcomes]
        later = [
            r for r, result in zip(recipients, results, strict=True) if result.queued
        ]
        if not later:
            queue.abort()
        else:
            for r in later:
                queue.add_recipient(r)
            queue.body(message)
            try:
                await queue.commit()
            except MailError as e:
                log.warn(
                    "{id}: cannot queue the rest for {n} recipients: {reason}",
                    id=queue_id,
                    n=len(later),
                    reason=e.reason,
                )
                for result in results:
                    if result.queued:
                        result.reply = e.reply
            else:
                log.info(
                    "{id}: queued for {n} recipients to finish later",
                    id=queue_id,
                    n=len(later),
                )
        return [result.reply for result in results]

    async def _recipient(
        self, queue_id: str, envelope: Envelope, recipient: Recipient, message: bytes
    ) -> _Result:
        """Expand one recipient, deliver its mailbox copies, decide."""
        try:
            address = Address.parse(recipient.address, utf8=True)
        except AddressError:
            return _Result(BAD_ADDRESS)
        try:
            expansion = await self._expander.expand(address)
        except MailError as e:
            return _Result(e.reply)
        except Exception:
            log.failure("{id}: alias expansion of {a} failed", id=queue_id, a=address)
            return _Result(LOOKUP_FAILED)
        result = _Result(
            Reply(250, "2.0.0", f"<{recipient.address}> delivered, id {queue_id}")
        )
        for failure in expansion.failures:
            found = MailError(failure.reply, str(failure))
            bucket = result.temporary if found.reply.is_temporary else result.permanent
            bucket.append(found)
        mailboxes = [d for d in expansion.destinations if isinstance(d, LocalMailbox)]
        others = [d for d in expansion.destinations if not isinstance(d, LocalMailbox)]
        copies = [
            Deferred.fromCoroutine(self._copy(queue_id, envelope.sender, d, message))
            for d in mailboxes
        ]
        delivered = 0
        for _, error in await DeferredList(copies, consumeErrors=True):
            if error is None:
                delivered += 1
                continue
            bucket = result.temporary if error.reply.is_temporary else result.permanent
            bucket.append(error)
        if delivered == 0 and not others:
            # Temporary failures first: a retry may get this one through.
            failures = result.temporary or result.permanent
            if failures:
                result.reply = failures[0].reply
            else:
                result.reply = expansion.rcpt_reply() or UNKNOWN_USER
            log.info(
                "{id}: {address} refused: {reply} ({reasons})",
                id=queue_id,
                address=recipient.address,
                reply=str(result.reply),
                reasons="; ".join(e.reason for e in failures),
            )
            return result
        # A requested success notice (RFC 3461 §4.1) is the queue's to send:
        # the runner finds the copies made and reports them delivered.
        success_notice = "SUCCESS" in recipient.notify
        if others or result.temporary or result.permanent or success_notice:
            result.queued = True
            result.reply = Reply(
                250, "2.0.0", f"<{recipient.address}> queued as {queue_id}"
            )
        return result

    async def _copy(
        self, queue_id: str, sender: str, destination: Destination, message: bytes
    ) -> MailError | None:
        """One mailbox copy: None when it is in the Maildir, else the error."""
        try:
            await self._local.deliver(queue_id, sender, destination, message)
        except MailError as e:
            log.info(
                "{id}: {dest}: {reply} ({reason})",
                id=queue_id,
                dest=str(destination),
                reply=str(e.reply),
                reason=e.reason,
            )
            return e
        except Exception as e:
            log.failure(
                "{id}: delivery to {dest} failed", id=queue_id, dest=destination
            )
            return MailError(DELIVERY_ERROR, repr(e))
        log.info("{id}: delivered to {dest}", id=queue_id, dest=str(destination))
        return None
